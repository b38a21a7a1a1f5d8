"""One change the leader's journal holds: which path to look at, not its bytes (journal.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ChangeKind = Literal["sync", "delete", "rename"]


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    kind: ChangeKind
    path: str
    dest: str | None = None
    attr_hint: tuple[int, int] | None = None
    """(size, mtime_ns) seen when a manifest found equal content: send attributes only if still so."""
    enqueued_at: float = 0.0
    size_hint: int | None = None
    """The file's size when a manifest planned this change, for the batch byte limit: with it, taking
    a batch of a seed needs no lstat per change (the sender reads the file's real size anyway)."""
