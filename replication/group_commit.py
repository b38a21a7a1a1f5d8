"""Group commit: the files of a batch become durable, then visible, together.

Each received file is written to a temp file in its own folder (verified, mode
and mtime set) and staged here instead of being fsynced and renamed at once.
Before the batch is acknowledged, `commit` makes every staged file durable in
one pass (one syncfs(2) of the storage's file system, or one fsync per file
when only a few are staged), renames them into place, and makes the renames
durable with a second pass. The disk then commits its journal twice per batch
instead of twice per file: that was half of a seed's time (bench/RESULTS.md).

A crash before the commit leaves only temp files (removed at start by
`sweep_temp_files`) and nothing acknowledged; a crash between the renames and
the acknowledgement leaves complete files whose batch is sent again. A reader
never sees a partial file either way.

Folders are opened once per batch (no-follow fds, kept until the commit),
not once per file.

A big batch (a seed) does not wait for its whole commit at the end: once a
group holds HAND_OFF_FILES files or HAND_OFF_BYTES bytes, a worker thread
takes it over (`commit_in_thread`: one syncfs, then its renames) while the
next files of the batch are received into a new group. Renames stay in
batch order (a group starts only when the one before it is done, and
anything touching a path of a group still in flight waits for it), and the
batch is acknowledged only after the last group's renames and one more
syncfs covering all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import stat
from dataclasses import dataclass

from replication.paths import split_parent

SYNCFS_FROM = 2
"""Staged files from which one syncfs is cheaper than one fsync each. On this machine's ext4 (each fsync
of a new file commits the journal again, since delayed allocation gives it blocks only then): 1 file
0.41 ms fsync / 0.33 ms syncfs, 2 files 0.70 / 0.44, 4 files 1.12 / 0.53, 8 files 2.12 / 0.62 (medians
of 15). It was 8: at 1,000 files/s a batch holds 5-10 files, and half the batches paid a journal commit
per file; the replica's commit per batch went from 4.6 to 2.7 ms and the lag p50 from 11.2 to 7.5-7.7 ms
(bench, 30 s; the p99 is set by stalls: 18-39 ms in three runs, 22.8 ms in one before). One file keeps its
fsync: a syncfs also flushes whatever else is dirty on the file system, which a quiet link's single
files should not wait for."""
MAX_STAGED = 4000
"""Commit early beyond this many staged files (bounds temp files and memory)."""
MAX_FOLDERS = 256
"""Commit early beyond this many open folder fds."""
HAND_OFF_FILES = 500
HAND_OFF_BYTES = 8 * 1024 * 1024
"""A group this big is committed by a worker thread while the batch goes on (see above)."""


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return getattr(libc, "syncfs", None)


_SYNCFS = _load_syncfs()


def syncfs(fd: int) -> None:
    """Flush the whole file system holding `fd` (Linux syncfs(2)); fsync of `fd` where it is missing."""
    if _SYNCFS is None:
        os.fsync(fd)
        return
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


@dataclass
class Staged:
    path: str
    folder: str
    temp: str
    name: str
    fd: int | None
    """The temp file, kept open for its own fsync while few files are staged; None once syncfs will do."""


class GroupCommit:
    """The staged files of the batch being applied, and the folder fds opened for it."""

    def __init__(self) -> None:
        self._files: dict[str, Staged] = {}
        self._above: set[str] = set()
        """Every folder above a staged path: a put or delete there must commit first."""
        self._folders: dict[str, int] = {}
        self.bytes = 0
        """Content bytes staged."""

    def __len__(self) -> int:
        return len(self._files)

    @property
    def holds_anything(self) -> bool:
        return bool(self._files) or bool(self._folders)

    @property
    def full(self) -> bool:
        return len(self._files) >= MAX_STAGED or len(self._folders) >= MAX_FOLDERS

    @property
    def worth_handing_off(self) -> bool:
        return len(self._files) >= HAND_OFF_FILES or self.bytes >= HAND_OFF_BYTES

    # -- folders -----------------------------------------------------------------
    def folder(self, rel_dir: str) -> int | None:
        """The fd of `rel_dir` opened earlier in this batch (borrowed: do not close it)."""
        return self._folders.get(rel_dir)

    def keep_folder(self, rel_dir: str, fd: int) -> int:
        """Keep a duplicate of `fd` for the rest of the batch; returns the kept fd."""
        kept = self._folders.get(rel_dir)
        if kept is None:
            kept = self._folders[rel_dir] = os.dup(fd)
        return kept

    def forget_folder(self, rel_dir: str) -> None:
        """`rel_dir` was removed again (a refused put took back the folders it made)."""
        fd = self._folders.pop(rel_dir, None)
        if fd is not None:
            os.close(fd)

    # -- files -------------------------------------------------------------------
    def stage(self, path: str, folder: str, temp: str, name: str, fd: int, size: int = 0) -> None:
        """Take over the complete temp file `temp` (its fd, `size` bytes) as the next content of `path`."""
        self.bytes += size
        if len(self._files) >= SYNCFS_FROM and _SYNCFS is not None:
            os.close(fd)
            held: int | None = None
        else:
            held = fd
        self._files[path] = Staged(path, folder, temp, name, held)
        parent = folder
        while parent and parent not in self._above:
            self._above.add(parent)
            parent = split_parent(parent)[0]

    def conflicts(self, path: str) -> bool:
        """True when applying an operation on `path` must wait for the staged files to be in place."""
        if path in self._files or path in self._above:
            return True
        parent = split_parent(path)[0]
        if parent in self._folders:
            # Opened for a file staged below it: it and every folder above it are in `_above`, so
            # none of them can be a staged file (staging one there would have conflicted).
            return False
        while parent:
            if parent in self._files:
                return True
            parent = split_parent(parent)[0]
        return False

    async def make_durable(self, root_fd: int) -> bool:
        """Flush the staged files' content to disk; True when a syncfs did it (it covers folders too)."""
        if not self._files:
            return False
        return await asyncio.to_thread(self._flush, root_fd)

    def _flush(self, fd: int) -> bool:
        """`make_durable` in the calling thread; `fd` is any fd on the storage's file system."""
        files = list(self._files.values())
        if any(f.fd is None for f in files):
            syncfs(fd)
            return True
        _fsync_all([f.fd for f in files if f.fd is not None])
        return False

    def rename_all(self, into: set[str]) -> None:
        """Rename every staged file into place (after `make_durable`), adding each folder renamed in to
        `into` as it goes (a failure half-way leaves the folders already changed there)."""
        for staged in self._files.values():
            rename_into_place(self._folders[staged.folder], staged.temp, staged.name)
            into.add(staged.folder)

    def commit_in_thread(self) -> set[str]:
        """Make the staged files durable (one syncfs) and rename them into place; returns the folders
        renamed in (their renames are not durable yet: a later syncfs must cover them).

        Runs in a worker thread and owns the group from start to end, fds included: a cancelled
        awaiter cannot close a folder fd under a rename still in flight (an fd number reused
        meanwhile would rename in some other folder). On failure what was not renamed is removed.
        """
        try:
            if self._files:
                self._flush(next(iter(self._folders.values())))
            renamed: set[str] = set()
            self.rename_all(renamed)
        except BaseException:
            self.abandon()
            raise
        self.done()
        return renamed

    def done(self) -> None:
        """Everything staged was renamed into place: close what is still open."""
        for staged in self._files.values():
            if staged.fd is not None:
                os.close(staged.fd)
        self._files.clear()
        self._above.clear()
        self.bytes = 0
        self.close_folders()

    def abandon(self) -> None:
        """Remove every staged temp file not renamed yet (a failed commit): nothing half-visible stays."""
        for staged in self._files.values():
            fd = self._folders.get(staged.folder)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(staged.temp, dir_fd=fd)
        self.done()

    def close_folders(self) -> None:
        for fd in self._folders.values():
            os.close(fd)
        self._folders.clear()


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)


def rename_into_place(folder_fd: int, temp: str, name: str) -> None:
    """Rename the staged `temp` over `name` in the folder `folder_fd`."""
    try:
        os.rename(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except IsADirectoryError:  # rename(2) never replaces a folder with a file
        clear_directory_in_the_way(folder_fd, name)
        os.rename(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


def clear_directory_in_the_way(dir_fd: int, name: str) -> None:
    """rename(2) cannot replace a directory with a file: the sender's type wins."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
