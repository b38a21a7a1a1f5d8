"""compose/docker-compose.dify.yml run by the no-Docker runner: the plugin daemon beside each node.

The runner merges docker-compose.yml, docker-compose.dify.yml and tests/cluster/dify-stand-ins.yml
(Dify's Redis) as `docker compose -f ... -f ...` would, runs each plugin daemon service in its
node's network namespace (network_mode: service:...), under the gate the override gives it
(hotstandby-entrypoint, then daemon/plugin_gate.py), and stands in for the daemon image's
/app/entrypoint.sh with the behavioural model of the daemon (tests/support/plugin_daemon_model.py).
So this is the override's own wiring, not a copy of it: ports 5002/5003, secrets, EXCLUDE, the
Redis lease and the gate's key.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.compose_demo import HAPROXY_URL, MASTER, SLAVE, PairView, wait_for
from harness.compose_runner import DEFAULT_FILE, Cluster
from tests.support.cluster import tree_diff
from tests.support.plugin_cluster import BUILD_EVENTS, TOOL_CALL, TOOL_CALL_PATH, tool_call_headers
from tests.support.plugin_daemon_driver import parse_sse
from tests.support.plugin_package import PluginPackage, build_package, install_package

pytestmark = pytest.mark.timeout(300)

DIFY_FILE = DEFAULT_FILE.parent / "docker-compose.dify.yml"
STAND_INS = Path(__file__).with_name("dify-stand-ins.yml")
ENTRYPOINT = Path(__file__).resolve().parents[1] / "support" / "dify_plugin_daemon_entrypoint.sh"
DAEMON_OF = {MASTER: "plugin-daemon-master", SLAVE: "plugin-daemon-slave"}
PLUGINS = 3


@pytest.fixture(params=["netns", "loopback"])
def dify_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """In network namespaces (make demo's way), and on 127.x.y.n addresses (`make up-dify`'s,
    which reaches a Dify running on this host)."""
    workdir = Path(tempfile.mkdtemp(prefix="hs-dify-"))  # short: HAProxy's socket lives below it
    lines: list[str] = []
    cluster = Cluster.from_file(
        [DEFAULT_FILE, DIFY_FILE, STAND_INS],
        workdir,
        network_mode=request.param,
        image_files={"/app/entrypoint.sh": ENTRYPOINT},
        out=lines.append,
    )
    try:
        with cluster:
            yield cluster
    finally:
        print("\n".join(lines))
        for name in cluster.launches:
            print(cluster.tail(name, 15))
        for name, process in cluster.processes.items():
            assert not process.alive(), f"{name} left running"
        shutil.rmtree(workdir, ignore_errors=True)


def _events(cluster: Cluster, node: str, since: float = 0.0) -> list[dict[str, Any]]:
    path = cluster.workdir / "home" / DAEMON_OF[node] / "daemon-events.jsonl"
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in found if e["t"] >= since]


def _launched(cluster: Cluster, node: str, since: float = 0.0) -> set[str]:
    return {e["plugin"] for e in _events(cluster, node, since) if e["event"] == "launched"}


def _call(cluster: Cluster, package: PluginPackage) -> tuple[int, list[dict[str, Any]]]:
    """A tool call through HAProxy to whichever plugin daemon runs, as Dify's API makes it."""
    reply = cluster.request(
        "POST",
        f"{HAPROXY_URL}{TOOL_CALL_PATH}",
        body=TOOL_CALL,
        headers=tool_call_headers(package.identifier, cluster.secret("plugin_daemon_key")),
        timeout=5,
    )
    return reply.status, parse_sse(reply.body.decode(errors="replace")) if reply.status == 200 else []


def _status(view: PairView, node: str) -> dict[str, Any]:
    """The node's /internal/status on 5003 (beside its plugin daemon, which serves 5002), or {}."""
    code, body = view.get_json(f"http://{node}:5003/internal/status")
    return body if code == 200 and isinstance(body, dict) else {}


def _leader(view: PairView) -> str | None:
    for node in (MASTER, SLAVE):
        status = _status(view, node)
        if status.get("writable"):
            return node
    return None


def _differences(view: PairView) -> list[str]:
    return [d for d in tree_diff(view.storage(MASTER), view.storage(SLAVE)) if ".uv-cache" not in d]


def test_the_dify_override_runs_one_gated_daemon_and_fails_over_without_rebuilding(
    dify_cluster: Cluster,
) -> None:
    cluster, view = dify_cluster, PairView(dify_cluster)
    wait_for(lambda: _leader(view) is not None, 30, "a leader through the Redis lease")
    leader = _leader(view)
    assert leader is not None
    standby = SLAVE if leader == MASTER else MASTER
    packages = [build_package(marker=f"compose-dify-{n}") for n in range(PLUGINS)]
    for package in packages:
        install_package(view.storage(leader), package)
    wanted = {p.identifier for p in packages}
    wait_for(lambda: _launched(cluster, leader) == wanted, 120, "the leader's daemon to launch them")
    wait_for(lambda: not _differences(view), 30, "identical trees after the installs")
    assert _events(cluster, standby) == [], "a plugin daemon ran beside the standby"
    for package in packages:
        wait_for(lambda p=package: _call(cluster, p)[0] == 200, 15, "a plugin call through HAProxy")

    killed = time.time()
    cluster.kill(DAEMON_OF[leader])
    cluster.kill(leader)
    wait_for(lambda: _leader(view) == standby, 30, "the standby to take the lease over")
    wait_for(lambda: all(_call(cluster, p)[0] == 200 for p in packages), 30, "every plugin through HAProxy")
    assert _launched(cluster, standby, killed) == wanted
    rebuilt = [e for e in _events(cluster, standby, killed) if e["event"] in BUILD_EVENTS]
    assert rebuilt == [], f"the promoted daemon rebuilt replicated venvs: {rebuilt}"

    # The old leader comes back (as `restart: always` would bring it): it follows, and its
    # daemon stays stopped while replication brings its storage up to date.
    rejoined = time.time()
    cluster.start(leader)
    cluster.start(DAEMON_OF[leader])
    wait_for(lambda: _status(view, leader).get("synced") is True, 30, "the old leader to follow")
    assert not _status(view, leader).get("writable")
    extra = build_package(marker="compose-dify-after")
    install_package(view.storage(standby), extra)
    wait_for(lambda: extra.identifier in _launched(cluster, standby, rejoined), 120, "the new plugin")
    wait_for(lambda: not _differences(view), 30, "identical trees after the rejoin")
    assert _events(cluster, leader, rejoined) == [], "the rejoined node's daemon ran"
    assert _call(cluster, extra)[0] == 200
