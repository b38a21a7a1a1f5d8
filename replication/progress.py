"""How far a replica is through long work: seeding, or catching up after an outage or a burst.

One tracker per link. The sender tells it what a reconciliation planned (paths and sizes, from the
manifest), which planned file it is sending, and how many changes each acknowledgement retired; the
status endpoints read a snapshot. Files and bytes are counted "of the total known so far": the total
grows when new changes arrive during the work. Sizes are known ahead for what a reconciliation
planned; a change the watcher recorded counts its bytes once it is read and sent.

Pure bookkeeping on the event loop: no I/O, every method O(1) apart from what a plan itself holds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

BACKLOG = 100
"""Pending changes at which a backlog is reported as catch-up work (below it the link is simply busy)."""
RATE_WINDOW = 20.0
"""Seconds the rate is measured over: long enough to smooth batches, short enough to follow a change."""
MIN_RATE_SPAN = 0.5
"""No rate (and no time left) from less than this much observation."""
STALLED_AFTER = 10.0
"""Seconds without an acknowledged change after which the work is reported as stalled."""


@dataclass
class Episode:
    kind: str
    """"seeding" (the first full copy of a new journal) or "catch-up"."""
    started: float
    bytes_base: int
    """The link's bytes-sent counter when the work started."""
    started_wall: float = field(default_factory=time.time)
    files_done: int = 0
    bytes_done: int = 0
    expected: dict[str, int] = field(default_factory=dict)
    """Planned files not yet sent, with their sizes from the manifest."""
    expected_bytes: int = 0
    last_progress: float = 0.0
    samples: deque[tuple[float, int, int]] = field(default_factory=deque)
    """(time, files done, bytes done), oldest first; the first one may lie before the rate window."""

    def __post_init__(self) -> None:
        self.last_progress = self.started
        self.samples.append((self.started, 0, 0))


def rate(
    samples: deque[tuple[float, int, int]], now: float, window: float = RATE_WINDOW
) -> tuple[float, float]:
    """(files/s, bytes/s) from the newest sample that is at least `window` old (else the oldest) to the
    latest sample, spread until `now`: a link that stops acknowledging sees its rate fall."""
    if not samples:
        return 0.0, 0.0
    base = samples[0]
    for sample in samples:
        if sample[0] <= now - window:
            base = sample
        else:
            break
    last = samples[-1]
    span = now - base[0]
    if span < MIN_RATE_SPAN:
        return 0.0, 0.0
    return (last[1] - base[1]) / span, (last[2] - base[2]) / span


def time_left(files_left: int, files_rate: float, bytes_left: int | None, bytes_rate: float) -> float | None:
    """Seconds until both the known files and the known bytes are done at the current rates; None
    while there is no rate to go by."""
    if files_left <= 0 and not bytes_left:
        return 0.0
    estimates = []
    if files_left > 0:
        if files_rate <= 0:
            return None
        estimates.append(files_left / files_rate)
    if bytes_left and bytes_rate > 0:
        estimates.append(bytes_left / bytes_rate)
    return max(estimates) if estimates else None


class Progress:
    """The current episode of long work on one link, and a summary of the last one finished."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, backlog: int = BACKLOG) -> None:
        self.clock = clock
        self.backlog = backlog
        self.current: Episode | None = None
        self.last: dict[str, Any] | None = None

    # -- fed by the sender -----------------------------------------------------------------
    def planned(self, reason: str, sizes: Mapping[str, int], pending: int, bytes_sent: int) -> None:
        """A reconciliation queued `sizes` (path -> bytes); `reason` "initial" means seeding.

        A dict is taken over when nothing else is expected: the caller must not change it after."""
        if not sizes and pending < self.backlog and self.current is None:
            return
        episode = self._episode("seeding" if reason == "initial" else "catch-up", bytes_sent)
        if not episode.expected and isinstance(sizes, dict):
            episode.expected = sizes  # taken over, not copied: a seed plans 100,000 files
            episode.expected_bytes += sum(sizes.values())
            return
        for path, size in sizes.items():
            episode.expected_bytes += size - episode.expected.get(path, 0)
            episode.expected[path] = size

    def sending(self, path: str) -> None:
        """A planned file is being read and sent: its bytes now count as they go."""
        episode = self.current
        if episode is not None and (size := episode.expected.pop(path, None)) is not None:
            episode.expected_bytes -= size

    def acknowledged(self, count: int, pending: int, bytes_sent: int) -> None:
        """The replica acknowledged; `count` changes left the journal, `pending` are still waiting."""
        episode = self.current
        if episode is None:
            if pending < self.backlog:
                return
            episode = self._episode("catch-up", bytes_sent)
        now = self.clock()
        episode.files_done += max(0, count)
        episode.bytes_done = max(0, bytes_sent - episode.bytes_base)
        if count > 0:
            episode.last_progress = now
        episode.samples.append((now, episode.files_done, episode.bytes_done))
        while len(episode.samples) > 2 and episode.samples[1][0] <= now - RATE_WINDOW:
            episode.samples.popleft()
        if pending == 0:
            self.last = self._finished(episode, now)
            self.current = None

    def _episode(self, kind: str, bytes_sent: int) -> Episode:
        if self.current is None:
            self.current = Episode(kind, self.clock(), bytes_sent)
        elif kind == "seeding":
            self.current.kind = kind
        return self.current

    @staticmethod
    def _finished(episode: Episode, now: float) -> dict[str, Any]:
        return {
            "kind": episode.kind,
            "files": episode.files_done,
            "bytes": episode.bytes_done,
            "seconds": round(now - episode.started, 3),
            "finished_unix": round(time.time(), 3),
        }

    # -- read by the status endpoints ------------------------------------------------------
    def snapshot(self, pending: int) -> dict[str, Any] | None:
        """The current work as the status endpoints show it, or None when there is none."""
        episode = self.current
        if episode is None:
            return None
        now = self.clock()
        files_rate, bytes_rate = rate(episode.samples, now)
        stalled = now - episode.last_progress > STALLED_AFTER
        if stalled:
            files_rate = bytes_rate = 0.0
        eta = time_left(pending, files_rate, episode.expected_bytes, bytes_rate)
        return {
            "kind": episode.kind,
            "seconds": round(now - episode.started, 1),
            "started_unix": round(episode.started_wall, 3),
            "files_done": episode.files_done,
            "files_total": episode.files_done + pending,
            "bytes_done": episode.bytes_done,
            "bytes_total": episode.bytes_done + episode.expected_bytes,
            "bytes_planned_left": episode.expected_bytes,
            "files_per_second": round(files_rate, 1),
            "bytes_per_second": round(bytes_rate),
            "eta_seconds": None if eta is None else round(eta, 1),
            "stalled": stalled,
        }
