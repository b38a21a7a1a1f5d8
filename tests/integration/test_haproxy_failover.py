"""Failover behind a real HAProxy: writes resume within 10 s, nothing acknowledged is lost, no fail-back.

The two nodes listen on distinct loopback addresses (127.0.0.2 and 127.0.0.3)
on one port, as two hosts would; HAProxy checks /primary on both and sends
traffic to the one that answers 200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cluster import SERVER_KEY, Pair, http, make_pair, wait_until
from tests.support.ha import LEASE, PrimarySampler, primary
from tests.support.haproxy import RunningHAProxy, free_port_on, running_haproxy
from tests.support.services import running_postgres, running_redis

HOSTS = ("127.0.0.2", "127.0.0.3")
SYNC = {"SYNC_MODE": "sync", "SYNC_MODE_FALLBACK": "async"}


@dataclass
class Writer:
    """Writes numbered files through HAProxy and remembers which ones were acknowledged."""

    url: str
    acknowledged: dict[str, bytes] = field(default_factory=dict)
    outcomes: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            path, data = f"load/{i:06d}.bin", os.urandom(64 + i % 4096)
            try:
                status = http(
                    "PUT",
                    f"{self.url}/internal/files/{path}",
                    body=data,
                    timeout=3,
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                )[0]
            except OSError:
                status = 0
            self.outcomes.append((time.monotonic(), status))
            if status == 200:
                self.acknowledged[path] = data
            else:
                time.sleep(0.05)
            i += 1

    def first_success_after(self, moment: float) -> float | None:
        return next((t for t, status in self.outcomes if t > moment and status == 200), None)


@pytest.fixture(params=["static-auto", "redis", "postgres"])
def election_env(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    fast = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3", **SYNC}
    if request.param == "static-auto":
        yield fast, {**fast, "FAILOVER": "auto", "FAILOVER_TIMEOUT": "2"}
    elif request.param == "redis":
        with running_redis(tmp_path / "redis") as redis:
            env = {**LEASE, **SYNC, "ELECTION": "redis", "REDIS_URL": redis.url}
            yield env, env
    else:
        with running_postgres() as postgres:
            env = {**LEASE, **SYNC, "ELECTION": "postgres", "DATABASE_URL": postgres.dsn}
            yield env, env


@contextmanager
def behind_haproxy(
    tmp_path: Path, master_env: dict[str, str], slave_env: dict[str, str]
) -> Iterator[tuple[Pair, RunningHAProxy]]:
    """A pair on two loopback addresses, one port, with a real HAProxy checking /primary in front."""
    port = free_port_on(*HOSTS)
    pair = make_pair(tmp_path, master_env=master_env, slave_env=slave_env, hosts=HOSTS, port=port)
    with ExitStack() as stack:
        stack.callback(pair.stop)
        pair.start()
        haproxy = stack.enter_context(running_haproxy(HOSTS[0], HOSTS[1], port))
        haproxy.wait_for_state({"master": "UP", "standby": "DOWN"}, timeout=10)
        wait_until(lambda: pair.slave.status().get("synced", False), 10, message="the slave to be synced")
        yield pair, haproxy


@pytest.fixture
def pair_behind_haproxy(
    tmp_path: Path, election_env: tuple[dict[str, str], dict[str, str]]
) -> Iterator[tuple[Pair, RunningHAProxy]]:
    with behind_haproxy(tmp_path, *election_env) as started:
        yield started


@pytest.mark.timeout(180)
def test_writes_resume_through_haproxy_after_master_death_without_losing_acknowledged_writes(
    pair_behind_haproxy: tuple[Pair, RunningHAProxy],
) -> None:
    pair, haproxy = pair_behind_haproxy
    writer = Writer(haproxy.url).start()
    try:
        wait_until(lambda: len(writer.acknowledged) >= 30, 15, message="writes through haproxy")
        killed = time.monotonic()
        pair.master.stop(signal.SIGKILL)
        wait_until(
            lambda: writer.first_success_after(killed + 0.001) is not None,
            15,
            message="writes to succeed again through haproxy",
        )
        resumed = writer.first_success_after(killed + 0.001)
        assert resumed is not None and resumed - killed < 10, f"writes resumed after {resumed - killed:.1f}s"
        print(f"writes resumed through haproxy {resumed - killed:.2f}s after the master was killed")
        time.sleep(1)
    finally:
        writer.stop()
    for path, data in writer.acknowledged.items():
        assert (pair.slave.storage / path).read_bytes() == data, f"acknowledged write {path} lost"
    # The old master comes back: it must never take traffic back, and it catches up.
    with PrimarySampler(pair) as sampler:
        pair.master.start(wait=False)
        wait_until(pair.master.is_up, 15, message="the old master to start")
        wait_until(lambda: pair.master.status()["role"] == "slave", 15, message="the old master to follow")
        states = []
        for _ in range(20):
            states.append(haproxy.server_states())
            time.sleep(0.1)
        pair.wait_converged(30)
    assert sampler.both == [], "both nodes answered 200 on /primary at the same moment"
    assert all(s.get("master") != "UP" for s in states), states
    assert primary(pair.slave) and not primary(pair.master)
    status, _h, _body = http("GET", f"{haproxy.url}/primary")
    assert status == 200


@pytest.fixture
def static_pair_behind_haproxy(tmp_path: Path) -> Iterator[tuple[Pair, RunningHAProxy]]:
    fast = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3"}
    with behind_haproxy(tmp_path, dict(fast), dict(fast)) as started:
        yield started


@pytest.mark.timeout(120)
def test_planned_switchover_through_haproxy_loses_nothing_and_fails_only_while_draining(
    static_pair_behind_haproxy: tuple[Pair, RunningHAProxy],
) -> None:
    pair, haproxy = static_pair_behind_haproxy
    writer = Writer(haproxy.url).start()
    try:
        wait_until(lambda: len(writer.acknowledged) >= 30, 15, message="writes through haproxy")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "daemon", "switchover", "--nodes", f"{pair.master.url},{pair.slave.url}"],
            env={**os.environ, "SERVER_KEY": SERVER_KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )
        finished = time.monotonic()
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(
            lambda: writer.first_success_after(finished) is not None, 10, message="writes after switchover"
        )
        time.sleep(1)
    finally:
        writer.stop()
    failures = [t for t, status in writer.outcomes if status != 200]
    assert all(started <= t <= finished + 3 for t in failures), (
        "requests failed outside the switchover window"
    )
    assert pair.slave.status()["epoch"] == 2 and pair.master.status()["role"] == "slave"
    wait_until(
        lambda: haproxy.server_states().get("standby") == "UP", 10, message="haproxy to use the new leader"
    )
    pair.wait_converged(20)
    for path, data in writer.acknowledged.items():
        assert (pair.slave.storage / path).read_bytes() == data, f"acknowledged write {path} lost"
    print(f"switchover: {finished - started:.2f}s, {len(failures)} requests refused while draining")
