"""The status page's slower sections: failovers and drills, conflicts kept aside, plugin packages.

These read the catalogue, the conflicts' reports and the peers' event histories, so they are built
at most once every TTL seconds, by one request at a time, and every open page shares the result:
three pages cost what one does. Each section fails on its own (its `error` says why); none stops the
others or the page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import structlog

from daemon.client import AsyncClient, Unreachable
from daemon.node import Node
from daemon.redact import hide_password
from daemon.store.store import PluginStore

log = structlog.get_logger("daemon.ui.details")

TTL = 4.0
PART_TIMEOUT = 5.0
PEER_TIMEOUT = 2.0
EVENT_LIMIT = 200
FAILOVER_KINDS = frozenset({"promotion", "demotion", "failover"})
DRILL_KIND = "drill"
ATTACHMENTS = ("report_md", "timeline")
"""Fields of a drill event the list leaves out; the drill's own page asks for them."""
SHOWN_PLUGINS = 200
SHOWN_CONFLICTS = 10


class Details:
    def __init__(
        self, node: Node, peer_urls: Sequence[str], store: PluginStore | None, ttl: float = TTL
    ) -> None:
        self.node = node
        self.peer_urls = [url for url in peer_urls if url.startswith(("http://", "https://"))]
        self.store = store
        self.ttl = ttl
        self._built: dict[str, Any] | None = None
        self._built_at = 0.0
        self._lock = asyncio.Lock()
        self.drills: dict[str, dict[str, Any]] = {}
        """Every drill seen, by drill id, with its report and timeline attached."""

    def age(self) -> float:
        return time.monotonic() - self._built_at

    async def get(self, fresh: bool = False) -> dict[str, Any]:
        async with self._lock:
            if fresh or self._built is None or time.monotonic() - self._built_at > self.ttl:
                self._built = await self._build()
                self._built_at = time.monotonic()
            return self._built

    async def _build(self) -> dict[str, Any]:
        history, conflicts, plugins = await asyncio.gather(
            _section(self._history), _section(self._conflicts), _section(self._plugins)
        )
        return {
            "generated_unix": round(time.time(), 3),
            "history": history,
            "conflicts": conflicts,
            "plugins": plugins,
        }

    # -- failovers and drills -----------------------------------------------------------------
    async def _history(self) -> dict[str, Any]:
        events: list[dict[str, Any]] = []
        notes: list[str] = []
        if self.store is not None:
            try:
                events += [dict(e, source="this node") for e in await self.store.events(None, EVENT_LIMIT)]
            except Exception as exc:  # the catalogue may be unreachable: say so, show the rest
                notes.append(f"this node's catalogue: {_why(exc)}")
        else:
            notes.append("this node keeps no event history (no plugin store)")
        for url, found in zip(self.peer_urls, await self._peer_events(), strict=True):
            if isinstance(found, list):
                events += [dict(e, source=hide_password(url)) for e in found if isinstance(e, dict)]
            else:
                notes.append(f"{hide_password(url)}: {found}")
        failovers = _unique(e for e in events if e.get("kind") in FAILOVER_KINDS)
        drills = self._remember_drills(e for e in events if e.get("kind") == DRILL_KIND)
        return {"failovers": failovers[:20], "drills": drills[:10], "notes": notes}

    async def _peer_events(self) -> list[list[Any] | str]:
        if not self.peer_urls:
            return []
        key = self.node.config.server_key
        async with AsyncClient(self.node.client_tls, key, timeout=PEER_TIMEOUT) as http:

            async def one(url: str) -> list[Any] | str:
                try:
                    answer = await http.send(
                        "GET", f"{url}/internal/events", params={"limit": str(EVENT_LIMIT)}
                    )
                    if answer.status != 200:
                        return f"events answered HTTP {answer.status}"
                    body = answer.json()
                except (Unreachable, ValueError) as exc:
                    return _why(exc)
                events = body.get("events")
                return events if isinstance(events, list) else "events: not a list"

            return list(await asyncio.gather(*(one(url) for url in self.peer_urls)))

    def _remember_drills(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for event in events:
            drill_id = str(event.get("drill_id") or f"{event.get('node_id')}#{event.get('id')}")
            kept = merged.setdefault(drill_id, {**event, "drill_id": drill_id, "recorded_on": []})
            kept["recorded_on"].append(event.get("source"))
            for name in ATTACHMENTS:
                if kept.get(name) is None and event.get(name) is not None:
                    kept[name] = event[name]
        self.drills.update(merged)
        listed = []
        for drill in sorted(merged.values(), key=lambda d: str(d.get("started_at")), reverse=True):
            shown = {k: v for k, v in drill.items() if k not in ATTACHMENTS}
            shown["has_report"] = drill.get("report_md") is not None
            listed.append(shown)
        return listed

    # -- conflicts ------------------------------------------------------------------------------
    async def _conflicts(self) -> dict[str, Any]:
        tracker = self.node.tracker
        items = await asyncio.to_thread(tracker.list)
        items.sort(key=lambda c: float(c.get("mtime") or 0), reverse=True)
        epochs: dict[str, int] = {}
        for item in items:
            epochs[str(item.get("epoch"))] = epochs.get(str(item.get("epoch")), 0) + 1
        return {
            "count": len(items),
            "root": tracker.conflicts_root,
            "by_epoch": epochs,
            "newest": items[:SHOWN_CONFLICTS],
        }

    # -- plugin packages ------------------------------------------------------------------------
    async def _plugins(self) -> dict[str, Any]:
        if self.store is None:
            return {"available": False, "note": "no plugin store on this node"}
        listing = await self.store.list_plugins()
        entries = [e for e in listing.get("plugins", []) if isinstance(e, Mapping)]
        keep = ("kind", "identifier", "status", "size", "verified_at", "detail", "in_place", "path")
        return {
            "available": True,
            "counts": listing.get("counts", {}),
            "total": len(entries),
            "plugins": [{k: e.get(k) for k in keep} for e in entries[:SHOWN_PLUGINS]],
            "quarantined": listing.get("quarantined", [])[:50],
        }


async def _section(build: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(build(), PART_TIMEOUT)
    except Exception as exc:  # one section's failure is shown in that section, never the page's
        log.warning("status_page_section_failed", section=build.__name__.strip("_"), error=_why(exc))
        return {"error": _why(exc)}


def _why(exc: BaseException) -> str:
    if isinstance(exc, Unreachable):
        return str(exc)  # already in these words (daemon/client.py)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unique(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first; one copy of an event several nodes report (a shared PostgreSQL catalogue)."""
    seen: set[tuple[Any, Any]] = set()
    result = []
    for event in sorted(events, key=lambda e: str(e.get("at")), reverse=True):
        key = (event.get("node_id"), event.get("id"))
        if key not in seen:
            seen.add(key)
            result.append(event)
    return result
