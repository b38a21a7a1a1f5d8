"""Verification: a corrupted package is quarantined, reported and counted; a replica only reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store import verifier, workdirs
from daemon.store.errors import CatalogueError, Corrupted, NotFound, NotWritable
from daemon.store.node_view import StandaloneNode
from daemon.store.store import PluginStore
from tests.support.marketplace import Plugin, ReplicaNode, make_plugin, make_workdir, open_store

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PluginStore]:
    opened = await open_store(tmp_path)
    yield opened
    await opened.close()


async def add(store: PluginStore, plugin: Plugin) -> Path:
    async def body() -> AsyncIterator[bytes]:
        yield plugin.data

    await store.upload(plugin.identifier, body(), None)
    return Path(store.layout.absolute(store.layout.packages)) / plugin.identifier


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def gauge(store: PluginStore) -> float:
    return store.metrics.registry.get_sample_value("plugin_packages_corrupted") or 0.0


async def test_a_flipped_byte_is_quarantined_reported_counted_and_purged(store: PluginStore) -> None:
    plugin, healthy = make_plugin(size=10_000), make_plugin(name="healthy")
    stored = await add(store, plugin)
    await add(store, healthy)
    flip_a_byte(stored)
    report = await store.verify_all()
    assert report["checked"] == 2 and report["ok"] == 1
    [corrupted] = report["corrupted"]
    assert corrupted["identifier"] == plugin.identifier and corrupted["moved_to"].startswith(
        "plugin_quarantine/"
    )
    assert not stored.exists()
    moved = Path(store.layout.root) / corrupted["moved_to"]
    assert moved.exists() and moved.name == stored.name
    assert report["corrupted_total"] == 1 and gauge(store) == 1
    listing = await store.list_plugins()
    status = {e["identifier"]: e["status"] for e in listing["plugins"]}
    assert status == {plugin.identifier: "corrupted", healthy.identifier: "ok"}
    assert [q["original"] for q in listing["quarantined"]] == [f"plugin_packages/{plugin.identifier}"]
    with pytest.raises(NotFound):
        await store.open_package(plugin.identifier)
    assert [e["identifier"] for e in await store.events(kind="quarantine")] == [plugin.identifier]
    purged = await store.purge_corrupted()
    assert purged["count"] == 1 and purged["removed"][0]["original"].endswith(plugin.identifier)
    assert not (Path(store.layout.root) / "plugin_quarantine").exists() or not any(
        (Path(store.layout.root) / "plugin_quarantine").iterdir()
    )
    assert gauge(store) == 0
    assert [e["identifier"] for e in (await store.list_plugins())["plugins"]] == [healthy.identifier]


async def test_a_corrupted_installed_plugin_is_restored_from_its_package(store: PluginStore) -> None:
    plugin = make_plugin()
    await add(store, plugin)
    installed = Path(store.layout.absolute(store.layout.plugins)) / plugin.identifier
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b"truncated by a crash")
    report = await store.verify_all()
    assert report["restored"] == [plugin.identifier]
    assert installed.read_bytes() == plugin.data
    entry = (await store.get_plugin(plugin.identifier))["installed"]
    assert entry["status"] == "ok" and entry["source"] == "restored"


async def test_a_replica_reports_corruption_but_leaves_the_replicated_tree_alone(tmp_path: Path) -> None:
    leader = await open_store(tmp_path)
    stored = await add(leader, make_plugin())
    await leader.close()
    flip_a_byte(stored)
    replica = await open_store(tmp_path, ReplicaNode())
    try:
        report = await replica.verify_all()
        assert report["corrupted"][0]["moved_to"] is None and "leader" in report["note"]
        assert stored.exists() and gauge(replica) == 1
        with pytest.raises(Corrupted):
            await replica.open_package(make_plugin().identifier)
        with pytest.raises(NotWritable):
            await replica.purge_corrupted()
    finally:
        await replica.close()


async def test_packages_found_on_disk_are_verified_when_listed_and_a_vanished_one_is_missing(
    store: PluginStore,
) -> None:
    plugin = make_plugin()
    folder = Path(store.layout.absolute(store.layout.packages)) / plugin.author
    folder.mkdir(parents=True)
    (folder / plugin.identifier.split("/")[1]).write_bytes(plugin.data)
    (folder / "not-an-identifier.zip").write_bytes(b"ignored")
    [entry] = (await store.list_plugins())["plugins"]
    assert entry["status"] == "ok" and entry["source"] == "disk" and entry["verified_at"]
    (folder / plugin.identifier.split("/")[1]).unlink()
    [entry] = (await store.list_plugins())["plugins"]
    assert entry["status"] == "missing" and not entry["in_place"]


async def test_manifests_are_written_for_complete_folders_and_checked(store: PluginStore) -> None:
    working = Path(store.layout.absolute(store.layout.working))
    done = make_workdir(working, make_plugin(name="done"))
    make_workdir(working, make_plugin(name="half"), complete=False)
    written = await store.verifier.write_manifests()
    assert written == [str(done.relative_to(working))]
    assert (done / workdirs.MANIFEST_NAME).exists()
    (done / "main.py").write_text("tampered")
    report = await store.check_workdirs("promotion")
    assert [f["path"] for f in report["failed"]] == written and report["failed"][0]["changed"] == ["main.py"]
    assert report["incomplete"] and report["trigger"] == "promotion"


async def test_an_unreachable_catalogue_does_not_stop_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "store.sqlite3").mkdir()  # not a database file: every open fails
    store = await open_store(tmp_path)
    try:
        assert not store.catalogue_ready
        with pytest.raises(CatalogueError):
            await store.preload(make_plugin().identifier)
        assert (await store.check_workdirs())["ok"] == 0
    finally:
        await store.close()


async def test_a_replica_writes_no_manifest_into_its_replicated_working_folder(tmp_path: Path) -> None:
    replica = await open_store(tmp_path, ReplicaNode(), STORAGE_PATH=str(tmp_path / "root" / "cwd"))
    try:
        working = Path(replica.layout.absolute(replica.layout.working))
        folder = make_workdir(working, make_plugin())
        assert await replica.verifier.write_manifests() == []
        assert not (folder / workdirs.MANIFEST_NAME).exists()
        plugin = make_plugin(name="local")  # plugin_packages is outside STORAGE_PATH here: not replicated
        await add(replica, plugin)
        assert (Path(replica.layout.absolute(replica.layout.packages)) / plugin.identifier).exists()
    finally:
        await replica.close()


class SwitchableNode(StandaloneNode):
    role = "slave"
    leading = False

    def writable(self) -> bool:
        return self.leading


async def test_a_node_that_becomes_leader_without_an_api_promotion_checks_its_plugin_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verifier, "TICK", 0.05)
    link = SwitchableNode()
    store = await open_store(tmp_path, link)
    try:
        await asyncio.sleep(0.2)
        assert await store.events(kind="workdir_check") == []
        link.leading = True  # an automatic failover: the control loop promoted us
        for _ in range(100):
            if checks := await store.events(kind="workdir_check"):
                break
            await asyncio.sleep(0.05)
        assert [c["trigger"] for c in checks] == ["became_leader"]
    finally:
        await store.close()
