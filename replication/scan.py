"""Our walk for one reconciliation, in a worker thread, taken by the loop one of two ways.

A reconciliation cannot know which comparison fits before the replica's manifest answer is in: a
replica that has little (a new standby) is best held whole and our walk compared with it a chunk
at a time, so that what it lacks is queued and sent while the walk goes on (manifest.ScanComparison);
one that has as much as we do is best compared entry by entry as its answer arrives, against our
whole walk held compactly (manifest.Comparison over a Listing), so that neither manifest is held
as objects. The walk starts at once either way: until the loop chooses (`stream` or `keep`), each
chunk is kept both ways.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Literal

from replication.manifest import Entry, Listing, OnSpecial, TreeDigest, walk

CHUNK_ENTRIES = 500
"""Entries handed to the loop at a time when streaming: a few milliseconds of its work each."""


class Scan:
    """`manifest.walk` of `root` in a worker thread, started by `start`."""

    def __init__(self, root: str, skip: Callable[[str], bool], on_special: OnSpecial | None = None) -> None:
        self._root = root
        self._skip = skip
        self._on_special = on_special
        self._lock = threading.Lock()
        self._mode: Literal["open", "stream", "keep", "digest"] = "open"
        self._listing: Listing | None = Listing(sealed=False)
        self._early: list[list[Entry]] = []
        """Chunks walked while the mode was open (dropped by `keep`)."""
        self._ended = False
        self._stopped = False
        self._queue: asyncio.Queue[list[Entry] | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.walking: asyncio.Future[None] | None = None
        """The thread's work; its exception (a walk that failed) is raised by `listing` and `stream`."""
        self.digest: TreeDigest | None = None
        """The walk's TreeDigest after `digest_only`, computed as it goes (complete once `done`)."""

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.walking = asyncio.ensure_future(asyncio.to_thread(self._walk))
        # A walk whose comparison failed first is not awaited: its own failure is not news then.
        self.walking.add_done_callback(lambda done: done.cancelled() or done.exception())

    def stop(self) -> None:
        """The walk ends at its next chunk (the reconciliation was cancelled or failed)."""
        self._stopped = True

    @property
    def done(self) -> bool:
        return self.walking is not None and self.walking.done()

    def digest_only(self) -> None:
        """Keep nothing but a TreeDigest of the walk, `digest` (a replica whose TreeDigest may equal
        ours: if it does not, a new walk is compared with its manifest, and a no-change pass held no
        listing). Chosen before `start`: until the replica's digest is in (after its own walk), an
        open scan would hold our whole walk twice, as chunks and as a listing."""
        with self._lock:
            assert self._mode == "open" and self.walking is None, "chosen before the walk starts"
            self._mode = "digest"
            self.digest = TreeDigest("source")
            self._early = []
            self._listing = None

    async def finished(self) -> TreeDigest:
        """The complete `digest` once the walk is over (after `digest_only`)."""
        assert self.walking is not None and self.digest is not None
        await self.walking
        return self.digest

    async def listing(self) -> Listing:
        """Our whole walk as a sealed Listing (after `keep`)."""
        self.keep()
        assert self.walking is not None
        await self.walking
        assert self._listing is not None
        return self._listing

    def keep(self) -> None:
        """Choose the Listing: chunks are no longer kept for streaming."""
        with self._lock:
            if self._mode == "open":
                self._mode = "keep"
                self._early = []

    async def stream(self) -> AsyncIterator[list[Entry]]:
        """Choose the chunks: those walked so far, then each as it is walked, to the walk's end."""
        assert self.walking is not None and self._loop is not None
        with self._lock:
            assert self._mode == "open", "a scan is taken one way only"
            self._mode = "stream"
            early, self._early = self._early, []
            ended = self._ended
            self._listing = None
        for chunk in early:
            yield chunk
        if not ended:
            while (walked := await self._queue.get()) is not None:
                yield walked
        await self.walking  # a failed walk fails the comparison (its chunks stop at the failure)

    def _walk(self) -> None:
        chunk: list[Entry] = []
        try:
            for entry in walk(self._root, "", self._skip, self._on_special):
                chunk.append(entry)
                if len(chunk) >= CHUNK_ENTRIES:
                    if self._stopped:
                        return
                    self._deliver(chunk)
                    chunk = []
            self._deliver(chunk)
        finally:
            self._end()

    def _deliver(self, chunk: list[Entry]) -> None:
        if self.digest is not None:
            self.digest.add(chunk)
        with self._lock:
            if self._mode in ("open", "keep"):
                assert self._listing is not None
                self._listing.extend(chunk)
            if self._mode == "open":
                self._early.append(chunk)
            elif self._mode == "stream" and chunk:
                self._hand_over(chunk)

    def _end(self) -> None:
        with self._lock:
            self._ended = True
            if self._mode == "stream":
                self._hand_over(None)
            elif self._listing is not None:
                self._listing.seal()

    def _hand_over(self, chunk: list[Entry] | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
