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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from dataclasses import dataclass

from replication.paths import split_parent

SYNCFS_FROM = 8
"""Staged files from which one syncfs is cheaper than one fsync each."""
MAX_STAGED = 4000
"""Commit early beyond this many staged files (bounds temp files and memory)."""
MAX_FOLDERS = 256
"""Commit early beyond this many open folder fds."""


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

    def __len__(self) -> int:
        return len(self._files)

    @property
    def holds_anything(self) -> bool:
        return bool(self._files) or bool(self._folders)

    @property
    def full(self) -> bool:
        return len(self._files) >= MAX_STAGED or len(self._folders) >= MAX_FOLDERS

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
    def stage(self, path: str, folder: str, temp: str, name: str, fd: int) -> None:
        """Take over the complete temp file `temp` (and its fd) as the next content of `path`."""
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
        while parent:
            if parent in self._files:
                return True
            parent = split_parent(parent)[0]
        return False

    async def make_durable(self, root_fd: int) -> bool:
        """Flush the staged files' content to disk; True when a syncfs did it (it covers folders too)."""
        files = list(self._files.values())
        if not files:
            return False
        use_syncfs = any(f.fd is None for f in files)
        if use_syncfs:
            await asyncio.to_thread(syncfs, root_fd)
            return True
        await asyncio.to_thread(_fsync_all, [f.fd for f in files if f.fd is not None])
        return False

    def staged(self) -> list[Staged]:
        return list(self._files.values())

    def done(self) -> None:
        """Everything staged was renamed into place: close what is still open."""
        for staged in self._files.values():
            if staged.fd is not None:
                os.close(staged.fd)
        self._files.clear()
        self._above.clear()
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
