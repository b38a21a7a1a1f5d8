"""The /health write probe, off the event loop and bounded in time.

A write into a stalled or frozen filesystem (a dying disk, fsfreeze, a hung NFS
server) blocks in the kernel. Probing on the event loop would stop the whole node
(heartbeats, the lease, the API); probing in the shared thread pool would use up
its threads, one per /health request. So one probe at a time runs on its own
daemon thread (a hung one never holds up the process exit), and a probe still
running after `timeout` seconds makes the node unhealthy, with the reason, until
it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time

Verdict = tuple[bool, str]


def storage_writable(path: str) -> Verdict:
    """Probe with an unnamed O_TMPFILE: a real write check that leaves no name and no inotify event."""
    if not os.path.isdir(path):
        return False, f"STORAGE_PATH {path} is missing or not a directory"
    try:
        os.close(os.open(path, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            return False, f"STORAGE_PATH {path} is not writable: {exc.strerror}"
        if not os.access(path, os.W_OK | os.X_OK):
            return False, f"STORAGE_PATH {path} is not writable"
    return True, ""


class StorageProbe:
    """`check()` runs (or keeps waiting for) the one write probe; `last` is its latest verdict."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self.last: Verdict = (True, "")
        """For the metrics gauge, which must not probe (a scrape runs on the loop)."""
        self._running: asyncio.Future[Verdict] | None = None
        self._started = 0.0

    async def check(self) -> Verdict:
        if self._running is None or self._running.done():
            self._running = self._start()
        try:
            self.last = await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            waited = time.monotonic() - self._started
            reason = f"a write has not returned for {waited:.1f}s (stalled disk?)"
            self.last = (False, f"STORAGE_PATH {self.path}: {reason}")
        return self.last

    def _start(self) -> asyncio.Future[Verdict]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        self._started = time.monotonic()

        def settle(verdict: Verdict) -> None:
            if not future.done():
                future.set_result(verdict)

        def probe() -> None:
            try:
                verdict = storage_writable(self.path)
            except OSError as exc:  # isdir/access cannot raise; belt and braces for the thread's sake
                verdict = (False, f"STORAGE_PATH {self.path}: {exc.strerror}")
            with contextlib.suppress(RuntimeError):  # the loop closed while the disk was stalled
                loop.call_soon_threadsafe(settle, verdict)

        threading.Thread(target=probe, name="storage-probe", daemon=True).start()
        return future
