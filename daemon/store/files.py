"""Atomic, contained file operations under the plugin storage root.

Every path is relative to PLUGIN_STORAGE_ROOT, checked by `validate_relpath`, and reached
through StorageRoot's no-follow directory fds, so no identifier, symlink or race can make
the store write, move or delete outside the root. New content goes to a temp file in the
target's own folder (named with the replication temp prefix, so the watcher never ships a
half-written package), is fsynced, renamed over the target, and the folder is fsynced.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from replication.paths import TEMP_PREFIX, StorageRoot, split_parent, validate_relpath

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class PendingFile:
    """A temp file beside `rel`, written by the caller, then `commit`ted or `discard`ed."""

    root: StorageRoot
    rel: str
    mode: int = 0o644
    create_dirs: bool = True
    """Create missing folders on the way (and take them back on discard); off when the folder must exist."""
    fd: int = -1
    size: int = 0
    _temp: str = ""
    _created: list[str] = field(default_factory=list)

    def open(self) -> PendingFile:
        parent, name = split_parent(validate_relpath(self.rel))
        self._temp = f"{TEMP_PREFIX}{name[:180]}.{secrets.token_hex(4)}"
        with self.root.open_dir(parent, create=self.create_dirs, created=self._created) as dir_fd:
            self.fd = os.open(self._temp, _NEW_FILE, 0o600, dir_fd=dir_fd)
        return self

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def rewind(self) -> None:
        """Start over (a retried download): empty the temp file."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0

    def reader(self) -> int:
        """A second fd on the temp content, for verification before the rename."""
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def commit(self) -> None:
        """fsync, rename over the target, fsync the folder; the target appears complete or not at all."""
        os.fchmod(self.fd, self.mode)
        os.fsync(self.fd)
        parent, name = split_parent(self.rel)
        with self.root.open_dir(parent, create=False) as dir_fd:
            os.rename(self._temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            self._temp = ""
            os.fsync(dir_fd)
        self._close()

    def discard(self) -> None:
        """Remove the temp file and any folder `open` created for it: nothing is left behind."""
        self._close()
        if self._temp:
            parent, _name = split_parent(self.rel)
            with contextlib.suppress(FileNotFoundError), self.root.open_dir(parent, create=False) as dir_fd:
                os.unlink(self._temp, dir_fd=dir_fd)
            self._temp = ""
        self.root.remove_created(self._created)

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def file_size(root: StorageRoot, rel: str) -> int | None:
    """The size of the regular file `rel` (reached without following any symlink), or None."""
    try:
        fd = root.open_for_reading(rel)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        return st.st_size if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


@contextlib.contextmanager
def opened(root: StorageRoot, rel: str) -> Iterator[int]:
    """A read fd on the regular file `rel` (FileNotFoundError when it is absent or not a file)."""
    fd = root.open_for_reading(rel)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(rel)
        yield fd
    finally:
        os.close(fd)


def move(root: StorageRoot, src: str, dest: str) -> None:
    """Rename `src` to `dest` (creating dest's folders), then fsync both folders."""
    src_parent, src_name = split_parent(validate_relpath(src))
    dest_parent, dest_name = split_parent(validate_relpath(dest))
    with (
        root.open_dir(src_parent, create=False) as src_fd,
        root.open_dir(dest_parent, create=True) as dest_fd,
    ):
        os.rename(src_name, dest_name, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
        os.fsync(dest_fd)
        os.fsync(src_fd)


def remove(root: StorageRoot, rel: str) -> None:
    """Delete the file, symlink or whole folder `rel` without following symlinks."""
    parent, name = split_parent(validate_relpath(rel))
    with root.open_dir(parent, create=False) as dir_fd:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
        os.fsync(dir_fd)
