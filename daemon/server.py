"""The process lifecycle: startup, serve until a signal, bounded shutdown.

Signal handlers only set flags; `serve` notices them. A second SIGINT or
SIGTERM skips the graceful part and exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from daemon.api import build_app
from daemon.config import Config
from daemon.election.factory import make_backend
from daemon.env_init_locks import RedisLockClearer
from daemon.exposure import unguarded_warning
from daemon.ha_loop import ControlLoop
from daemon.node import Node, ReplicaLink
from daemon.peers import Poller
from daemon.plugin_daemon import PluginDaemon, plugin_daemon_gauge
from daemon.roles import Decision
from daemon.store.factory import make_store
from daemon.store.store import PluginStore
from daemon.tls import server_context
from replication.errors import PeerError

log = structlog.get_logger("daemon.server")

RETENTION_INTERVAL = 3600.0
"""How often the conflicts area's retention runs besides at start and after a demotion."""


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = Node(config)
        backend = make_backend(
            config.election,
            redis_url=config.redis_url,
            database_url=config.database_url,
            cluster=config.cluster_name,
            request_timeout=config.election_timeout,
            redis_password=config.redis_password,
        )
        self.control = ControlLoop(self.node, backend)
        self.plugin_daemon: Poller | None = None
        if config.plugin_daemon_url:
            self.plugin_daemon = Poller(f"{config.plugin_daemon_url}/health/check", interval=1.0, timeout=2.0)
            plugin_daemon_gauge(self.plugin_daemon, self.node.registry)
        locks = None
        if config.dify_redis_url:
            locks = RedisLockClearer(config.dify_redis_url, config.dify_redis_password, config.plugin_dir)
        self.gate = PluginDaemon(
            self.node, gated=config.plugin_daemon_gate, health=self.plugin_daemon, locks=locks
        )
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self._runner: web.AppRunner | None = None
        self.store: PluginStore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> int:
        self._install_signal_handlers()
        await self.startup()
        try:
            await self._main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        log.info("starting", config=repr(self.config))
        warning = unguarded_warning(self.config)
        if warning is not None:
            log.warning("UNAUTHENTICATED_API", problem=warning)  # config allowed it: ALLOW_UNAUTHENTICATED
        self.node.prepare_storage()
        await asyncio.to_thread(self.node.expire_conflicts)
        await self.control.start()
        self.store = make_store(self.config, self.node)  # opened and closed by the app (its cleanup_ctx)
        self.control.on_transition = self._record_transition
        app = build_app(self.node, self.control, self.plugin_daemon, self.store, self.gate)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=min(self.config.shutdown_timeout, 5.0),
            keepalive_timeout=self.config.request_header_timeout,  # also bounds a request head: limits.py
        )
        await self._runner.setup()
        self.control.connection_open = self._connection_open
        site = web.TCPSite(
            self._runner,
            self.config.server_host,
            self.config.server_port,
            reuse_address=True,
            ssl_context=server_context(self.config.tls),
        )
        await site.start()
        self._tasks.add(self.node.start_background_work())  # no await before it: no batch can come first
        for number, peer in enumerate(self.control.peers):
            self._spawn(peer.run(), f"peer-poller-{number}")
        if self.plugin_daemon is not None:
            self._spawn(self.plugin_daemon.run(), "plugin-daemon-poller")
        self._spawn(self.control.run(), "control-loop")
        self._spawn(self._retention(), "conflicts-retention")
        log.info(
            "started",
            role=self.config.role,
            host=self.config.server_host,
            port=self.config.server_port,
            tls="mutual" if self.config.tls.mutual else ("on" if self.config.tls.serves_tls else "off"),
            storage_path=self.config.storage_path,
            node_id=self.node.identity.node_id,
        )

    async def _main_loop(self) -> None:
        while not self.should_exit.is_set():
            for task in [t for t in self._tasks if t.done()]:
                self._reap(task)
            try:
                await asyncio.wait_for(self.should_exit.wait(), 0.5)
            except TimeoutError:
                continue

    async def shutdown(self) -> None:
        started = time.monotonic()
        log.info("stopping")
        control_task = [t for t in self._tasks if t.get_name() == "control-loop"]
        for task in control_task:
            task.cancel()
        if self.node.leader is not None:
            self.node.leader.watcher.stop()
            if not self.force_exit:
                await self._drain(deadline=started + self.config.shutdown_timeout / 2)
        await self.node.stop_leading()
        self.node.tracker.flush()
        await self.control.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.1, self.config.shutdown_timeout / 4))
        if self._runner is not None:
            await self._runner.cleanup()  # closes the store too
        if self.control.backend is not None:
            await self.control.backend.close()
        log.info("stopped", seconds=round(time.monotonic() - started, 3))

    async def _drain(self, deadline: float) -> None:
        """Give each connected link a bounded chance to ship what the watcher already recorded."""
        parts = self.node.leader
        if parts is None or not parts.links:
            return

        def waiting() -> list[ReplicaLink]:
            return [link for link in parts.links if link.sender.connected and link.journal.pending]

        while (links := waiting()) and not self.force_exit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(PeerError):
                await asyncio.gather(
                    *(link.sender.wait_acked(parts.head, min(remaining, 0.2)) for link in links)
                )
        for link in parts.links:
            if link.journal.pending:
                log.warning("stopped_with_pending_changes", target=link.target, pending=link.journal.pending)

    def _connection_open(self, peer: object) -> bool:
        """Whether a connection from `peer` (host, port) is still open on our API."""
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return True
        return any(
            handler.transport is not None and handler.transport.get_extra_info("peername") == peer
            for handler in server.connections
        )

    async def _retention(self) -> None:
        """The conflicts area's retention, hourly (also at start and after each demotion: node.py)."""
        while True:
            await asyncio.sleep(RETENTION_INTERVAL)
            await asyncio.to_thread(self.node.expire_conflicts)

    async def _record_transition(self, kind: str, decision: Decision) -> None:
        if self.store is not None:
            await self.store.note(kind, epoch=decision.state.epoch, reason=decision.reason)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background_task_failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}")

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._handle_exit, sig)

    def _handle_exit(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            self.force_exit = True
            log.warning("forced_exit", signal=sig.name)
            raise SystemExit(1)
        log.info("signal_received", signal=sig.name)
        self.should_exit.set()
