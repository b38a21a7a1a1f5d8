"""The catalogue in an SQLite file in STATE_PATH (the default).

One connection, used from worker threads one call at a time (a lock), in WAL mode with
synchronous=FULL: a recorded package survives a power cut.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from daemon.store.catalogue import (
    MAX_EVENTS,
    Catalogue,
    Event,
    Kind,
    PackageRecord,
    iso,
    join_event_fields,
    now,
    pending_migrations,
    split_event_fields,
)
from daemon.store.errors import CatalogueError

T = TypeVar("T")
_PACKAGE_COLUMNS = "kind, identifier, checksum, size, source, status, fetched_at, verified_at, detail"


def _time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def _package(row: sqlite3.Row) -> PackageRecord:
    return PackageRecord(
        kind=row["kind"],
        identifier=row["identifier"],
        checksum=row["checksum"],
        size=row["size"],
        source=row["source"],
        status=row["status"],
        fetched_at=_time(row["fetched_at"]),
        verified_at=_time(row["verified_at"]),
        detail=row["detail"],
    )


class SqliteCatalogue(Catalogue):
    backend = "sqlite"

    def __init__(self, path: str, cluster: str, node_id: str) -> None:
        super().__init__(cluster, node_id)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                if self._conn is None:
                    raise CatalogueError(f"the catalogue {self.path} is closed")
                try:
                    return fn(self._conn)
                except sqlite3.Error as exc:
                    raise CatalogueError(f"catalogue {self.path}: {exc}") from exc

        return await asyncio.to_thread(call)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn

        if self._conn is None:
            try:
                self._conn = await asyncio.to_thread(connect)
            except sqlite3.Error as exc:
                raise CatalogueError(f"cannot open the catalogue {self.path}: {exc}") from exc
        await self._run(self._migrate)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS hotstandby_store_schema "
                "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM hotstandby_store_schema"
            ).fetchone()[0]
            for migration in pending_migrations(current):
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO hotstandby_store_schema VALUES (?, ?, ?)",
                    (migration.version, migration.description, iso(now())),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)

    async def schema_version(self) -> int:
        return await self._run(
            lambda c: int(c.execute("SELECT MAX(version) FROM hotstandby_store_schema").fetchone()[0])
        )

    async def put_package(self, record: PackageRecord) -> None:
        values = (
            self.cluster,
            self.node_id,
            record.kind,
            record.identifier,
            record.checksum,
            record.size,
            record.source,
            record.status,
            iso(record.fetched_at),
            iso(record.verified_at),
            record.detail,
        )
        await self._run(
            lambda c: c.execute(
                f"INSERT OR REPLACE INTO hotstandby_store_packages (cluster, node_id, {_PACKAGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        )

    async def get_package(self, kind: Kind, identifier: str) -> PackageRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_PACKAGE_COLUMNS} FROM hotstandby_store_packages "
                "WHERE cluster = ? AND node_id = ? AND kind = ? AND identifier = ?",
                (self.cluster, self.node_id, kind, identifier),
            ).fetchone()
        )
        return None if row is None else _package(row)

    async def packages(self) -> list[PackageRecord]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {_PACKAGE_COLUMNS} FROM hotstandby_store_packages "
                "WHERE cluster = ? AND node_id = ? ORDER BY identifier, kind",
                (self.cluster, self.node_id),
            ).fetchall()
        )
        return [_package(row) for row in rows]

    async def delete_package(self, kind: Kind, identifier: str) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM hotstandby_store_packages "
                "WHERE cluster = ? AND node_id = ? AND kind = ? AND identifier = ?",
                (self.cluster, self.node_id, kind, identifier),
            )
        )

    async def add_event(self, kind: str, fields: dict[str, Any]) -> Event:
        columns, rest = split_event_fields(fields)
        at = now()
        encoded = json.dumps(rest, default=str)

        def insert(c: sqlite3.Connection) -> int:
            cursor = c.execute(
                "INSERT INTO hotstandby_store_events (at, cluster, node_id, kind, identifier, epoch, reason, "
                "fields) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at.isoformat(), self.cluster, self.node_id, kind, *columns.values(), encoded),
            )
            return int(cursor.lastrowid or 0)

        event_id = await self._run(insert)
        return Event(event_id, at, self.node_id, kind, join_event_fields(columns, json.loads(encoded)))

    async def prune_events(self, keep: int, before: dt.datetime | None) -> int:
        # `at` is ISO 8601 in UTC, written by `now()` alone: as text it sorts as time does.
        cutoff = before.astimezone(dt.UTC).isoformat() if before is not None else ""

        def delete(c: sqlite3.Connection) -> int:
            cursor = c.execute(
                "DELETE FROM hotstandby_store_events WHERE cluster = ? AND (at < ? OR id <= "
                "(SELECT id FROM hotstandby_store_events WHERE cluster = ? "
                "ORDER BY id DESC LIMIT 1 OFFSET ?))",
                (self.cluster, cutoff, self.cluster, keep),
            )
            return cursor.rowcount

        return await self._run(delete)

    async def events(self, kind: str | None = None, limit: int = 100) -> list[Event]:
        limit = max(1, min(limit, MAX_EVENTS))
        query = "SELECT * FROM hotstandby_store_events WHERE cluster = ?"
        params: list[Any] = [self.cluster]
        if kind is not None:
            query += " AND kind = ?"
            params.append(kind)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        rows = await self._run(lambda c: c.execute(query, params).fetchall())
        return [
            Event(
                row["id"],
                dt.datetime.fromisoformat(row["at"]),
                row["node_id"],
                row["kind"],
                join_event_fields(
                    {"identifier": row["identifier"], "epoch": row["epoch"], "reason": row["reason"]},
                    json.loads(row["fields"]),
                ),
            )
            for row in rows
        ]
