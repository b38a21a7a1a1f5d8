"""compose/docker-compose.yml's pair and HAProxy, run as real processes without Docker.

harness/compose_runner.py starts each service from the file (its own environment, entrypoint and
command, volumes as folders, the secret as a file) in a network namespace of its own, plugged
into a private bridge with an address in 198.18.0.0/24, service names resolved through
per-namespace hosts files. Every request comes from a client namespace on the same bridge.
Everything (processes, namespaces, /etc/netns entries, folders) is removed at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import compose_runner, netns
from harness.compose_demo import HAPROXY_URL, MASTER, SLAVE, PairView, wait_for
from harness.compose_runner import DEFAULT_FILE, Cluster
from harness.netns import NETNS_ETC, LoopbackNetwork, NamespaceNetwork
from tests.support.cluster import tree_diff

FAILOVER_BOUND = 15.0


def _namespaces() -> set[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


@pytest.fixture
def workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="hs-compose-"))  # short: HAProxy's socket lives below it
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _up(
    workdir: Path, network_mode: str, lines: list[str], env_file: Path | None = None
) -> Iterator[tuple[Cluster, PairView]]:
    cluster = Cluster.from_file(
        DEFAULT_FILE, workdir, env_file=env_file, network_mode=network_mode, out=lines.append
    )
    try:
        with cluster:
            yield cluster, PairView(cluster)
    finally:
        print("\n".join(lines))  # shown with the logs' last lines when a test fails
        for name in cluster.launches:
            print(cluster.tail(name, 15))
        if isinstance(cluster.network, NamespaceNetwork):
            prefix = f"hs-{cluster.run_id}-"
            assert not {ns for ns in _namespaces() if ns.startswith(prefix)}, "namespaces left behind"
            assert not list(NETNS_ETC.glob(f"{prefix}*")), "/etc/netns entries left behind"
        for name, process in cluster.processes.items():
            assert not process.alive(), f"{name} left running"


@pytest.fixture(params=["static", "redis"])
def netns_cluster(request: pytest.FixtureRequest, workdir: Path) -> Iterator[tuple[Cluster, PairView]]:
    """The default file (ELECTION=static, FAILOVER=auto), or with election-redis.env: its
    lease-redis service (the `redis` profile) and ELECTION=redis."""
    env_file = None if request.param == "static" else DEFAULT_FILE.parent / f"election-{request.param}.env"
    yield from _up(workdir, "netns", [], env_file)


@pytest.fixture
def refused_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ip netns add` fails as it does without CAP_SYS_ADMIN."""

    def refuse(*args: str) -> None:
        raise netns.NetworkError(
            f"ip {' '.join(args)}: mount --make-shared /run/netns failed: Operation not permitted"
        )

    monkeypatch.setattr(netns, "_ip", refuse)


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner sees itself as an ordinary user (its services still run as root here)."""
    monkeypatch.setattr(compose_runner, "is_root", lambda: False)


@pytest.fixture
def fallback_cluster(
    workdir: Path, refused_namespaces: None, not_root: None
) -> Iterator[tuple[Cluster, PairView, list[str]]]:
    lines: list[str] = []
    for cluster, view in _up(workdir, "auto", lines):
        yield cluster, view, lines


def _converged(view: PairView) -> list[str]:
    return tree_diff(view.storage(MASTER), view.storage(SLAVE))


def _write(view: PairView, path: str, data: bytes) -> int:
    reply = view.put(path, data)
    assert reply.status == 200, reply.body[:500]
    answer = reply.json()
    assert answer["sha256"] and answer["path"] == path
    return int(answer["epoch"])


@pytest.mark.timeout(120)
def test_compose_pair_replicates_fails_over_through_haproxy_and_the_old_master_rejoins(
    netns_cluster: tuple[Cluster, PairView],
) -> None:
    cluster, view = netns_cluster
    election = cluster.launch(MASTER).env["ELECTION"]
    assert ("lease-redis" in cluster.services) == (election == "redis")
    assert isinstance(cluster.network, NamespaceNetwork)
    assert all(a.startswith("198.18.0.") for a in cluster.network.addresses.values())
    wait_for(lambda: (view.status(SLAVE) or {}).get("synced", False), 30, "the standby's first sync")
    wait_for(lambda: view.haproxy_states() == {"master": "UP", "standby": "DOWN"}, 15, "HAProxy's checks")

    # Replication: writes acknowledged through HAProxy are on both nodes, and the trees match.
    written = {f"plugins/p{i:02d}/data.bin": f"payload {i}\n".encode() * (i + 1) for i in range(20)}
    for path, data in written.items():
        assert _write(view, path, data) >= 1
    assert view.served_by() == MASTER
    for path, data in written.items():
        assert view.file(SLAVE, path) == data, f"{path} did not reach the standby"
    wait_for(lambda: not _converged(view), 15, "the trees to converge")

    # Failover: SIGKILL to the master's whole process tree; HAProxy follows /primary.
    cluster.kill(MASTER)
    took = wait_for(
        lambda: cluster.request("GET", f"{HAPROXY_URL}/primary", timeout=2).status == 200,
        FAILOVER_BOUND + 5,
        "HAProxy to find a primary again",
    )
    print(f"{election}: HAProxy served from the promoted standby {took:.1f}s after the master was killed")
    assert took < FAILOVER_BOUND
    assert view.served_by() == SLAVE
    assert _write(view, "after/failover.txt", b"written on the promoted standby\n") >= 2
    for path, data in written.items():
        assert view.file(SLAVE, path) == data, f"acknowledged write {path} lost"

    # Rejoin: the restarted master follows the new leader, catches up, and takes no traffic back.
    cluster.start(MASTER)
    restarted = time.monotonic()
    wait_for(lambda: (view.status(MASTER) or {}).get("role") == "slave", 30, "the old master to follow")
    wait_for(lambda: not _converged(view), 30, "the old master to converge")
    print(f"the old master rejoined as a replica and converged in {time.monotonic() - restarted:.1f}s")
    assert view.file(MASTER, "after/failover.txt") == b"written on the promoted standby\n"
    new_epoch = (view.status(SLAVE) or {})["epoch"]
    wait_for(lambda: (view.status(MASTER) or {}).get("epoch") == new_epoch, 10, "the old master's epoch")
    states = []
    for _ in range(5):
        states.append(view.haproxy_states())
        time.sleep(0.3)
    assert all(s.get("master") != "UP" and s.get("standby") == "UP" for s in states), states
    assert view.served_by() == SLAVE
    assert cluster.request("GET", f"http://{MASTER}:5002/primary").status == 503


@pytest.mark.timeout(60)
def test_without_root_the_pair_runs_on_loopback_addresses_and_says_so(
    fallback_cluster: tuple[Cluster, PairView, list[str]],
) -> None:
    cluster, view, lines = fallback_cluster
    assert isinstance(cluster.network, LoopbackNetwork)
    assert any("falling back to distinct 127.x.y.n loopback addresses" in line for line in lines)
    assert any("skipped storage-permissions: it runs as root" in line for line in lines)
    assert "storage-permissions" not in cluster.processes
    addresses = set(cluster.network.addresses.values())
    assert len(addresses) == len(cluster.network.addresses)
    assert all(a.startswith("127.") for a in addresses)
    wait_for(lambda: view.haproxy_states().get("master") == "UP", 15, "HAProxy's checks")
    assert _write(view, "loopback/hello.txt", b"hello\n") == 1
    assert view.file(SLAVE, "loopback/hello.txt") == b"hello\n"
    assert view.served_by() == MASTER
