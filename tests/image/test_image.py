"""The image compose/Dockerfile builds, run from its own root filesystem.

`make image`'s builder (harness/image.py: buildah here, on a Debian base made once with mmdebstrap
and cached) builds hotstandby:<version>; an unchanged source is not built again. The test mounts the
image's files and starts compose/docker-compose.yml's services from them (harness/compose_runner.py
with an ImageRun): each in its own network namespace, under an overlay of its own, with the image's
ENTRYPOINT (tini, then hotstandby-entrypoint turning the SERVER_KEY_FILE secret into SERVER_KEY),
CMD, ENV, WORKDIR and USER 1000:1000; storage-permissions runs as root, as its `user:` says. HAProxy
(the host's) is in front. Nothing of the checkout runs but the image and the compose file: the
daemon's code, Python and tini all come from the image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import image
from harness.compose_demo import MASTER, SLAVE, PairView, wait_for
from harness.compose_runner import DEFAULT_FILE, Cluster, ImageRun

pytestmark = [
    pytest.mark.skipif(
        shutil.which("buildah") is None and not image.docker_answers(),
        reason="neither buildah (make system-deps installs it) nor a Docker engine to build the image",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting an image and network namespaces need root"),
    pytest.mark.timeout(900),  # a first build makes the Debian base and installs the wheels
]
FAILOVER_BOUND = 20.0


@pytest.fixture(scope="module")
def built() -> Iterator[ImageRun]:
    started = time.monotonic()
    tag = image.build(("daemon",), out=print)[0]
    with image.rootfs(tag) as root:
        print(f"image {tag} built (or up to date) and mounted in {time.monotonic() - started:.1f}s")
        yield ImageRun(root, image.config(tag))


@pytest.fixture
def pair(built: ImageRun) -> Iterator[tuple[Cluster, PairView]]:
    workdir = Path(tempfile.mkdtemp(prefix="hs-image-"))  # short: HAProxy's socket lives below it
    lines: list[str] = []
    cluster = Cluster.from_file(DEFAULT_FILE, workdir, network_mode="netns", image=built, out=lines.append)
    try:
        with cluster:
            yield cluster, PairView(cluster)
    finally:
        print("\n".join(lines))
        for name in cluster.launches:
            print(cluster.tail(name, 15))
        shutil.rmtree(workdir, ignore_errors=True)


def healthcheck(config: dict[str, Any] | Any) -> list[str]:
    test = list(config["Healthcheck"]["Test"])
    assert test[0] == "CMD", test
    return test[1:]


def _uid_gid(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def test_the_image_records_its_entrypoint_user_and_healthcheck(built: ImageRun) -> None:
    config = built.config
    assert config["Entrypoint"] == ["tini", "--", "hotstandby-entrypoint", "hotstandby"]
    assert config["Cmd"] == ["serve"]
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/app"
    assert "/health" in " ".join(healthcheck(config))
    venv = built.root / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    assert (venv / "daemon" / "haproxy.cfg.template").is_file(), "the template is package data"
    assert not (venv / "haproxy").exists()
    assert not (venv / "matplotlib").exists(), "the daemon image has no plotting stack"
    assert not (venv / "pip").exists(), "no installer in the image"


def test_the_pair_runs_from_the_image_fails_over_and_the_old_master_rejoins(
    built: ImageRun, pair: tuple[Cluster, PairView]
) -> None:
    cluster, view = pair
    check = healthcheck(built.config)

    # Each node is tini (from the image) as 1000:1000, chrooted in its own overlay of the image.
    for name in (MASTER, SLAVE):
        pid = cluster.processes[name].pid
        assert _uid_gid(pid) == (1000, 1000)
        assert os.readlink(f"/proc/{pid}/root") == str(cluster.workdir / "containers" / name / "merged")
        assert os.readlink(f"/proc/{pid}/exe").endswith("/tini")
        # storage-permissions (as root) handed the volumes to 1000:1000
        assert view.storage(name).stat().st_uid == 1000
        done = cluster.run_in_image(name, check, timeout=10)
        assert done.returncode == 0, done.stderr

    wait_for(lambda: (view.status(SLAVE) or {}).get("synced", False), 30, "the standby's first full sync")
    wait_for(lambda: view.haproxy_states().get("master") == "UP", 15, "HAProxy to mark the master up")

    # The key came from the secret file through hotstandby-entrypoint: authenticated writes work.
    data = b"written through HAProxy into the image's pair\n"
    reply = view.put("image/hello.txt", data)
    assert reply.status == 200, reply.body
    assert reply.json()["replicated"] is True
    wait_for(lambda: view.file(SLAVE, "image/hello.txt") == data, 10, "the standby to have the file")
    assert view.file(MASTER, "image/hello.txt") == data
    assert (view.storage(SLAVE) / "image" / "hello.txt").stat().st_uid == 1000

    cluster.kill(MASTER)  # its whole process tree, as `docker kill` would
    killed = time.monotonic()
    wait_for(lambda: view.served_by() == SLAVE, FAILOVER_BOUND, "HAProxy to serve from the promoted standby")
    print(f"HAProxy serves from {SLAVE} {time.monotonic() - killed:.1f}s after the kill")
    assert cluster.run_in_image(MASTER, check, timeout=10).returncode != 0, "healthy while stopped"
    after = b"written after the failover\n"
    reply = view.put("image/after.txt", after)
    assert reply.status == 200, reply.body
    epoch = (view.status(SLAVE) or {}).get("epoch")

    cluster.start(MASTER)
    wait_for(
        lambda: (
            (view.status(MASTER) or {}).get("role") == "slave"
            and (view.status(MASTER) or {}).get("epoch") == epoch
        ),
        30,
        "the old master to rejoin as a replica",
    )
    wait_for(lambda: view.file(MASTER, "image/after.txt") == after, 30, "the old master to catch up")
    assert cluster.run_in_image(MASTER, check, timeout=10).returncode == 0
    assert view.served_by() == SLAVE
