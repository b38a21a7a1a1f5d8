"""Promises 6-8: promotion with fencing, rejoin without loss, divergent writes preserved."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.cluster import Node, Pair, make_pair, wait_until
from tests.support.ha import FAST, LEASE, PrimarySampler, primary, put
from tests.support.services import PostgresService, RedisService, running_postgres, running_redis


def test_promoted_replica_fences_the_old_master_which_rejoins_as_replica(static_pair: Pair) -> None:
    pair = static_pair
    (pair.master.storage / "before.txt").write_text("acknowledged")
    pair.wait_converged(10)
    code, body = pair.slave.call("POST", "/internal/promote")
    assert code == 409 and "still accepts writes" in body["detail"]
    with PrimarySampler(pair) as sampler:
        code, body = pair.master.call("POST", "/internal/drain")
        assert code == 200, body
        assert not primary(pair.master)
        wait_until(lambda: pair.slave.call("POST", "/internal/promote")[0] == 200, 5, message="promotion")
        assert pair.slave.status()["epoch"] == 2
        assert primary(pair.slave)
        wait_until(lambda: pair.master.status()["role"] == "slave", 5, message="the old master to follow")
        (pair.slave.storage / "after.txt").write_text("written on the new leader")
        wait_until(lambda: (pair.master.storage / "after.txt").exists(), 10, message="reverse replication")
        time.sleep(1)
    assert pair.master.status()["epoch"] == 2
    assert sampler.samples > 5
    assert sampler.both == []


def test_killed_master_is_replaced_by_promotion_and_comes_back_as_replica_keeping_divergent_writes(
    static_pair: Pair,
) -> None:
    pair = static_pair
    (pair.master.storage / "shared.txt").write_text("on both")
    pair.wait_converged(10)
    time.sleep(2.5)  # the "replicated until" mark: persisted about once a second, used with a 1 s margin
    # A write the slave never sees: the slave is down, then the master dies too.
    pair.slave.stop(signal.SIGKILL)
    (pair.master.storage / "only-on-old-master.txt").write_text("divergent")
    time.sleep(0.5)
    pair.master.stop(signal.SIGKILL)
    pair.slave.start()
    wait_until(lambda: pair.slave.call("POST", "/internal/promote")[0] == 200, 5, message="promotion")
    assert primary(pair.slave)
    (pair.slave.storage / "new-leader.txt").write_text("after failover")
    with PrimarySampler(pair) as sampler:
        pair.master.start()
        wait_until(lambda: pair.master.status()["role"] == "slave", 10, message="the old master to rejoin")
        pair.wait_converged(15)
    assert sampler.both == [], "both nodes answered 200 on /primary at the same moment"
    assert not (pair.master.storage / "only-on-old-master.txt").exists()
    code, conflicts = pair.master.call("GET", "/internal/conflicts")
    assert code == 200
    preserved = {c["path"]: c for c in conflicts["conflicts"]}
    assert "only-on-old-master.txt" in preserved, conflicts
    record = preserved["only-on-old-master.txt"]
    assert record["sha256"] == hashlib.sha256(b"divergent").hexdigest()
    assert (Path(conflicts["root"]) / record["preserved_as"]).read_text() == "divergent"
    assert "shared.txt" not in preserved
    assert pair.master.metric("plugin_sync_conflicts_total") >= 1


def test_static_auto_failover_promotes_after_the_timeout(tmp_path: Path) -> None:
    env = {**FAST, "FAILOVER": "auto", "FAILOVER_TIMEOUT": "2"}
    pair = make_pair(tmp_path, master_env=dict(FAST), slave_env=env)
    try:
        pair.start()
        (pair.master.storage / "a").write_text("a")
        pair.wait_converged(10)
        wait_until(lambda: pair.slave.status()["synced"], 10, message="the slave to be synced")
        killed = time.monotonic()
        pair.master.stop(signal.SIGKILL)
        wait_until(lambda: primary(pair.slave), 10, message="automatic promotion")
        took = time.monotonic() - killed
        assert 2 <= took < 6, f"promoted after {took:.1f}s"
        assert put(pair.slave, "after", b"x") == 200
    finally:
        pair.stop()


def test_unsynced_replica_is_not_promoted_without_force(tmp_path: Path) -> None:
    slave = Node("slave", "slave", tmp_path / "slave", extra_env=dict(FAST))
    try:
        slave.start()
        code, body = slave.call("POST", "/internal/promote")
        assert code == 409 and "never completed a full sync" in body["detail"]
        code, body = slave.call("POST", "/internal/promote?force=true")
        assert code == 200 and body["epoch"] >= 1
    finally:
        slave.stop()


def test_sync_mode_write_returns_after_the_replica_has_it_and_survives_failover(tmp_path: Path) -> None:
    env = {**FAST, "SYNC_MODE": "sync"}
    pair = make_pair(tmp_path, master_env=env, slave_env=env)
    acknowledged: dict[str, bytes] = {}
    try:
        pair.start()
        wait_until(lambda: primary(pair.master), 10, message="the master to lead")
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                data = os.urandom(100 + i % 5000)
                if put(pair.master, f"w/{i:05d}.bin", data) == 200:
                    acknowledged[f"w/{i:05d}.bin"] = data
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        wait_until(lambda: len(acknowledged) > 20, 30, message="20 synchronous writes acknowledged")
        pair.master.stop(signal.SIGKILL)
        stop.set()
        thread.join(10)
        for path, data in acknowledged.items():
            assert (pair.slave.storage / path).read_bytes() == data, f"acknowledged write {path} lost"
        wait_until(lambda: pair.slave.call("POST", "/internal/promote")[0] == 200, 5, message="promotion")
        # The new leader has no replica yet: sync mode refuses rather than pretend.
        assert put(pair.slave, "after-failover", b"ok") == 503
    finally:
        pair.stop()


def test_sync_mode_refuses_writes_without_a_replica(tmp_path: Path) -> None:
    master = Node("master", "master", tmp_path / "m", extra_env={**FAST, "SYNC_MODE": "sync"})
    try:
        master.start()
        wait_until(lambda: primary(master), 10, message="a lone master to lead")
        assert put(master, "x", b"x") == 503
        assert not (master.storage / "x").exists()
    finally:
        master.stop()


Service = RedisService | PostgresService


@pytest.fixture(params=["redis", "postgres"])
def lease_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Pair, Service]]:
    """A pair electing through a real Redis or PostgreSQL: the master holds the lease, the slave is synced."""
    with ExitStack() as stack:
        service: Service
        if request.param == "redis":
            service = stack.enter_context(running_redis(tmp_path / "redis"))
            election = {"ELECTION": "redis", "REDIS_URL": service.url}
        else:
            service = stack.enter_context(running_postgres())
            election = {"ELECTION": "postgres", "DATABASE_URL": service.dsn}
        env = {**LEASE, **election}
        pair = make_pair(tmp_path, master_env=dict(env), slave_env=dict(env))
        stack.callback(pair.stop)
        pair.start()
        wait_until(lambda: primary(pair.master), 10, message="the master to take the lease")
        assert not primary(pair.slave)
        (pair.master.storage / "shared").write_text("on both")
        pair.wait_converged(10)
        wait_until(lambda: pair.slave.status()["synced"], 10, message="the slave to be synced")
        yield pair, service


@pytest.mark.timeout(120)
def test_lease_failover_after_master_death_and_rejoin(lease_pair: tuple[Pair, Service]) -> None:
    pair, _service = lease_pair
    killed = time.monotonic()
    pair.master.stop(signal.SIGKILL)
    wait_until(lambda: primary(pair.slave), 10, message="the slave to take the lease")
    took = time.monotonic() - killed
    assert took < 6, f"failover took {took:.1f}s with a 3s lease"
    epoch = pair.slave.status()["epoch"]
    with PrimarySampler(pair) as sampler:
        pair.master.start()
        wait_until(lambda: pair.master.status()["role"] == "slave", 10, message="the old master to follow")
        (pair.slave.storage / "after").write_text("from the new leader")
        pair.wait_converged(15)
        time.sleep(1)
    assert sampler.both == []
    assert pair.master.status()["epoch"] == epoch


@pytest.mark.timeout(120)
def test_lease_rejoin_keeps_the_old_leaders_divergent_writes(lease_pair: tuple[Pair, Service]) -> None:
    pair, _service = lease_pair
    time.sleep(2.5)  # the "replicated until" mark: persisted about once a second, used with a 1 s margin
    pair.slave.stop(signal.SIGKILL)
    (pair.master.storage / "divergent").write_text("only the old leader has this")
    time.sleep(0.5)
    pair.master.stop(signal.SIGKILL)
    pair.slave.start()
    wait_until(lambda: primary(pair.slave), 15, message="the slave to take the lease")
    pair.master.start()
    wait_until(lambda: pair.master.status()["role"] == "slave", 15, message="the old leader to follow")
    pair.wait_converged(15)
    assert not (pair.master.storage / "divergent").exists()
    code, body = pair.master.call("GET", "/internal/conflicts")
    assert code == 200
    assert [c["path"] for c in body["conflicts"]] == ["divergent"], body


@pytest.mark.timeout(120)
def test_frozen_leader_stops_accepting_writes_when_its_lease_ends(lease_pair: tuple[Pair, Service]) -> None:
    pair, _service = lease_pair
    pair.master.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    wait_until(lambda: primary(pair.slave), 10, message="the slave to take over")
    time.sleep(0.5)
    pair.master.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    # On waking, the old leader's lease has ended by its own monotonic clock: no write may succeed.
    assert put(pair.master, "late-write", b"must be refused", timeout=5) == 503
    assert not primary(pair.master)
    wait_until(lambda: pair.master.status()["role"] == "slave", 10, message="the old leader to demote")


@pytest.mark.timeout(120)
def test_leader_demotes_itself_when_the_election_service_goes_away(lease_pair: tuple[Pair, Service]) -> None:
    pair, service = lease_pair
    stopped = time.monotonic()
    service.stop()
    wait_until(lambda: not primary(pair.master), 5, message="the leader to step down")
    assert time.monotonic() - stopped < 3, "the leader kept /primary beyond its lease"
    service.start()
    wait_until(lambda: primary(pair.master) or primary(pair.slave), 15, message="a leader again")
