"""`hotstandby switchover` with a lease: the drained leader hands the lease to the caught-up replica.

Through a real HAProxy with the shipped check settings, a client writing every 20 ms: the switchover
loses no acknowledged write, writes are refused for under 2 s, the new leader holds the lease at a
higher term, and the old leader never wins it back (it cannot renew a lease handed away). On three
nodes the other replica follows the new leader too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_ctl_trio import follows
from tests.integration.test_fanout import converged, replicas_connected, running, trio
from tests.support.cluster import SERVER_KEY, Node, Pair, make_pair, wait_until
from tests.support.failover_timing import HOSTS, Writer, election_service, template_checks
from tests.support.ha import LEASE, PrimarySampler, primary, put
from tests.support.haproxy import RunningHAProxy, free_port_on, running_haproxy

SYNC = {"SYNC_MODE": "sync", "SYNC_MODE_FALLBACK": "async"}
UNAVAILABLE_BOUND = 2.0


def switchover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "switchover", *args],
        env={**os.environ, "SERVER_KEY": SERVER_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def leased_pair(tmp_path: Path, backend: str) -> Iterator[tuple[Pair, RunningHAProxy]]:
    with election_service(backend, tmp_path / "service") as url:
        where = {"REDIS_URL": url} if backend == "redis" else {"DATABASE_URL": url}
        env = {**LEASE, **SYNC, "ELECTION": backend, **where}
        port = free_port_on(*HOSTS)
        pair = make_pair(tmp_path, master_env=env, slave_env=dict(env), hosts=HOSTS, port=port)
        with contextlib.ExitStack() as stack:
            stack.callback(pair.stop)
            pair.start()
            haproxy = stack.enter_context(running_haproxy(*HOSTS, port, **template_checks()))
            haproxy.wait_for_state({"master": "UP", "standby": "DOWN"}, timeout=15)
            wait_until(lambda: pair.slave.status().get("synced", False), 15, message="the slave to be synced")
            yield pair, haproxy


def longest_gap(writer: Writer, start: float, end: float) -> float:
    """The longest time without an acknowledged write between two moments (answers, by time)."""
    acked = sorted(done for _sent, done, status in writer.outcomes if status == 200 and start <= done <= end)
    moments = [start, *acked, end]
    return max(b - a for a, b in itertools.pairwise(moments))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_switchover_hands_the_lease_over_losing_nothing_and_refusing_writes_under_2s(
    tmp_path: Path, backend: str
) -> None:
    with leased_pair(tmp_path, backend) as (pair, haproxy), PrimarySampler(pair) as sampler:
        old_epoch = pair.master.status()["epoch"]
        with Writer(haproxy.url) as writer:
            wait_until(lambda: len(writer.acknowledged) >= 25, 15, message="writes through haproxy")
            started = time.monotonic()
            done = switchover("--nodes", f"{pair.master.url},{pair.slave.url}", "--timeout", "15")
            finished = time.monotonic()
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: writer.first_success_after(finished) is not None, 10, message="writes after")
            time.sleep(0.5)
        print(done.stdout)
        gap = longest_gap(writer, started, finished + 1.0)
        assert gap < UNAVAILABLE_BOUND, f"no write acknowledged for {gap:.2f}s during the switchover"
        new = pair.slave.status()
        assert new["writable"] and new["epoch"] > old_epoch, new
        assert "handed the lease to" in done.stdout, done.stdout
        # The old leader cannot win the lease back: it stays a follower past two lease terms.
        deadline = time.monotonic() + 2 * float(LEASE["LEASE_TTL"])
        while time.monotonic() < deadline:
            assert not primary(pair.master) and primary(pair.slave)
            time.sleep(0.2)
        assert pair.master.status()["role"] == "slave"
        for path, data in writer.acknowledged.items():
            assert (pair.slave.storage / path).read_bytes() == data, f"acknowledged write {path} lost"
        pair.wait_converged(20)
    assert sampler.both == [], "both nodes answered 200 on /primary at one moment"
    kept = len(writer.acknowledged)
    print(f"{backend} switchover: no acknowledged write for {gap:.2f}s at most; {kept} kept")


@pytest.mark.timeout(90)
def test_lease_switchover_on_three_nodes_every_other_node_follows(tmp_path: Path) -> None:
    with election_service("redis", tmp_path / "service") as url:
        env = {**LEASE, "ELECTION": "redis", "REDIS_URL": url}
        with running(trio(tmp_path, env, everyone_lists_the_others=True)) as nodes:
            first: Node = nodes[0]
            wait_until(lambda: primary(first), 15, message="n0 to take the lease")
            wait_until(lambda: replicas_connected(first) == [True, True], 15, message="both links")
            wait_until(lambda: all(n.status()["synced"] for n in nodes[1:]), 15, message="synced")
            urls = ",".join(n.url for n in nodes)
            leader = first
            for target in (nodes[2], nodes[1]):  # there and on again: each old leader follows
                epoch = leader.status()["epoch"]
                assert put(leader, f"before-{target.name}", b"x") == 200
                done = switchover("--nodes", urls, "--to", target.url, "--timeout", "15")
                assert done.returncode == 0, done.stdout + done.stderr
                new_epoch = target.status()["epoch"]
                assert new_epoch > epoch and primary(target)
                others = [n for n in nodes if n is not target]
                wait_until(
                    lambda t=target, o=others, e=new_epoch: all(follows(n, t, e) for n in o),
                    10,
                    message="the others to follow",
                )
                assert put(target, f"after-{target.name}", b"y") == 200
                converged(target, *others)
                leader = target
