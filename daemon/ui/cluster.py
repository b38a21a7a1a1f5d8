"""The cluster as this node sees it: its own status and the last answer of each peer's status.

Built from state the node already holds: its own status (cheap), and the answers its peer pollers
fetched for the control loop anyway (every CONTROL_INTERVAL). A poll of the status page therefore
sends no request to any peer and reads nothing from disk but the storage's write probe, whatever
the number of files.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from daemon import __version__
from daemon.config import Config
from daemon.peers import Poller
from daemon.redact import hide_password
from daemon.roles import shown_as_leader, shown_as_replica

PEER_STALE = 5.0
"""A peer whose last answer is older than this is shown unreachable."""
SHOWN = (
    "node_id",
    "role",
    "epoch",
    "writable",
    "health",
    "health_reason",
    "lease_seconds_left",
    "lag_seconds",
    "pending_changes",
    "peer_connected",
    "synced",
    "last_error",
    "uptime_seconds",
    "produced_sequence",
    "applied_sequence",
    "acknowledged_sequence",
    "master_node",
)


def _strip(url: str) -> str:
    return hide_password(url).rstrip("/").lower()


def node_entry(
    name: str, body: Mapping[str, Any] | None, *, is_self: bool, url: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "url": url, "self": is_self, "reachable": body is not None}
    if body is not None:
        entry.update({key: body.get(key) for key in SHOWN})
        entry["connected"] = bool(body.get("peer_connected"))
        replicas = body.get("replicas")
        if isinstance(replicas, list):
            entry["replicas_connected"] = sum(
                1 for r in replicas if isinstance(r, dict) and r.get("connected")
            )
            entry["replicas_total"] = len(replicas)
    return entry


def peer_entry(url: str, poller: Poller, now: float) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    fresh = (
        poller.body is not None and poller.answered_at is not None and now - poller.answered_at <= PEER_STALE
    )
    body = poller.body if fresh else None
    entry = node_entry(hide_password(url), body, is_self=False, url=hide_password(url))
    entry["answered_seconds_ago"] = None if poller.answered_at is None else round(now - poller.answered_at, 1)
    if body is None:
        entry["error"] = poller.error or "no answer yet"
        entry["health"] = "unreachable"
    return entry, body


def attach_links(entries: list[dict[str, Any]], bodies: list[Mapping[str, Any] | None]) -> None:
    """Give each replica the leader's view of its link: pending changes, lag, and long work's progress.

    The leader's links are named by the URLs in its SYNC_TARGET, which are the URLs this node knows
    its peers by; this node itself is the one link left over."""
    for leader, body in zip(entries, bodies, strict=True):
        links = body.get("replicas") if body is not None else None
        if not isinstance(links, list) or not shown_as_leader(leader.get("role")):
            continue
        unmatched = [link for link in links if isinstance(link, dict)]
        for entry in entries:
            if entry is leader or entry["url"] is None:
                continue
            match = [
                link for link in unmatched if _strip(str(link.get("target", ""))) == _strip(entry["url"])
            ]
            if match:
                unmatched.remove(match[0])
                _apply_link(entry, match[0])
        mine = [entry for entry in entries if entry["self"] and entry is not leader]
        if mine and len(unmatched) == 1:
            _apply_link(mine[0], unmatched[0])


def _apply_link(entry: dict[str, Any], link: Mapping[str, Any]) -> None:
    entry["pending_changes"] = link.get("pending_changes")
    entry["lag_seconds"] = link.get("lag_seconds")
    entry["progress"] = link.get("progress")
    entry["last_long_work"] = link.get("last_long_work")
    entry["link_connected"] = link.get("connected")
    entry["link_error"] = link.get("last_error")


def verdict(
    entries: Sequence[dict[str, Any]], bodies: Sequence[Mapping[str, Any] | None], max_lag: float
) -> dict[str, Any]:
    """The operator command's own judgement (`hotstandby status`), on what this node sees."""
    from daemon import ctl  # late: the operator commands' module is not needed before the page is asked

    statuses = [
        ctl.NodeStatus(
            entry["name"], body, None if body is not None else str(entry.get("error") or "no answer")
        )
        for entry, body in zip(entries, bodies, strict=True)
    ]
    problem = ctl.assess(statuses, max_lag)
    behind = [
        e
        for e in entries
        if shown_as_replica(e.get("role")) and (e.get("pending_changes") or e.get("progress"))
    ]
    if problem is not None:
        return {"healthy": False, "text": problem}
    leader = next(e for e in entries if e.get("writable"))
    text = f"{leader['name']} leads at epoch {leader.get('epoch')}"
    in_step = len(entries) - 1 - len(behind)
    if in_step:
        text += f"; {in_step} replica(s) in step"
    for entry in behind:
        text += f"; {entry['name']} {ctl.describe_backlog(entry)}"
    return {"healthy": True, "text": text}


def cluster_view(
    config: Config,
    own: Mapping[str, Any],
    peers: Sequence[Poller],
    access: str,
    recent: list[dict[str, Any]],
) -> dict[str, Any]:
    now = time.monotonic()
    entries = [node_entry("this node", own, is_self=True, url=None)]
    bodies: list[Mapping[str, Any] | None] = [own]
    for poller in peers:
        entry, body = peer_entry(poller.url.removesuffix("/internal/status"), poller, now)
        entries.append(entry)
        bodies.append(body)
    entries[0]["ha"] = own.get("ha")
    entries[0]["plugin_daemon"] = own.get("plugin_daemon")
    attach_links(entries, bodies)
    return {
        "generated_unix": round(time.time(), 3),
        "access": access,
        "version": __version__,
        "cluster_name": config.cluster_name,
        "election": config.election,
        "sync_mode": config.sync_mode,
        "replica_max_lag": config.replica_max_lag,
        "storage_path": config.storage_path,
        "verdict": verdict(entries, bodies, config.replica_max_lag),
        "nodes": entries,
        "recent_problems": recent,
    }
