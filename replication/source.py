"""The leader's side of any link: its own tree as it is now, and what it already sent.

Every link (HTTP to a hotstandby replica, SFTP to a plain host) reads a
change's current state from STORAGE_PATH when it sends it, never through a
symlinked folder, and must cope with paths that moved or vanished between the
event and the read. Those rules live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import structlog

from replication.journal import Change, Journal
from replication.paths import is_within, rebase

log = structlog.get_logger("replication.source")

SENT_INODES_KEPT = 100_000


async def next_batch(
    journal: Journal,
    max_ops: int,
    max_bytes: int,
    size_of: Callable[[Change], int],
    idle: float,
    reconcile: Callable[[str], Awaitable[object]],
) -> list[Change] | None:
    """The next batch a link sends: reconcile first when the journal asks for it.

    Returns the changes, an empty list after `idle` seconds with nothing to send
    (an HTTP link sends a heartbeat then), or None when a change arrived while
    waiting (take again).
    """
    if journal.overflowed:
        journal.reset()
        await reconcile("journal_overflow")
    if journal.rescan_reason is not None:
        reason, journal.rescan_reason = journal.rescan_reason, None
        await reconcile(reason)
    journal.changed.clear()
    batch = journal.take_batch(max_ops, max_bytes, size_of)
    if batch:
        return batch
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(journal.changed.wait(), idle)
        return None
    return []


class SourceTree:
    """STORAGE_PATH on the leader, read with lstat only."""

    def __init__(self, root: str) -> None:
        self.root = root

    def full(self, path: str) -> str:
        return os.path.join(self.root, path)

    def under_real_folders(self, path: str) -> bool:
        """Every folder above `path` is a real directory here (we never read through a symlink)."""
        parts = path.split("/")[:-1]
        current = self.root
        for part in parts:
            current = os.path.join(current, part)
            try:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return False
            except OSError:
                return False
        return True

    def current(self, path: str) -> os.stat_result | None:
        """lstat of `path` now, or None when it is gone or a folder on its way is no folder any more."""
        try:
            if not self.under_real_folders(path):
                return None
            return os.lstat(self.full(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def is_real_folder(self, path: str) -> bool:
        try:
            return self.under_real_folders(path) and stat.S_ISDIR(os.lstat(self.full(path)).st_mode)
        except OSError:
            return False

    def size_of(self, change: Change) -> int:
        """Bytes a change will move (for batch limits)."""
        if change.kind != "sync":
            return 0
        try:
            return os.lstat(self.full(change.path)).st_size
        except OSError:
            return 0


class SentObjects:
    """Which object each recently sent path was, and which paths vanished before they could be sent.

    Both are bounded (recent entries only): they repair races between reading
    content and the rename events that follow, not long-term state.
    """

    def __init__(self, tree: SourceTree) -> None:
        self._tree = tree
        self._inodes: OrderedDict[str, int] = OrderedDict()
        self._vanished: OrderedDict[str, None] = OrderedDict()

    def remember(self, path: str, inode: int) -> None:
        """Which object we last sent for `path` (recent sends only, bounded)."""
        self._inodes[path] = inode
        self._inodes.move_to_end(path)
        while len(self._inodes) > SENT_INODES_KEPT:
            self._inodes.popitem(last=False)

    def rename_is_stale(self, src: str, dest: str) -> bool:
        """True when the replica's `src` is not the object that was renamed.

        Content is read when it is sent, so a path re-created right after a
        rename can be sent under the old name before the rename event is
        recorded; replaying the rename would then move the new object. We
        compare the inode we sent for `src` with the one now at `dest`, and
        send `dest` in full instead when they differ.
        """
        sent = self._inodes.pop(src, None)
        try:
            now = os.lstat(self._tree.full(dest)).st_ino
        except OSError:
            return False
        if sent is not None and sent != now:
            log.info("rename_replaced_by_send", src=src, dest=dest)
            return True
        if sent is not None:
            self.remember(dest, sent)
        return False

    def note_vanished(self, path: str) -> None:
        """`path` disappeared before its content could be read or sent."""
        self._vanished[path] = None
        self._vanished.move_to_end(path)
        while len(self._vanished) > SENT_INODES_KEPT:
            self._vanished.popitem(last=False)

    def deleted(self, path: str) -> None:
        """A delete of `path` was sent: it no longer needs resending anywhere."""
        self._vanished.pop(path, None)

    def vanished_below(self, src: str, dest: str) -> list[str]:
        """Paths below `src` skipped earlier because they had moved: send them at their new place."""
        moved = [p for p in self._vanished if is_within(p, src)]
        for path in moved:
            del self._vanished[path]
        return [rebase(p, src, dest) for p in moved]
