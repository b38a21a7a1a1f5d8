"""Apply operations to STORAGE_PATH so that a reader never sees a partial file.

Content goes to a temp file in the target's own directory, is hashed as it
arrives, given its mode (never setuid, setgid or sticky, whatever the sender
says) and mtime, and staged: `commit`, before the batch is acknowledged,
makes every staged file durable at once, renames them over their targets and
makes the renames durable (group_commit.py); a big batch hands its staged
files to a worker thread in groups as it goes. An operation that touches a
staged path (or a folder above one) commits the staged files first, so the
batch's order is kept. All access goes through StorageRoot's no-follow
directory fds (containment).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import secrets
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from replication.delta import Copy, read_instructions
from replication.errors import (
    ContainmentError,
    IntegrityError,
    ProtocolError,
    ReplicationError,
    StorageFullError,
)
from replication.group_commit import GroupCommit, clear_directory_in_the_way, syncfs
from replication.paths import TEMP_PREFIX, StorageRoot, is_temp_name, is_within, split_parent
from replication.protocol import (
    FLAG_DISCARD,
    SHA256,
    ContentCheck,
    Hasher,
    Operation,
    decode_trailer,
    replicated_mode,
)
from replication.write_behind import WRITE_BEHIND_BYTES, WriteBehind

CHUNK = 1024 * 1024

ReadExactly = Callable[[int], Awaitable[bytes]]
Filler = Callable[[int, Hasher], Awaitable[bool]]
"""Writes the new content to the temp fd, hashing it; False when it cannot be the announced file."""


@dataclass
class ApplyOutcome:
    """What applying one operation did, for the acknowledgement and the metrics."""

    applied: bool = True
    bytes_written: int = 0
    delta_fallback: bool = False
    """A delta did not rebuild the announced content; `resend` asks for the whole file."""
    resend: str | None = None
    """A path the sender should send again in full (e.g. a rename whose source is missing here)."""
    discarded: str | None = None


@dataclass
class Applier:
    root: StorageRoot
    _dirty_dirs: set[str] = field(default_factory=set)
    _group: GroupCommit = field(default_factory=GroupCommit)
    _committing: asyncio.Future[set[str]] | None = None
    """The commit of the group handed off before `_group`, in a worker thread (group_commit.py)."""
    _committing_group: GroupCommit | None = None
    _handed_off: int = 0
    """Files handed off whose renames no syncfs has covered yet: still not acknowledgeable."""
    _failure: BaseException | None = None
    """A handed-off group's commit failed: the next `commit` raises it."""
    _temp_name: _TempNames = field(default_factory=lambda: _TempNames())

    async def apply(self, op: Operation, read: ReadExactly, check: ContentCheck = SHA256) -> ApplyOutcome:
        """Apply `op`; for a put, consume exactly its content and trailer from `read`. `check` is the
        batch's whole-file check (SHA-256 when the batch names none: protocol 1-4)."""
        if is_temp_name(op.path) or (op.dest is not None and is_temp_name(op.dest)):
            raise ProtocolError(f"names starting with {TEMP_PREFIX!r} are reserved for in-flight files")
        if self._must_commit_before(op):
            await self.commit()
        try:
            if op.op in ("put", "delta"):
                outcome = await self._put(op, read, check)
                if self._group.full:
                    await self.commit()
                elif self._group.worth_handing_off:
                    self._hand_off()
                return outcome
            return self._apply_meta(op)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError(errno.ENOSPC, f"no space left applying {op.path!r}") from exc
            raise

    @property
    def staged(self) -> int:
        """Files received but not yet committed (not durably in place: not acknowledgeable)."""
        return len(self._group) + self._handed_off

    def _must_commit_before(self, op: Operation) -> bool:
        if op.op in ("put", "delta", "mkdir", "attr"):
            handed = self._committing_group
            return self._group.conflicts(op.path) or (handed is not None and handed.conflicts(op.path))
        # A rename, delete or symlink may move, remove or replace folders this batch keeps open.
        return self._group.holds_anything or self._committing is not None

    def _hand_off(self) -> None:
        """Let a worker thread commit the staged group while the batch goes on, if none is at it.

        One group at a time keeps the renames in batch order. A failure is kept for `commit`, which
        reports the batch as applied only up to where it was before the first handed-off group
        (`staged` counts handed-off files until a syncfs covered their renames)."""
        if self._committing is not None:
            if not self._committing.done():
                return
            self._collect(self._committing)
        if self._failure is not None:
            return
        group, self._group = self._group, GroupCommit()
        self._handed_off += len(group)
        self._committing_group = group
        self._committing = asyncio.ensure_future(asyncio.to_thread(group.commit_in_thread))

    def _collect(self, done: asyncio.Future[set[str]]) -> None:
        self._committing = self._committing_group = None
        if done.exception() is not None:
            self._failure = self._failure or done.exception()
        else:
            self._dirty_dirs.update(done.result())

    async def _wait_handed_off(self) -> None:
        """Until the handed-off group is in place. Shielded: the thread owns that group to its end."""
        committing = self._committing
        if committing is not None:
            await asyncio.wait([committing])  # never raises, and a cancelled wait leaves it running
            self._collect(committing)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def commit(self) -> None:
        """Make the staged files durable, rename them into place, make that durable (before acknowledging).

        On failure the staged temp files are removed: none of them became visible half-way.
        """
        try:
            await self._wait_handed_off()
            with self.root.open_dir("", create=False) as root_fd:
                synced = await self._group.make_durable(root_fd)
                self._group.rename_all(self._dirty_dirs)
                if synced or self._handed_off:  # the folders too: one more pass covers the renames
                    await asyncio.to_thread(_syncfs_quietly, root_fd)
                    self._dirty_dirs.clear()
        except BaseException as exc:
            self._group.abandon()
            self._handed_off = 0
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFullError(errno.ENOSPC, "no space left committing a batch") from exc
            raise
        self._handed_off = 0
        self._group.done()

    async def finish(self) -> None:
        """`commit`, then fsync the folders changed: everything applied so far is durable."""
        await self.commit()
        self.flush()

    def abandon(self) -> None:
        """Drop what is staged (the batch failed before its commit)."""
        self._group.abandon()

    def flush(self) -> None:
        """fsync every directory changed since the last flush (after `commit`, before acknowledging)."""
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        for rel_dir in sorted(dirs):
            with (
                contextlib.suppress(FileNotFoundError, ContainmentError),
                self.root.open_dir(rel_dir, create=False) as fd,
            ):
                os.fsync(fd)

    def _apply_meta(self, op: Operation) -> ApplyOutcome:
        if op.op == "mkdir":
            self._mkdir(op)
        elif op.op == "symlink":
            self._symlink(op)
        elif op.op == "delete":
            self._delete(op.path)
        elif op.op == "rename":
            return self._rename(op)
        elif op.op == "attr":
            return self._attr(op)
        else:
            raise ProtocolError(f"operation {op.op!r} cannot be applied")
        return ApplyOutcome()

    async def _put(self, op: Operation, read: ReadExactly, check: ContentCheck) -> ApplyOutcome:
        """Receive into a temp file, verify, then rename; a refused put leaves no trace, not even folders."""
        created: list[str] = []
        fill = self._delta_filler(op, read) if op.op == "delta" else _plain_filler(op, read)
        try:
            outcome = await self._receive_file(op, read, created, fill, check)
        except BaseException:
            self.root.remove_created(created)
            raise
        if not outcome.applied:
            self.root.remove_created(created)
        return outcome

    async def _receive_file(
        self, op: Operation, read: ReadExactly, created: list[str], fill: Filler, check: ContentCheck
    ) -> ApplyOutcome:
        assert op.size is not None and op.mode is not None and op.mtime_ns is not None
        parent, name = split_parent(op.path)
        digest = check.new()
        dir_fd = self._folder(parent, created)
        temp = self._temp_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
        staged = False
        try:
            consistent = await fill(fd, digest)
            flag, expected = decode_trailer(await read(check.trailer_bytes), check)
            if flag == FLAG_DISCARD:
                return ApplyOutcome(applied=False, discarded=op.path)
            if not consistent or digest.digest() != expected:
                if op.op == "delta":  # our copy was not what the signature said: send it whole
                    return ApplyOutcome(applied=False, resend=op.path, delta_fallback=True)
                raise IntegrityError(f"content of {op.path!r} does not match its {check.name}")
            os.fchmod(fd, replicated_mode(op.mode))
            os.utime(fd, ns=(op.mtime_ns, op.mtime_ns))
            self._group.stage(op.path, parent, temp, name, fd, op.size)
            staged = True
        finally:
            if not staged:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=dir_fd)
                if created:  # the folders go again (_put): so does their fd
                    self._group.forget_folder(parent)
        self._dirty_dirs.update(created)
        return ApplyOutcome(bytes_written=op.size)

    def _folder(self, rel_dir: str, created: list[str]) -> int:
        """The fd of `rel_dir`, created if missing, opened once per batch (borrowed)."""
        fd = self._group.folder(rel_dir)
        if fd is None:
            with self.root.open_dir(rel_dir, create=True, created=created) as opened:
                fd = self._group.keep_folder(rel_dir, opened)
        return fd

    def _delta_filler(self, op: Operation, read: ReadExactly) -> Filler:
        """Rebuild the new content from our current copy (the basis) and the sender's instructions."""
        assert op.size is not None and op.block_size is not None and op.basis_size is not None
        size, block, basis_size = op.size, op.block_size, op.basis_size
        block_count = -(-basis_size // block)

        async def fill(fd: int, digest: Hasher) -> bool:
            basis = self._open_basis(op.path)
            behind = WriteBehind(fd)  # a delta is a big file: its pages go to disk as they are written
            written = 0

            def emit(data: bytes) -> None:
                nonlocal written
                written += len(data)
                if written <= size:  # beyond the announced size: keep reading, write nothing
                    digest.update(data)
                    _write_all(fd, data)
                    behind.wrote(len(data))

            try:
                async for instruction in read_instructions(read, block_count=block_count):
                    if isinstance(instruction, Copy):
                        start = instruction.index * block
                        end = min(start + instruction.count * block, basis_size)
                        for chunk in _pread_chunks(basis, start, end):
                            emit(chunk)
                    else:
                        emit(instruction.data)
            finally:
                if basis is not None:
                    os.close(basis)
                await behind.settle()
            return written == size

        return fill

    def _open_basis(self, path: str) -> int | None:
        """Our copy of `path` if it is a regular file; a FIFO or device there is never opened."""
        try:
            fd, _st = self.root.open_regular(path)
        except (OSError, ReplicationError):
            return None
        return fd

    def _mkdir(self, op: Operation) -> None:
        assert op.mode is not None and op.mtime_ns is not None
        parent, name = split_parent(op.path)
        with self.root.open_dir(parent, create=True) as dir_fd:
            st = _lstat(name, dir_fd)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)
                st = None
            if st is None:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
                self._dirty_dirs.add(parent)
            os.chmod(name, replicated_mode(op.mode), dir_fd=dir_fd, follow_symlinks=False)
            os.utime(name, ns=(op.mtime_ns, op.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _symlink(self, op: Operation) -> None:
        assert op.target is not None and op.mtime_ns is not None
        parent, name = split_parent(op.path)
        with self.root.open_dir(parent, create=True) as dir_fd:
            st = _lstat(name, dir_fd)
            if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == op.target:
                pass
            else:
                temp = self._temp_name(name)
                os.symlink(op.target, temp, dir_fd=dir_fd)
                try:
                    clear_directory_in_the_way(dir_fd, name)
                    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp, dir_fd=dir_fd)
                    raise
                self._dirty_dirs.add(parent)
            os.utime(name, ns=(op.mtime_ns, op.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _delete(self, path: str) -> None:
        parent, name = split_parent(path)
        try:
            with self.root.open_dir(parent, create=False) as dir_fd:
                _remove(dir_fd, name)
        except FileNotFoundError:
            return
        self._dirty_dirs.add(parent)

    def _rename(self, op: Operation) -> ApplyOutcome:
        assert op.dest is not None
        if op.dest == op.path:
            return ApplyOutcome()
        if is_within(op.dest, op.path):
            raise ProtocolError(f"cannot rename {op.path!r} into itself ({op.dest!r})")
        src_parent, src_name = split_parent(op.path)
        dst_parent, dst_name = split_parent(op.dest)
        with contextlib.ExitStack() as stack:
            try:
                src_fd = stack.enter_context(self.root.open_dir(src_parent, create=False))
            except FileNotFoundError:
                return ApplyOutcome(applied=False, resend=op.dest)
            src_st = _lstat(src_name, src_fd)
            if src_st is None:
                return ApplyOutcome(applied=False, resend=op.dest)
            dst_fd = stack.enter_context(self.root.open_dir(dst_parent, create=True))
            if stat.S_ISDIR(src_st.st_mode):
                with contextlib.suppress(FileNotFoundError):
                    _remove(dst_fd, dst_name)
            else:
                clear_directory_in_the_way(dst_fd, dst_name)
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        self._dirty_dirs.update((src_parent, dst_parent))
        return ApplyOutcome()

    def _attr(self, op: Operation) -> ApplyOutcome:
        assert op.mode is not None and op.mtime_ns is not None
        parent, name = split_parent(op.path)
        try:
            with self.root.open_dir(parent, create=False) as dir_fd:
                st = _lstat(name, dir_fd)
                if st is None:
                    return ApplyOutcome(applied=False, resend=op.path)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(name, replicated_mode(op.mode), dir_fd=dir_fd, follow_symlinks=False)
                os.utime(name, ns=(op.mtime_ns, op.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return ApplyOutcome(applied=False, resend=op.path)
        return ApplyOutcome()


def sweep_temp_files(root: str, before_ns: int | None = None) -> int:
    """Remove temp files a killed receiver left behind; returns how many.

    Folders are reached through no-follow fds, so a folder swapped for a symlink
    during the sweep never makes it unlink anything outside the root.

    `before_ns`: only files changed (ctime: `utime` cannot set it back) before then. The plugin store
    stages its files under the same prefix (daemon/store/files.py), and on a leader nothing waits for
    the sweep: a walk of 100,000 files cold takes over a second, and a store write meanwhile would
    have lost its temp file.
    """
    removed = 0
    for _rel_dir, dir_fd, entries in StorageRoot(root).walk_dirs(only=is_temp_name):
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX) or stat.S_ISDIR(entry.st.st_mode):
                continue
            if before_ns is None or entry.st.st_ctime_ns < before_ns:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=dir_fd)
                    removed += 1
    return removed


class _TempNames:
    """Sibling names for in-flight copies, within NAME_MAX whatever the encoding of a name: a random
    token per applier and a counter (O_EXCL still refuses a name that exists; a getrandom(2) per
    file was a syscall on the replica's busiest path)."""

    def __init__(self) -> None:
        self._token = secrets.token_hex(4)
        self._count = itertools.count()

    def __call__(self, name: str) -> str:
        stem = name if len(name) <= 50 else os.fsdecode(os.fsencode(name)[:200])
        return f"{TEMP_PREFIX}{stem}.{self._token}{next(self._count):x}"


async def _copy_content(fd: int, digest: Hasher, read: ReadExactly, size: int) -> bool:
    """A big file's pages go to disk while the rest of it arrives (write_behind.py): the commit's
    fsync of a 128 MiB file waited 50-80 ms for all of them, the link idle meanwhile (1 GiB seed)."""
    behind = WriteBehind(fd) if size >= WRITE_BEHIND_BYTES else None
    remaining = size
    try:
        while remaining:
            chunk = await read(min(CHUNK, remaining))
            digest.update(chunk)
            _write_all(fd, chunk)
            if behind is not None:
                behind.wrote(len(chunk))
            remaining -= len(chunk)
    finally:
        if behind is not None:
            await behind.settle()
    return True


def _plain_filler(op: Operation, read: ReadExactly) -> Filler:
    assert op.size is not None
    size = op.size
    return lambda fd, digest: _copy_content(fd, digest, read, size)


def _pread_chunks(fd: int | None, start: int, end: int) -> Iterator[bytes]:
    """The bytes [start, end) of the basis in bounded chunks; fewer if it is shorter or missing
    (the whole-file hash check then fails and the file is sent whole)."""
    offset = start
    while fd is not None and offset < end:
        chunk = os.pread(fd, min(end - offset, CHUNK), offset)
        if not chunk:
            return
        yield chunk
        offset += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _syncfs_quietly(fd: int) -> None:
    syncfs(fd)
