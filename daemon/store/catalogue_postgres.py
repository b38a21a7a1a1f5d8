"""The catalogue in PostgreSQL at DATABASE_URL, through psycopg 3 (async) and a small pool.

Both nodes of a pair may share the database: migrations take a transaction-scoped
advisory lock, so two daemons starting together migrate once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from daemon.store.catalogue import (
    MAX_EVENTS,
    Catalogue,
    Event,
    Kind,
    PackageRecord,
    join_event_fields,
    now,
    pending_migrations,
    split_event_fields,
)
from daemon.store.errors import CatalogueError

T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]
_PACKAGE_COLUMNS = "kind, identifier, checksum, size, source, status, fetched_at, verified_at, detail"
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('hotstandby_store_schema'))"
_UPSERT = f"""
INSERT INTO hotstandby_store_packages (cluster, node_id, {_PACKAGE_COLUMNS})
VALUES (%(cluster)s, %(node_id)s, %(kind)s, %(identifier)s, %(checksum)s, %(size)s, %(source)s, %(status)s,
        %(fetched_at)s, %(verified_at)s, %(detail)s)
ON CONFLICT (cluster, node_id, kind, identifier) DO UPDATE SET
    checksum = EXCLUDED.checksum, size = EXCLUDED.size, source = EXCLUDED.source, status = EXCLUDED.status,
    fetched_at = EXCLUDED.fetched_at, verified_at = EXCLUDED.verified_at, detail = EXCLUDED.detail
"""


class PostgresCatalogue(Catalogue):
    backend = "postgres"

    def __init__(self, dsn: str, cluster: str, node_id: str, timeout: float = 10.0) -> None:
        super().__init__(cluster, node_id)
        self.timeout = timeout
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=4,
            open=False,
            timeout=timeout,
            kwargs={
                "row_factory": dict_row,
                "connect_timeout": max(1, int(timeout)),
                "options": "-c synchronous_commit=on",  # a recorded package must survive a crash
            },
            connection_class=psycopg.AsyncConnection[dict[str, Any]],
            name="hotstandby-store",
        )

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """One unit of work on a pooled connection, bounded in time (a hung server must not hang us)."""

        async def work() -> T:
            async with self._pool.connection() as conn:
                return await fn(conn)

        try:
            return await asyncio.wait_for(work(), 2 * self.timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            raise CatalogueError(f"catalogue (PostgreSQL): {exc}") from exc
        except TimeoutError:
            raise CatalogueError(f"catalogue (PostgreSQL): no answer within {2 * self.timeout:g}s") from None

    async def open(self) -> None:
        """Start the pool (it keeps reconnecting by itself) and migrate; may be called again to retry."""
        await self._pool.open(wait=False)
        await self._run(self._migrate)

    @staticmethod
    async def _migrate(conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute(_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS hotstandby_store_schema "
                "(version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL)"
            )
            cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM hotstandby_store_schema")
            row = await cursor.fetchone()
            for migration in pending_migrations(int(row["v"]) if row else 0):
                for statement in migration.postgres:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO hotstandby_store_schema VALUES (%s, %s, %s)",
                    (migration.version, migration.description, now()),
                )

    async def close(self) -> None:
        await self._pool.close(timeout=2.0)

    async def schema_version(self) -> int:
        async def query(conn: Conn) -> int:
            cursor = await conn.execute("SELECT MAX(version) AS v FROM hotstandby_store_schema")
            row = await cursor.fetchone()
            return int(row["v"]) if row else 0

        return await self._run(query)

    async def put_package(self, record: PackageRecord) -> None:
        values = {
            "cluster": self.cluster,
            "node_id": self.node_id,
            "kind": record.kind,
            "identifier": record.identifier,
            "checksum": record.checksum,
            "size": record.size,
            "source": record.source,
            "status": record.status,
            "fetched_at": record.fetched_at,
            "verified_at": record.verified_at,
            "detail": record.detail,
        }

        async def upsert(conn: Conn) -> None:
            await conn.execute(_UPSERT, values)

        await self._run(upsert)

    async def _select(self, where: str, params: dict[str, Any]) -> list[PackageRecord]:
        async def query(conn: Conn) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                f"SELECT {_PACKAGE_COLUMNS} FROM hotstandby_store_packages "
                f"WHERE cluster = %(cluster)s AND node_id = %(node_id)s {where} ORDER BY identifier, kind",
                {"cluster": self.cluster, "node_id": self.node_id, **params},
            )
            return await cursor.fetchall()

        return [PackageRecord(**row) for row in await self._run(query)]

    async def get_package(self, kind: Kind, identifier: str) -> PackageRecord | None:
        found = await self._select(
            "AND kind = %(kind)s AND identifier = %(identifier)s", {"kind": kind, "identifier": identifier}
        )
        return found[0] if found else None

    async def packages(self) -> list[PackageRecord]:
        return await self._select("", {})

    async def delete_package(self, kind: Kind, identifier: str) -> None:
        async def delete(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM hotstandby_store_packages WHERE cluster = %s AND node_id = %s "
                "AND kind = %s AND identifier = %s",
                (self.cluster, self.node_id, kind, identifier),
            )

        await self._run(delete)

    async def add_event(self, kind: str, fields: dict[str, Any]) -> Event:
        columns, rest = split_event_fields(fields)
        rest = json.loads(json.dumps(rest, default=str))
        at = now()

        async def insert(conn: Conn) -> int:
            cursor = await conn.execute(
                "INSERT INTO hotstandby_store_events "
                "(at, cluster, node_id, kind, identifier, epoch, reason, fields) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (at, self.cluster, self.node_id, kind, *columns.values(), Jsonb(rest)),
            )
            row = await cursor.fetchone()
            return int(row["id"]) if row else 0

        event_id = await self._run(insert)
        return Event(event_id, at, self.node_id, kind, join_event_fields(columns, rest))

    async def prune_events(self, keep: int, before: dt.datetime | None) -> int:
        async def delete(conn: Conn) -> int:
            cursor = await conn.execute(
                "DELETE FROM hotstandby_store_events WHERE cluster = %(cluster)s "
                "AND (at < %(before)s OR id <= (SELECT id FROM hotstandby_store_events "
                "WHERE cluster = %(cluster)s ORDER BY id DESC LIMIT 1 OFFSET %(keep)s))",
                {
                    "cluster": self.cluster,
                    "before": before or dt.datetime.min.replace(tzinfo=dt.UTC),
                    "keep": keep,
                },
            )
            return cursor.rowcount

        return await self._run(delete)

    async def events(self, kind: str | None = None, limit: int = 100) -> list[Event]:
        limit = max(1, min(limit, MAX_EVENTS))
        where = "cluster = %(cluster)s" + (" AND kind = %(kind)s" if kind is not None else "")

        async def query(conn: Conn) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                f"SELECT * FROM hotstandby_store_events WHERE {where} ORDER BY id DESC LIMIT %(limit)s",
                {"cluster": self.cluster, "kind": kind, "limit": limit},
            )
            return await cursor.fetchall()

        return [
            Event(
                row["id"],
                row["at"],
                row["node_id"],
                row["kind"],
                join_event_fields(
                    {"identifier": row["identifier"], "epoch": row["epoch"], "reason": row["reason"]},
                    row["fields"],
                ),
            )
            for row in await self._run(query)
        ]
