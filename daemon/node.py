"""The node: the replication parts this process runs for its current role.

A leader watches STORAGE_PATH, records changes in a journal and streams them
to its peer; a replica applies what its leader sends. The control loop
(daemon/ha_loop.py) decides the role; this class carries the decision out
and answers the HTTP layer's questions from state it already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon import __version__
from daemon.config import Config
from daemon.divergence import DivergenceTracker
from daemon.epochs import MAX_PEER_EPOCH, from_outside
from daemon.exposure import unguarded_warning
from daemon.identity import NodeIdentity
from daemon.problems import HTTPProblem
from daemon.redact import hide_password
from daemon.roles import SHOWN_AS, RoleState
from daemon.storage_probe import StorageProbe
from daemon.tls import client_context
from replication.applier import Applier
from replication.envinit import EnvInitTracker
from replication.errors import PeerError
from replication.exclude import PathMatcher, ReadyMarkers
from replication.metrics import ReplicaGauges, ReplicationMetrics, ReplicaView
from replication.paths import StorageRoot
from replication.protocol import FLAG_COMPLETE, Operation, encode_trailer
from replication.receiver import Receiver

if TYPE_CHECKING:  # what only a leader runs is imported by load_leader_code, off the loop
    from replication.journal import Journal, JournalFanout
    from replication.links import Link
    from replication.sender import LinkSettings, SyncSummary
    from replication.watcher import Watcher

log = structlog.get_logger("daemon.node")

LEADER_CODE = ("replication.journal", "replication.links", "replication.sender", "replication.watcher")
"""Modules only a leader runs (with watchdog and the senders' helpers: ~25 ms of imports, a twentieth of
a start); imported by Node.load_leader_code, not at start."""


def _import_leader_code() -> None:
    for name in LEADER_CODE:
        import_module(name)


SWEEP_DEFERRED_AT_MOST = 300.0
"""How long a leader's temp-file sweep waits for its replicas to hold a copy (Node._sweep_once_seeded)."""
SWEEP_POLL_INTERVAL = 1.0

WATCHER_FAILED_RESCAN_INTERVAL = 30.0
"""While the watcher cannot be trusted, anti-entropy runs at least this often."""


@dataclass
class ReplicaLink:
    """One replica of this leader: the journal of what it still lacks and the sender streaming to it."""

    target: str
    journal: Journal
    sender: Link
    task: asyncio.Task[None]


@dataclass
class LeaderParts:
    journals: list[Journal]
    """One per replica (the first alone when there is no SYNC_TARGET), numbered from one counter."""
    watcher: Watcher
    links: list[ReplicaLink]
    anti_entropy_task: asyncio.Task[None] | None = None

    @property
    def head(self) -> int:
        return self.journals[0].head

    @property
    def pending(self) -> int:
        """Changes the furthest-behind replica still lacks."""
        return max(journal.pending for journal in self.journals)

    def lag_seconds(self) -> float:
        return max(journal.oldest_unacked_age() for journal in self.journals)

    def confirmed(self) -> int:
        """Every change up to this sequence is on every replica."""
        return min(journal.confirmed for journal in self.journals)

    @property
    def recorder(self) -> JournalFanout:
        from replication.journal import JournalFanout  # loaded: there are journals

        return JournalFanout(self.journals)

    def note_vanished(self, path: str) -> None:
        for link in self.links:
            link.sender.note_vanished(path)


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = ReplicationMetrics(self.registry)
        self._define_metrics()
        self.peer_problem: str | None = None
        """Set by the control loop while a peer refuses our key or TLS."""
        self._refused_epochs: dict[str, str] = {}
        self.identity = NodeIdentity.load(config.state_path)
        self.client_tls = (
            client_context(config.tls)
            if any(u.lower().startswith("https://") for u in config.peer_urls)
            else None
        )
        """How this node's clients (the link, the peer poller) verify an https:// peer; None when no peer
        is one (loading the system's CAs costs ~80 ms of a cold start for nothing)."""
        self.excluded = PathMatcher(config.exclude)
        self.started_at = time.monotonic()
        self.receiver = Receiver(config.storage_path, config.state_path, self.metrics, self.excluded.matches)
        self.receiver.accepting = False
        self.tracker = DivergenceTracker(config.state_path)
        self.storage_probe = StorageProbe(config.storage_path)
        self._write_through = ThreadPoolExecutor(max_workers=4, thread_name_prefix="write-through")
        """API writes apply here, not in the shared pool a stalled disk would use up."""
        self.env_init = EnvInitTracker(
            ReadyMarkers(config.ready_markers),
            self.metrics.env_init_duration,
            self.metrics.env_init_in_progress,
        )
        self.role_state = RoleState(role="replica", epoch=self.identity.epoch, confirmed=False)
        self.leader: LeaderParts | None = None
        self.leader_connection: object | None = None
        """The peer address (host, port) of the connection the leader's last batch came on."""
        self.peer_epoch_seen = 0
        """Highest epoch a peer announced to us (its hello or batch while we lead)."""
        self.last_error: str | None = None
        self.promotion_checks: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {}
        """Run before an operator's promotion (POST /internal/promote); each report is added to its answer
        under its name. The plugin store adds `plugin_workdirs` (daemon/store/factory.py)."""
        self._writes_in_flight = 0
        self._writes_idle = asyncio.Condition()
        self._leader_code: asyncio.Future[None] | None = None
        """The import of LEADER_CODE, started once (load_leader_code)."""
        self._track_metrics()

    def _define_metrics(self) -> None:
        """The node's own metrics, beside the engine's (ReplicationMetrics)."""
        self.healthy_gauge = Gauge(
            "plugin_sync_node_healthy",
            "1 while this node's STORAGE_PATH is writable (GET /health is not 503).",
            registry=self.registry,
        )
        self.conflicts_total = Counter(
            "plugin_sync_conflicts", "Divergent files preserved after a demotion.", registry=self.registry
        )
        self.conflicts_expired = Counter(
            "plugin_sync_conflicts_expired",
            "Epoch folders of the conflicts area deleted by its retention (CONFLICTS_KEEP, _MAX_AGE).",
            registry=self.registry,
        )
        self.is_leader_gauge = Gauge(
            "plugin_sync_is_leader", "1 while this node accepts writes.", registry=self.registry
        )
        self.watcher_gauge = Gauge(
            "plugin_sync_watcher_healthy",
            "0 while the inotify watcher cannot be trusted (rescans cover it).",
            registry=self.registry,
        )
        self.peer_untrusted_gauge = Gauge(
            "plugin_sync_peer_role_unknown",
            "Peers that refuse our key or fail TLS: their role is unknown, so no failover or confirmation.",
            registry=self.registry,
        )
        self.epoch_gauge = Gauge(
            "plugin_sync_epoch", "The fencing epoch this node acts under.", registry=self.registry
        )
        self.epochs_refused = Counter(
            "plugin_sync_refused_epochs",
            "Epochs from outside refused as out of range (above MAX_PEER_EPOCH), by source.",
            ["source"],
            registry=self.registry,
        )

    def _track_metrics(self) -> None:
        """Gauges read when scraped, from state the node already holds."""
        self.metrics.track(
            lag=self.lag_seconds,
            pending=lambda: self.leader.pending if self.leader else 0,
            connected=lambda: float(self.peer_connected()),
            sequence=self.sequence,
            acked=self.acked_sequence,
        )
        ReplicaGauges(self.registry, self._replica_views)
        self.healthy_gauge.set_function(lambda: float(self.health()[0]))
        self.is_leader_gauge.set_function(lambda: float(self.accepts_writes()))
        self.epoch_gauge.set_function(lambda: float(self.epoch))
        self.watcher_gauge.set_function(lambda: float(self.watcher_failure() is None))

    # -- lifecycle -------------------------------------------------------------------
    def prepare_storage(self) -> None:
        """The folders; the sweep of a killed predecessor's temp files comes once the server listens
        (start_background_work)."""
        os.makedirs(self.config.storage_path, exist_ok=True)
        os.makedirs(self.config.state_path, exist_ok=True)

    def start_background_work(self) -> asyncio.Task[None]:
        """What /health does not wait for, started once the server listens: the temp-file sweep, whose
        walk of the whole storage in a thread took the interpreter's lock from the start-up steps it
        overlapped before (Receiver.start_sweep: batches wait for it), and the leader's code, loaded
        ahead of a first promotion (load_leader_code). On a leader the sweep waits for its replicas'
        copies (`_sweep_once_seeded`). Returns the task, for the caller to keep and reap."""
        if self.role_state.role == "leader":
            return asyncio.create_task(self._leader_background(), name="leader-code")
        self.receiver.start_sweep()
        return asyncio.create_task(self.load_leader_code(), name="leader-code")

    async def _leader_background(self) -> None:
        await self.load_leader_code()
        await self._sweep_once_seeded()

    async def _sweep_once_seeded(self) -> None:
        """Start a leader's sweep once every replica holds a copy, at most SWEEP_DEFERRED_AT_MOST later.

        The sweep walks the whole storage, as a seed's plan does: during a 100,000-file seed it was 4.8 %
        of the leader's samples (a cold walk of 1.3 s, 0.85 s of CPU), for temp files that nothing but a
        replica's batch needs gone. A batch that comes first (a demotion) starts it (Receiver.apply_batch);
        a temp file of this process is never swept (it is not older than the receiver)."""
        deadline = time.monotonic() + SWEEP_DEFERRED_AT_MOST
        while time.monotonic() < deadline and not self.receiver.sweep_started:
            leader = self.leader
            if leader is not None and all(link.sender.holds_copy for link in leader.links):
                break
            await asyncio.sleep(SWEEP_POLL_INTERVAL)
        self.receiver.start_sweep()

    async def load_leader_code(self) -> None:
        """Import LEADER_CODE in a worker thread, once; later calls wait for that same import.

        Not at start: /health answers sooner without it. The server starts it as soon as it listens,
        so a replica's first promotion finds it loaded; a master's first tick waits for it. In a
        thread, so the loop keeps answering meanwhile. The loop imports none of these modules before
        this is done (become_leader takes them from here), so it never waits on the thread's import
        locks, and there are no import cycles (test_import_graph) for two importers to deadlock on.
        """
        if self._leader_code is None:
            self._leader_code = asyncio.ensure_future(asyncio.to_thread(_import_leader_code))
        await asyncio.shield(self._leader_code)

    async def become_leader(self, epoch: int) -> None:
        """Stop applying the peer's changes, start watching and sending our own."""
        self.receiver.accepting = False
        self.set_epoch(epoch)
        if not self.identity.has_led:
            self.identity.has_led = True
            self.identity.save()
        self.tracker.leading_from()
        await self.load_leader_code()  # done already unless a promotion comes within its first moments
        from replication.journal import Journal, JournalFanout, SequenceCounter  # loaded just above
        from replication.watcher import Watcher

        journal_id, counter = uuid.uuid4().hex, SequenceCounter()
        markers = ReadyMarkers(self.config.ready_markers)
        journals = [
            Journal(
                journal_id,
                markers,
                self.config.journal_max_entries,
                counter=counter,
            )
            for _ in self.config.peer_urls or ("",)
        ]
        fanout = JournalFanout(journals)
        watcher = Watcher(self.config.storage_path, fanout, self.excluded.matches, markers)
        watcher.on_loss = fanout.request_rescan
        watcher.env_init = self.env_init
        try:
            await watcher.start()
            await watcher.ready()
        except BaseException:  # cancelled (shutdown) or failed before the parts below own the watcher
            watcher.stop()
            raise
        parts = LeaderParts(journals, watcher, [])
        for target, journal in zip(self.config.peer_urls, journals, strict=False):
            parts.links.append(self._start_link(target, journal, watcher))
        watcher.on_vanished = parts.note_vanished
        self.leader = parts
        if parts.links:
            parts.anti_entropy_task = asyncio.create_task(
                self._anti_entropy(fanout, watcher), name="anti-entropy"
            )
        log.info("leading", epoch=epoch, targets=[hide_password(url) for url in self.config.peer_urls])

    def _start_link(self, target: str, journal: Journal, watcher: Watcher) -> ReplicaLink:
        from replication.links import make_sender  # loaded: only become_leader calls this

        sender = make_sender(
            self._link_settings(target),
            self.config.storage_path,
            journal,
            self.metrics,
            self.excluded.matches,
            epoch=lambda: self.identity.epoch,
            record_tree=lambda rel: watcher.record_tree(rel, into=journal),
            ssh_key_file=self.config.ssh_key_file,
            ssh_known_hosts=self.config.ssh_known_hosts,
        )
        sender.on_ack = self._note_acknowledged
        return ReplicaLink(
            target, journal, sender, asyncio.create_task(sender.run(), name=f"sender {target}")
        )

    def _note_acknowledged(self) -> None:
        """What a demotion now would leave only here: what the best-placed replica still lacks."""
        parts = self.leader
        if parts is None or not parts.links:
            return
        best = min(parts.links, key=lambda link: link.journal.pending)
        self.tracker.acknowledged(best.journal.oldest_unacked_age(), best.journal.pending)

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
            await asyncio.to_thread(self.expire_conflicts)
        self.set_epoch(epoch)
        self.receiver.accepting = True
        log.info("following", epoch=epoch, was_leader=was_leader)

    def expire_conflicts(self) -> int:
        """Apply the conflicts area's retention (CONFLICTS_KEEP, CONFLICTS_MAX_AGE); each removal logged."""
        try:
            expired = self.tracker.expire(self.config.conflicts_keep, self.config.conflicts_max_age)
        except OSError as exc:  # never in the way of a demotion or a start: tried again within the hour
            log.warning("conflicts_retention_failed", error=str(exc))
            return 0
        for item in expired:
            self.conflicts_expired.inc()
            log.warning(
                "conflicts_expired",
                epoch=item.epoch,
                files=item.files,
                age_seconds=item.age_seconds,
                reason=item.reason,
                keep=self.config.conflicts_keep,
                max_age_seconds=self.config.conflicts_max_age,
            )
        return len(expired)

    async def stop_leading(self) -> None:
        parts, self.leader = self.leader, None
        if parts is None:
            return
        parts.watcher.stop()
        for task in [link.task for link in parts.links] + [parts.anti_entropy_task]:
            if task is not None:
                await cancel_until_done(task)

    def set_epoch(self, epoch: int) -> None:
        """Persist a new epoch (node.json) and refuse lower ones from now on (the control loop calls this
        on a replica that learns of a higher epoch without changing role)."""
        if epoch != self.identity.epoch:
            self.identity.epoch = epoch
            self.identity.save()
        self.receiver.raise_epoch(epoch)

    def _link_settings(self, target: str) -> LinkSettings:
        from replication.sender import LinkSettings  # loaded: only a leader starts links

        return LinkSettings(
            target=target,
            server_key=self.config.server_key,
            node_id=self.identity.node_id,
            heartbeat_interval=self.config.heartbeat_interval,
            batch_max_ops=self.config.batch_max_ops,
            batch_max_bytes=self.config.batch_max_bytes,
            delta_min_size=self.config.delta_min_size,
            ssl_context=self.client_tls,
        )

    async def _anti_entropy(self, journal: JournalFanout, watcher: Watcher) -> None:
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
        """A peer announced `epoch` (its hello or batch while we lead); a hostile one is left out."""
        if self.outside_epoch(epoch, "peer_request") is not None:
            self.peer_epoch_seen = max(self.peer_epoch_seen, epoch)

    def outside_epoch(self, value: object, source: str) -> int | None:
        """`value` if it is an epoch this node may take from outside, else None: counted, logged once.

        Refused: anything but an integer in 0..MAX_PEER_EPOCH (daemon/epochs.py). A peer repeating
        the same hostile value is logged and counted once per value, not at every tick.
        """
        epoch = from_outside(value)
        shown = repr(value)[:40]
        if epoch is None and value is not None and self._refused_epochs.get(source) != shown:
            self._refused_epochs[source] = shown
            self.epochs_refused.labels(source=source).inc()
            log.warning("epoch_refused", source=source, epoch=shown, bound=MAX_PEER_EPOCH)
        return epoch

    async def promotion_reports(self) -> dict[str, Any]:
        """The promotion checks' reports, in the order they were added; a check reports its own failures."""
        return {name: await check() for name, check in self.promotion_checks.items()}

    def supervise_replication_tasks(self) -> None:
        """Each tick: a dead watcher thread is marked failed (a loss, so the tree is rescanned), and a sender
        task that died is logged, kept as last_error and started again, instead of vanishing."""
        parts = self.leader
        if parts is None:
            return
        parts.watcher.check()
        for link in parts.links:
            if not link.task.done() or link.task.cancelled() or link.task.exception() is None:
                continue
            exc = link.task.exception()
            self.last_error = f"sender to {link.target} failed: {type(exc).__name__}: {exc}"
            log.error("sender_failed", error=self.last_error, target=link.target)
            link.task = asyncio.create_task(link.sender.run(), name=f"sender {link.target}")

    # -- questions the API asks ----------------------------------------------------------
    @property
    def senders(self) -> list[Link]:
        return [link.sender for link in self.leader.links] if self.leader else []

    @property
    def fenced_by(self) -> int | None:
        """The highest epoch a replica answered with, when above ours: this node must stop leading.

        An answer above MAX_PEER_EPOCH is hostile: it is left out here, and the control loop
        counts and logs it.
        """
        answers = (self.outside_epoch(s.fenced_by, "replica_answer") for s in self.senders)
        epochs = [epoch for epoch in answers if epoch is not None]
        return max(epochs) if epochs else None

    @property
    def role(self) -> str:
        return SHOWN_AS[self.role_state.role]

    @property
    def epoch(self) -> int:
        return self.role_state.epoch

    def accepts_writes(self) -> bool:
        fenced_by = self.fenced_by
        if fenced_by is not None and fenced_by > self.epoch:
            return False
        return self.role_state.accepts_writes(time.monotonic())

    def lease_time_left(self) -> float | None:
        until = self.role_state.lease_valid_until
        return None if until is None else max(0.0, until - time.monotonic())

    def peer_connected(self) -> bool:
        if self.leader is not None:
            return any(sender.connected for sender in self.senders)
        return self.receiver.connected(self.config.heartbeat_interval)

    def lag_seconds(self) -> float:
        if self.leader is not None:
            return self.leader.lag_seconds()
        return self.receiver.lag_seconds()

    def sequence(self) -> float:
        return float(self.leader.head if self.leader else self.receiver.applied_seq)

    def acked_sequence(self) -> float:
        return float(self.leader.confirmed() if self.leader else self.receiver.applied_seq)

    def health(self) -> tuple[bool, str]:
        """The write probe's latest verdict (the metrics gauge); `health_report` runs a new one."""
        return self.storage_probe.last

    def watcher_failure(self) -> str | None:
        return self.leader.watcher.failure if self.leader is not None else None

    def health_without_probe(self) -> tuple[str, str | None]:
        """/health's verdict without its write probe: the watcher sees an O_TMPFILE as a closed file
        (a journal entry per probe), and status is asked several times a second by the peer."""
        path = self.config.storage_path
        if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            return "unhealthy", f"STORAGE_PATH {path} is missing or not writable"
        degraded = self.watcher_failure() or (self.receiver.storage_full if self.leader is None else None)
        return ("degraded", degraded) if degraded else ("healthy", None)

    async def health_report(self) -> dict[str, Any]:
        ok, reason = await self.storage_probe.check()
        degraded = (
            self.watcher_failure()
            or (self.receiver.storage_full if self.leader is None else None)
            or self.peer_problem
        )
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
        errors = [s.last_error for s in self.senders if s.last_error] if self.leader else []
        last_error = (errors[0] if errors else None) if self.leader else self.receiver.last_error
        last_error = last_error or self.last_error
        status: dict[str, Any] = {
            "role": self.role,
            "node_id": self.identity.node_id,
            "epoch": self.epoch,
            "writable": self.accepts_writes(),
            "lease_seconds_left": self.lease_time_left(),
            "election": self.config.election,
            "sync_mode": self.config.sync_mode,
            "acknowledged_sequence": int(self.acked_sequence()),
            "pending_changes": self.leader.pending if self.leader else 0,
            "lag_seconds": round(self.lag_seconds(), 3),
            "loss_window_seconds": round(self.lag_seconds(), 3) if self.leader else None,
            "peer_connected": self.peer_connected(),
            "peer_url": hide_password(self.config.peer_url) or None,
            "peer_urls": [hide_password(url) for url in self.config.peer_urls],
            "last_error": last_error,
            "storage_path": self.config.storage_path,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
            "warnings": [w for w in (unguarded_warning(self.config),) if w],
        }
        status["health"], status["health_reason"] = self.health_without_probe()
        if self.leader is not None:
            status["produced_sequence"] = self.leader.head
            status["replicas"] = [self._link_status(link) for link in self.leader.links]
        else:
            status["applied_sequence"] = self.receiver.applied_seq
            status["journal_id"] = self.receiver.journal_id or None
            status["master_node"] = self.receiver.master_node or None
            status["synced"] = self.receiver.synced
            status["protocol"] = self.receiver.protocol
        return status

    def _replica_views(self) -> list[ReplicaView]:
        links = self.leader.links if self.leader else []
        return [
            ReplicaView(
                target=hide_password(link.target),
                connected=link.sender.connected,
                lag_seconds=link.journal.oldest_unacked_age(),
                pending=link.journal.pending,
            )
            for link in links
        ]

    @staticmethod
    def _link_status(link: ReplicaLink) -> dict[str, Any]:
        progress = getattr(link.sender, "progress", None)  # an SFTP link keeps none
        return {
            "target": hide_password(link.target),
            "connected": link.sender.connected,
            "confirmed_sequence": link.journal.confirmed,
            "pending_changes": link.journal.pending,
            "lag_seconds": round(link.journal.oldest_unacked_age(), 3),
            "last_error": link.sender.last_error,
            "progress": None if progress is None else progress.snapshot(link.journal.pending),
            "last_long_work": None if progress is None else progress.last,
            "protocol": getattr(link.sender, "protocol", None),
        }

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
        parts = self.leader
        if parts is None:
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

        async def apply_and_commit() -> None:
            await applier.apply(op, read)
            await applier.finish()  # group commit: the file is in place and durable

        # Off the loop: a stalled disk blocks this write, not the node's heartbeats, lease and API.
        await asyncio.get_running_loop().run_in_executor(self._write_through, asyncio.run, apply_and_commit())
        parts.recorder.record_sync(path)
        return parts.head

    def record_written(self, paths: list[str]) -> int:
        """Record files the store just wrote, ahead of the watcher; returns the sequence to await."""
        parts = self.leader
        if parts is None:
            raise HTTPProblem(503, "not the primary", "only the leader accepts writes")
        for path in paths:
            parts.recorder.record_sync(path)
        return parts.head

    async def wait_replicated(self, seq: int, timeout: float) -> None:
        """SYNC_MODE=sync: every replica connected now confirms `seq` (PeerError if none, or on timeout)."""
        senders = [sender for sender in self.senders if sender.connected]
        if not senders:
            raise PeerError("no replica is connected")
        await asyncio.gather(*(sender.wait_acked(seq, timeout) for sender in senders))

    async def full_sync(self, timeout: float = 300.0) -> SyncSummary:
        """Reconcile every replica by manifest now and wait until each acknowledged all of it."""
        senders = self.senders
        if not senders:
            raise HTTPProblem(
                409,
                "not a replicating leader",
                "POST /internal/sync runs on the leader, which needs a peer (SYNC_TARGET)",
            )
        from replication.sender import SyncSummary  # loaded: there are senders

        started = time.monotonic()
        summaries = await asyncio.gather(*(self._sync_one(sender, timeout) for sender in senders))
        total = SyncSummary("requested", up_to_seq=max(s.up_to_seq for s in summaries))
        total.compared = max(s.compared for s in summaries)
        for one in summaries:
            total.sent += one.sent
            total.attributes += one.attributes
            total.deleted += one.deleted
            total.bytes += one.bytes
        total.seconds = time.monotonic() - started
        return total

    @staticmethod
    async def _sync_one(sender: Link, timeout: float) -> SyncSummary:
        bytes_before = sender.bytes_sent
        summary = await sender.reconcile("requested")
        await sender.wait_acked(summary.up_to_seq, timeout)
        summary.bytes = sender.bytes_sent - bytes_before
        return summary


async def cancel_until_done(task: asyncio.Task[Any], every: float = 1.0) -> None:
    """Cancel `task` and wait for its end, cancelling again every `every` seconds: a cancel can be
    swallowed (asyncio.wait_for in Python 3.11 returns the inner result when it completes in the same
    step, gh-86296), and a link that swallowed its one cancel kept a stopping node alive forever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()
