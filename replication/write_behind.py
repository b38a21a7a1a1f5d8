"""Write-behind: a big file's pages go to disk while the rest of it is still being written.

The group commit fsyncs every staged file before the batch is acknowledged (group_commit.py).
For a file of hundreds of MiB that fsync found everything still dirty: a 256 MiB delta spent
0.11-0.16 s in it after the last byte was written (issue 15: delta time), and a 1 GiB seed's four
128 MiB files 0.20-0.33 s in their commits altogether, the link idle meanwhile (0.07 s with it).
A delta, and a put of WRITE_BEHIND_BYTES or more, use it (applier.py). Here, every
WRITE_BEHIND_BYTES written start an fdatasync of the file on a worker thread, one at a time, so
the disk works while the content is still arriving and the final fsync has little left to do.

Nothing about durability changes: the commit's fsync still runs and is still what the
acknowledgement waits for. An error of an early fdatasync is raised (by `wrote` or `settle`),
never dropped: Linux reports a writeback error once per open file, so the final fsync on the same
fd might not see it again.
"""

from __future__ import annotations

import asyncio
import os

WRITE_BEHIND_BYTES = 32 << 20
"""Bytes written between two early fdatasyncs (files smaller than this never start one)."""


class WriteBehind:
    """Early fdatasyncs of the file open for writing on `fd`; `settle` before closing it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._unsynced = 0
        self._pending: asyncio.Future[None] | None = None

    def wrote(self, size: int) -> None:
        """`size` more bytes were written: start an fdatasync if enough piled up and none is running."""
        self._unsynced += size
        if self._unsynced < WRITE_BEHIND_BYTES or (self._pending is not None and not self._pending.done()):
            return
        if self._pending is not None:
            self._pending.result()  # the previous one's error, now
        self._unsynced = 0
        self._pending = asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self.fd)

    async def settle(self) -> None:
        """Wait for the fdatasync under way (its error is raised): the fd may be closed afterwards."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending
