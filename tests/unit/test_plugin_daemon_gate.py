"""The node's side of the plugin daemon's gate: who may run it, and when a replica may apply."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from daemon.plugin_daemon import PluginDaemon


@dataclass
class FakeNode:
    writable: bool = False
    epoch: int = 1

    @property
    def role(self) -> str:
        return "master" if self.writable else "slave"

    def accepts_writes(self) -> bool:
        return self.writable


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Locks:
    calls: list[int] = field(default_factory=list)
    fail: bool = False

    async def clear(self) -> int:
        self.calls.append(1)
        if self.fail:
            raise ConnectionRefusedError("redis down")
        return 3


async def test_the_daemon_runs_only_on_the_writable_leader() -> None:
    node = FakeNode(writable=False)
    gate = PluginDaemon(node, gated=True, clock=Clock())
    permit = await gate.exchange(running=False, pid=None, stop_bound=16)
    assert not permit.run and "only on the writable leader" in permit.reason
    node.writable = True
    assert (await gate.exchange(running=False, pid=None, stop_bound=16)).run


async def test_a_gated_replica_applies_nothing_before_its_gate_reported() -> None:
    gate = PluginDaemon(FakeNode(), gated=True, clock=Clock())
    assert "waiting for the plugin daemon's gate" in (gate.blocks_applying() or "")
    await gate.exchange(running=False, pid=None, stop_bound=16)
    assert gate.blocks_applying() is None


async def test_an_ungated_replica_applies_as_before() -> None:
    assert PluginDaemon(FakeNode(), gated=False, clock=Clock()).blocks_applying() is None


async def test_a_granted_run_blocks_applying_until_the_gate_says_it_stopped() -> None:
    """The gate starts the daemon right after a yes: the replica must not trust the 'not running' it sent."""
    node, clock = FakeNode(writable=True), Clock()
    gate = PluginDaemon(node, gated=True, clock=clock)
    assert (await gate.exchange(running=False, pid=None, stop_bound=16)).run
    node.writable = False  # demoted
    assert gate.blocks_applying() is not None
    permit = await gate.exchange(running=True, pid=42, stop_bound=16)
    assert not permit.run and gate.blocks_applying() is not None
    await gate.exchange(running=False, pid=None, stop_bound=16)
    assert gate.blocks_applying() is None


async def test_a_silent_gate_is_taken_as_stopped_only_after_its_own_bound() -> None:
    node, clock = FakeNode(writable=True), Clock()
    gate = PluginDaemon(node, gated=True, clock=clock)
    await gate.exchange(running=True, pid=7, stop_bound=16)
    node.writable = False
    clock.now += 15.9
    assert gate.blocks_applying() is not None
    clock.now += 0.2
    assert gate.blocks_applying() is None


async def test_a_daemon_answering_its_health_check_blocks_applying_even_without_a_gate() -> None:
    class Healthy:
        def fresh_ok(self, max_age: float) -> bool:
            return True

    gate = PluginDaemon(FakeNode(), gated=False, health=Healthy(), clock=Clock())  # type: ignore[arg-type]
    assert "answers its health check" in (gate.blocks_applying() or "")


async def test_stale_init_locks_are_cleared_once_per_term_before_the_first_run() -> None:
    node, locks = FakeNode(writable=True, epoch=5), Locks()
    gate = PluginDaemon(node, gated=True, locks=locks, clock=Clock())
    for _ in range(3):
        assert (await gate.exchange(running=False, pid=None, stop_bound=16)).run
    assert locks.calls == [1] and gate.locks_cleared == 3
    node.epoch = 7
    await gate.exchange(running=True, pid=9, stop_bound=16)
    assert locks.calls == [1, 1]


@pytest.mark.parametrize("writable", [True])
async def test_an_unreachable_dify_redis_does_not_keep_the_daemon_down(writable: bool) -> None:
    gate = PluginDaemon(FakeNode(writable=writable), gated=True, locks=Locks(fail=True), clock=Clock())
    assert (await gate.exchange(running=False, pid=None, stop_bound=16)).run
