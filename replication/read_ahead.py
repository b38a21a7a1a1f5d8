"""The leader reads the next files of a batch in a worker thread while its loop sends the current ones.

A profile of a 10,000-file seed with a cold cache (bench/results/2026-12-06-read-ahead.txt) showed
the leader's event loop spending about a third of its time in lstat, open and read of small files,
one after the other, while the replica waited for bytes. Here the I/O of a window of changes runs
in a thread (reads release the GIL), one window ahead of the frames the loop encodes.
Only I/O moves: what the sender remembers about what it sent is still decided on the loop, in the
batch's order, from the snapshot taken here.

A window's files are all opened (and the kernel told POSIX_FADV_WILLNEED of each) before the first
is read: with every read of the window queued at once, a cold disk delivered a 10,000-file seed's
251 MB here in 0.75 s instead of 0.98 s one file after the other, and the seed, which waited on
these reads, went from 2.05-2.2 s to 1.6-1.8 s (bench/results/2026-12-07-session17-notes.txt).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from replication.journal import Change
from replication.source import OpenFolders, SourceTree

SMALL_FILE = 512 * 1024
"""Regular files up to this size are read whole ahead of their frame; bigger ones are streamed."""
WINDOW = 64
"""Changes read ahead together, by one thread. The loop sends from one window while the next is read:
at most 2 x 64 x 512 KiB = 64 MiB held in the worst case, a few hundred KiB for a plugin venv's files.
More windows in flight (16 x 4, 8 x 8) made a cold 10,000-file seed slower here, not faster: this
disk serves one sequential reader best."""


READ_AHEAD_FROM = 1
"""Batches with fewer changes are read by the loop itself. 32 for a day (24f8f64: a thread hop per small
batch looked like lag at 200 files/s on a loaded disk, 5.7 -> 7.9 ms); measured again on tmpfs, which
leaves only the code's cost, reading on the loop was the slower one: at 500 files/s lag p50 16-43 ms
against 10-14 ms with the thread, p99 47-120 against 27-38 (3 alternating runs each; at 200 files/s
4.1-4.3 against 3.7 ms): the leader's loop is its busiest part when streaming, and the reads in a thread
overlap with it. bench/results/2026-12-07-streaming-lag.txt."""


@dataclass(frozen=True)
class Snapshot:
    """A change's object as the worker thread found it."""

    st: os.stat_result | None
    """lstat; None when the path is gone or a folder on its way is no folder any more."""
    opened: os.stat_result | None = None
    """fstat of the open file whose `content` was read; None when the content was not read ahead."""
    content: bytes = b""
    after: os.stat_result | None = None
    """fstat once read: a size or mtime that moved means the read may be torn."""
    vanished: bool = False
    """A regular file at the lstat, gone (or no regular file) at the open."""


def take_snapshot(
    tree: SourceTree, change: Change, limit: int = SMALL_FILE, folders: OpenFolders | None = None
) -> Snapshot:
    """lstat `change.path` and, for a small regular file whose content must travel, read all of it.

    The same reads `Sender._sync_frame` does on the loop, through the same no-follow StorageRoot:
    lstat, open, fstat, read, fstat, close, in the file's folder as `folders` holds it open (one
    folder opened for this file alone without it).
    """
    if folders is None:
        with tree.folders() as own:
            return take_snapshot(tree, change, limit, own)
    found = _open(tree, change, limit, folders)
    return found if isinstance(found, Snapshot) else found.read()


@dataclass
class _Opened:
    """A small regular file opened for its content, whose pages the kernel was asked to read ahead."""

    st: os.stat_result
    fd: int
    before: os.stat_result

    def read(self) -> Snapshot:
        try:
            content = read_exactly(self.fd, self.before.st_size)
            after = os.fstat(self.fd)
        finally:
            os.close(self.fd)
        return Snapshot(self.st, self.before, content, after)


def _open(tree: SourceTree, change: Change, limit: int, folders: OpenFolders) -> Snapshot | _Opened:
    """The snapshot of `change` when no content is to be read; else its file, opened, its pages on
    their way (POSIX_FADV_WILLNEED)."""
    parent_fd = folders.of(change.path)
    st = tree.current(change.path, parent_fd)
    if (
        st is None
        or not stat.S_ISREG(st.st_mode)
        or st.st_size > limit
        or change.attr_hint == (st.st_size, st.st_mtime_ns)
    ):
        return Snapshot(st)
    opened = tree.open_file(change.path, parent_fd, st)
    if opened is None:
        return Snapshot(st, vanished=True)
    fd, before = opened
    if before.st_size > limit:  # grew since the lstat: streamed by the loop instead
        os.close(fd)
        return Snapshot(st)
    if before.st_size:
        os.posix_fadvise(fd, 0, before.st_size, os.POSIX_FADV_WILLNEED)
    return _Opened(st, fd, before)


def read_exactly(fd: int, size: int) -> bytes:
    """`size` bytes from `fd`; zeros where the file ended early (its fstat then tells it was torn)."""
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = os.read(fd, remaining)
        if not part:
            parts.append(b"\0" * remaining)
            break
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ReadAhead:
    """Snapshots of a batch's changes, taken in a thread one window ahead of the loop's frames."""

    def __init__(
        self,
        tree: SourceTree,
        batch: list[Change],
        wanted: Callable[[Change], bool],
        *,
        window: int = WINDOW,
        limit: int = SMALL_FILE,
        records: int = 0,
    ) -> None:
        self._tree = tree
        self._batch = batch
        self._wanted = wanted
        self._window = window
        self._limit = limit
        self.records = records
        """The journal's record count when these changes were picked (Journal.records)."""
        self._started: dict[int, asyncio.Future[list[Snapshot | None]]] = {}

    def start(self) -> None:
        """Start reading the first two windows now (the next batch, while this one awaits its answer)."""
        self._start(0)
        self._start(1)

    def continued_by(self, batch: list[Change]) -> ReadAhead:
        """A read-ahead for `batch` that keeps the windows already read here, when `batch` begins with
        the same changes (the same objects: nothing was coalesced or replaced since); else a new one."""
        ahead = ReadAhead(self._tree, batch, self._wanted, window=self._window, limit=self._limit)
        for number, started in self._started.items():
            first = number * self._window
            ours = self._batch[first : first + self._window]
            theirs = batch[first : first + self._window]
            if len(ours) >= len(theirs) > 0 and all(a is b for a, b in zip(ours, theirs, strict=False)):
                ahead._started[number] = started
            else:
                started.cancel()
        self._started = {}
        return ahead

    async def get(self, index: int) -> Snapshot | None:
        """The snapshot of `batch[index]`, or None when it was not wanted (the loop reads it itself)."""
        number = index // self._window
        current = self._start(number)
        assert current is not None, "index beyond the batch"
        self._start(number + 1)
        for older in [n for n in self._started if n < number]:
            del self._started[older]
        found = await current
        return found[index - number * self._window]

    def _start(self, number: int) -> asyncio.Future[list[Snapshot | None]] | None:
        """The reads of window `number`, started now if they were not; None past the batch's end."""
        started = self._started.get(number)
        if started is None:
            first = number * self._window
            if first >= len(self._batch):
                return None
            changes = [
                change if self._wanted(change) else None
                for change in self._batch[first : first + self._window]
            ]
            if any(changes):
                started = asyncio.ensure_future(asyncio.to_thread(self._take, changes))
            else:  # nothing to read (deletes, renames): no thread
                started = asyncio.get_running_loop().create_future()
                started.set_result([None] * len(changes))
            self._started[number] = started
        return started

    def _take(self, changes: list[Change | None]) -> list[Snapshot | None]:
        """Open the window's files first, then read them (see the module's docstring)."""
        with self._tree.folders() as folders:
            limit = self._limit
            found: list[Snapshot | _Opened | None] = []
            try:
                for change in changes:
                    found.append(None if change is None else _open(self._tree, change, limit, folders))
                taken: list[Snapshot | None] = []
                for index, item in enumerate(found):
                    if isinstance(item, _Opened):
                        found[index] = None  # read() closes it, whatever happens
                        taken.append(item.read())
                    else:
                        taken.append(item)
                return taken
            finally:
                for item in found:
                    if isinstance(item, _Opened):
                        os.close(item.fd)

    def close(self) -> None:
        """Drop reads not consumed (a thread already reading finishes and closes its file)."""
        started, self._started = list(self._started.values()), {}
        for future in started:
            future.cancel()
