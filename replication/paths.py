"""Relative paths on the wire and their containment inside STORAGE_PATH.

Every path a peer sends is checked here before any system call sees it, and
the receiver then reaches it only through directory file descriptors opened
with O_NOFOLLOW from the storage root: a symlinked parent directory can
never redirect a write outside the root, even if it appears after the check.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from replication.errors import ContainmentError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
TEMP_PREFIX = ".hs~"
"""Names starting with this are the receiver's in-flight temp files: never replicated, swept on start."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def validate_relpath(path: object) -> str:
    """Return `path` if it is a canonical relative path, else raise ContainmentError.

    Canonical means: a non-empty str, no NUL, not absolute, no empty, `.` or
    `..` component, and within the kernel's length limits.
    """
    if not isinstance(path, str) or not path:
        raise ContainmentError("path must be a non-empty string")
    if "\x00" in path:
        raise ContainmentError("path contains a NUL byte")
    if path.startswith("/"):
        raise ContainmentError(f"absolute path refused: {path!r}")
    try:
        encoded = os.fsencode(path)
    except UnicodeError as exc:
        raise ContainmentError("path is not encodable") from exc
    if len(encoded) > MAX_PATH_BYTES:
        raise ContainmentError("path too long")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ContainmentError(f"path component {part!r} refused in {path!r}")
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise ContainmentError("path component too long")
    return path


def is_temp_name(path: str) -> bool:
    """True for the receiver's own temp files, which must never be replicated."""
    return path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)


def is_within(path: str, prefix: str) -> bool:
    """True when `path` is `prefix` itself or lies below it (both relative)."""
    return path == prefix or path.startswith(prefix + "/")


def rebase(path: str, old_prefix: str, new_prefix: str) -> str:
    """Move `path` from under `old_prefix` to under `new_prefix`."""
    return new_prefix + path[len(old_prefix) :]


def split_parent(path: str) -> tuple[str, str]:
    """('a/b', 'c') for 'a/b/c'; ('', 'c') for 'c'."""
    parent, _, name = path.rpartition("/")
    return parent, name


class StorageRoot:
    """The receiving side's STORAGE_PATH, reached only through no-follow directory fds."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    @contextlib.contextmanager
    def open_dir(self, rel_dir: str, *, create: bool, created: list[str] | None = None) -> Iterator[int]:
        """Yield an fd for the directory `rel_dir` ('' is the root).

        Missing directories are created when `create` is set (and listed in
        `created`, parents first, so a refused write can take them back); a
        symlink on the way is refused; a non-directory on the way is replaced
        (the sender's tree is authoritative).
        """
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            if rel_dir:
                parts = validate_relpath(rel_dir).split("/")
                for depth, part in enumerate(parts, start=1):
                    child, made = self._open_child_dir(
                        fd, part, create=create, rel_dir=rel_dir, at="/".join(parts[:depth])
                    )
                    if made and created is not None:
                        created.append("/".join(parts[:depth]))
                    os.close(fd)
                    fd = child
            yield fd
        finally:
            os.close(fd)

    def remove_created(self, created: list[str]) -> None:
        """Take back directories that `open_dir` created, deepest first, if still empty."""
        for rel_dir in reversed(created):
            parent, name = split_parent(rel_dir)
            with contextlib.suppress(OSError), self.open_dir(parent, create=False) as fd:
                os.rmdir(name, dir_fd=fd)

    def open_for_reading(self, rel: str) -> int:
        """An fd on `rel` itself (never a symlink's target), reached without following links."""
        parent, name = split_parent(validate_relpath(rel))
        with self.open_dir(parent, create=False) as dir_fd:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)

    def _open_child_dir(
        self, parent_fd: int, name: str, *, create: bool, rel_dir: str, at: str
    ) -> tuple[int, bool]:
        made = False
        for _attempt in range(3):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent_fd), made
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
                    made = True
                except FileExistsError:
                    pass
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise ContainmentError(
                        f"refusing to follow symlinked directory {name!r} in {rel_dir!r}", symlink_at=at
                    ) from exc
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "not a directory", rel_dir) from exc
                os.unlink(name, dir_fd=parent_fd)
        raise ContainmentError(f"directory {rel_dir!r} keeps changing under us")
