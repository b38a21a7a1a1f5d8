"""The last warnings and errors this process logged, for the status page ("last errors").

A structlog processor (daemon/logs.py adds it once) copies each warning or error event into a small
ring: when, level, event name and the fields that say what went wrong, cut short. Log lines carry no
secrets (a promise kept where they are written), so neither does this.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import MutableMapping
from typing import Any

KEPT = 50
LEVELS = frozenset({"warning", "error", "critical", "exception"})
DETAIL_FIELDS = ("error", "problem", "reason", "detail", "target", "path", "task", "where", "count")
DETAIL_CHARS = 300


class RecentProblems:
    def __init__(self, size: int = KEPT) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()  # stdlib records may arrive from watchdog's threads

    def __call__(
        self, _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        level = str(event.get("level") or method).lower()
        if level in LEVELS:
            self.note(level, str(event.get("event", "")), event.get("timestamp"), event)
        return event

    def note(self, level: str, name: str, at: Any, fields: MutableMapping[str, Any]) -> None:
        parts = [f"{k}={fields[k]}" for k in DETAIL_FIELDS if fields.get(k) not in (None, "")]
        item = {
            "at": str(at) if at else None,
            "level": level,
            "event": name[:DETAIL_CHARS],
            "detail": "; ".join(parts)[:DETAIL_CHARS] or None,
        }
        with self._lock:
            self._items.append(item)

    def newest_first(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items)
        return items[::-1][:limit]


RECENT = RecentProblems()
"""The process's one ring: the logging set-up feeds it, the status page reads it."""
