"""The node: the replication parts this process runs for its current role.

A leader watches STORAGE_PATH, records changes in a journal and streams them
to its peer; a replica applies what its leader sends. The control loop
(daemon/control.py) decides the role; this class carries the decision out
and answers the HTTP layer's questions from state it already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon import __version__
from daemon.config import Config
from daemon.divergence import DivergenceTracker
from daemon.identity import NodeIdentity
from daemon.problems import HTTPProblem
from daemon.roles import RoleState
from daemon.tls import client_context
from replication.applier import Applier
from replication.envinit import EnvInitTracker
from replication.exclude import PathMatcher, ReadyMarkers
from replication.journal import Journal
from replication.metrics import ReplicationMetrics
from replication.paths import StorageRoot
from replication.protocol import FLAG_COMPLETE, Operation, encode_trailer
from replication.receiver import Receiver
from replication.sender import LinkSettings, Sender, SyncSummary
from replication.watcher import Watcher

log = structlog.get_logger("daemon.node")

ROLE_NAMES = {"leader": "master", "replica": "slave"}


WATCHER_FAILED_RESCAN_INTERVAL = 30.0
"""While the watcher cannot be trusted, anti-entropy runs at least this often."""


@dataclass
class LeaderParts:
    journal: Journal
    watcher: Watcher
    sender: Sender | None
    sender_task: asyncio.Task[None] | None
    anti_entropy_task: asyncio.Task[None] | None = None


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = ReplicationMetrics(self.registry)
        self.healthy_gauge = Gauge(
            "plugin_daemon_healthy", "1 when this node reports healthy.", registry=self.registry
        )
        self.conflicts_total = Counter(
            "plugin_sync_conflicts", "Divergent files preserved after a demotion.", registry=self.registry
        )
        self.is_leader_gauge = Gauge(
            "plugin_sync_is_leader", "1 while this node accepts writes.", registry=self.registry
        )
        self.watcher_gauge = Gauge(
            "plugin_sync_watcher_healthy",
            "0 while the inotify watcher cannot be trusted (rescans cover it).",
            registry=self.registry,
        )
        self.epoch_gauge = Gauge(
            "plugin_sync_epoch", "The fencing epoch this node acts under.", registry=self.registry
        )
        self.identity = NodeIdentity.load(config.state_path)
        self.client_tls = client_context(config.tls)
        """How this node's clients (the link, the peer poller) verify an https:// peer."""
        self.excluded = PathMatcher(config.exclude)
        self.started_at = time.monotonic()
        self.receiver = Receiver(config.storage_path, config.state_path, self.metrics, self.excluded.matches)
        self.receiver.accepting = False
        self.tracker = DivergenceTracker(config.state_path)
        self.env_init = EnvInitTracker(
            ReadyMarkers(config.ready_markers),
            self.metrics.env_init_duration,
            self.metrics.env_init_in_progress,
        )
        self.role_state = RoleState(role="replica", epoch=self.identity.epoch, confirmed=False)
        self.leader: LeaderParts | None = None
        self.peer_epoch_seen = 0
        """Highest epoch a peer announced to us (its hello or batch while we lead)."""
        self.last_error: str | None = None
        self._writes_in_flight = 0
        self._writes_idle = asyncio.Condition()
        self.metrics.track(
            lag=self.lag_seconds,
            pending=lambda: self.journal.pending if self.journal else 0,
            connected=lambda: float(self.peer_connected()),
            sequence=self.sequence,
            acked=self.acked_sequence,
        )
        self.healthy_gauge.set_function(lambda: float(self.health()[0]))
        self.is_leader_gauge.set_function(lambda: float(self.accepts_writes()))
        self.epoch_gauge.set_function(lambda: float(self.epoch))
        self.watcher_gauge.set_function(lambda: float(self.watcher_failure() is None))

    # -- lifecycle -------------------------------------------------------------------
    def prepare_storage(self) -> None:
        os.makedirs(self.config.storage_path, exist_ok=True)
        os.makedirs(self.config.state_path, exist_ok=True)
        self.receiver.sweep()

    async def become_leader(self, epoch: int) -> None:
        """Stop applying the peer's changes, start watching and sending our own."""
        self.receiver.accepting = False
        self._set_epoch(epoch)
        if not self.identity.has_led:
            self.identity.has_led = True
            self.identity.save()
        self.tracker.leading_from()
        journal = Journal(
            uuid.uuid4().hex, ReadyMarkers(self.config.ready_markers), self.config.journal_max_entries
        )
        watcher = Watcher(self.config.storage_path, journal, self.excluded.matches)
        watcher.on_loss = journal.request_rescan
        watcher.env_init = self.env_init
        watcher.start(asyncio.get_running_loop())
        await watcher.ready()
        sender, task = None, None
        if self.config.peer_url:
            sender = Sender(
                self._link_settings(),
                self.config.storage_path,
                journal,
                self.metrics,
                self.excluded.matches,
                epoch=lambda: self.identity.epoch,
                record_tree=watcher.record_tree,
            )
            sender.on_ack = lambda: self.tracker.acknowledged(journal.oldest_unacked_age(), journal.pending)
            watcher.on_vanished = sender.note_vanished
            task = asyncio.create_task(sender.run(), name="sender")
        self.leader = LeaderParts(journal, watcher, sender, task)
        if sender is not None:
            self.leader.anti_entropy_task = asyncio.create_task(
                self._anti_entropy(journal, watcher), name="anti-entropy"
            )
        log.info("leading", epoch=epoch, target=self.config.peer_url or None)

    async def become_replica(self, epoch: int) -> None:
        """Stop leading, keep what only we had, then accept the leader's changes."""
        was_leader = self.leader is not None
        await self.stop_leading()
        self.tracker.flush()
        conflicts = await asyncio.to_thread(
            self.tracker.preserve, self.config.storage_path, epoch, self.excluded.matches
        )
        if conflicts:
            self.conflicts_total.inc(len(conflicts))
            log.warning(
                "divergent_writes_preserved",
                count=len(conflicts),
                epoch=epoch,
                where=os.path.join(self.tracker.conflicts_root, str(epoch)),
            )
        self._set_epoch(epoch)
        self.receiver.accepting = True
        log.info("following", epoch=epoch, was_leader=was_leader)

    async def stop_leading(self) -> None:
        parts, self.leader = self.leader, None
        if parts is None:
            return
        parts.watcher.stop()
        for task in (parts.sender_task, parts.anti_entropy_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _set_epoch(self, epoch: int) -> None:
        if epoch != self.identity.epoch:
            self.identity.epoch = epoch
            self.identity.save()
        self.receiver.raise_epoch(epoch)

    def _link_settings(self) -> LinkSettings:
        return LinkSettings(
            target=self.config.peer_url,
            server_key=self.config.server_key,
            node_id=self.identity.node_id,
            heartbeat_interval=self.config.heartbeat_interval,
            batch_max_ops=self.config.batch_max_ops,
            batch_max_bytes=self.config.batch_max_bytes,
            delta_min_size=self.config.delta_min_size,
            ssl_context=self.client_tls,
        )

    async def _anti_entropy(self, journal: Journal, watcher: Watcher) -> None:
        """Every ANTI_ENTROPY_INTERVAL (jittered by +-10%), compare manifests and repair any drift."""
        await asyncio.sleep(1.0)
        await watcher.verify_coverage()
        while True:
            interval = self.config.anti_entropy_interval
            if watcher.failure is not None:
                interval = min(interval, WATCHER_FAILED_RESCAN_INTERVAL)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            await watcher.verify_coverage()
            journal.request_rescan("anti_entropy" if watcher.failure is None else "watcher_failed")

    def note_peer_epoch(self, epoch: int) -> None:
        self.peer_epoch_seen = max(self.peer_epoch_seen, epoch)

    def check_sender(self) -> None:
        """Surface a sender task or watcher thread that died instead of letting it vanish."""
        parts = self.leader
        if parts is not None:
            parts.watcher.check()
        if parts is None or parts.sender_task is None or not parts.sender_task.done():
            return
        if not parts.sender_task.cancelled() and parts.sender_task.exception() is not None:
            exc = parts.sender_task.exception()
            self.last_error = f"sender failed: {type(exc).__name__}: {exc}"
            log.error("sender_failed", error=self.last_error)
            assert parts.sender is not None
            parts.sender_task = asyncio.create_task(parts.sender.run(), name="sender")

    # -- questions the API asks ----------------------------------------------------------
    @property
    def journal(self) -> Journal | None:
        return self.leader.journal if self.leader else None

    @property
    def sender(self) -> Sender | None:
        return self.leader.sender if self.leader else None

    @property
    def role(self) -> str:
        return ROLE_NAMES[self.role_state.role]

    @property
    def epoch(self) -> int:
        return self.role_state.epoch

    def accepts_writes(self) -> bool:
        sender = self.sender
        if sender is not None and sender.fenced_by is not None and sender.fenced_by > self.epoch:
            return False
        return self.role_state.accepts_writes(time.monotonic())

    def lease_time_left(self) -> float | None:
        until = self.role_state.lease_valid_until
        return None if until is None else max(0.0, until - time.monotonic())

    def peer_connected(self) -> bool:
        if self.leader is not None:
            return self.sender.connected if self.sender else False
        return self.receiver.connected(self.config.heartbeat_interval)

    def lag_seconds(self) -> float:
        if self.leader is not None:
            return self.leader.journal.oldest_unacked_age()
        return self.receiver.lag_seconds()

    def sequence(self) -> float:
        return float(self.journal.head if self.journal else self.receiver.applied_seq)

    def acked_sequence(self) -> float:
        return float(self.journal.acked if self.journal else self.receiver.applied_seq)

    def health(self) -> tuple[bool, str]:
        return storage_writable(self.config.storage_path)

    def watcher_failure(self) -> str | None:
        return self.leader.watcher.failure if self.leader is not None else None

    def health_report(self) -> dict[str, Any]:
        ok, reason = self.health()
        degraded = self.watcher_failure()
        report: dict[str, Any] = {
            "status": ("degraded" if degraded else "healthy") if ok else "unhealthy",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "version": __version__,
            "role": self.role,
        }
        if reason or degraded:
            report["reason"] = reason or degraded
        return report

    def status(self) -> dict[str, Any]:
        sender = self.sender
        last_error = (sender.last_error if sender else self.receiver.last_error) or self.last_error
        status: dict[str, Any] = {
            "role": self.role,
            "node_id": self.identity.node_id,
            "epoch": self.epoch,
            "writable": self.accepts_writes(),
            "lease_seconds_left": self.lease_time_left(),
            "election": self.config.election,
            "sync_mode": self.config.sync_mode,
            "acknowledged_sequence": int(self.acked_sequence()),
            "pending_changes": self.journal.pending if self.journal else 0,
            "lag_seconds": round(self.lag_seconds(), 3),
            "loss_window_seconds": round(self.lag_seconds(), 3) if self.leader else None,
            "peer_connected": self.peer_connected(),
            "peer_url": self.config.peer_url or None,
            "last_error": last_error,
            "storage_path": self.config.storage_path,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
        }
        if self.leader is not None:
            status["produced_sequence"] = self.leader.journal.head
        else:
            status["applied_sequence"] = self.receiver.applied_seq
            status["master_node"] = self.receiver.master_node or None
            status["synced"] = self.receiver.synced
        return status

    async def writes_settled(self, timeout: float) -> None:
        """Wait (bounded) until API writes admitted earlier are recorded in the journal."""
        async with self._writes_idle:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._writes_idle.wait_for(lambda: self._writes_in_flight == 0), timeout
                )

    async def write_file(self, path: str, content: bytes, mode: int = 0o644) -> int:
        self._writes_in_flight += 1
        try:
            return await self._write_file(path, content, mode)
        finally:
            self._writes_in_flight -= 1
            async with self._writes_idle:
                self._writes_idle.notify_all()

    async def _write_file(self, path: str, content: bytes, mode: int) -> int:
        """Write `path` atomically (temp, fsync, rename); returns the journal sequence to await."""
        journal = self.journal
        if journal is None:
            raise HTTPProblem(503, "not the primary", "only the leader accepts writes")
        applier = Applier(StorageRoot(self.config.storage_path))
        stream = content + encode_trailer(FLAG_COMPLETE, hashlib.sha256(content).digest())
        offset = 0

        async def read(n: int) -> bytes:
            nonlocal offset
            chunk = stream[offset : offset + n]
            offset += n
            return chunk

        op = Operation(seq=0, op="put", path=path, mode=mode, mtime_ns=time.time_ns(), size=len(content))
        await applier.apply(op, read)
        applier.flush()
        journal.record_sync(path)
        return journal.head

    async def full_sync(self, timeout: float = 300.0) -> SyncSummary:
        """Reconcile by manifest now and wait until the replica acknowledged all of it."""
        sender = self.sender
        if sender is None:
            raise HTTPProblem(
                409,
                "not a replicating leader",
                "POST /internal/sync runs on the leader, which needs a peer (SYNC_TARGET)",
            )
        started = time.monotonic()
        bytes_before = sender.bytes_sent
        summary = await sender.reconcile("requested")
        await sender.wait_acked(summary.up_to_seq, timeout)
        summary.bytes = sender.bytes_sent - bytes_before
        summary.seconds = time.monotonic() - started
        return summary


def storage_writable(path: str) -> tuple[bool, str]:
    """Probe with an unnamed O_TMPFILE: a real write check that leaves no name and no inotify event."""
    if not os.path.isdir(path):
        return False, f"STORAGE_PATH {path} is missing or not a directory"
    try:
        os.close(os.open(path, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            return False, f"STORAGE_PATH {path} is not writable: {exc.strerror}"
        if not os.access(path, os.W_OK | os.X_OK):
            return False, f"STORAGE_PATH {path} is not writable"
    return True, ""
