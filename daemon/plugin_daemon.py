"""The Dify plugin daemon beside this node: may it run, and may this node apply changes?

"Hot storage, warm daemon": the plugin daemon runs only on the writable leader. Its gate
(daemon/plugin_gate.py, the daemon container's command) asks here every half second and
says whether the daemon is running. A replica applies nothing while its daemon may be
running, because the daemon rebuilds any venv whose marker has not arrived yet and writes
into the plugins' folders; a leader grants the run only while it accepts writes, after
clearing the init locks its dead predecessor may have left in Dify's Redis.

"May be running" is kept on the safe side: it becomes true the moment a run is granted
(the gate starts the daemon right after that answer) and false only when the gate says it
stopped in an exchange that granted nothing, or when the gate has been silent for longer
than the bound it announced (after which it has stopped the daemon by itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Gauge

from daemon.peers import Poller
from daemon.roles import shown_as_replica

log = structlog.get_logger("daemon.plugin_daemon")

HEALTH_MAX_AGE = 5.0
"""A /health/check answer older than this says nothing about the daemon."""
LOCK_CLEARING_TIMEOUT = 5.0
MAX_STOP_BOUND = 3600.0


class LockClearer(Protocol):
    async def clear(self) -> int: ...


class NodeView(Protocol):
    """What the gate needs of the node: Node has these."""

    @property
    def role(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    def accepts_writes(self) -> bool: ...


@dataclass(frozen=True)
class Permit:
    run: bool
    reason: str

    def to_json(self, node: NodeView) -> dict[str, Any]:
        return {"run": self.run, "reason": self.reason, "role": node.role, "epoch": node.epoch}


class PluginDaemon:
    def __init__(
        self,
        node: NodeView,
        *,
        gated: bool,
        health: Poller | None = None,
        locks: LockClearer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.gated = gated
        """PLUGIN_DAEMON_GATE=true: a gate exists; until it reports, its daemon may be running."""
        self.health = health
        self.locks = locks
        self.clock = clock
        self.may_be_running = gated
        self.reported_running: bool | None = None
        self.reported_pid: int | None = None
        self.last_report: float | None = None
        self.stop_bound = 0.0
        self.locks_cleared_epoch: int | None = None
        self.locks_cleared = 0
        self._promotion_lock = asyncio.Lock()

    # -- the gate's question -------------------------------------------------------------------
    async def exchange(self, running: bool, pid: int | None, stop_bound: float) -> Permit:
        """Record the gate's report and answer whether its daemon may run."""
        self.last_report = self.clock()
        self.reported_running, self.reported_pid = running, pid
        self.stop_bound = min(max(stop_bound, 0.0), MAX_STOP_BOUND)
        permit = await self._decide()
        self.may_be_running = permit.run or running
        return permit

    async def _decide(self) -> Permit:
        if not self.node.accepts_writes():
            return Permit(
                False,
                f"this node is {self.node.role} at epoch {self.node.epoch}: "
                "the plugin daemon runs only on the writable leader",
            )
        await self._clear_locks_once(self.node.epoch)
        if not self.node.accepts_writes():  # demoted while the locks were being cleared
            return Permit(False, f"this node stopped leading (epoch {self.node.epoch})")
        return Permit(True, f"this node leads at epoch {self.node.epoch}")

    async def _clear_locks_once(self, epoch: int) -> None:
        """Once per term: a crash mid-install leaves `env_init_lock:<id>` for 15 min in Dify's Redis."""
        if self.locks is None or self.locks_cleared_epoch == epoch:
            return
        async with self._promotion_lock:
            if self.locks_cleared_epoch == epoch:
                return
            try:
                self.locks_cleared = await asyncio.wait_for(self.locks.clear(), LOCK_CLEARING_TIMEOUT)
                log.info("env_init_locks_cleared", epoch=epoch, cleared=self.locks_cleared)
            except Exception as exc:  # the daemon still starts; it waits out a stale lock itself
                log.warning("env_init_locks_not_cleared", epoch=epoch, error=f"{type(exc).__name__}: {exc}")
            self.locks_cleared_epoch = epoch

    # -- the replica's question ----------------------------------------------------------------
    def blocks_applying(self) -> str | None:
        """Why this replica must not apply anything now, or None."""
        if self.health is not None and self.health.fresh_ok(HEALTH_MAX_AGE):
            return "the plugin daemon beside this replica answers its health check: it must be stopped first"
        if not self.may_be_running:
            return None
        if self.last_report is None:
            return "waiting for the plugin daemon's gate to report (PLUGIN_DAEMON_GATE=true)"
        if self.clock() - self.last_report > self.stop_bound:
            return None  # the gate has not heard from this node for its bound: it stopped the daemon
        return "the plugin daemon beside this replica may be running: waiting for its gate to stop it"

    def status(self) -> dict[str, Any]:
        silent = None if self.last_report is None else round(self.clock() - self.last_report, 3)
        return {
            "gated": self.gated,
            "may_be_running": self.may_be_running,
            "reported_running": self.reported_running,
            "pid": self.reported_pid,
            "gate_seconds_since_report": silent,
            "health_ok": None if self.health is None else self.health.fresh_ok(HEALTH_MAX_AGE),
            "env_init_locks_cleared": self.locks_cleared,
            "blocks_applying": self.blocks_applying() if shown_as_replica(self.node.role) else None,
        }


def plugin_daemon_gauge(health: Poller, registry: CollectorRegistry) -> Gauge:
    """`plugin_daemon_healthy`: the plugin daemon behind PLUGIN_DAEMON_URL, as /primary sees it.

    Exported only when PLUGIN_DAEMON_URL is set (without it nothing is measured). Formerly this
    name reported the node's own storage; that is now `plugin_sync_node_healthy` (README, Metrics).
    """
    gauge = Gauge(
        "plugin_daemon_healthy",
        f"1 while the plugin daemon at PLUGIN_DAEMON_URL answered /health/check with 200 in the last "
        f"{HEALTH_MAX_AGE:g} s (it runs on the leader only).",
        registry=registry,
    )
    gauge.set_function(lambda: float(health.fresh_ok(HEALTH_MAX_AGE)))
    return gauge
