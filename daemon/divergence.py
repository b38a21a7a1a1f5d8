"""Divergent writes of a demoted leader: found, preserved, reported, never silently deleted.

While leading, the node keeps a mark in STATE_PATH: the wall-clock time up to
which everything it wrote is known to be on the replica (the enqueue time of
the oldest unacknowledged change, or now when nothing is pending). When it
becomes a replica, every file changed after that mark (mtime or ctime) may
exist only here; it is copied to STATE_PATH/conflicts/<epoch>/ with a JSON
report before the new leader's reconciliation overwrites it. The mark is
conservative: it is persisted at most every second, so a crash can only
make it older, which preserves more, never less. Those periodic saves (two
fsyncs) run in a worker thread: on the event loop they stalled every
acknowledgement behind them once a second, tens of milliseconds on a busy disk.

The conflicts area has a retention (CONFLICTS_KEEP demotions, CONFLICTS_MAX_AGE):
`expire` deletes the oldest epoch folders beyond it, and the node logs and
counts each one, so nothing preserved goes unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from replication import manifest, statefile
from replication.errors import ContainmentError, NotRegularFileError
from replication.paths import StorageRoot

COPY_CHUNK = 1 << 20

PERSIST_EVERY = 1.0
MARGIN = 1.0
"""Seconds subtracted from the mark: timestamps of the filesystem and the mark come from different calls."""


@dataclass(frozen=True)
class Expired:
    """One epoch folder of the conflicts area removed by the retention."""

    epoch: int
    files: int
    age_seconds: float
    reason: str
    """count (beyond CONFLICTS_KEEP) or age (older than CONFLICTS_MAX_AGE)."""


@dataclass(frozen=True)
class Conflict:
    path: str
    type: str
    size: int
    sha256: str | None
    mtime: float
    preserved_as: str


class DivergenceTracker:
    def __init__(self, state_path: str, clock: Callable[[], float] = time.time) -> None:
        self._file = os.path.join(state_path, "divergence.json")
        self.conflicts_root = os.path.join(state_path, "conflicts")
        self._clock = clock
        data = statefile.load(self._file)
        self.replicated_until: float | None = data.get("replicated_until")
        self._persisted_at = 0.0
        self._saving = threading.Lock()
        """One save at a time: a periodic one in its thread, a forced one on the caller's."""
        self._periodic: asyncio.Future[None] | None = None

    def leading_from(self, now: float | None = None) -> None:
        """Becoming leader: what is on disk now is what the replica has (or will get by reconciliation)."""
        self._set(self._clock() if now is None else now, force=True)

    def acknowledged(self, oldest_pending_age: float, pending: int) -> None:
        now = self._clock()
        self._set(now if pending == 0 else now - oldest_pending_age, force=False)

    def flush(self) -> None:
        if self.replicated_until is not None:
            self._set(self.replicated_until, force=True)

    def preserve(self, root: str, epoch: int, skip: Callable[[str], bool]) -> list[Conflict]:
        """Copy files changed after the mark to conflicts/<epoch>/ and report them; then forget the mark.

        The storage is read only through StorageRoot (no-follow at every component,
        regular files opened non-blocking and type-checked again on the fd), so a
        folder swapped for a symlink, or a file swapped for a FIFO, while this runs
        is skipped, never followed or waited on. Runs in a worker thread.
        """
        if self.replicated_until is None:
            return []
        since = self.replicated_until - MARGIN
        target = os.path.join(self.conflicts_root, str(epoch))
        storage = StorageRoot(root)
        found: list[Conflict] = []
        for entry in manifest.walk(root, "", skip):
            if entry.type == "dir":
                continue
            st = storage.lstat(entry.path)
            if st is None or max(st.st_mtime, st.st_ctime) <= since:
                continue
            conflict = self._copy(storage, entry.path, st, target)
            if conflict is not None:
                found.append(conflict)
        if found:
            report = os.path.join(target, "report.json")
            existing = _load_report(report)
            existing.extend(asdict(c) for c in found)
            statefile.save(
                report, {"epoch": epoch, "replicated_until": self.replicated_until, "conflicts": existing}
            )
        with self._saving:  # a periodic save still running must not write the old mark back after this
            self.replicated_until = None
            statefile.save(self._file, {})
        return found

    def list(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        if not os.path.isdir(self.conflicts_root):
            return results
        for epoch in sorted(os.listdir(self.conflicts_root)):
            report = _load_report(os.path.join(self.conflicts_root, epoch, "report.json"))
            results.extend({"epoch": epoch, **item} for item in report)
        return results

    def expire(self, keep: int, max_age: float) -> tuple[Expired, ...]:
        """Delete the epoch folders beyond the newest `keep`, and those untouched for `max_age` (0: none)."""
        folders = self._epoch_folders()
        now = self._clock()
        expired = []
        for rank, (epoch, path, changed) in enumerate(folders):
            age = now - changed
            reason = "count" if rank >= keep else ("age" if max_age and age > max_age else "")
            if reason:
                files = len(_load_report(os.path.join(path, "report.json")))
                shutil.rmtree(path)
                expired.append(Expired(epoch, files, round(age, 1), reason))
        return tuple(expired)

    def _epoch_folders(self) -> tuple[tuple[int, str, float], ...]:
        """(epoch, path, last change) of each conflicts/<epoch>/ folder, newest epoch first."""
        try:
            entries = list(os.scandir(self.conflicts_root))
        except FileNotFoundError:
            return ()
        found = []
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                report = os.path.join(entry.path, "report.json")
                changed = os.lstat(report if os.path.lexists(report) else entry.path).st_mtime
                found.append((int(entry.name), entry.path, changed))
        return tuple(sorted(found, reverse=True))

    def _set(self, value: float, *, force: bool) -> None:
        self.replicated_until = value
        now = time.monotonic()
        if force:
            self._save()
            self._persisted_at = now
        elif now - self._persisted_at >= PERSIST_EVERY and (self._periodic is None or self._periodic.done()):
            self._persisted_at = now
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (tools, tests): save here
                self._save()
                return
            self._periodic = loop.run_in_executor(None, self._save)

    def _save(self) -> None:
        """Persist the mark as it is when the write starts: a save that waited for another one writes
        the newer value, never an older one over it."""
        with self._saving:
            if self.replicated_until is not None:
                statefile.save(self._file, {"replicated_until": self.replicated_until})

    def _copy(self, storage: StorageRoot, rel: str, st: os.stat_result, target: str) -> Conflict | None:
        """Preserve `rel` under target/files/; None when it vanished or is no symlink or regular file now."""
        dest = os.path.join(target, "files", rel)
        digest: str | None = None
        if stat.S_ISLNK(st.st_mode):
            link = storage.readlink(rel)
            if link is None:
                return None
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.lexists(dest):
                os.unlink(dest)
            os.symlink(link, dest)
            kind = "symlink"
        else:
            try:
                fd, st = storage.open_regular(rel)
            except (FileNotFoundError, NotADirectoryError, NotRegularFileError, ContainmentError):
                return None
            with open(fd, "rb") as src:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                digest = _copy_from(src, dest, st)
            kind = "file"
        return Conflict(
            path=rel,
            type=kind,
            size=st.st_size,
            sha256=digest,
            mtime=st.st_mtime,
            preserved_as=os.path.relpath(dest, self.conflicts_root),
        )


def _copy_from(src: Any, dest: str, st: os.stat_result) -> str:
    """Copy the open source file to `dest` (replacing what is there, never through a symlink),
    keep its mode bits (no setuid/setgid/sticky) and times; return the sha256 of what was copied."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dest)
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(dest, flags, 0o600), "wb") as fh:
        while chunk := src.read(COPY_CHUNK):
            digest.update(chunk)
            fh.write(chunk)
        os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode) & 0o777)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return digest.hexdigest()


def _load_report(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, ValueError):
        return []
    items = data.get("conflicts", []) if isinstance(data, dict) else []
    return [i for i in items if isinstance(i, dict)]
