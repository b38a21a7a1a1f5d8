"""The leader's link to a plain host that runs only sshd (a DR copy, like lsyncd's rsyncssh).

Same journal as the HTTP link, same surface for the node and the API, but
the far side has no daemon: each change is carried out with SFTP calls
(see sftp_remote.py) and acknowledged in the journal only once those calls
completed. Without a replica that remembers what it applied, every
(re)connection starts with a reconciliation: the remote tree is listed over
SFTP and compared with the local one by rsync's quick check (type, size,
mtime to the second, mode, link target); what differs is queued in the
journal, then the link goes on from the journal.

Within a batch, consecutive file writes run in parallel (they touch distinct
paths); folders, deletes and renames are barriers, so order is kept where it
matters.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
import structlog

from replication import manifest
from replication.backoff import Backoff
from replication.errors import ContainmentError, PeerError, RemoteOperationError
from replication.journal import Change, Journal
from replication.metrics import ReplicationMetrics
from replication.paths import is_special
from replication.protocol import SPECIAL_MODE_BITS, replicated_mode
from replication.sender import MAX_REFUSALS, SyncSummary
from replication.sftp_remote import RemoteTree
from replication.source import SentObjects, SourceTree, SpecialFiles, next_batch
from replication.ssh_target import SshTarget

log = structlog.get_logger("replication.sftp_link")

NS = 1_000_000_000
_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)


@dataclass(frozen=True)
class SftpSettings:
    target: SshTarget
    key_file: str
    known_hosts: str
    heartbeat_interval: float = 1.0
    batch_max_ops: int = 2000
    batch_max_bytes: int = 32 * 1024 * 1024
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0
    """An SSH keepalive this often; three unanswered ones drop the link."""
    max_backoff: float = 5.0
    parallel_writes: int = 16


class SftpSender:
    def __init__(
        self,
        settings: SftpSettings,
        root: str,
        journal: Journal,
        metrics: ReplicationMetrics,
        skip: Callable[[str], bool],
        epoch: Callable[[], int],
        record_tree: Callable[[str], int],
    ) -> None:
        self.settings = settings
        self.root = root
        self.journal = journal
        self.metrics = metrics
        self._skip = skip
        self._epoch = epoch  # unused: a plain host has no epoch to fence us with
        self._record_tree = record_tree
        self._tree = SourceTree(root, SpecialFiles(metrics.special_files_skipped))
        self._sent = SentObjects(self._tree)
        self._remote: RemoteTree | None = None
        self._remote_lock = asyncio.Lock()
        """Held by each batch and each reconciliation: a listing never sees our own temp files in flight."""
        self._acked = asyncio.Condition()
        self._failures: dict[int, int] = {}
        self.connected = False
        self.last_error: str | None = None
        self.last_ack_at: float | None = None
        self.bytes_sent = 0
        self.fenced_by: int | None = None
        self.baseline_seq: int | None = None
        self.on_ack: Callable[[], None] = lambda: None

    @property
    def holds_copy(self) -> bool:
        """The host applied this link's last plan: it holds a full copy."""
        return self.baseline_seq is not None and self.journal.acked >= self.baseline_seq

    # -- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        """Replicate until cancelled; reconnect with capped, jittered backoff."""
        backoff = Backoff(self.settings.max_backoff)
        try:
            while True:
                try:
                    async with (
                        asyncssh.connect(self.settings.target.host, **self._options()) as conn,
                        conn.start_sftp_client() as sftp,
                    ):
                        self._remote = RemoteTree(sftp, self.settings.target.path)
                        await self._link_up()
                        backoff.reset()
                        await self._stream()
                except (asyncssh.Error, asyncssh.KeyImportError, OSError, TimeoutError, PeerError) as exc:
                    self._down(self._describe(exc))
                    log.warning(
                        "replication_link_down",
                        target=str(self.settings.target),
                        error=self.last_error,
                        retry_in=round(backoff.current, 2),
                    )
                finally:
                    self._remote = None
                await backoff.sleep()
        finally:
            self._down(self.last_error)

    def _options(self) -> dict[str, Any]:
        """Keys only (no agent, password or ~/.ssh/config); the host key checked against known_hosts."""
        return {
            "port": self.settings.target.port,
            "username": self.settings.target.user,
            "client_keys": [self.settings.key_file],
            "known_hosts": self.settings.known_hosts,
            "config": None,
            "agent_path": None,
            "password_auth": False,
            "kbdint_auth": False,
            "connect_timeout": self.settings.connect_timeout,
            "keepalive_interval": self.settings.keepalive_interval,
            "keepalive_count_max": 3,
        }

    def _describe(self, exc: BaseException) -> str:
        where = str(self.settings.target)
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return (
                f"{where}: host key not verified against SSH_KNOWN_HOSTS "
                f"({self.settings.known_hosts}): {exc.reason}"
            )
        if isinstance(exc, asyncssh.KeyImportError):
            return f"{where}: SSH_KEY_FILE ({self.settings.key_file}) could not be loaded: {exc}"
        if isinstance(exc, asyncssh.PermissionDenied):
            return f"{where}: the key in SSH_KEY_FILE was refused: {exc.reason}"
        if isinstance(exc, asyncssh.Error):
            return f"{where}: {type(exc).__name__}: {exc.reason}"
        return f"{where}: {type(exc).__name__}: {exc}" if str(exc) else f"{where}: {type(exc).__name__}"

    def _down(self, error: str | None) -> None:
        self.connected = False
        self.last_error = error

    # -- the link ----------------------------------------------------------------
    async def _link_up(self) -> None:
        assert self._remote is not None
        await self._remote.prepare()
        self.connected = True
        self.last_error = None
        first = self.baseline_seq is None
        if self.journal.overflowed:
            self.journal.reset()
            reason = "journal_overflow"
        else:
            self.journal.rewind(self.journal.acked)
            reason = "initial" if first else "reconnect"
        log.info("ssh_link_up", target=str(self.settings.target), reason=reason)
        await self.reconcile(reason)

    async def _stream(self) -> None:
        settings = self.settings
        while True:
            batch = await next_batch(
                self.journal,
                settings.batch_max_ops,
                settings.batch_max_bytes,
                self._tree,
                self._tree.size_of,
                settings.heartbeat_interval,
                self.reconcile,
            )
            if not batch:  # a plain host needs no heartbeat
                continue
            try:
                async with self._remote_lock:
                    await self._send(batch)
            except RemoteOperationError as exc:
                await self._after_failure(exc)

    async def _send(self, batch: list[Change]) -> None:
        resend: list[str] = []
        assert self._remote is not None
        try:
            for segment in segments(batch, self._tree, self.journal.is_ready_marker):
                self._remote.forget_folders()
                if len(segment) == 1:
                    await self._apply(segment[0], resend)
                else:
                    await self._apply_parallel(segment, resend)
                await self._acknowledge(segment[-1].seq, resend)
        except BaseException:
            # The unacknowledged changes go again, but a rename among them will not find again
            # the moved files it was to re-send: queue those now.
            self._send_again(resend)
            raise

    async def _apply_parallel(self, segment: list[Change], resend: list[str]) -> None:
        limit = asyncio.Semaphore(self.settings.parallel_writes)

        async def one(change: Change) -> None:
            async with limit:
                await self._apply(change, resend)

        results = await asyncio.gather(*(one(c) for c in segment), return_exceptions=True)
        for change, result in zip(segment, results, strict=True):
            if isinstance(result, BaseException):
                await self._acknowledge(change.seq - 1, resend)  # what came before it is done
                raise result

    async def _acknowledge(self, seq: int, resend: list[str]) -> None:
        """Everything up to `seq` is done on the remote host."""
        if seq > self.journal.acked:
            self.journal.acknowledge(seq)
            self.last_ack_at = time.monotonic()
            self._failures.clear()
            self.on_ack()
        self._send_again(resend)
        async with self._acked:
            self._acked.notify_all()

    async def _after_failure(self, exc: RemoteOperationError) -> None:
        """Retry a refused change a few times (with backoff), then drop it so it cannot block the link."""
        count = self._failures.get(exc.seq, 0) + 1
        self._failures[exc.seq] = count
        self.last_error = str(exc)
        if count >= MAX_REFUSALS:
            dropped = self.journal.discard(exc.seq)
            log.error("change_refused_repeatedly", change=repr(dropped), error=str(exc))
            self._failures.pop(exc.seq, None)
            async with self._acked:
                self._acked.notify_all()
        else:
            log.warning("change_refused", seq=exc.seq, error=str(exc), attempt=count)
            await asyncio.sleep(min(self.settings.max_backoff, 0.2 * 2**count))
        self.journal.rewind(self.journal.acked)

    # -- one change ----------------------------------------------------------------
    def _send_again(self, resend: list[str]) -> None:
        for path in resend:
            if not self._record_tree(path):
                self.journal.record_sync(path)
        resend.clear()

    async def _apply(self, change: Change, resend: list[str]) -> None:
        assert self._remote is not None
        try:
            if change.kind == "delete":
                self._sent.deleted(change.path)
                await self._remote.delete(change.path)
                self._count("delete")
            elif change.kind == "rename":
                await self._rename(change, resend)
            else:
                await self._sync(change, resend)
        except ContainmentError as exc:
            log.error("change_path_refused", change=repr(change), error=str(exc))
        except asyncssh.SFTPError as exc:
            if isinstance(exc, _LOST):
                raise
            raise RemoteOperationError(
                f"{self.settings.target}: {change.kind} {change.path!r} failed: {exc.reason}", seq=change.seq
            ) from exc

    async def _rename(self, change: Change, resend: list[str]) -> None:
        assert self._remote is not None and change.dest is not None
        if self._sent.rename_is_stale(change.path, change.dest):
            resend.append(change.dest)
            return
        resend.extend(self._sent.vanished_below(change.path, change.dest))
        if await self._remote.rename(change.path, change.dest):
            self._count("rename")
        else:
            resend.append(change.dest)  # the remote never had it: send what is there now

    async def _sync(self, change: Change, resend: list[str]) -> None:
        assert self._remote is not None
        st = self._tree.current(change.path)
        if st is None:
            self._sent.note_vanished(change.path)
            return
        if is_special(st.st_mode):
            # Never opened, never replicated: for the remote there is nothing at this path.
            self._tree.skipped.note(change.path, st.st_mode)
            self._sent.deleted(change.path)
            await self._remote.delete(change.path)
            self._count("delete")
            return
        self._sent.remember(change.path, st.st_ino)
        mode = self._mode(st)
        times = (int(st.st_atime), st.st_mtime_ns // NS)
        if stat.S_ISDIR(st.st_mode):
            await self._remote.make_dir(change.path, mode)
            self._count("mkdir")
        elif stat.S_ISLNK(st.st_mode):
            target = self._tree.readlink(change.path)
            if target is None:  # replaced since the lstat (its own event follows) or moved away
                self._sent.note_vanished(change.path)
                return
            await self._remote.put_symlink(change.path, target, times)
            self._count("symlink")
        elif stat.S_ISREG(st.st_mode):
            hinted = change.attr_hint == (st.st_size, st.st_mtime_ns)
            if hinted and await self._remote.set_attrs(change.path, mode, times):
                self._count("attr")
                return
            await self._put(change.path, resend)

    async def _put(self, path: str, resend: list[str]) -> None:
        assert self._remote is not None
        opened = self._tree.open_file(path)
        if opened is None:
            self._sent.note_vanished(path)
            return
        fd, st = opened
        try:
            times = (int(st.st_atime), st.st_mtime_ns // NS)
            sent = await self._remote.put_file(path, fd, st.st_size, self._mode(st), times)
        finally:
            os.close(fd)
        if sent is None:
            resend.append(path)  # changed while we read it: send its final state
            return
        self._count("put")
        self.bytes_sent += sent
        self.metrics.sent_bytes.inc(sent)

    def _mode(self, st: os.stat_result) -> int:
        """The mode that travels; setuid, setgid and sticky bits are stripped (and counted)."""
        if st.st_mode & SPECIAL_MODE_BITS:
            self.metrics.mode_bits_stripped.labels(side="sent").inc()
        return replicated_mode(st.st_mode)

    def _count(self, op: str) -> None:
        self.metrics.operation(op).inc()

    def note_vanished(self, path: str) -> None:
        """`path` disappeared before its content could be read or sent."""
        self._sent.note_vanished(path)

    # -- reconciliation ----------------------------------------------------------
    async def reconcile(self, reason: str) -> SyncSummary:
        """List the remote tree, compare by quick check, queue what differs; returns with the plan's size."""
        remote = self._remote
        if remote is None:
            raise PeerError(f"{self.settings.target}: the ssh link is not connected")
        async with self._remote_lock:
            started = time.monotonic()
            self.metrics.full_rescans.labels(reason=reason).inc()
            listing = await remote.listing(self._skip)
            for temp in listing.temps:
                await remote.remove(temp)  # left by an interrupted transfer
            local = await asyncio.to_thread(manifest.scan, self.root, self._skip, self._tree.skipped.note)
            plan = quick_check(local, listing.entries)
            for path in plan.delete:
                if not self._tree.exists(path):  # re-created since the scan: it stays
                    self.journal.record_delete(path)
            for entry in sorted(plan.send, key=lambda e: e.path.split("/")):
                self.journal.record_sync(entry.path, size_hint=entry.size)
            for entry in plan.attrs_only:
                self.journal.record_sync(
                    entry.path, attr_hint=(entry.size, entry.mtime_ns), size_hint=entry.size
                )
            self.baseline_seq = self.journal.head
            summary = SyncSummary(
                reason=reason,
                compared=plan.compared,
                sent=len(plan.send),
                attributes=len(plan.attrs_only),
                deleted=len(plan.delete),
                seconds=time.monotonic() - started,
                up_to_seq=self.journal.head,
            )
            log.info("reconciliation_planned", temps_removed=len(listing.temps), **summary.to_json())
            return summary

    async def wait_acked(self, seq: int, timeout: float) -> None:
        """Wait until the remote host has everything up to `seq` (PeerError on timeout)."""
        async with self._acked:
            try:
                await asyncio.wait_for(self._acked.wait_for(lambda: self.journal.confirmed >= seq), timeout)
            except TimeoutError:
                raise PeerError(
                    f"{self.settings.target} did not receive sequence {seq} within {timeout:g}s"
                ) from None


def quick_check(local: dict[str, manifest.Entry], remote: dict[str, manifest.Entry]) -> manifest.Plan:
    """rsync's quick check: a file differing in size or in mtime (whole seconds, all SFTP v3 has) is sent.

    Entries in the plan are the local ones, with their full mtime, as the journal's attribute hints
    must match what the sender will lstat.
    """
    trimmed = {p: e._replace(mtime_ns=e.mtime_s * NS) for p, e in local.items()}
    plan = manifest.compare(trimmed, remote)
    plan.send = [local[e.path] for e in plan.send] + [local[p] for p in plan.to_hash]
    plan.attrs_only = [local[e.path] for e in plan.attrs_only]
    plan.to_hash = []
    return plan


def segments(
    batch: list[Change], tree: SourceTree, is_ready_marker: Callable[[str], bool]
) -> list[list[Change]]:
    """Split a batch at its barriers: runs of syncs of files and links may be applied in parallel.

    Folders, deletes, renames and ready markers stand alone, so they land after everything before them.
    """
    found: list[list[Change]] = []
    run: list[Change] = []
    for change in batch:
        if (
            change.kind == "sync"
            and not is_ready_marker(change.path)
            and not tree.is_real_folder(change.path)
        ):
            run.append(change)
            continue
        if run:
            found.append(run)
            run = []
        found.append([change])
    if run:
        found.append(run)
    return found
