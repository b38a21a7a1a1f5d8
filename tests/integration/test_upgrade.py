"""Compatibility with the previous release and the rolling upgrade of a pair (README: rolling upgrade).

The previous releases are main at PREVIOUS_RELEASES: before the protocol had versions (its hello
names none, so this release talks protocol 1 to it), at protocol 2 (SHA-256 block signatures; protocol 3
asks for CRC-32 ones), at protocol 3 (it has no manifest digest; protocol 4 asks a replica for one
before its manifest) and at protocol 4 (its trailers carry SHA-256; protocol 5's carry XXH3-128 and
the batch names the check). Each is taken from this repository's history with
`git archive` into a temp folder and run from there with this venv (its dependencies are the same; the
test checks this venv satisfies the old release's). Every step also edits one big file already on
both nodes, so the deltas of each pairing of versions are exercised, not only whole files.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.requirements import Requirement

from replication import versions
from tests.support.cluster import SERVER_KEY, Node, Pair, http, make_pair, wait_until

PREVIOUS_RELEASES = {"d763280": 1, "98e92b5": 2, "7894748": 3, "cee30da": 4}
"""Commit -> the newest protocol it speaks."""
REPO = Path(__file__).resolve().parents[2]
FAST = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3"}

pytestmark = pytest.mark.timeout(180)


class Release(NamedTuple):
    root: Path
    """Its daemon and replication packages, to run with this venv."""
    protocol: int
    """The newest protocol version it speaks."""


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)


@pytest.fixture(scope="module", params=sorted(PREVIOUS_RELEASES))
def previous_release(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Release:
    release: str = request.param
    if _git("cat-file", "-e", f"{release}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {release} is not in this clone's history (shallow clone?)")
    old = tomllib.loads(_git("show", f"{release}:pyproject.toml").stdout.decode())
    for line in old["project"]["dependencies"]:
        wanted = Requirement(line)
        have = metadata.version(wanted.name)
        assert wanted.specifier.contains(have, prereleases=True), f"{wanted}: {have} installed; needs a venv"
    root = tmp_path_factory.mktemp(f"release-{release}")
    archive = _git("archive", "--format=tar", release, "daemon", "replication")
    assert archive.returncode == 0, archive.stderr
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return Release(root, PREVIOUS_RELEASES[release])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = make_pair(tmp_path, master_env=dict(FAST), slave_env=dict(FAST))
    try:
        yield made
    finally:
        made.stop()


def write_files(node: Node, prefix: str, count: int = 30) -> None:
    folder = node.storage / prefix
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"f{i}.bin").write_bytes(os.urandom(100 + 997 * i))
    big = folder / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    shared = node.storage / "shared.bin"  # on both nodes since the first step: this edit is a delta
    if shared.exists():
        with open(shared, "r+b") as fh:
            fh.seek(os.urandom(1)[0] << 12)
            fh.write(prefix.encode())
    else:
        shared.write_bytes(os.urandom(4 << 20))


def leads(node: Node) -> bool:
    try:
        return http("GET", f"{node.url}/primary", timeout=1)[0] == 200
    except OSError:
        return False


def converged(leader: Node, replica: Node, pair: Pair) -> None:
    wait_until(lambda: leads(leader), 20, message=f"{leader.name} to lead")
    pair.wait_converged(30)


def switchover(pair: Pair) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNC_TARGET", "SYNC_SOURCE", "ROLE")}
    nodes = f"{pair.master.url},{pair.slave.url}"
    run = subprocess.run(
        [sys.executable, "-m", "daemon", "switchover", "--nodes", nodes, "--timeout", "30"],
        env={**env, "SERVER_KEY": SERVER_KEY},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def upgrade(node: Node) -> None:
    node.stop()
    node.code_root = None
    node.start()


def test_a_sender_without_a_shared_protocol_version_is_refused_naming_both(pair: Pair) -> None:
    pair.start()
    code, body = pair.slave.call(
        "POST",
        "/internal/replication/hello",
        {"journal_id": "j", "epoch": 1, "node_id": "future", "protocol": 9, "protocol_min": 7},
    )
    assert code == 400, body
    assert body["title"] == versions.MISMATCH_TITLE
    assert f"this node speaks versions 1-{versions.PROTOCOL_VERSION}" in body["detail"]
    assert "the sender speaks versions 7-9" in body["detail"]
    assert pair.master.status()["replicas"][0]["protocol"] == versions.PROTOCOL_VERSION


def test_rolling_upgrade_of_a_pair_from_the_previous_release(pair: Pair, previous_release: Release) -> None:
    """Both nodes on the previous release; upgrade the replica, switch over, upgrade the other, switch
    back. Every step replicates: previous sender -> new replica, new sender -> previous replica, new
    -> new."""
    spoken = previous_release.protocol
    pair.master.code_root = pair.slave.code_root = previous_release.root
    pair.start()
    write_files(pair.master, "1-both-previous")
    converged(pair.master, pair.slave, pair)
    assert pair.slave.status().get("protocol", 1) == spoken  # it is that release indeed

    upgrade(pair.slave)
    wait_until(lambda: pair.master.status()["peer_connected"], 20, message="the link to the new replica")
    write_files(pair.master, "2-previous-to-new")
    converged(pair.master, pair.slave, pair)
    assert pair.slave.status()["protocol"] == spoken

    switchover(pair)
    deltas = pair.slave.metric("plugin_sync_operations_total", {"op": "delta"})
    write_files(pair.slave, "3-new-to-previous")
    converged(pair.slave, pair.master, pair)
    assert pair.slave.status()["replicas"][0]["protocol"] == spoken
    assert pair.slave.metric("plugin_sync_operations_total", {"op": "delta"}) > deltas

    upgrade(pair.master)
    wait_until(lambda: pair.slave.status()["peer_connected"], 20, message="the link to the upgraded node")
    deltas = pair.slave.metric("plugin_sync_operations_total", {"op": "delta"})
    write_files(pair.slave, "4-new-to-new")
    converged(pair.slave, pair.master, pair)
    assert pair.master.status()["protocol"] == versions.PROTOCOL_VERSION
    assert pair.slave.metric("plugin_sync_operations_total", {"op": "delta"}) > deltas
    assert pair.master.metric("plugin_sync_delta_fallbacks_total") == 0

    switchover(pair)
    write_files(pair.master, "5-back")
    converged(pair.master, pair.slave, pair)
    assert pair.master.status()["replicas"][0]["protocol"] == versions.PROTOCOL_VERSION
