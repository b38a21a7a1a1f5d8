"""The replica folder on a plain SSH host, changed only through SFTP and only inside itself.

SFTP names files by path and the server resolves symlinks in the folders on
the way, so before any write, delete or rename every folder above the path is
checked with lstat (once per group of parallel changes): a symlink or file
where a folder must be is removed and replaced by a real folder, never
followed. A
file is written to a `.hs~` temp name in its final folder, fsynced when the
server offers fsync@openssh.com, given its mode and mtime, and renamed over
the destination with posix-rename@openssh.com, so a reader on the host sees
the old file or the new one, never a partial one.

What remains: SFTP has no *at() calls, so a symlink planted by someone else
between our lstat and our write is not caught. The target folder is meant to
be written by this link alone; each reconciliation (every reconnect and every
anti-entropy pass) finds and repairs anything planted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh
from asyncssh import SFTPAttrs, SFTPClient

from replication import manifest
from replication.errors import ContainmentError
from replication.paths import TEMP_PREFIX, is_temp_name, validate_relpath

CHUNK = 1024 * 1024
WALK_CONCURRENCY = 16


@dataclass
class RemoteListing:
    entries: dict[str, manifest.Entry]
    temps: list[str]
    """Leftover temp files of interrupted transfers."""


class RemoteTree:
    """One SFTP session's view of the target folder; every path given is relative to it."""

    def __init__(self, sftp: SFTPClient, root: str) -> None:
        self.sftp = sftp
        self.root = root
        self._fsync = True
        """Cleared when the server lacks fsync@openssh.com (the rename still makes the write atomic)."""
        self._folders: dict[str, asyncio.Task[bool]] = {}
        """Folders checked (or made) since `forget_folders`: parallel writes in one folder check it once."""

    def full(self, rel: str) -> str:
        return posixpath.join(self.root, validate_relpath(rel)) if rel else self.root

    async def prepare(self) -> None:
        """Create the target folder if needed (the operator named it: here symlinks are followed)."""
        await self.sftp.makedirs(self.root, exist_ok=True)
        if not await self.sftp.isdir(self.root):
            raise asyncssh.SFTPNotADirectory(f"{self.root} is not a folder on the remote host")

    # -- looking ---------------------------------------------------------------------
    async def lstat(self, rel: str) -> SFTPAttrs | None:
        try:
            return await self.sftp.lstat(self.full(rel))
        except asyncssh.SFTPNoSuchFile:
            return None

    async def listing(self, skip: Callable[[str], bool]) -> RemoteListing:
        """Type, size, mode, mtime (seconds) and symlink target of everything below the root."""
        found = RemoteListing({}, [])
        limit = asyncio.Semaphore(WALK_CONCURRENCY)

        async def walk(rel_dir: str) -> None:
            async with limit:
                names = [n async for n in self.sftp.scandir(self.full(rel_dir))]
            subdirs: list[str] = []
            symlinks: list[asyncio.Task[None]] = []
            for name in names:
                filename = str(name.filename)
                if filename in (".", "..") or "/" in filename:
                    continue
                rel = f"{rel_dir}/{filename}" if rel_dir else filename
                if not _acceptable(rel):  # the server's names are peer input too
                    continue
                if is_temp_name(rel):
                    found.temps.append(rel)
                    continue
                if skip(rel):
                    continue
                entry = _entry(rel, name.attrs)
                if entry is None:
                    continue
                found.entries[rel] = entry
                if entry.type == "dir":
                    subdirs.append(rel)
                elif entry.type == "symlink":
                    symlinks.append(asyncio.create_task(read_symlink(rel, entry)))
            await asyncio.gather(*symlinks, *(walk(d) for d in subdirs))

        async def read_symlink(rel: str, entry: manifest.Entry) -> None:
            async with limit:
                target = str(await self.sftp.readlink(self.full(rel)))
            found.entries[rel] = manifest.Entry(rel, "symlink", entry.mode, entry.mtime_ns, target=target)

        await walk("")
        return found

    # -- changing --------------------------------------------------------------------
    def forget_folders(self) -> None:
        """Check every folder again from now on (called before each group of changes)."""
        self._folders = {}

    async def ensure_parent(self, rel: str) -> None:
        """mkdir -p of the folders above `rel`, replacing (never following) anything that is no folder."""
        parent = rel.rpartition("/")[0]
        if parent:
            await self._folder(parent)

    async def _folder(self, folder: str) -> bool:
        """Make sure `folder` is a real folder; True when it had to be made now.

        One task per folder and per group of changes: parallel writes in a folder share its
        check, and only one of them can ever replace what stood in its way.
        """
        task = self._folders.get(folder)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._folders[folder] = asyncio.ensure_future(self._check_folder(folder))
        return await asyncio.shield(task)

    async def _check_folder(self, folder: str) -> bool:
        parent = folder.rpartition("/")[0]
        parent_made = await self._folder(parent) if parent else False
        attrs = None if parent_made else await self.lstat(folder)  # in a new folder nothing exists yet
        if attrs is not None and _is_dir(attrs):
            return False
        if attrs is not None:
            await self.remove(folder)  # a symlink or a file where a folder must be: replaced, not followed
        await self._mkdir(folder)
        return True

    async def make_dir(self, rel: str, mode: int) -> None:
        await self.ensure_parent(rel)
        attrs = await self.lstat(rel)
        if attrs is not None and not _is_dir(attrs):
            await self.remove(rel)
            attrs = None
        if attrs is None:
            await self._mkdir(rel)
        await self.sftp.setstat(self.full(rel), SFTPAttrs(permissions=mode))

    async def put_file(self, rel: str, fd: int, size: int, mode: int, times: tuple[int, int]) -> int | None:
        """Write `fd` to `rel` atomically; the bytes sent, or None if the file changed meanwhile."""
        await self.ensure_parent(rel)
        temp = self._temp_beside(rel)
        try:
            sent = await self._write_temp(temp, fd, size, mode, times)
            if sent is None:
                await self.remove(temp)
                return None
            await self._replace(temp, rel)
        except BaseException:
            with contextlib.suppress(asyncssh.Error, OSError):
                await asyncio.shield(self.remove(temp))
            raise
        return sent

    async def put_symlink(self, rel: str, target: str, times: tuple[int, int]) -> None:
        """Create the symlink under a temp name and rename it over `rel` (never writing through it)."""
        await self.ensure_parent(rel)
        temp = self._temp_beside(rel)
        await self.sftp.symlink(target, self.full(temp))
        try:
            await self._replace(temp, rel)
        except BaseException:
            with contextlib.suppress(asyncssh.Error, OSError):
                await asyncio.shield(self.remove(temp))
            raise
        await self.set_symlink_times(rel, times)

    async def set_attrs(self, rel: str, mode: int, times: tuple[int, int]) -> bool:
        """chmod and utime of a regular file already there; False when it is not (send it whole then)."""
        await self.ensure_parent(rel)
        attrs = await self.lstat(rel)
        if attrs is None or not stat.S_ISREG(attrs.permissions or 0):
            return False
        await self.sftp.setstat(self.full(rel), SFTPAttrs(permissions=mode, atime=times[0], mtime=times[1]))
        return True

    async def set_symlink_times(self, rel: str, times: tuple[int, int]) -> None:
        """A symlink's own mtime, with lsetstat@openssh.com when offered (never through the link)."""
        with contextlib.suppress(asyncssh.SFTPOpUnsupported, asyncssh.SFTPFailure):
            await self.sftp.setstat(
                self.full(rel), SFTPAttrs(atime=times[0], mtime=times[1]), follow_symlinks=False
            )

    async def delete(self, rel: str) -> None:
        """Remove `rel` (a whole folder included) if it is inside the tree; nothing when it is gone."""
        if not await self._inside(rel):
            return
        await self.remove(rel)

    async def rename(self, src: str, dest: str) -> bool:
        """Move `src` to `dest`; False when `src` is not there (the caller sends `dest` instead)."""
        if not await self._inside(src):
            return False
        src_attrs = await self.lstat(src)
        if src_attrs is None:
            return False
        await self.ensure_parent(dest)
        dest_attrs = await self.lstat(dest)
        if dest_attrs is not None and (_is_dir(dest_attrs) or _is_dir(src_attrs)):
            await self.remove(dest)  # rename(2) cannot replace a folder, nor a file by a folder
        await self.sftp.posix_rename(self.full(src), self.full(dest))
        return True

    async def remove(self, rel: str) -> None:
        """Remove `rel` itself: a folder with its content, a symlink as a link; gone is fine."""
        attrs = await self.lstat(rel)
        if attrs is None:
            return
        try:
            if _is_dir(attrs):
                await self.sftp.rmtree(self.full(rel))  # unlinks symlinks inside, never follows them
            else:
                await self.sftp.remove(self.full(rel))
        except asyncssh.SFTPNoSuchFile:
            pass

    # -- internals -------------------------------------------------------------------
    async def _inside(self, rel: str) -> bool:
        """Every folder above `rel` is a real folder here: nothing outside can be reached through it."""
        parts = rel.split("/")[:-1]
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        found = await asyncio.gather(*(self.lstat(p) for p in prefixes))
        return all(attrs is not None and _is_dir(attrs) for attrs in found)

    async def _mkdir(self, rel: str) -> None:
        try:
            await self.sftp.mkdir(self.full(rel))
        except asyncssh.SFTPError:
            attrs = await self.lstat(rel)  # made meanwhile by a parallel write in the same folder?
            if attrs is None or not _is_dir(attrs):
                raise

    def _temp_beside(self, rel: str) -> str:
        parent = rel.rpartition("/")[0]
        name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        return f"{parent}/{name}" if parent else name

    async def _write_temp(
        self, temp: str, fd: int, size: int, mode: int, times: tuple[int, int]
    ) -> int | None:
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        before = os.fstat(fd)
        async with self.sftp.open(self.full(temp), flags, SFTPAttrs(permissions=0o600), encoding=None) as fh:
            offset = 0
            while offset < size:
                chunk = os.pread(fd, min(CHUNK, size - offset), offset)
                if not chunk:
                    return None  # it shrank while we read it
                await fh.write(chunk, offset)
                offset += len(chunk)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (size, before.st_mtime_ns):
                return None  # written to while we read it: its close will queue it again
            if self._fsync:
                try:
                    await fh.fsync()
                except asyncssh.SFTPOpUnsupported:
                    self._fsync = False
            await fh.setstat(SFTPAttrs(permissions=mode, atime=times[0], mtime=times[1]))
        return offset

    async def _replace(self, temp: str, rel: str) -> None:
        """Rename `temp` over `rel` in one step; a folder in the way is removed first."""
        try:
            await self.sftp.posix_rename(self.full(temp), self.full(rel))
        except asyncssh.SFTPFailure:
            attrs = await self.lstat(rel)
            if attrs is None or not _is_dir(attrs):
                raise
            await self.remove(rel)  # rename(2) cannot replace a folder by a file
            await self.sftp.posix_rename(self.full(temp), self.full(rel))


def _is_dir(attrs: SFTPAttrs) -> bool:
    return stat.S_ISDIR(attrs.permissions or 0)


def _entry(rel: str, attrs: SFTPAttrs) -> manifest.Entry | None:
    """A manifest entry from SFTP attributes (mtime has whole seconds only in SFTP v3)."""
    kind = attrs.permissions or 0
    mode = stat.S_IMODE(kind)
    mtime_ns = (attrs.mtime or 0) * 1_000_000_000
    if stat.S_ISREG(kind):
        return manifest.Entry(rel, "file", mode, mtime_ns, attrs.size or 0)
    if stat.S_ISDIR(kind):
        return manifest.Entry(rel, "dir", mode, mtime_ns)
    if stat.S_ISLNK(kind):
        return manifest.Entry(rel, "symlink", mode, mtime_ns)
    return None


def _acceptable(rel: str) -> bool:
    """A name from the server that is a path we could send or delete (no NUL, within PATH_MAX)."""
    try:
        validate_relpath(rel)
    except ContainmentError:
        return False
    return True
