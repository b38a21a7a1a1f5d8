"""One leader, two replicas: SYNC_TARGET lists both, each gets every change, sync writes wait for both.

With a lease backend all three nodes list the other two; when the leader dies the replica that
applied more of its history takes over, and the other follows it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Node, tree_diff, wait_until
from tests.support.ha import FAST, LEASE, primary, put
from tests.support.services import running_redis


def trio(tmp_path: Path, env: dict[str, str], everyone_lists_the_others: bool = False) -> list[Node]:
    """Node 0 starts as ROLE=master; 1 and 2 as its replicas."""
    nodes = [
        Node(f"n{i}", "master" if i == 0 else "slave", tmp_path / f"n{i}", extra_env=dict(env))
        for i in range(3)
    ]
    for i, node in enumerate(nodes):
        others = [other.url for j, other in enumerate(nodes) if j != i]
        if i == 0:
            node.extra_env["SYNC_TARGET"] = ",".join(others)
        else:
            node.extra_env["SYNC_SOURCE"] = ",".join(others) if everyone_lists_the_others else nodes[0].url
    return nodes


@contextlib.contextmanager
def running(nodes: list[Node]) -> Iterator[list[Node]]:
    try:
        for node in nodes[1:]:
            node.start()
        nodes[0].start()
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(AssertionError):
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGCONT)
                node.stop()
            node.kill()


def replicas_connected(leader: Node) -> list[bool]:
    return [replica["connected"] for replica in leader.status().get("replicas", [])]


def converged(leader: Node, *replicas: Node, timeout: float = 30.0) -> None:
    last: dict[str, list[str]] = {}

    def same() -> bool:
        for replica in replicas:
            last[replica.name] = tree_diff(leader.storage, replica.storage)
        return not any(last.values())

    try:
        wait_until(same, timeout, interval=0.1, message="every replica to converge")
    except AssertionError:
        logs = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in (leader, *replicas))
        differences = {name: paths[:10] for name, paths in last.items()}
        raise AssertionError(f"trees differ after {timeout}s: {differences}\n{logs}") from None


def workload(root: Path, tag: str) -> None:
    (root / tag / "deep" / "er").mkdir(parents=True)
    for i in range(50):
        (root / tag / "deep" / "er" / f"f{i}.txt").write_text(f"{tag} {i}\n" * (i + 1))
    (root / tag / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    os.symlink("deep/er/f1.txt", root / tag / "link")
    os.rename(root / tag / "deep", root / tag / "moved")
    (root / tag / "moved" / "er" / "f2.txt").unlink()


@pytest.mark.timeout(120)
def test_a_leader_fans_out_to_two_replicas_and_a_returning_one_catches_up(tmp_path: Path) -> None:
    with running(trio(tmp_path, FAST)) as (leader, first, second):
        wait_until(lambda: replicas_connected(leader) == [True, True], 15, message="both links")
        workload(leader.storage, "one")
        converged(leader, first, second)

        second.stop(signal.SIGKILL)
        wait_until(lambda: replicas_connected(leader) == [True, False], 15, message="the lost link noticed")
        workload(leader.storage, "two")
        converged(leader, first)
        behind = leader.status()["replicas"][1]
        assert behind["pending_changes"] > 0 and behind["last_error"], behind

        assert leader.metric("plugin_sync_replica_connected", {"target": first.url}) == 1
        assert leader.metric("plugin_sync_replica_connected", {"target": second.url}) == 0
        assert leader.metric("plugin_sync_replica_pending_changes", {"target": second.url}) > 0
        assert leader.metric("plugin_sync_peer_connected") == 1  # some replica is

        second.start()
        converged(leader, first, second)
        wait_until(lambda: leader.status()["pending_changes"] == 0, 15, message="nothing pending")
        assert [r["target"] for r in leader.status()["replicas"]] == [first.url, second.url]


@pytest.mark.timeout(120)
def test_sync_writes_wait_for_every_connected_replica(tmp_path: Path) -> None:
    nodes = trio(tmp_path, FAST)
    nodes[0].extra_env.update({"SYNC_MODE": "sync", "SYNC_WRITE_TIMEOUT": "5"})
    with running(nodes) as (leader, first, second):
        wait_until(lambda: replicas_connected(leader) == [True, True], 15, message="both links")
        for i in range(20):
            assert put(leader, f"sync/{i}", f"acknowledged {i}".encode()) == 200
            for replica in (first, second):  # durable on both before the answer came back
                assert (replica.storage / "sync" / str(i)).read_bytes() == f"acknowledged {i}".encode()

        second.stop(signal.SIGKILL)
        wait_until(lambda: replicas_connected(leader) == [True, False], 15, message="the lost link noticed")
        assert put(leader, "sync/while-one-is-away", b"still confirmed by the other") == 200
        assert (first.storage / "sync" / "while-one-is-away").exists()

        first.stop(signal.SIGKILL)
        wait_until(lambda: replicas_connected(leader) == [False, False], 15, message="both links lost")
        assert put(leader, "sync/nobody", b"refused") == 503


@pytest.mark.timeout(150)
def test_the_most_caught_up_replica_takes_over_and_the_other_follows_it(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as redis:
        env = {**LEASE, "ELECTION": "redis", "REDIS_URL": redis.url}
        with running(trio(tmp_path, env, everyone_lists_the_others=True)) as (leader, ahead, behind):
            wait_until(lambda: primary(leader), 15, message="node 0 to take the lease")
            wait_until(lambda: replicas_connected(leader) == [True, True], 15, message="both links")
            (leader.storage / "base").write_text("everyone has this")
            converged(leader, ahead, behind)
            wait_until(
                lambda: ahead.status()["synced"] and behind.status()["synced"], 15, message="both synced"
            )

            behind.stop(signal.SIGKILL)  # (a SIGSTOP would not do: batches would wait in its socket buffer)
            for i in range(30):
                assert put(leader, f"later/{i}", b"only the first replica gets this") == 200
            wait_until(lambda: (ahead.storage / "later" / "29").exists(), 15, message="the first replica")
            leader.stop(signal.SIGKILL)
            behind.start()  # synced, but behind: it must leave the lease to the replica that is ahead

            wait_until(lambda: primary(ahead) or primary(behind), 15, message="a new leader")
            assert primary(ahead) and not primary(behind), behind.log_tail()
            converged(ahead, behind)

            leader.start()
            wait_until(lambda: leader.status()["role"] == "slave", 15, message="the old leader to follow")
            converged(ahead, leader, behind)
            assert not primary(leader) and not primary(behind)
