"""The plugin store: preload, upload, list and serve packages; record what happened.

A package reaches PACKAGE_DIR only after its checksum was recomputed and matched its
identifier, through a temp file renamed into place (nothing partial is ever visible and
nothing unverified is ever recorded). Writes into the replicated tree happen on the leader
only; the watcher carries them to the replica, and with SYNC_MODE=sync the answer waits for
the replica's acknowledgement. Verification, quarantine and the working-folder manifests
live in verifier.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from daemon.config import Config
from daemon.store import files
from daemon.store.catalogue import Catalogue, PackageRecord, now
from daemon.store.checksum import verify_package
from daemon.store.download import Downloader, DownloadSettings
from daemon.store.errors import (
    CatalogueError,
    Corrupted,
    NotFound,
    NotWritable,
    PackageTooLarge,
    StoreError,
    UnverifiableIdentifier,
)
from daemon.store.identifier import CHECKSUM_HEX, PluginIdentifier, PluginReference, parse, parse_request
from daemon.store.layout import Layout
from daemon.store.marketplace import Marketplace
from daemon.store.metrics import StoreMetrics
from daemon.store.node_view import NodeView
from daemon.store.verifier import Verifier
from replication.applier import sweep_temp_files

log = structlog.get_logger("daemon.store")

CATALOGUE_STARTUP_WAIT = 3.0
PROMOTION_CHECK_TIMEOUT = 15.0
"""An operator's promotion waits this long at most for the working folders' check."""
PRUNE_EVERY = 100
"""Events recorded between two applications of the retention (EVENTS_KEEP, EVENTS_MAX_AGE) at write."""
EVENT_LIST_LIMIT = 100
"""Items kept per list field of an event (the rest are counted in <field>_total)."""
EVENT_TEXT_LIMIT = 4000
"""Characters kept per text field of an event."""
"""Start-up waits this long for the catalogue, then serves without it (503s) and keeps trying."""


class PluginStore:
    def __init__(
        self, config: Config, catalogue: Catalogue, node: NodeView, registry: CollectorRegistry
    ) -> None:
        self.config = config
        self.layout = Layout.from_config(config)
        self.root = self.layout.storage_root()
        self.catalogue = catalogue
        self.node = node
        self._redactor = config.redactor()
        self.metrics = StoreMetrics(registry)
        self.max_size = config.max_plugin_package_size
        self.downloader = Downloader(
            DownloadSettings(
                connect_timeout=config.download_connect_timeout,
                read_timeout=config.download_read_timeout,
                retries=config.download_retries,
                backoff=config.download_backoff,
                max_size=self.max_size,
            )
        )
        self.marketplace = Marketplace(config.marketplace_url, self.downloader)
        self.verifier = Verifier(self)
        self.catalogue_error: str | None = "not opened yet"
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._recorded = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        """Open (and migrate) the catalogue, sweep temp files a crash left, start the periodic jobs.

        An unreachable catalogue does not stop the daemon: replication matters more. The store
        answers 503 for what needs the catalogue and the periodic job keeps trying to open it.
        """
        await asyncio.to_thread(os.makedirs, self.layout.root, exist_ok=True)
        try:
            await asyncio.wait_for(self.connect_catalogue(), CATALOGUE_STARTUP_WAIT)
        except TimeoutError:
            self.catalogue_error = f"no answer within {CATALOGUE_STARTUP_WAIT:g}s at start-up; still trying"
            log.error("catalogue_unavailable", backend=self.catalogue.backend, error=self.catalogue_error)
        for folder in (self.layout.packages, self.layout.plugins):
            if not self.layout.is_replicated(folder):  # the receiver sweeps the replicated tree itself
                await asyncio.to_thread(_sweep, self.layout.absolute(folder))
        self.verifier.start()
        log.info(
            "store_opened",
            catalogue=self.catalogue.backend,
            root=self.layout.root,
            packages=self.layout.absolute(self.layout.packages),
            quarantine=self.layout.absolute(self.layout.quarantine),
            replicated=self.layout.is_replicated(self.layout.packages),
        )
        if not self.layout.is_replicated(self.layout.packages):
            log.warning(
                "packages_not_replicated",
                package_dir=self.layout.absolute(self.layout.packages),
                storage_path=self.layout.storage_path,
                hint="set STORAGE_PATH to the plugin storage root (e.g. /app/storage) to replicate packages",
            )

    async def connect_catalogue(self) -> bool:
        try:
            await self.catalogue.open()
        except CatalogueError as exc:
            if self.catalogue_error != str(exc):
                log.error("catalogue_unavailable", backend=self.catalogue.backend, error=str(exc))
            self.catalogue_error = str(exc)
            return False
        if self.catalogue_error != "not opened yet":
            log.info("catalogue_available", backend=self.catalogue.backend)
        self.catalogue_error = None
        return True

    @property
    def catalogue_ready(self) -> bool:
        return self.catalogue_error is None

    def _need_catalogue(self) -> None:
        if self.catalogue_error is not None:
            raise CatalogueError(
                f"the catalogue ({self.catalogue.backend}) is not available: {self.catalogue_error}"
            )

    async def close(self) -> None:
        await self.verifier.stop()
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        await self.downloader.close()
        await self.catalogue.close()

    # -- writing -----------------------------------------------------------------------
    async def preload(self, text: str) -> dict[str, Any]:
        """Make sure the package named by `text` is stored and verified; download it when it is not."""
        request = parse_request(text)
        self._need_catalogue()
        self.require_writable(self.layout.packages)
        started = time.monotonic()
        resolve_attempts = 0
        if isinstance(request, PluginReference):
            try:
                identifier, resolve_attempts = await self.marketplace.resolve(request)
            except StoreError as exc:
                self.metrics.download_finished("failure", time.monotonic() - started)
                await self._failed("preload", request, exc)
                raise
        else:
            identifier = request
        rel = self._writable_package(identifier)
        url = self.marketplace.download_url(identifier)
        async with self.lock(identifier):
            present = await self.verifier.present_and_valid("package", identifier)
            if present is not None:
                self.metrics.download_finished("already_present")
                answer = await self._answer("preload", present, started, attempts=0, already=True)
            else:
                answer = await self._download(identifier, url, started)
        answer["resolved_from"] = str(request) if isinstance(request, PluginReference) else None
        answer["resolve_attempts"] = resolve_attempts
        answer["replicated"] = await self._settle(rel)
        return answer

    async def _download(self, identifier: PluginIdentifier, url: str, started: float) -> dict[str, Any]:
        """Download, verify and store one package (the caller holds its lock)."""
        pending = PendingPackage(self, identifier)
        try:
            attempts = await self.downloader.fetch_to(url, pending.file, pending.check)
            await pending.commit()
        except BaseException as exc:
            pending.discard()
            self.metrics.download_finished("failure", time.monotonic() - started)
            await self._failed("preload", identifier, exc)
            raise
        self.metrics.download_finished("success", time.monotonic() - started)
        record = self._record(identifier, pending.file.size, "marketplace")
        await self.catalogue.put_package(record)
        return await self._answer("preload", record, started, attempts=attempts, already=False)

    async def upload(
        self, text: str, chunks: AsyncIterator[bytes], declared: int | None
    ) -> tuple[dict[str, Any], bool]:
        """Store an uploaded package (air-gapped sites): (answer, created)."""
        identifier = _verifiable(parse(text))
        rel = self._writable_package(identifier)
        self._need_catalogue()
        if declared is not None and declared > self.max_size:
            raise PackageTooLarge(
                f"the upload is {declared} bytes, more than MAX_PLUGIN_PACKAGE_SIZE={self.max_size}",
                limit=self.max_size,
            )
        started = time.monotonic()
        async with self.lock(identifier):
            present = await self.verifier.present_and_valid("package", identifier)
            if present is not None:
                answer = await self._answer("upload", present, started, attempts=1, already=True)
                answer["replicated"] = await self._settle(rel)
                return answer, False
            pending = PendingPackage(self, identifier)
            try:
                async for chunk in chunks:
                    if pending.file.size + len(chunk) > self.max_size:
                        raise PackageTooLarge(
                            f"the upload exceeds MAX_PLUGIN_PACKAGE_SIZE={self.max_size} bytes",
                            limit=self.max_size,
                        )
                    pending.file.write(chunk)
                await pending.check(pending.file)
                await pending.commit()
            except BaseException as exc:
                pending.discard()
                await self._failed("upload", identifier, exc)
                raise
            record = self._record(identifier, pending.file.size, "upload")
            await self.catalogue.put_package(record)
            answer = await self._answer("upload", record, started, attempts=1, already=False)
        answer["replicated"] = await self._settle(rel)
        return answer, True

    # -- reading -----------------------------------------------------------------------
    async def list_plugins(self) -> dict[str, Any]:
        """Every package and installed plugin on disk or in the catalogue, and the quarantine."""
        entries = await self.verifier.statuses()
        quarantined = await self.verifier.quarantined()
        counts: dict[str, int] = {}
        for entry in entries:
            key = f"{entry['kind']}_{entry['status']}"
            counts[key] = counts.get(key, 0) + 1
        return {"plugins": entries, "quarantined": quarantined, "counts": counts}

    async def get_plugin(self, text: str) -> dict[str, Any]:
        identifier = parse(text)
        entries = await self.verifier.statuses(identifier)
        if not entries:
            raise NotFound(f"no package or installed plugin {identifier} here", identifier=str(identifier))
        by_kind = {entry["kind"]: entry for entry in entries}
        return {
            "identifier": str(identifier),
            "package": by_kind.get("package"),
            "installed": by_kind.get("installed"),
        }

    async def open_package(self, text: str) -> tuple[int, int, PluginIdentifier]:
        """(read fd, size, identifier) of a stored package; the caller closes the fd."""
        identifier = parse(text)
        rel = self.layout.package(identifier)
        try:
            record = await self.catalogue.get_package("package", str(identifier))
        except CatalogueError:
            record = None  # serving a stored package does not need the catalogue
        try:
            fd = self.root.open_for_reading(rel)
        except (OSError, ValueError):
            raise NotFound(f"no package {identifier} in PACKAGE_DIR", identifier=str(identifier)) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotFound(f"no package {identifier} in PACKAGE_DIR", identifier=str(identifier))
        if record is not None and record.status == "corrupted":
            os.close(fd)
            raise Corrupted(
                f"{identifier} does not match its checksum ({record.detail})", identifier=str(identifier)
            )
        return fd, st.st_size, identifier

    # -- events ------------------------------------------------------------------------
    async def record_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record one event (promotion, failover, ...); the node's epoch and role are added when absent."""
        fields.setdefault("epoch", self.node.epoch)
        fields.setdefault("role", self.node.role)
        fields = self._redactor.value(bounded_fields(fields))  # an error may quote a URL with its password
        event = await self.catalogue.add_event(kind, fields)
        self._recorded += 1
        if self._recorded % PRUNE_EVERY == 0:
            await self.prune_events()
        return event.to_json()

    async def prune_events(self) -> int:
        """Apply the retention: the newest EVENTS_KEEP events, none older than EVENTS_MAX_AGE (if set)."""
        age = self.config.events_max_age
        before = now() - dt.timedelta(seconds=age) if age else None
        removed = await self.catalogue.prune_events(self.config.events_keep, before)
        if removed:
            log.info("events_pruned", removed=removed, keep=self.config.events_keep, max_age_seconds=age)
        return removed

    async def events(self, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [event.to_json() for event in await self.catalogue.events(kind, limit)]

    async def note(self, kind: str, **fields: Any) -> None:
        """Record an event the store's own work produced; a catalogue outage is logged, not raised."""
        try:
            await self.record_event(kind, **fields)
        except StoreError as exc:
            log.warning("event_not_recorded", kind=kind, error=str(exc))

    def note_later(self, kind: str, **fields: Any) -> None:
        """`note` off the caller's path (a promotion must not wait on the catalogue)."""
        task = asyncio.create_task(self.note(kind, **fields), name=f"store-event-{kind}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- verification (verifier.py) --------------------------------------------------------
    async def verify_all(self, trigger: str = "request") -> dict[str, Any]:
        return await self.verifier.verify_all(trigger)

    async def purge_corrupted(self) -> dict[str, Any]:
        return await self.verifier.purge()

    async def check_workdirs(self, trigger: str = "request") -> dict[str, Any]:
        """Check the `.plugin.sha256` manifests now (before a promotion); the report lists failures."""
        return await self.verifier.check_workdirs(trigger)

    async def promotion_report(self) -> dict[str, Any]:
        """The node's promotion check (Node.promotion_checks): the working folders, checked within
        PROMOTION_CHECK_TIMEOUT; a check that cannot run is reported, and the promotion goes on."""
        try:
            return await asyncio.wait_for(self.check_workdirs("promotion"), PROMOTION_CHECK_TIMEOUT)
        except (StoreError, TimeoutError, OSError) as exc:
            log.error("promotion_check_failed", error=str(exc) or type(exc).__name__)
            return {"error": str(exc) or type(exc).__name__}

    # -- helpers -----------------------------------------------------------------------
    def lock(self, identifier: PluginIdentifier) -> asyncio.Lock:
        return self._locks.setdefault(str(identifier), asyncio.Lock())

    def may_write(self, rel: str) -> bool:
        return not self.layout.is_replicated(rel) or self.node.writable()

    def require_writable(self, rel: str) -> None:
        if not self.layout.is_replicated(rel):
            return
        if not self.node.writable():
            raise NotWritable(
                f"this node is the {self.node.role} at epoch {self.node.epoch}: the storage is replicated "
                "from the leader, send writes to the primary",
                role=self.node.role,
                epoch=self.node.epoch,
            )
        problem = self.node.sync_problem()
        if problem:
            raise NotWritable(problem, role=self.node.role, epoch=self.node.epoch)

    def _writable_package(self, identifier: PluginIdentifier) -> str:
        _verifiable(identifier)
        rel = self.layout.package(identifier)
        self.require_writable(rel)
        return rel

    async def _settle(self, rel: str) -> bool:
        replicated = self.layout.replicated(rel)
        return await self.node.settle([replicated]) if replicated else False

    def _record(self, identifier: PluginIdentifier, size: int, source: str) -> PackageRecord:
        at = now()
        return PackageRecord(
            kind="package",
            identifier=str(identifier),
            checksum=identifier.checksum,
            size=size,
            source=source,
            status="ok",
            fetched_at=at,
            verified_at=at,
        )

    async def _answer(
        self, kind: str, record: PackageRecord, started: float, *, attempts: int, already: bool
    ) -> dict[str, Any]:
        seconds = round(time.monotonic() - started, 3)
        answer = {
            "identifier": record.identifier,
            "checksum": record.checksum,
            "size": record.size,
            "seconds": seconds,
            "attempts": attempts,
            "already_present": already,
            "source": record.source,
            "path": f"{self.layout.packages}/{record.identifier}",
        }
        await self.note(
            kind,
            identifier=record.identifier,
            result="already_present" if already else "stored",
            size=record.size,
            seconds=seconds,
            attempts=attempts,
        )
        log.info(f"{kind}_done", identifier=record.identifier, already_present=already, attempts=attempts)
        return answer

    async def _failed(
        self, kind: str, identifier: PluginIdentifier | PluginReference, exc: BaseException
    ) -> None:
        reason = str(exc) or type(exc).__name__
        log.warning(f"{kind}_failed", identifier=str(identifier), error=reason)
        if isinstance(exc, Exception):
            attempts = exc.extra.get("attempts") if isinstance(exc, StoreError) else None
            await self.note(
                kind, identifier=str(identifier), result="failed", reason=reason, attempts=attempts
            )


def bounded_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """An event's fields with long lists and texts cut (a list's length kept in <field>_total).

    Events are kept for a long time and shown whole: a report over a storage full of junk must
    not turn into one huge row.
    """
    kept: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, list | tuple) and len(value) > EVENT_LIST_LIMIT:
            kept[f"{name}_total"] = len(value)
            value = list(value[:EVENT_LIST_LIMIT])
        elif isinstance(value, str) and len(value) > EVENT_TEXT_LIMIT:
            value = value[:EVENT_TEXT_LIMIT] + "..."
        kept[name] = value
    return kept


class PendingPackage:
    """A package on its way in: a temp file beside its final name, verified before the rename."""

    def __init__(self, store: PluginStore, identifier: PluginIdentifier) -> None:
        self.store = store
        self.identifier = identifier
        self.file = files.PendingFile(store.root, store.layout.package(identifier)).open()

    async def check(self, pending: files.PendingFile) -> None:
        def verify() -> None:
            with os.fdopen(pending.reader(), "rb") as fh:
                verify_package(fh, self.identifier, self.store.max_size)

        await asyncio.to_thread(verify)

    async def commit(self) -> None:
        await asyncio.to_thread(self.file.commit)

    def discard(self) -> None:
        self.file.discard()


def _verifiable(identifier: PluginIdentifier) -> PluginIdentifier:
    if not identifier.verifiable:
        raise UnverifiableIdentifier(
            f"{identifier}: its checksum has {len(identifier.checksum)} hex digits; only a "
            f"{CHECKSUM_HEX}-digit checksum (the daemon's SHA-256) can be recomputed and compared",
            identifier=str(identifier),
        )
    return identifier


def _sweep(folder: str) -> None:
    removed = sweep_temp_files(folder)
    if removed:
        log.warning("store_temp_files_removed", folder=folder, count=removed)
