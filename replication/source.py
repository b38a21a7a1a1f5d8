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
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import Counter

from replication.errors import NotRegularFileError
from replication.journal import Change, Journal
from replication.paths import (
    GONE,
    StorageRoot,
    ancestors,
    file_kind,
    is_special,
    is_within,
    rebase,
    split_parent,
)

log = structlog.get_logger("replication.source")

SENT_INODES_KEPT = 100_000
SPECIAL_PATHS_LOGGED = 10_000


async def next_batch(
    journal: Journal,
    max_ops: int,
    max_bytes: int,
    tree: SourceTree,
    size_of: Callable[[Change, OpenFolders], int],
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
    with tree.folders() as folders:  # a burst's files come a few hundred to a folder
        batch = journal.take_batch(max_ops, max_bytes, lambda change: size_of(change, folders))
    if batch:
        return batch
    # asyncio.timeout, not wait_for: in Python 3.11 wait_for swallows a cancel that comes in the same
    # step as the change it waits for (gh-86296), and a stopped leader's link then ran on forever.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(idle):
            await journal.changed.wait()
            return None
    return []


class SourceTree:
    """STORAGE_PATH on the leader, read through StorageRoot: lstat, readlink and opens of regular
    files only, never through a symlinked folder, never opening a FIFO, socket or device."""

    def __init__(self, root: str, skipped: SpecialFiles | None = None) -> None:
        self.root = root
        self.storage = StorageRoot(root)
        self.skipped = skipped or SpecialFiles(None)

    def current(self, path: str, parent_fd: int | None = None) -> os.stat_result | None:
        """lstat of `path` now, or None when it is gone or a folder on its way is no folder any more.
        `parent_fd`: what `folders().of(path)` gave, when not None."""
        return self.storage.lstat(path, parent_fd)

    def folders(self) -> OpenFolders:
        """Folders opened once each for a run of paths (`current` and `open_file` of each path in one
        of them), closed on leaving the `with` block."""
        return OpenFolders(self.storage)

    def is_real_folder(self, path: str) -> bool:
        st = self.storage.lstat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def below_a_non_folder(self, path: str) -> bool:
        """Something other than a folder (a symlink, a file) is where a folder above `path` would be.

        A replica's path there is not ours to name: the plan that found it replaces that folder
        with what we have, which removes the path with it, and a delete of it would be a journal
        entry below a symlink of ours (found by the answer fuzzer)."""
        for folder in ancestors(path):
            st = self.storage.lstat(folder)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return True
        return False

    def exists(self, path: str) -> bool:
        """Something we replicate is at `path` now (checked before recording a delete: a path
        re-created since a scan stays). A FIFO, socket or device counts as nothing: the replica
        must not keep a stale file where the leader has one of those."""
        st = self.storage.lstat(path)
        return st is not None and not is_special(st.st_mode)

    def readlink(self, path: str) -> str | None:
        return self.storage.readlink(path)

    def open_file(
        self, path: str, parent_fd: int | None = None, lstat: os.stat_result | None = None
    ) -> tuple[int, os.stat_result] | None:
        """An fd and fstat of the regular file `path`, or None when it is gone or no regular file now.

        A FIFO, socket or device found here is never opened: it is counted and logged once.
        `parent_fd`: what `folders().of(path)` gave, when not None; `lstat`: what `current(path,
        parent_fd)` just found.
        """
        try:
            return self.storage.open_regular(path, parent_fd, lstat)
        except NotRegularFileError as exc:
            if is_special(exc.st_mode):
                self.skipped.note(path, exc.st_mode)
            return None
        except GONE:
            return None

    def size_of(self, change: Change, folders: OpenFolders | None = None) -> int:
        """Bytes a change will move (for batch limits); `folders`: those open for the batch being cut."""
        if change.kind != "sync":
            return 0
        if change.size_hint is not None:
            return change.size_hint
        st = self.storage.lstat(change.path, None if folders is None else folders.of(change.path))
        return st.st_size if st is not None else 0


class OpenFolders:
    """The folders of a run of paths, each opened on first use and kept open until the run ends.

    A read-ahead window is 64 files, mostly of one plugin's folder: opening the folder for each of
    them was three of the eleven system calls per file on the leader's reading thread, and every
    system call there hands the GIL to the loop and back (two futex calls each: 250,000 in a
    10,000-file seed). A folder renamed during the run is read where it is now, as a read that
    started just before the rename would have: the rename's own event follows."""

    def __init__(self, storage: StorageRoot) -> None:
        self._storage = storage
        self._fds: dict[str, int | None] = {}

    def of(self, path: str) -> int | None:
        """The open folder holding `path`; None when it is not there for us (`current` and
        `open_file` then look it up themselves and find nothing either)."""
        parent = split_parent(path)[0]
        try:
            return self._fds[parent]
        except KeyError:
            pass
        try:
            fd: int | None = self._storage.parent_folder(path).fd
        except GONE:
            fd = None
        self._fds[parent] = fd
        return fd

    def __enter__(self) -> OpenFolders:
        return self

    def __exit__(self, *_exc: object) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            if fd is not None:
                os.close(fd)


class SpecialFiles:
    """FIFOs, sockets and devices met in the storage: each skip counted, each path logged once.

    They are never opened (reading a FIFO blocks until a writer comes, a device may do
    anything) and never replicated. The set of paths already logged is bounded.
    """

    def __init__(self, counter: Counter | None) -> None:
        self._counter = counter
        self._logged: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        """Scans run in worker threads, sends on the loop."""

    def note(self, path: str, mode: int) -> None:
        kind = file_kind(mode)
        if self._counter is not None:
            self._counter.labels(type=kind).inc()
        with self._lock:
            if path in self._logged:
                return
            self._logged[path] = None
            while len(self._logged) > SPECIAL_PATHS_LOGGED:
                self._logged.popitem(last=False)
        log.warning("special_file_skipped", path=path, type=kind)


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
        st = self._tree.current(dest)
        if st is None:
            return False
        now = st.st_ino
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
