"""Verification: packages and installed plugins against their identifiers, working folders against
their `.plugin.sha256`, the quarantine, and the store's periodic jobs.

A package or installed plugin whose checksum no longer matches its identifier is moved, on the
leader, to QUARANTINE_DIR/<UTC stamp>/<its path under the root> (default
<root>/plugin_quarantine: beside plugin/ and plugin_packages/, outside every folder the plugin
daemon scans, inside the replicated tree when STORAGE_PATH is the whole root, so the watcher
replays the move on the replica). A corrupted installed plugin is then restored from its
package when that package verifies. A replica only reports: its leader's verification
quarantines, and replication brings the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import math
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from daemon.store import files, workdirs
from daemon.store.catalogue import Kind, PackageRecord, iso, now
from daemon.store.checksum import package_checksum
from daemon.store.errors import ChecksumMismatch, InvalidIdentifier, InvalidPackage, PackageTooLarge
from daemon.store.identifier import PluginIdentifier, parse
from replication.errors import ContainmentError

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.store.catalogue import Catalogue
    from daemon.store.layout import Layout
    from daemon.store.metrics import StoreMetrics
    from daemon.store.node_view import NodeView
    from replication.paths import StorageRoot

log = structlog.get_logger("daemon.store.verifier")

TICK = 1.0
CONNECT_RETRY = 5.0
RETENTION_INTERVAL = 3600.0
"""How often the event history's retention is applied besides at write (EVENTS_KEEP, EVENTS_MAX_AGE)."""
PROMOTION_CHECK_FRESH = 30.0
"""A leadership gained within this long of a pre-promotion check is not checked again."""
STAMP = "%Y%m%dT%H%M%S.%fZ"
KINDS: tuple[Kind, ...] = ("package", "installed")


@dataclass(frozen=True)
class Verdict:
    record: PackageRecord | None
    moved_to: str | None = None
    restored: bool = False


class StoreParts(Protocol):
    """What the verifier uses of the store (store.py's PluginStore), named so neither imports the other."""

    config: Config
    layout: Layout
    root: StorageRoot
    catalogue: Catalogue
    node: NodeView
    metrics: StoreMetrics
    max_size: int

    @property
    def catalogue_ready(self) -> bool: ...
    async def connect_catalogue(self) -> bool: ...
    async def prune_events(self) -> int: ...
    async def note(self, kind: str, **fields: Any) -> None: ...
    def note_later(self, kind: str, **fields: Any) -> None: ...
    def lock(self, identifier: PluginIdentifier) -> asyncio.Lock: ...
    def may_write(self, rel: str) -> bool: ...
    def require_writable(self, rel: str) -> None: ...


class Verifier:
    def __init__(self, store: StoreParts) -> None:
        self.store = store
        self.layout = store.layout
        self._task: asyncio.Task[None] | None = None
        self._verifying = asyncio.Lock()
        self._promotion_checked_at = -math.inf

    # -- periodic jobs ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name="store-maintenance")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _maintain(self) -> None:
        """Manifests every WORKDIR_SCAN_INTERVAL, verification every VERIFY_INTERVAL, a check on promotion,
        the event history's retention hourly."""
        config = self.store.config
        clock = time.monotonic
        next_scan = clock() + TICK if config.workdir_scan_interval else math.inf
        next_verify = clock() + config.verify_interval if config.verify_interval else math.inf
        was_leader: bool | None = None
        next_connect = clock() + CONNECT_RETRY
        next_prune = clock() + TICK
        while True:
            await asyncio.sleep(TICK)
            try:
                if not self.store.catalogue_ready and clock() >= next_connect:
                    await self.store.connect_catalogue()
                    next_connect = clock() + CONNECT_RETRY
                leader = self.store.node.writable()
                recently_checked = clock() - self._promotion_checked_at < PROMOTION_CHECK_FRESH
                if was_leader is False and leader and not recently_checked:
                    await self.check_workdirs("became_leader")
                was_leader = leader
                if clock() >= next_scan:
                    await self.write_manifests()
                    next_scan = clock() + config.workdir_scan_interval
                if clock() >= next_verify:
                    await self.verify_all("periodic")
                    next_verify = clock() + config.verify_interval
                if clock() >= next_prune and self.store.catalogue_ready:
                    next_prune = clock() + RETENTION_INTERVAL
                    await self.store.prune_events()
            except Exception:  # a bad pass must not end the job
                log.exception("store_maintenance_failed")

    # -- one item --------------------------------------------------------------------------
    def _rel(self, kind: Kind, identifier: PluginIdentifier) -> str:
        return self.layout.package(identifier) if kind == "package" else self.layout.installed(identifier)

    async def present_and_valid(self, kind: Kind, identifier: PluginIdentifier) -> PackageRecord | None:
        """The record of a valid copy already here; a corrupted one is quarantined (caller holds the lock)."""
        verdict = await self.verify_one(kind, identifier, act=True)
        record = verdict.record
        return record if record is not None and record.status == "ok" else None

    async def verify_one(self, kind: Kind, identifier: PluginIdentifier, *, act: bool) -> Verdict:
        """Recompute one checksum and record the result; with `act`, quarantine a corrupted copy."""
        key = str(identifier)
        rel = self._rel(kind, identifier)
        record = await self.store.catalogue.get_package(kind, key)
        if not identifier.verifiable:  # a checksum that is not a SHA-256 cannot be compared: leave it be
            return Verdict(record)
        try:
            size, actual, detail = await asyncio.to_thread(self._checksum, rel)
        except FileNotFoundError:
            return Verdict(await self._absent(record))
        if actual == identifier.checksum:
            verified = PackageRecord(
                kind=kind,
                identifier=key,
                checksum=identifier.checksum,
                size=size,
                source=record.source if record else "disk",
                status="ok",
                fetched_at=record.fetched_at if record else None,
                verified_at=now(),
            )
            await self.store.catalogue.put_package(verified)
            return Verdict(verified)
        if actual is not None:
            detail = str(ChecksumMismatch(key, identifier.checksum, actual))
        return await self._corrupted(kind, identifier, size, detail, record, act)

    def _checksum(self, rel: str) -> tuple[int, str | None, str]:
        """(size, the daemon's checksum or None, why not); FileNotFoundError when nothing is there."""
        try:
            with files.opened(self.store.root, rel) as fd:
                size = os.fstat(fd).st_size
                with os.fdopen(os.dup(fd), "rb") as fh:
                    try:
                        return size, package_checksum(fh, self.store.max_size), ""
                    except (InvalidPackage, PackageTooLarge) as exc:
                        return size, None, str(exc)
        except (OSError, ContainmentError) as exc:
            if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) in (
                errno.ENOENT,
                errno.ENOTDIR,
            ):
                raise FileNotFoundError(rel) from None
            return 0, None, f"cannot be read as a regular file: {exc}"

    async def _absent(self, record: PackageRecord | None) -> PackageRecord | None:
        if record is None or record.status != "ok":
            return record
        missing = replace(record, status="missing", verified_at=now(), detail="the file is gone")
        await self.store.catalogue.put_package(missing)
        log.warning("plugin_missing", kind=record.kind, identifier=record.identifier)
        return missing

    async def _corrupted(
        self,
        kind: Kind,
        identifier: PluginIdentifier,
        size: int,
        detail: str,
        record: PackageRecord | None,
        act: bool,
    ) -> Verdict:
        rel = self._rel(kind, identifier)
        moved_to = None
        if act and self.store.may_write(rel):
            moved_to = f"{self.layout.quarantine}/{dt.datetime.now(dt.UTC).strftime(STAMP)}/{rel}"
            await asyncio.to_thread(files.move, self.store.root, rel, moved_to)
            detail = f"{detail}; moved to {moved_to}"
        corrupted = PackageRecord(
            kind=kind,
            identifier=str(identifier),
            checksum=identifier.checksum,
            size=size,
            source=record.source if record else "disk",
            status="corrupted",
            fetched_at=record.fetched_at if record else None,
            verified_at=now(),
            detail=detail,
        )
        await self.store.catalogue.put_package(corrupted)
        log.error("plugin_corrupted", kind=kind, identifier=str(identifier), detail=detail)
        restored = False
        if moved_to is not None:
            await self.store.note(
                "quarantine", identifier=str(identifier), item=kind, moved_to=moved_to, reason=detail
            )
            if kind == "installed":
                restored = await self._restore(identifier)
        return Verdict(corrupted, moved_to, restored)

    async def _restore(self, identifier: PluginIdentifier) -> bool:
        """Put a valid copy of the package back in PLUGIN_DIR after its corrupted copy was moved aside."""
        size, actual, _detail = 0, None, ""
        with contextlib.suppress(FileNotFoundError):
            size, actual, _detail = await asyncio.to_thread(self._checksum, self.layout.package(identifier))
        if actual != identifier.checksum:
            log.error(
                "plugin_not_restored", identifier=str(identifier), reason="no valid package to restore from"
            )
            return False
        await asyncio.to_thread(self._copy_package, identifier)
        at = now()
        await self.store.catalogue.put_package(
            PackageRecord("installed", str(identifier), identifier.checksum, size, "restored", "ok", at, at)
        )
        await self.store.note("restore", identifier=str(identifier), item="installed", size=size)
        return True

    def _copy_package(self, identifier: PluginIdentifier) -> None:
        pending = files.PendingFile(self.store.root, self.layout.installed(identifier)).open()
        try:
            with files.opened(self.store.root, self.layout.package(identifier)) as fd:
                while chunk := os.read(fd, 1024 * 1024):
                    pending.write(chunk)
            pending.commit()
        except BaseException:
            pending.discard()
            raise

    # -- listings --------------------------------------------------------------------------
    def _on_disk(self, identifier: PluginIdentifier | None) -> dict[tuple[Kind, str], int]:
        found: dict[tuple[Kind, str], int] = {}
        for kind in KINDS:
            if identifier is not None:
                size = files.file_size(self.store.root, self._rel(kind, identifier))
                if size is not None:
                    found[(kind, str(identifier))] = size
                continue
            folder = self.layout.packages if kind == "package" else self.layout.plugins
            for name, size in _scan(self.layout.absolute(folder)).items():
                found[(kind, name)] = size
        return found

    async def statuses(self, identifier: PluginIdentifier | None = None) -> list[dict[str, Any]]:
        """Each package and installed plugin: its last verification, re-done for files never seen or changed
        in size (never moving anything: a listing has no side effects on the storage)."""
        records = {
            (r.kind, r.identifier): r
            for r in await self.store.catalogue.packages()
            if identifier is None or r.identifier == str(identifier)
        }
        on_disk = await asyncio.to_thread(self._on_disk, identifier)
        entries = []
        for kind, key in sorted(set(records) | set(on_disk), key=lambda k: (k[1], k[0])):
            record, size = records.get((kind, key)), on_disk.get((kind, key))
            if size is not None and (record is None or record.status == "missing" or record.size != size):
                async with self.store.lock(parse(key)):
                    record = (await self.verify_one(kind, parse(key), act=False)).record
            elif size is None:
                record = await self._absent(record)
            if record is not None:
                entry = record.to_json()
                entry["in_place"] = size is not None
                entry["path"] = self._rel(kind, parse(key))
                entries.append(entry)
        if identifier is None:
            await self._count_corrupted(entries)
        return entries

    async def quarantined(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(
            _quarantine_items, self.layout.absolute(self.layout.quarantine), self.layout.quarantine
        )

    async def _count_corrupted(self, entries: list[dict[str, Any]]) -> int:
        in_place = sum(1 for e in entries if e["status"] == "corrupted" and e["in_place"])
        count = in_place + len(await self.quarantined())
        self.store.metrics.corrupted.set(count)
        return count

    # -- whole passes -------------------------------------------------------------------------
    async def verify_all(self, trigger: str) -> dict[str, Any]:
        """Re-verify every package and installed plugin now, and the working folders' manifests."""
        async with self._verifying:
            started = time.monotonic()
            report: dict[str, Any] = {"trigger": trigger, "role": self.store.node.role}
            report.update(await self._verify_items())
            report["workdirs"] = (await asyncio.to_thread(workdirs.check_all, self._working())).to_json()
            report["manifests_written"] = await self.write_manifests()
            report["corrupted_total"] = await self._count_corrupted(await self.statuses())
            if report["corrupted"] and not report["quarantined"]:
                report["note"] = (
                    "this node does not write the replicated storage: corrupted items are reported, "
                    "not moved; the leader's verification quarantines them and replication brings the outcome"
                )
            report["seconds"] = round(time.monotonic() - started, 3)
            await self._record_verification(report)
            return report

    async def _verify_items(self) -> dict[str, Any]:
        keys = set(await asyncio.to_thread(self._on_disk, None))
        keys |= {
            (r.kind, r.identifier) for r in await self.store.catalogue.packages() if r.status != "corrupted"
        }
        found: dict[str, Any] = {
            "checked": len(keys),
            "ok": 0,
            "corrupted": [],
            "missing": [],
            "restored": [],
        }
        found["unverifiable"] = []
        for kind, key in sorted(keys, key=lambda k: (k[1], k[0])):
            identifier, item = parse(key), {"kind": kind, "identifier": key}
            if not identifier.verifiable:
                found["unverifiable"].append(item)
                continue
            async with self.store.lock(identifier):
                verdict = await self.verify_one(kind, identifier, act=True)
            record = verdict.record
            if record is None or record.status == "missing":
                found["missing"].append(item)
            elif record.status == "ok":
                found["ok"] += 1
            else:
                found["corrupted"].append({**item, "detail": record.detail, "moved_to": verdict.moved_to})
            if verdict.restored:
                found["restored"].append(key)
        found["quarantined"] = [c for c in found["corrupted"] if c["moved_to"]]
        return found

    async def _record_verification(self, report: dict[str, Any]) -> None:
        await self.store.note(
            "verification",
            trigger=report["trigger"],
            checked=report["checked"],
            ok=report["ok"],
            corrupted=[c["identifier"] for c in report["corrupted"]],
            quarantined=[c["moved_to"] for c in report["quarantined"]],
            missing=[m["identifier"] for m in report["missing"]],
            workdir_failures=[f["path"] for f in report["workdirs"]["failed"]],
            seconds=report["seconds"],
        )
        level = log.error if report["corrupted"] or report["workdirs"]["failed"] else log.info
        level(
            "verification_done",
            trigger=report["trigger"],
            checked=report["checked"],
            corrupted=len(report["corrupted"]),
            quarantined=len(report["quarantined"]),
            missing=len(report["missing"]),
        )

    async def purge(self) -> dict[str, Any]:
        """Delete everything in the quarantine, and the catalogue rows of what was in it."""
        quarantine = self.layout.quarantine
        self.store.require_writable(quarantine)
        async with self._verifying:
            items = await self.quarantined()
            for batch in _entries(self.layout.absolute(quarantine)):
                if batch.is_dir(follow_symlinks=False):
                    await asyncio.to_thread(files.remove, self.store.root, f"{quarantine}/{batch.name}")
            forgotten = []
            for record in await self.store.catalogue.packages():
                if record.status != "corrupted":
                    continue
                in_place = files.file_size(self.store.root, self._rel(record.kind, parse(record.identifier)))
                if in_place is None:
                    await self.store.catalogue.delete_package(record.kind, record.identifier)
                    forgotten.append({"kind": record.kind, "identifier": record.identifier})
            await self._count_corrupted(await self.statuses())
            await self.store.note(
                "purge",
                removed=[item["path"] for item in items],
                records=[f["identifier"] for f in forgotten],
            )
            log.info("quarantine_purged", removed=len(items), records=len(forgotten))
            return {"removed": items, "count": len(items), "records_removed": forgotten}

    # -- working folders ----------------------------------------------------------------------
    def _working(self) -> str:
        return self.layout.absolute(self.layout.working)

    async def check_workdirs(self, trigger: str) -> dict[str, Any]:
        report = (await asyncio.to_thread(workdirs.check_all, self._working())).to_json()
        report["trigger"] = trigger
        if trigger == "promotion":
            self._promotion_checked_at = time.monotonic()
        self.store.note_later(
            "workdir_check",
            trigger=trigger,
            ok=report["ok"],
            failed=[f["path"] for f in report["failed"]],
            unchecked=report["unchecked"],
            incomplete=report["incomplete"],
        )
        if report["failed"]:
            log.error("workdir_check_failed", trigger=trigger, failed=report["failed"])
        return report

    async def write_manifests(self) -> list[str]:
        """On the writer of the working path: a `.plugin.sha256` for each complete folder that lacks one."""
        if not self.store.may_write(self.layout.working):
            return []
        written = []
        for rel in await asyncio.to_thread(workdirs.needing_manifest, self._working()):
            folder = os.path.join(self._working(), rel)
            try:
                await asyncio.to_thread(self._write_manifest, rel, folder)
            except (OSError, ContainmentError) as exc:
                log.warning("plugin_manifest_not_written", path=rel, error=str(exc))
                continue
            written.append(rel)
        if written:
            log.info("plugin_manifests_written", count=len(written), paths=written)
        return written

    def _write_manifest(self, rel: str, folder: str) -> None:
        content = workdirs.render(workdirs.digest_tree(folder))
        target = f"{self.layout.working}/{rel}/{workdirs.MANIFEST_NAME}"
        pending = files.PendingFile(self.store.root, target, create_dirs=False).open()
        try:
            pending.write(content)
            pending.commit()
        except BaseException:
            pending.discard()
            raise


def _scan(folder: str) -> dict[str, int]:
    """{identifier: size} of the regular files under `folder` whose path is a unique identifier."""
    found: dict[str, int] = {}

    def add(name: str, entry: os.DirEntry[str]) -> None:
        with contextlib.suppress(InvalidIdentifier, OSError):
            parse(name)
            found[name] = entry.stat(follow_symlinks=False).st_size

    for entry in _entries(folder):
        if entry.is_dir(follow_symlinks=False):
            for child in _entries(entry.path):
                if child.is_file(follow_symlinks=False):
                    add(f"{entry.name}/{child.name}", child)
        elif entry.is_file(follow_symlinks=False):
            add(entry.name, entry)
    return found


def _entries(folder: str) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError:
        return []


def _quarantine_items(base: str, rel_base: str) -> list[dict[str, Any]]:
    items = []
    for stamp in sorted(e.name for e in _entries(base) if e.is_dir(follow_symlinks=False)):
        top = os.path.join(base, stamp)
        try:
            at = iso(dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.UTC))
        except ValueError:
            at = None
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                original = os.path.relpath(full, top)
                with contextlib.suppress(OSError):
                    items.append(
                        {
                            "path": f"{rel_base}/{stamp}/{original}",
                            "original": original,
                            "quarantined_at": at,
                            "size": os.lstat(full).st_size,
                        }
                    )
    return items
