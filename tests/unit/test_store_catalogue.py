"""The catalogue: one interface, the same tests against SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from daemon.config import Config
from daemon.store import store as store_module
from daemon.store import verifier
from daemon.store.catalogue import SCHEMA_VERSION, Catalogue, PackageRecord, now
from daemon.store.catalogue_postgres import PostgresCatalogue
from daemon.store.catalogue_sqlite import SqliteCatalogue
from daemon.store.errors import CatalogueError
from daemon.store.factory import make_catalogue
from daemon.store.node_view import StandaloneNode
from daemon.store.store import PluginStore
from tests.support.marketplace import make_plugin, store_env
from tests.support.services import PostgresService, running_postgres

pytestmark = pytest.mark.timeout(60)

Factory = Callable[[str, str], Catalogue]
_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresService]:
    with running_postgres() as service:
        yield service


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Catalogues on one fresh database (a file, or a database of its own in the module's server)."""
    if request.param == "sqlite":
        path = str(tmp_path / "store.sqlite3")
        return lambda cluster, node: SqliteCatalogue(path, cluster, node)
    service: PostgresService = request.getfixturevalue("postgres")
    name = f"store_{next(_databases)}"
    with psycopg.connect(service.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = service.dsn.rsplit("/", 1)[0] + f"/{name}"
    return lambda cluster, node: PostgresCatalogue(dsn, cluster, node, timeout=5)


@pytest.fixture
async def catalogue(factory: Factory) -> AsyncIterator[Catalogue]:
    opened = factory("pair", "node-a")
    await opened.open()
    yield opened
    await opened.close()


def record(identifier: str = "a/b:1.0@" + "0" * 64, **changes: object) -> PackageRecord:
    values: dict[str, object] = {
        "kind": "package",
        "identifier": identifier,
        "checksum": "0" * 64,
        "size": 123,
        "source": "marketplace",
        "status": "ok",
        "fetched_at": now(),
        "verified_at": now(),
    }
    values.update(changes)
    return PackageRecord(**values)  # type: ignore[arg-type]


async def test_the_schema_is_created_versioned_and_reopening_migrates_nothing(factory: Factory) -> None:
    first = factory("pair", "node-a")
    await first.open()
    assert await first.schema_version() == SCHEMA_VERSION
    await first.put_package(record())
    await first.close()
    again = factory("pair", "node-a")
    await again.open()
    assert await again.schema_version() == SCHEMA_VERSION
    assert len(await again.packages()) == 1
    await again.close()


async def test_a_database_from_a_newer_hotstandby_is_refused(factory: Factory, catalogue: Catalogue) -> None:
    newer = SCHEMA_VERSION + 1
    if isinstance(catalogue, SqliteCatalogue):
        await catalogue._run(
            lambda c: c.execute("INSERT INTO hotstandby_store_schema VALUES (?, 'future', 'now')", (newer,))
        )
    else:
        assert isinstance(catalogue, PostgresCatalogue)

        async def insert(conn: psycopg.AsyncConnection[dict[str, object]]) -> None:
            await conn.execute("INSERT INTO hotstandby_store_schema VALUES (%s, 'future', now())", (newer,))

        await catalogue._run(insert)
    later = factory("pair", "node-a")
    with pytest.raises(CatalogueError, match="newer than this hotstandby"):
        await later.open()
    await later.close()


async def test_package_records_are_replaced_read_and_deleted(catalogue: Catalogue) -> None:
    await catalogue.put_package(record())
    await catalogue.put_package(record(status="corrupted", detail="checksum mismatch", size=99))
    await catalogue.put_package(record(kind="installed"))
    found = await catalogue.get_package("package", "a/b:1.0@" + "0" * 64)
    assert found is not None and found.status == "corrupted" and found.size == 99
    assert found.detail == "checksum mismatch" and found.verified_at is not None
    assert [r.kind for r in await catalogue.packages()] == ["installed", "package"]
    await catalogue.delete_package("package", found.identifier)
    assert await catalogue.get_package("package", found.identifier) is None


async def test_each_node_keeps_its_own_view_but_events_are_shared_within_a_cluster(
    factory: Factory, catalogue: Catalogue
) -> None:
    other = factory("pair", "node-b")
    stranger = factory("another-pair", "node-c")
    await other.open()
    await stranger.open()
    try:
        await catalogue.put_package(record())
        assert await other.packages() == []
        await catalogue.add_event("preload", {"identifier": "a/b", "result": "stored", "size": 3})
        await other.add_event("promotion", {"epoch": 4, "reason": "operator request"})
        await stranger.add_event("promotion", {"epoch": 9})
        events = await other.events()
        assert [(e.kind, e.node_id) for e in events] == [("promotion", "node-b"), ("preload", "node-a")]
        assert events[0].fields == {"epoch": 4, "reason": "operator request"}
        assert events[1].to_json()["identifier"] == "a/b" and events[1].to_json()["size"] == 3
        assert [e.kind for e in await catalogue.events(kind="preload")] == ["preload"]
        assert [e.fields["epoch"] for e in await stranger.events()] == [9]
    finally:
        await other.close()
        await stranger.close()


async def test_events_come_newest_first_within_the_limit(catalogue: Catalogue) -> None:
    for n in range(5):
        await catalogue.add_event("verification", {"n": n})
    assert [e.fields["n"] for e in await catalogue.events(limit=3)] == [4, 3, 2]


async def test_a_store_outlives_a_postgresql_outage_and_starts_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_postgres() as service:
        await _outage(tmp_path, service, monkeypatch)


async def _outage(tmp_path: Path, service: PostgresService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier, "CONNECT_RETRY", 0.2)
    monkeypatch.setattr(verifier, "TICK", 0.1)
    monkeypatch.setattr(store_module, "CATALOGUE_STARTUP_WAIT", 1.5)
    config = Config.from_env(store_env(tmp_path, DATABASE_URL=service.dsn))
    os.makedirs(config.state_path)
    store = PluginStore(config, make_catalogue(config, "node-a"), StandaloneNode(), CollectorRegistry())
    assert isinstance(store.catalogue, PostgresCatalogue)
    store.catalogue.timeout = 0.5
    service.stop()
    started = time.monotonic()
    await store.open()
    try:
        assert time.monotonic() - started < 3 and not store.catalogue_ready
        with pytest.raises(CatalogueError):
            await store.preload(make_plugin().identifier)
        service.start()
        for _ in range(100):
            if store.catalogue_ready:
                break
            await asyncio.sleep(0.1)
        await store.record_event("failover", epoch=3, reason="master unreachable")
        service.stop()
        with pytest.raises(CatalogueError):
            await store.events()
        service.start()
        for _ in range(100):
            with contextlib.suppress(CatalogueError):
                [event] = await store.events(kind="failover")
                break
            await asyncio.sleep(0.1)
        assert (
            event["epoch"] == 3 and event["reason"] == "master unreachable" and event["role"] == "standalone"
        )
    finally:
        await store.close()


async def test_the_event_history_keeps_the_newest_events_within_its_age(
    factory: Factory, catalogue: Catalogue
) -> None:
    stranger = factory("another-pair", "node-c")
    await stranger.open()
    try:
        await stranger.add_event("promotion", {"n": -1})
        for n in range(10):
            await catalogue.add_event("verification", {"n": n})
        assert await catalogue.prune_events(keep=100, before=now() - dt.timedelta(hours=1)) == 0
        assert await catalogue.prune_events(keep=3, before=None) == 7
        assert [e.fields["n"] for e in await catalogue.events()] == [9, 8, 7]
        assert await catalogue.prune_events(keep=100, before=now() + dt.timedelta(seconds=1)) == 3
        assert await catalogue.events() == []
        assert [e.fields["n"] for e in await stranger.events()] == [-1], "another cluster's is its own"
    finally:
        await stranger.close()
