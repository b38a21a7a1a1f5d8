"""The node: what this process replicates and how, wired from the Config.

A master watches STORAGE_PATH, records changes in a journal and streams
them to SYNC_TARGET; a slave receives and applies them. The HTTP layer asks
the node for status and health; it never reaches into the engine itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
import time
import uuid
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from daemon import __version__
from daemon.config import Config
from daemon.identity import NodeIdentity
from daemon.problems import HTTPProblem
from replication.exclude import PathMatcher, ReadyMarkers
from replication.journal import Journal
from replication.metrics import ReplicationMetrics
from replication.receiver import Receiver
from replication.sender import LinkSettings, Sender, SyncSummary
from replication.watcher import Watcher

log = structlog.get_logger("daemon.node")


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = ReplicationMetrics(self.registry)
        self.healthy_gauge = Gauge(
            "plugin_daemon_healthy", "1 when this node reports healthy.", registry=self.registry
        )
        self.identity = NodeIdentity.load(config.state_path)
        self.excluded = PathMatcher(config.exclude)
        self.started_at = time.monotonic()
        self.journal: Journal | None = None
        self.watcher: Watcher | None = None
        self.sender: Sender | None = None
        self.receiver: Receiver | None = None
        if config.role == "master":
            self._build_master()
        else:
            self.receiver = Receiver(
                config.storage_path, config.state_path, self.metrics, self.excluded.matches
            )
        self.metrics.track(
            lag=self.lag_seconds,
            pending=lambda: self.journal.pending if self.journal else 0,
            connected=lambda: float(self.peer_connected()),
            sequence=self.sequence,
            acked=self.acked_sequence,
        )
        self.healthy_gauge.set_function(lambda: float(self.health()[0]))

    def _build_master(self) -> None:
        self.journal = Journal(
            uuid.uuid4().hex, ReadyMarkers(self.config.ready_markers), self.config.journal_max_entries
        )
        self.watcher = Watcher(self.config.storage_path, self.journal, self.excluded.matches)
        if self.config.sync_target:
            settings = LinkSettings(
                target=self.config.sync_target,
                server_key=self.config.server_key,
                node_id=self.identity.node_id,
                heartbeat_interval=self.config.heartbeat_interval,
                batch_max_ops=self.config.batch_max_ops,
                batch_max_bytes=self.config.batch_max_bytes,
            )
            self.sender = Sender(
                settings,
                self.config.storage_path,
                self.journal,
                self.metrics,
                self.excluded.matches,
                epoch=lambda: self.identity.epoch,
                record_tree=self.watcher.record_tree,
            )

    # -- lifecycle (called by the Server) ------------------------------------------
    def prepare_storage(self) -> None:
        os.makedirs(self.config.storage_path, exist_ok=True)
        os.makedirs(self.config.state_path, exist_ok=True)
        if self.receiver is not None:
            self.receiver.sweep()

    def start_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.start(asyncio.get_running_loop())

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    # -- questions the API asks --------------------------------------------------
    @property
    def role(self) -> str:
        return self.config.role

    @property
    def epoch(self) -> int:
        return self.receiver.epoch if self.receiver is not None else self.identity.epoch

    def peer_connected(self) -> bool:
        if self.sender is not None:
            return self.sender.connected
        if self.receiver is not None:
            return self.receiver.connected(self.config.heartbeat_interval)
        return False

    def lag_seconds(self) -> float:
        if self.receiver is not None:
            return self.receiver.lag_seconds()
        return self.journal.oldest_unacked_age() if self.journal is not None else 0.0

    def sequence(self) -> float:
        if self.receiver is not None:
            return float(self.receiver.applied_seq)
        return float(self.journal.head) if self.journal is not None else 0.0

    def acked_sequence(self) -> float:
        if self.receiver is not None:
            return float(self.receiver.applied_seq)
        return float(self.journal.acked) if self.journal is not None else 0.0

    def health(self) -> tuple[bool, str]:
        return storage_writable(self.config.storage_path)

    def health_report(self) -> dict[str, Any]:
        ok, reason = self.health()
        report: dict[str, Any] = {
            "status": "healthy" if ok else "unhealthy",
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "version": __version__,
            "role": self.role,
        }
        if reason:
            report["reason"] = reason
        return report

    def status(self) -> dict[str, Any]:
        last_error = (
            self.sender.last_error if self.sender else (self.receiver.last_error if self.receiver else None)
        )
        status: dict[str, Any] = {
            "role": self.role,
            "node_id": self.identity.node_id,
            "epoch": self.epoch,
            "acknowledged_sequence": int(self.acked_sequence()),
            "pending_changes": self.journal.pending if self.journal else 0,
            "lag_seconds": round(self.lag_seconds(), 3),
            "peer_connected": self.peer_connected(),
            "last_error": last_error,
            "storage_path": self.config.storage_path,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
        }
        if self.receiver is not None:
            status["applied_sequence"] = self.receiver.applied_seq
            status["master_node"] = self.receiver.master_node or None
            status["sync_source"] = self.config.sync_source or None
        else:
            status["produced_sequence"] = self.journal.head if self.journal else 0
            status["sync_target"] = self.config.sync_target or None
        return status

    async def full_sync(self, timeout: float = 300.0) -> SyncSummary:
        """Reconcile by manifest now and wait until the slave acknowledged all of it."""
        if self.sender is None:
            raise HTTPProblem(
                409,
                "not a replicating master",
                "POST /internal/sync runs on the master (ROLE=master with SYNC_TARGET set)",
            )
        started = time.monotonic()
        bytes_before = self.sender.bytes_sent
        summary = await self.sender.reconcile("requested")
        await self.sender.wait_acked(summary.up_to_seq, timeout)
        summary.bytes = self.sender.bytes_sent - bytes_before
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
