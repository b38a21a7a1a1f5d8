"""Watches the nodes while the drill runs: every poll interval, each node's /primary and /internal/status,
and HAProxy's view of each node's server. Steps wait on it for the moments they measure; the report
and the plot get the changes; any moment where two nodes answer 200 on /primary is kept (split brain).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon import ctl
from daemon.client import Unreachable
from daemon.drill.config import Target
from daemon.drill.errors import HAProxyError
from daemon.drill.haproxy import View
from daemon.drill.nodes import Nodes
from daemon.drill.steps import Clock
from daemon.errors import UsageError
from daemon.roles import shown_as_leader

PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class NodeSample:
    primary: bool | None
    """/primary answered 200 (True), another status (False), or nothing (None)."""
    status: ctl.NodeStatus

    @property
    def reachable(self) -> bool:
        return self.status.reachable

    @property
    def label(self) -> str:
        """The node's part, as the timeline shows it."""
        s = self.status
        if not s.reachable:
            return "down"
        if shown_as_leader(s.role):
            return "leader" if s.writable else "leader, not writable"
        if s.get("peer_connected"):
            return "replica"
        return "replica, disconnected"


@dataclass(frozen=True)
class Snapshot:
    at: float
    nodes: tuple[NodeSample, ...]
    """One per node, in --nodes order."""
    servers: tuple[str | None, ...]
    """HAProxy's status of each node's server (UP, DOWN, 'UP 1/2', ...); None when not known."""
    haproxy_error: str | None = None


Predicate = Callable[[Snapshot], bool]


class Monitor:
    def __init__(
        self, nodes: Nodes, targets: Sequence[Target], view: View | None, clock: Clock, interval: float
    ) -> None:
        self.nodes = nodes
        self.urls = [t.url for t in targets]
        self.view = view
        self.server_names: tuple[str, ...] | None = None
        """HAProxy's names for the nodes, once preflight matched them."""
        self.traffic: tuple[str, list[str | None]] | None = None
        """Without HAProxy stats: (traffic URL, node ids); each sample then asks the traffic URL which node
        answers, and calls that node's server "UP (serving)", the others "not serving"."""
        self.clock = clock
        self.interval = interval
        self.snapshots: list[Snapshot] = []
        self.both_primary: list[float] = []
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        while True:
            began = self.clock.now()
            snapshot = await self.sample()
            self.snapshots.append(snapshot)
            if sum(bool(n.primary) for n in snapshot.nodes) > 1:
                self.both_primary.append(snapshot.at)
            async with self._changed:
                self._changed.notify_all()
            await asyncio.sleep(max(0.0, self.interval - (self.clock.now() - began)))

    async def sample(self) -> Snapshot:
        seen, samples = await asyncio.gather(
            self._servers(), asyncio.gather(*(self._node(url) for url in self.urls))
        )
        servers, error = seen
        return Snapshot(self.clock.now(), tuple(samples), servers, error)

    async def _node(self, url: str) -> NodeSample:
        code, status = await asyncio.gather(
            self.nodes.answers(url, "/primary", PROBE_TIMEOUT), self._status(url)
        )
        return NodeSample(None if code is None else code == 200, status)

    async def _status(self, url: str) -> ctl.NodeStatus:
        try:
            return await self.nodes.status(url, PROBE_TIMEOUT)
        except UsageError as exc:  # 401: preflight says so first; keep watching
            return ctl.NodeStatus(url, error=str(exc))

    async def _servers(self) -> tuple[tuple[str | None, ...], str | None]:
        unknown = (None,) * len(self.urls)
        if self.view is None and self.traffic is not None:
            return await self._serving(*self.traffic)
        if self.view is None or self.server_names is None:
            return unknown, None
        try:
            found = {s.name: s.status for s in await self.view.servers()}
        except HAProxyError as exc:
            return unknown, str(exc)
        return tuple(found.get(name) for name in self.server_names), None

    async def _serving(
        self, url: str, node_ids: list[str | None]
    ) -> tuple[tuple[str | None, ...], str | None]:
        try:
            code, body = await self.nodes.call("GET", url, "/internal/status", PROBE_TIMEOUT)
        except (Unreachable, UsageError) as exc:
            return ("not serving",) * len(node_ids), str(exc)
        answered = body.get("node_id") if code == 200 else None
        states = tuple(
            "UP (serving)" if answered is not None and answered == n else "not serving" for n in node_ids
        )
        return states, None

    @property
    def inferred(self) -> bool:
        return self.view is None and self.traffic is not None

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    async def wait(self, predicate: Predicate, since: float, timeout: float) -> Snapshot | None:
        """The first snapshot taken at or after `since` that satisfies `predicate`; None at the timeout."""
        deadline = self.clock.now() + timeout
        seen = 0
        async with self._changed:
            while True:
                for snapshot in self.snapshots[seen:]:
                    if snapshot.at >= since and predicate(snapshot):
                        return snapshot
                seen = len(self.snapshots)
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def timeline(self) -> dict[str, Any]:
        """Changes only: per node [at, label, epoch], per HAProxy server [at, status]."""
        nodes: list[list[list[Any]]] = [[] for _ in self.urls]
        servers: list[list[list[Any]]] = [[] for _ in self.urls]
        for snapshot in self.snapshots:
            for i in range(len(self.urls)):
                sample = snapshot.nodes[i]
                point = [
                    round(snapshot.at, 3),
                    sample.label,
                    sample.status.epoch if sample.reachable else None,
                ]
                if not nodes[i] or nodes[i][-1][1:] != point[1:]:
                    nodes[i].append(point)
                status = snapshot.servers[i]
                if status is not None and (not servers[i] or servers[i][-1][1] != status):
                    servers[i].append([round(snapshot.at, 3), status])
        return {
            "interval": self.interval,
            "samples": len(self.snapshots),
            "nodes": nodes,
            "haproxy": servers,
            "both_primary": [round(t, 3) for t in self.both_primary],
        }
