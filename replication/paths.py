"""Relative paths on the wire and their containment inside STORAGE_PATH.

Every path a peer sends is checked here before any system call sees it, and
both sides then reach it only through directory file descriptors opened
with O_NOFOLLOW from the storage root: a symlinked parent directory can
never redirect a write (receiver) or a read (sender) outside the root, even
if it appears after the check. Files are opened for reading only when they
are regular files, with O_NONBLOCK, and checked again with fstat after the
open: a FIFO, socket or device is never read, and never blocks the caller.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import NamedTuple

from replication.beneath import OPEN_BENEATH, OpenBeneath
from replication.errors import ContainmentError, NotRegularFileError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_HELD_DIR_FDS = 64
"""A walk keeps at most this many ancestor folders open (deeper ones are reopened from the root)."""
TEMP_PREFIX = ".hs~"
"""Names starting with this are the receiver's in-flight temp files: never replicated, swept on start."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""O_NONBLOCK: opening a FIFO that replaced a file after our lstat returns at once instead of
waiting for a writer (the fstat that follows then refuses it)."""
GONE = (FileNotFoundError, NotADirectoryError, ContainmentError)
"""What "not there for us" looks like: missing, a file where a folder was, or a symlinked folder."""


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
    # Called for every path a peer names and every path the leader reads: the usual clean path
    # is answered by three substring tests, and only a doubtful one is looked at part by part.
    wrapped = f"/{path}/"
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        for part in path.split("/"):
            if part in ("", ".", ".."):
                raise ContainmentError(f"path component {part!r} refused in {path!r}")
    if len(encoded) > MAX_NAME_BYTES and any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
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


def ancestors(path: str) -> list[str]:
    """The folders above `path`, outermost first, the root ('') left out: ['a', 'a/b'] for 'a/b/c'."""
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


def path_key(path: str) -> str:
    """Sorts as the list of path components would ('/' below every character a name may hold), at the
    cost of one string rather than a list of them: a manifest plan's order, in which a folder's
    subtree is one slice."""
    return path.replace("/", "\0")


class DirEntry(NamedTuple):
    """One name in a folder, as lstat saw it; `target` is a symlink's text (never followed).

    A tuple: a walk makes one per name, and a frozen dataclass's __init__ cost twice as much."""

    name: str
    st: os.stat_result
    target: str | None = None


def file_kind(mode: int) -> str:
    """A short name for the type in `mode` (metric labels, logs)."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char_device"),
        (stat.S_ISBLK, "block_device"),
    ):
        if test(mode):
            return name
    return "other"


def is_special(mode: int) -> bool:
    """FIFOs, sockets, devices: never opened, never replicated."""
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


class StorageRoot:
    """STORAGE_PATH, reached only through no-follow directory fds, on both sides of the link.

    The receiver writes through it; the sender, the manifest scan, hashing and
    signatures read through it. A path is resolved one component at a time
    from the root, each folder opened with O_NOFOLLOW, so a folder swapped for
    a symlink at any moment is refused rather than followed.
    """

    def __init__(self, root: str, *, open_beneath: OpenBeneath | None = OPEN_BENEATH) -> None:
        self.root = os.path.abspath(root)
        self._open_beneath = open_beneath
        """One openat2 call for a folder's whole path (replication/beneath.py); None: always by component."""

    def open_dir(self, rel_dir: str, *, create: bool, created: list[str] | None = None) -> _Folder:
        """An fd for the directory `rel_dir` ('' is the root), closed on leaving the `with` block.

        Missing directories are created when `create` is set (and listed in
        `created`, parents first, so a refused write can take them back); a
        symlink on the way is refused; a non-directory on the way is replaced
        (the sender's tree is authoritative).
        """
        return _Folder(self._open_dir_fd(rel_dir, create=create, created=created))

    def _folder(self, checked_dir: str) -> _Folder:
        """`open_dir(checked_dir, create=False)` for a path validated already: lstat, readlink and
        opens run for every change on the leader, so validating it twice shows."""
        return _Folder(self._open_dir_fd(checked_dir, create=False, checked=True))

    def _open_dir_fd(
        self, rel_dir: str, *, create: bool, created: list[str] | None = None, checked: bool = False
    ) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            if rel_dir and not create and self._open_beneath is not None:
                found = self._open_beneath(fd, rel_dir if checked else validate_relpath(rel_dir), _DIR_FLAGS)
                if found is not None:
                    os.close(fd)
                    return found
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
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove_created(self, created: list[str]) -> None:
        """Take back directories that `open_dir` created, deepest first, if still empty."""
        for rel_dir in reversed(created):
            parent, name = split_parent(rel_dir)
            with contextlib.suppress(OSError), self.open_dir(parent, create=False) as fd:
                os.rmdir(name, dir_fd=fd)

    def open_for_reading(self, rel: str) -> int:
        """An fd on `rel` itself (never a symlink's target), reached without following links.

        Opened with O_NONBLOCK, so a FIFO here cannot block; callers that read
        must check fstat (or use `open_regular`, which does).
        """
        parent, name = split_parent(validate_relpath(rel))
        with self._folder(parent) as dir_fd:
            return os.open(name, _READ_FLAGS, dir_fd=dir_fd)

    def parent_folder(self, rel: str) -> _Folder:
        """The folder holding `rel`, for `lstat` and `open_regular` of it through one folder fd: the
        leader does both for every small file it sends, and opening the folder once instead of twice
        is a quarter of those syscalls. Raises FileNotFoundError, NotADirectoryError or
        ContainmentError when that folder is not there for us."""
        return self._folder(split_parent(validate_relpath(rel))[0])

    def open_regular(
        self, rel: str, parent_fd: int | None = None, lstat: os.stat_result | None = None
    ) -> tuple[int, os.stat_result]:
        """An fd and its fstat for the regular file `rel`; NotRegularFileError for anything else.

        lstat first, so a FIFO, socket or device is never even opened; then
        open with O_NOFOLLOW | O_NONBLOCK and fstat again, so something swapped
        in between the two is refused too. FileNotFoundError when it is gone,
        ContainmentError when a folder on the way is a symlink. `parent_fd`: the
        `parent_folder` of `rel`, open already; `lstat`: what `lstat(rel, parent_fd)` just found
        there (it is not asked again).
        """
        parent, name = split_parent(validate_relpath(rel))
        if parent_fd is not None:
            return _open_regular_in(parent_fd, rel, name, lstat)
        with self._folder(parent) as dir_fd:
            return _open_regular_in(dir_fd, rel, name)

    def lstat(self, rel: str, parent_fd: int | None = None) -> os.stat_result | None:
        """lstat of `rel` itself, or None when it is gone or a folder on its way is no real folder.
        `parent_fd`: the `parent_folder` of `rel`, open already."""
        try:
            parent, name = split_parent(validate_relpath(rel))
            if parent_fd is not None:
                return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            with self._folder(parent) as dir_fd:
                return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except GONE:
            return None

    def readlink(self, rel: str) -> str | None:
        """The text of the symlink `rel`, or None when it is gone or no symlink any more."""
        try:
            parent, name = split_parent(validate_relpath(rel))
            with self._folder(parent) as dir_fd:
                return os.readlink(name, dir_fd=dir_fd)
        except GONE:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # replaced by something that is no symlink
                return None
            raise

    def list_dir(self, rel_dir: str) -> list[DirEntry] | None:
        """The folder's entries sorted by name (lstat, link text), or None when it is not a real folder."""
        try:
            with self.open_dir(rel_dir, create=False) as dir_fd:
                return sorted(_entries(dir_fd), key=lambda e: e.name)
        except GONE:
            return None

    def kinds_below(self, rel_dir: str, enter: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
        """(path, kind) of `rel_dir` and of everything below it that `enter` accepts, parents first;
        kind is "dir", "file", "symlink" or "other" (FIFO, socket, device).

        The kinds come from the folder listings (the directory entry's type), not from an lstat of each
        name: for a folder just made, whose files the watcher waits for anyway, that lstat was most of
        its loop's time in a burst of new files (Watcher._folder_made). Folders are opened no-follow
        from their parent's fd; one that is gone or was swapped for a symlink is left out."""
        try:
            top = self._open_dir_fd(rel_dir, create=False)
        except GONE:
            return
        yield rel_dir, "dir"
        stack: list[tuple[str, int]] = [(rel_dir, top)]
        try:
            while stack:
                rel, fd = stack.pop()
                try:
                    folders: list[str] = []
                    with os.scandir(fd) as listing:
                        for child in listing:
                            path = _join(rel, child.name)
                            if not enter(path):
                                continue
                            try:
                                kind = _kind_of(child)
                            except FileNotFoundError:
                                continue
                            yield path, kind
                            if kind == "dir":
                                folders.append(path)
                    for path in reversed(folders):  # popped in listing order
                        child_fd = self._open_below(fd, path)
                        if child_fd is not None:  # else gone, or no real folder any more
                            stack.append((path, child_fd))
                finally:
                    os.close(fd)
        finally:
            for _rel, fd_left in stack:
                os.close(fd_left)

    def walk_dirs(
        self,
        rel_dir: str = "",
        enter: Callable[[str], bool] = lambda _rel: True,
        only: Callable[[str], bool] | None = None,
    ) -> Iterator[tuple[str, int, list[DirEntry]]]:
        """(rel_dir, fd, entries sorted by name) for `rel_dir` and every real folder below it that
        `enter` accepts, in pre-order (a folder's entries before anything deeper).

        `only`: list just the folders and the names it accepts. The others are not lstat'ed (the
        directory's own entry type tells a folder): the temp-file sweep of 110,000 entries looks at
        the 10,000 folders and its own names only, instead of an lstat per entry that held the GIL
        against the watcher adding its watches at a leader's start (issue 15).

        Each folder is opened with O_NOFOLLOW relative to its parent's fd, so a folder
        swapped for a symlink during the walk is listed as what it is now and never
        entered. Folders that vanish meanwhile are skipped. At most MAX_HELD_DIR_FDS
        ancestors stay open; deeper folders are reopened from the root.
        """
        try:
            top = self._open_dir_fd(rel_dir, create=False)
        except GONE:
            return
        frames: list[tuple[str, int | None, Iterator[str]]] = []
        try:
            current: tuple[str, int] | None = (rel_dir, top)
            while True:
                if current is not None:
                    rel, fd = current
                    try:
                        entries = sorted(_entries(fd, only), key=_BY_NAME)
                        yield rel, fd, entries
                    except BaseException:  # closed while this folder was being handled
                        os.close(fd)
                        raise
                    below = [_join(rel, e.name) for e in entries if stat.S_ISDIR(e.st.st_mode)]
                    pending = iter([r for r in below if enter(r)])
                    if len(frames) >= MAX_HELD_DIR_FDS:
                        os.close(fd)
                        frames.append((rel, None, pending))
                    else:
                        frames.append((rel, fd, pending))
                if not frames:
                    return
                _parent, parent_fd, waiting = frames[-1]
                child = next(waiting, None)
                if child is None:
                    frames.pop()
                    if parent_fd is not None:
                        os.close(parent_fd)
                    current = None
                    continue
                child_fd = self._open_below(parent_fd, child)
                current = None if child_fd is None else (child, child_fd)
        finally:
            for _rel, fd_left, _pending in frames:
                if fd_left is not None:
                    os.close(fd_left)

    def _open_below(self, parent_fd: int | None, rel: str) -> int | None:
        """The folder `rel` opened from its parent's fd (or from the root); None if no real folder now."""
        try:
            if parent_fd is None:
                return self._open_dir_fd(rel, create=False)
            return os.open(split_parent(rel)[1], _DIR_FLAGS, dir_fd=parent_fd)
        except GONE:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink or a file now: not entered
                return None
            raise

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


class _Folder:
    """An open folder fd, closed on leaving the `with` block."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)


_BY_NAME = itemgetter(0)
"""DirEntry.name, as a sort key."""


def _join(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


def _open_regular_in(
    dir_fd: int, rel: str, name: str, before: os.stat_result | None = None
) -> tuple[int, os.stat_result]:
    if before is None:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    _require_regular(rel, before.st_mode)
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the lstat
            raise NotRegularFileError(f"{rel!r} is a symlink now", st_mode=stat.S_IFLNK) from exc
        raise
    try:
        st = os.fstat(fd)
        _require_regular(rel, st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _require_regular(rel: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{rel!r} is a {file_kind(mode)}, not a regular file", st_mode=mode)


def _kind_of(child: os.DirEntry[str]) -> str:
    """The kind of a listed name from its directory entry's type (an lstat only where the file system
    gives none)."""
    if child.is_symlink():
        return "symlink"
    if child.is_dir(follow_symlinks=False):
        return "dir"
    if child.is_file(follow_symlinks=False):
        return "file"
    return "other"


def _entries(dir_fd: int, only: Callable[[str], bool] | None = None) -> Iterator[DirEntry]:
    """lstat (and link text) of every name in the open folder, or with `only` of its folders and the
    names `only` accepts; names that vanish meanwhile are left out."""
    with os.scandir(dir_fd) as it:
        for child in it:
            if only is not None and not only(child.name) and not child.is_dir(follow_symlinks=False):
                continue
            try:
                st = child.stat(follow_symlinks=False)
                target = os.readlink(child.name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # a symlink replaced by something else between the two calls
                    continue
                raise
            yield DirEntry(child.name, st, target)
