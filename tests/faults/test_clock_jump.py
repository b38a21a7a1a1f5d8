"""Leases and timeouts run on the monotonic clock: a wall-clock jump (NTP step, a VM resumed, an
operator's `date -s`) must neither end a valid lease nor stretch one that should end.

The control loop takes its clock as a parameter (`ControlLoop(clock=...)`) and the role state
machine has none of its own, so the test drives a real control loop around a real Node with a
hand-advanced monotonic clock, while `time.time` is monkeypatched to jump by hours back and
forth. The lease service here is an in-memory stand-in that expires leases on the same
monotonic clock, as Redis does on its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.election.base import ElectionError, LeaseHolder
from daemon.ha_loop import ControlLoop
from daemon.node import Node

TTL, RENEW, MARGIN = 6.0, 2.0, 1.0
HOURS = 3600.0


@dataclass
class ManualClock:
    """A monotonic clock that moves only when told to."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLease:
    """A lease service on the given clock; `reachable = False` makes every call fail like a partition."""

    name = "memory"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.reachable = True
        self.held: tuple[str, int] | None = None
        self.expires = 0.0
        self.term = 0

    def _check(self) -> None:
        if not self.reachable:
            raise ElectionError("lease service unreachable")

    def _current(self) -> tuple[str, int] | None:
        return self.held if self.held is not None and self.clock() < self.expires else None

    async def try_acquire(self, node_id: str, ttl: float) -> int | None:
        self._check()
        if self._current() is not None:
            return None
        self.term += 1
        self.held, self.expires = (node_id, self.term), self.clock() + ttl
        return self.term

    async def renew(self, node_id: str, term: int, ttl: float) -> bool:
        self._check()
        if self._current() != (node_id, term):
            return False
        self.expires = self.clock() + ttl
        return True

    async def release(self, node_id: str, term: int) -> None:
        self._check()
        if self._current() == (node_id, term):
            self.held = None

    async def holder(self) -> LeaseHolder | None:
        self._check()
        current = self._current()
        return None if current is None else LeaseHolder(current[0], current[1], self.expires - self.clock())

    async def close(self) -> None:
        return None


@pytest.fixture
async def leader(tmp_path: Path) -> AsyncIterator[tuple[ControlLoop, ManualClock, MemoryLease]]:
    env = {
        "ROLE": "master",
        "STORAGE_PATH": str(tmp_path / "storage"),
        "SERVER_HOST": "127.0.0.1",  # no key: loopback only
        "STATE_PATH": str(tmp_path / "state"),
        "ELECTION": "redis",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never dialled: the lease below stands in for it
        "LEASE_TTL": str(TTL),
        "LEASE_RENEW_INTERVAL": str(RENEW),
        "ELECTION_TIMEOUT": "0.5",
        "LEASE_SAFETY_MARGIN": str(MARGIN),
    }
    node = Node(Config.from_env(env))
    node.prepare_storage()
    clock = ManualClock()
    lease = MemoryLease(clock)
    control = ControlLoop(node, lease, clock=clock)
    await control.start()
    try:
        decision = await control.tick()
        assert decision.reason == "acquired the lease with term 1", decision.reason
        yield control, clock, lease
    finally:
        await node.stop_leading()


def jump_wall_clock(monkeypatch: pytest.MonkeyPatch, by: float) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + by)


async def test_wall_clock_jumps_neither_end_nor_stretch_a_lease(
    leader: tuple[ControlLoop, ManualClock, MemoryLease], monkeypatch: pytest.MonkeyPatch
) -> None:
    control, clock, lease = leader
    state = control.node.role_state
    assert state.role == "leader" and state.lease_valid_until == clock.now + TTL - MARGIN

    # The wall clock leaps a day ahead, then hours back, while the lease keeps being renewed.
    renewals = 0
    for i, jump in enumerate([24 * HOURS, -3 * HOURS, 7 * HOURS, -24 * HOURS, 0.0, 48 * HOURS]):
        jump_wall_clock(monkeypatch, jump)
        clock.now += 1.0
        decision = await control.tick()
        renewals += decision.reason.startswith("renewed")
        assert control.node.role_state.role == "leader", f"step {i}: {decision.reason}"
        assert control.node.role_state.accepts_writes(clock())
    assert renewals == 3  # every RENEW seconds of the monotonic clock, whatever time.time said

    # The service becomes unreachable: the lease must end at its last renewal + TTL - margin on the
    # monotonic clock, not earlier because the wall clock ran ahead, nor later because it ran back.
    lease.reachable = False
    valid_until = control.node.role_state.lease_valid_until
    assert valid_until is not None
    demoted_at = None
    for step in range(40):
        jump_wall_clock(monkeypatch, (-1) ** step * 10 * HOURS)
        clock.now += 0.25
        decision = await control.tick()
        if control.node.role_state.role != "leader":
            demoted_at = clock.now
            assert decision.reason == "demoted self: could not renew the lease before it ended"
            break
        assert clock.now < valid_until, decision.reason
    assert demoted_at is not None and valid_until <= demoted_at < valid_until + 0.25
    assert demoted_at < lease.expires, "the node must stop before the service hands the lease on"
    assert not control.node.role_state.accepts_writes(clock())


async def test_no_lease_or_timeout_reads_the_wall_clock(
    leader: tuple[ControlLoop, ManualClock, MemoryLease], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the monotonic clock standing still, no wall-clock leap changes any decision."""
    control, clock, _lease = leader
    before = control.node.role_state
    for jump in (1e6, -1e6, 1e9):
        jump_wall_clock(monkeypatch, jump)
        decision = await control.tick()
        assert decision.state == before, decision.reason
    assert control.last_tick == clock.now
