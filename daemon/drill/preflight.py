"""Preflight: the drill stops nothing unless the nodes are healthy and every tool it needs works.

Checks: every node answers /health 200; exactly one answers /primary 200; the nodes are in step (one
writable leader, each replica connected, synced and within the lag bound: `hotstandby status`'s rule;
with several replicas, each lists every other node as a peer, so whichever one is promoted replicates
to all); HAProxy sees exactly one server UP and it is the leader's; a request through HAProxy reaches
the leader with SERVER_KEY; a probe write through HAProxy is acknowledged; the stopper can reach the
node(s) it will stop. It also notes the conflicts already present, and whether the nodes can serve a
file back.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from daemon import ctl
from daemon.client import Unreachable
from daemon.drill import verify
from daemon.drill.context import Context
from daemon.drill.errors import HAProxyError, StopperError
from daemon.drill.haproxy import Server, match_servers
from daemon.drill.load import ReadMode


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    leader: int = -1
    """Index (in --nodes order) of the leader; -1 until found."""
    replicas: list[int] = field(default_factory=list)
    epoch: int = 0
    node_ids: list[str | None] = field(default_factory=list)
    servers: tuple[str, ...] | None = None
    read_mode: ReadMode = "status"
    sync_mode: str | None = None
    conflicts: list[list[dict[str, Any]] | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    probe: tuple[str, str] | None = None
    """(path, sha256) of the acknowledged probe write."""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "leader": self.leader,
            "replicas": self.replicas,
            "epoch": self.epoch,
            "node_ids": self.node_ids,
            "haproxy_servers": list(self.servers) if self.servers else None,
            "read_mode": self.read_mode,
            "sync_mode": self.sync_mode,
            "conflicts_before": [None if c is None else len(c) for c in self.conflicts],
            "warnings": self.warnings,
        }


async def preflight(ctx: Context, name: str, stoppers_for: Sequence[int] | None) -> Preflight:
    """All checks run (a report lists every problem, not just the first); `stoppers_for` None: the leader."""
    result = Preflight()
    urls = [t.url for t in ctx.config.targets]
    if not await _nodes(ctx, result, urls):
        return result
    await _haproxy(ctx, result)
    await _stoppers(ctx, result, [result.leader] if stoppers_for is None else list(stoppers_for))
    if result.ok:  # the probe writes to the leader: only when nothing else stands in the way
        await _traffic(ctx, result, name)
    result.conflicts = list(await asyncio.gather(*(_conflicts(ctx, url) for url in urls)))
    return result


async def _nodes(ctx: Context, result: Preflight, urls: list[str]) -> bool:
    health = await asyncio.gather(*(ctx.nodes.answers(url, "/health") for url in urls))
    sick = [
        f"{url} {'unreachable' if code is None else f'HTTP {code}'}"
        for url, code in zip(urls, health, strict=True)
        if code != 200
    ]
    result.add("nodes healthy", not sick, "; ".join(sick) or f"all {len(urls)} answer /health 200")
    primary = await asyncio.gather(*(ctx.nodes.answers(url, "/primary") for url in urls))
    leaders = [i for i, code in enumerate(primary) if code == 200]
    shown = ", ".join(f"{url}: {code or 'no answer'}" for url, code in zip(urls, primary, strict=True))
    result.add("exactly one /primary", len(leaders) == 1, shown)
    statuses = await ctx.nodes.statuses(urls)
    problem = ctl.assess(statuses, ctx.config.thresholds.max_lag)
    unsynced = [s.url for s in statuses if s.reachable and not s.writable and not s.get("synced")]
    if problem is None and unsynced:
        problem = f"replica {', '.join(unsynced)} never completed a full sync"
    if problem is None:
        problem = _narrow_peers(statuses)
    result.add("nodes in step", problem is None, problem or _in_step_text(statuses))
    result.node_ids = [None if s.get("node_id") is None else str(s.get("node_id")) for s in statuses]
    writable = [i for i, s in enumerate(statuses) if s.writable]
    if len(leaders) != 1 or writable != leaders:
        return False
    result.leader = leaders[0]
    result.replicas = [i for i in range(len(urls)) if i != result.leader]
    result.epoch = statuses[result.leader].epoch
    result.sync_mode = str(statuses[result.leader].get("sync_mode") or "") or None
    if result.sync_mode != "sync":
        result.warnings.append(
            f"SYNC_MODE={result.sync_mode}: a write is acknowledged before the replica has it, so a failover"
            " may lose the last ones (the drill counts them)"
        )
    return True


def _in_step_text(statuses: Sequence[ctl.NodeStatus]) -> str:
    leader = next(s for s in statuses if s.writable)
    following = "; ".join(f"{s.url} follows, {s.lag:.1f}s behind" for s in statuses if s is not leader)
    return f"{leader.url} leads at epoch {leader.epoch}; {following}"


def _narrow_peers(statuses: Sequence[ctl.NodeStatus]) -> str | None:
    """With several replicas, one that does not list every other node would, once promoted, leave the
    ones it does not list behind."""
    others = len(statuses) - 1
    for s in statuses:
        peers = s.get("peer_urls")
        if not s.writable and isinstance(peers, list) and len(peers) < others:
            return (
                f"replica {s.url} lists {len(peers)} other node(s) in SYNC_SOURCE, not all {others}: if"
                " promoted it would leave the others behind"
            )
    return None


async def _haproxy(ctx: Context, result: Preflight) -> None:
    if ctx.view is None:
        ctx.monitor.traffic = (ctx.config.haproxy.url, result.node_ids)
        result.warnings.append(
            "no HAProxy stats (--haproxy-socket or --haproxy-stats): when HAProxy marks the old leader down"
            " is not measured; when it sends traffic to the new leader is inferred from the traffic"
        )
        return
    try:
        servers = await ctx.view.servers()
        mine = await asyncio.to_thread(match_servers, servers, ctx.config.targets, ctx.config.haproxy.servers)
    except HAProxyError as exc:
        result.add("HAProxy view", False, str(exc))
        return
    result.servers = tuple(s.name for s in mine)
    ctx.monitor.server_names = result.servers
    up = [s for s in mine if s.up]
    text = ", ".join(f"{s.name}{_where(s)}: {s.status}" for s in mine)
    ok = len(up) == 1 and up[0] is mine[result.leader]
    result.add("HAProxy sees one UP server, the leader's", ok, f"{ctx.view.source}: {text}")
    _note_other_servers(result, servers, mine)


def _where(server: Server) -> str:
    parts = [p for p in (server.addr, "backup" if server.backup else "") if p]
    return f" ({', '.join(parts)})" if parts else ""


def _note_other_servers(result: Preflight, servers: Sequence[Server], mine: Sequence[Server]) -> None:
    others = [s for s in servers if s.backend == mine[0].backend and s not in mine]
    if others:
        result.warnings.append(
            f"HAProxy backend {mine[0].backend} has other servers: {[s.name for s in others]}"
        )


async def _traffic(ctx: Context, result: Preflight, name: str) -> None:
    url = ctx.config.haproxy.url
    try:
        code, body = await ctx.nodes.call("GET", url, "/internal/status")
    except Unreachable as exc:
        result.add("traffic through HAProxy", False, f"{url}: {exc}")
        return
    served_by = body.get("node_id")
    ok = code == 200 and served_by is not None and served_by == result.node_ids[result.leader]
    detail = f"{url}/internal/status answered {code} from node {served_by}"
    if not result.add("traffic through HAProxy reaches the leader", ok, detail):
        return
    path = f"{ctx.config.load.prefix}/{ctx.drill_id}/{name}.bin"
    data = f"hotstandby drill {ctx.drill_id} {name} preflight\n".encode()
    code, body = await ctx.nodes.put_bytes(url, f"/internal/files/{quote(path)}", data)
    ok = code == 200 and body.get("sha256") == hashlib.sha256(data).hexdigest()
    detail = f"PUT /internal/files/{path}: HTTP {code}"
    if not ok:
        detail += f": {body.get('detail') or body.get('title') or body}"
    elif result.sync_mode == "sync" and not body.get("replicated"):
        result.warnings.append("SYNC_MODE=sync, yet the probe write was acknowledged without the replica")
    if not result.add("probe write through HAProxy", ok, detail):
        return
    result.probe = (path, hashlib.sha256(data).hexdigest())
    leader_url = ctx.config.targets[result.leader].url
    readable = await verify.can_read(ctx.nodes, leader_url, path, data)
    result.read_mode = "file" if readable else "status"
    if not readable:
        result.warnings.append(
            "the nodes do not serve GET /internal/files/{path}: reads are GET /internal/status, and the"
            " acknowledged writes are verified on the old leader once it has rejoined and caught up"
        )


async def _stoppers(ctx: Context, result: Preflight, indexes: list[int]) -> None:
    for index in indexes:
        if index < 0:
            continue
        target = ctx.target(index)
        try:
            detail = await ctx.stopper.check(target)
        except StopperError as exc:
            result.add(f"{ctx.stopper.kind} stopper for {target.name}", False, str(exc))
        else:
            result.add(f"{ctx.stopper.kind} stopper for {target.name}", True, detail)


async def _conflicts(ctx: Context, url: str) -> list[dict[str, Any]] | None:
    try:
        code, body = await ctx.nodes.call("GET", url, "/internal/conflicts")
    except Unreachable:
        return None
    items = body.get("conflicts")
    return (
        [dict(c) for c in items if isinstance(c, dict)] if code == 200 and isinstance(items, list) else None
    )
