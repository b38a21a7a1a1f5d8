"""The catalogue: what this node knows about its packages, and the history of what the store did.

One small interface, two implementations: SQLite in STATE_PATH (the default, one file per
node) and PostgreSQL at DATABASE_URL (shared by the pair). Rows carry the cluster and the
node that observed them, so two nodes sharing one database never overwrite each other's
view of their own disks. The schema is versioned: `open` applies the migrations below that
the database has not seen yet, and refuses a database migrated by a newer hotstandby.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.epochs import EpochError, checked_own
from daemon.store.errors import CatalogueError, InvalidEvent

Kind = Literal["package", "installed"]
Status = Literal["ok", "corrupted", "missing"]
EVENT_COLUMNS = ("identifier", "epoch", "reason")
"""Event fields kept in columns of their own (to filter on); the rest go to a JSON object."""
MAX_EVENTS = 1000


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class PackageRecord:
    kind: Kind
    identifier: str
    checksum: str
    size: int
    source: str
    """marketplace, upload, disk (found already there) or restored (copied back from its package)."""
    status: Status
    fetched_at: dt.datetime | None = None
    verified_at: dt.datetime | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "identifier": self.identifier,
            "checksum": self.checksum,
            "size": self.size,
            "source": self.source,
            "status": self.status,
            "fetched_at": iso(self.fetched_at),
            "verified_at": iso(self.verified_at),
            "detail": self.detail or None,
        }


@dataclass(frozen=True)
class Event:
    id: int
    at: dt.datetime
    node_id: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": iso(self.at), "node_id": self.node_id, "kind": self.kind, **self.fields}


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "packages and events",
        sqlite=(
            """CREATE TABLE hotstandby_store_packages (
                cluster TEXT NOT NULL, node_id TEXT NOT NULL, kind TEXT NOT NULL, identifier TEXT NOT NULL,
                checksum TEXT NOT NULL, size INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
                fetched_at TEXT, verified_at TEXT, detail TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (cluster, node_id, kind, identifier))""",
            """CREATE TABLE hotstandby_store_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, cluster TEXT NOT NULL,
                node_id TEXT NOT NULL, kind TEXT NOT NULL, identifier TEXT, epoch INTEGER, reason TEXT,
                fields TEXT NOT NULL DEFAULT '{}')""",
            "CREATE INDEX hotstandby_store_events_kind ON hotstandby_store_events (cluster, kind, id)",
        ),
        postgres=(
            """CREATE TABLE hotstandby_store_packages (
                cluster text NOT NULL, node_id text NOT NULL, kind text NOT NULL, identifier text NOT NULL,
                checksum text NOT NULL, size bigint NOT NULL, source text NOT NULL, status text NOT NULL,
                fetched_at timestamptz, verified_at timestamptz, detail text NOT NULL DEFAULT '',
                PRIMARY KEY (cluster, node_id, kind, identifier))""",
            """CREATE TABLE hotstandby_store_events (
                id bigserial PRIMARY KEY, at timestamptz NOT NULL, cluster text NOT NULL,
                node_id text NOT NULL, kind text NOT NULL, identifier text, epoch bigint, reason text,
                fields jsonb NOT NULL DEFAULT '{}')""",
            "CREATE INDEX hotstandby_store_events_kind ON hotstandby_store_events (cluster, kind, id)",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def pending_migrations(current: int) -> list[Migration]:
    """The migrations a database at version `current` still needs; refuses a newer database."""
    if current > SCHEMA_VERSION:
        raise CatalogueError(
            f"the catalogue's schema is at version {current}, newer than this hotstandby knows "
            f"({SCHEMA_VERSION}): upgrade hotstandby rather than run an older one against it"
        )
    return [m for m in MIGRATIONS if m.version > current]


def split_event_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(column values, the rest) for one event."""
    columns = {name: fields.get(name) for name in EVENT_COLUMNS}
    if columns["epoch"] is not None:
        try:  # a 64-bit column: a larger number would fail in the database, after the checks
            columns["epoch"] = checked_own(columns["epoch"], "the event's epoch")
        except EpochError as exc:
            raise InvalidEvent(str(exc)) from None
    rest = {k: v for k, v in fields.items() if k not in EVENT_COLUMNS}
    return columns, rest


def join_event_fields(columns: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in columns.items() if v is not None}, **rest}


class Catalogue(abc.ABC):
    """Package records and events for one node of one cluster."""

    backend: str

    def __init__(self, cluster: str, node_id: str) -> None:
        self.cluster = cluster
        self.node_id = node_id

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, then create or migrate the schema (CatalogueError; may be called again to retry)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def put_package(self, record: PackageRecord) -> None:
        """Insert or replace this node's record of (kind, identifier)."""

    @abc.abstractmethod
    async def get_package(self, kind: Kind, identifier: str) -> PackageRecord | None: ...

    @abc.abstractmethod
    async def packages(self) -> list[PackageRecord]: ...

    @abc.abstractmethod
    async def delete_package(self, kind: Kind, identifier: str) -> None: ...

    @abc.abstractmethod
    async def add_event(self, kind: str, fields: dict[str, Any]) -> Event:
        """Record one event (values must be JSON-serialisable)."""

    @abc.abstractmethod
    async def events(self, kind: str | None = None, limit: int = 100) -> list[Event]:
        """This cluster's events, newest first, from every node."""

    @abc.abstractmethod
    async def prune_events(self, keep: int, before: dt.datetime | None) -> int:
        """Delete this cluster's events beyond the newest `keep` and those older than `before`; the count."""
