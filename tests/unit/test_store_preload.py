"""Preload and upload against a fake marketplace with faults: verified or nothing, never a partial file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store.errors import (
    ChecksumMismatch,
    MarketplaceError,
    NotFound,
    NotWritable,
    PackageTooLarge,
    UnverifiableIdentifier,
)
from daemon.store.store import PluginStore
from tests.support.marketplace import (
    FakeMarketplace,
    Plugin,
    RecordingProxy,
    ReplicaNode,
    make_plugin,
    open_store,
    without_proxies,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def market() -> AsyncIterator[FakeMarketplace]:
    async with FakeMarketplace(stall_seconds=1.5) as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    without_proxies(monkeypatch)


@pytest.fixture
async def store(tmp_path: Path, market: FakeMarketplace) -> AsyncIterator[PluginStore]:
    opened = await open_store(tmp_path, MARKETPLACE_URL=market.url)
    yield opened
    await opened.close()


def package_files(store: PluginStore) -> list[str]:
    """Everything under the plugin root's package folder, temp files included."""
    root = Path(store.layout.absolute(store.layout.packages))
    return (
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()) if root.exists() else []
    )


def metric(store: PluginStore, name: str, **labels: str) -> float:
    value = store.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def test_preload_stores_a_verified_package_records_it_and_counts_it(
    store: PluginStore, market: FakeMarketplace
) -> None:
    plugin = market.publish(make_plugin(size=50_000))
    answer = await store.preload(plugin.identifier)
    assert answer["identifier"] == plugin.identifier and answer["checksum"] == plugin.checksum
    assert answer["size"] == len(plugin.data) and answer["attempts"] == 1 and not answer["already_present"]
    assert package_files(store) == [f"langgenius/demo:0.0.1@{plugin.checksum}"]
    stored = Path(store.layout.absolute(store.layout.packages)) / plugin.identifier
    assert stored.read_bytes() == plugin.data
    record = await store.catalogue.get_package("package", plugin.identifier)
    assert record is not None and record.status == "ok" and record.source == "marketplace"
    assert metric(store, "plugin_downloads_total", result="success") == 1
    assert metric(store, "plugin_download_success_rate") == 1.0
    assert metric(store, "plugin_download_duration_seconds_count") == 1
    [event] = await store.events(kind="preload")
    assert event["identifier"] == plugin.identifier and event["result"] == "stored"


async def test_preload_is_idempotent(store: PluginStore, market: FakeMarketplace) -> None:
    plugin = market.publish(make_plugin())
    await store.preload(plugin.identifier)
    again = await store.preload(plugin.identifier)
    assert again["already_present"] and again["attempts"] == 0
    assert market.requests[plugin.identifier] == 1
    assert metric(store, "plugin_downloads_total", result="already_present") == 1


@pytest.mark.parametrize(
    "faults", [("error500", "error500"), ("stall",), ("truncate",), ("slow_body",), ("wrong",)]
)
async def test_preload_succeeds_after_transient_faults(
    store: PluginStore, market: FakeMarketplace, faults: tuple[str, ...]
) -> None:
    plugin = market.publish(make_plugin(size=20_000))
    market.fail(plugin.identifier, *faults)
    answer = await store.preload(plugin.identifier)
    assert answer["attempts"] == len(faults) + 1
    assert package_files(store) == [plugin.identifier]


@pytest.mark.parametrize("fault", ["error500", "truncate", "stall", "wrong"])
async def test_preload_fails_cleanly_after_the_retry_budget(
    store: PluginStore, market: FakeMarketplace, fault: str
) -> None:
    plugin = market.publish(make_plugin(size=20_000))
    market.fail_always(plugin.identifier, fault)
    with pytest.raises(MarketplaceError) as failed:
        await store.preload(plugin.identifier)
    assert failed.value.extra["attempts"] == 3  # DOWNLOAD_RETRIES=2
    assert market.requests[plugin.identifier] == 3
    assert package_files(store) == []  # no partial file, no temp file, no author folder
    assert await store.catalogue.packages() == []  # nothing unverified is recorded
    assert metric(store, "plugin_downloads_total", result="failure") == 1
    assert metric(store, "plugin_download_success_rate") == 0.0
    [event] = await store.events(kind="preload")
    assert event["result"] == "failed" and event["attempts"] == 3


async def test_wrong_content_is_an_error_naming_both_checksums(
    store: PluginStore, market: FakeMarketplace
) -> None:
    plugin = market.publish(make_plugin())
    market.fail_always(plugin.identifier, "wrong")
    with pytest.raises(MarketplaceError) as failed:
        await store.preload(plugin.identifier)
    impostor = make_plugin("someone", "other", "9.9.9")
    assert plugin.checksum in str(failed.value) and impostor.checksum in str(failed.value)
    assert failed.value.extra["expected"] == plugin.checksum
    assert failed.value.extra["actual"] == impostor.checksum


async def test_a_missing_package_and_an_oversized_one_are_not_retried(
    store: PluginStore, market: FakeMarketplace, tmp_path: Path
) -> None:
    unknown = make_plugin(name="unknown")
    with pytest.raises(NotFound):
        await store.preload(unknown.identifier)
    assert market.requests[unknown.identifier] == 1
    big = market.publish(make_plugin(name="big", size=60_000))
    small_cap = await open_store(
        tmp_path / "capped", MARKETPLACE_URL=market.url, MAX_PLUGIN_PACKAGE_SIZE="40000"
    )
    try:
        for fault in ("oversize", "chunked"):
            market.fail(big.identifier, fault)
            with pytest.raises(PackageTooLarge):
                await small_cap.preload(big.identifier)
        with pytest.raises(PackageTooLarge):
            await small_cap.preload(big.identifier)  # Content-Length above the cap
        assert market.requests[big.identifier] == 3
        assert package_files(small_cap) == []
    finally:
        await small_cap.close()


async def test_author_and_name_resolve_through_the_marketplace(
    store: PluginStore, market: FakeMarketplace
) -> None:
    old = market.publish(make_plugin(version="0.0.1"))
    new = market.publish(make_plugin(version="0.0.2"))
    latest = await store.preload("langgenius/demo")
    assert latest["identifier"] == new.identifier and latest["resolved_from"] == "langgenius/demo"
    pinned = await store.preload("langgenius/demo:0.0.1")
    assert pinned["identifier"] == old.identifier
    with pytest.raises(NotFound):
        await store.preload("langgenius/nothing")


async def test_a_marketplace_answer_for_another_plugin_is_refused(
    store: PluginStore, market: FakeMarketplace
) -> None:
    market.publish(make_plugin(author="evil", name="demo"))
    market.latest["langgenius/demo"] = make_plugin(author="evil", name="demo").identifier
    with pytest.raises(MarketplaceError, match="evil/demo"):
        await store.preload("langgenius/demo")
    assert package_files(store) == []


async def test_downloads_go_through_http_proxy_unless_no_proxy_says_otherwise(
    store: PluginStore, market: FakeMarketplace, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = market.publish(make_plugin(name="one")), market.publish(make_plugin(name="two"))
    async with RecordingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        await store.preload(first.identifier)
        assert any(first.checksum in url for url in proxy.seen)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        seen = len(proxy.seen)
        await store.preload(second.identifier)
        assert len(proxy.seen) == seen


async def test_a_replica_refuses_to_write_before_downloading(tmp_path: Path, market: FakeMarketplace) -> None:
    plugin = market.publish(make_plugin())
    replica = await open_store(tmp_path, ReplicaNode(), MARKETPLACE_URL=market.url)
    try:
        with pytest.raises(NotWritable, match="slave"):
            await replica.preload(plugin.identifier)
        assert market.requests[plugin.identifier] == 0
    finally:
        await replica.close()


async def test_only_a_sha256_checksum_can_be_preloaded(store: PluginStore) -> None:
    with pytest.raises(UnverifiableIdentifier):
        await store.preload(f"langgenius/demo:0.0.1@{'a' * 32}")


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_upload_verifies_like_a_download(store: PluginStore) -> None:
    plugin, other = make_plugin(), make_plugin(name="other")
    with pytest.raises(ChecksumMismatch) as refused:
        await store.upload(plugin.identifier, chunks_of(other.data), len(other.data))
    assert plugin.checksum in str(refused.value) and other.checksum in str(refused.value)
    assert package_files(store) == []
    answer, created = await store.upload(plugin.identifier, chunks_of(plugin.data), len(plugin.data))
    assert created and answer["source"] == "upload"
    answer, created = await store.upload(plugin.identifier, chunks_of(plugin.data), None)
    assert not created and answer["already_present"]
    with pytest.raises(PackageTooLarge):
        await store.upload(make_plugin(name="x").identifier, chunks_of(b"x" * 100), 10**9)


async def test_a_corrupted_copy_in_the_way_is_quarantined_and_fetched_again(
    store: PluginStore, market: FakeMarketplace
) -> None:
    plugin: Plugin = market.publish(make_plugin())
    await store.preload(plugin.identifier)
    stored = Path(store.layout.absolute(store.layout.packages)) / plugin.identifier
    stored.write_bytes(b"garbage")
    answer = await store.preload(plugin.identifier)
    assert not answer["already_present"] and stored.read_bytes() == plugin.data
    [item] = (await store.list_plugins())["quarantined"]
    assert item["original"] == f"plugin_packages/{plugin.identifier}"
