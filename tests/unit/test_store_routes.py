"""The store's HTTP API on the daemon's real app: auth, problem responses, bad identifiers, traversal."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from daemon.api import build_app
from daemon.config import Config
from daemon.epochs import MAX_PEER_EPOCH
from daemon.ha_loop import ControlLoop
from daemon.node import Node
from daemon.store.catalogue_sqlite import SqliteCatalogue
from daemon.store.identifier import PATTERN
from daemon.store.node_view import StandaloneNode
from daemon.store.store import PluginStore
from tests.support.marketplace import FakeMarketplace, make_plugin, store_env, without_proxies

pytestmark = pytest.mark.timeout(30)

KEY = "route-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def market() -> AsyncIterator[FakeMarketplace]:
    async with FakeMarketplace() as fake:
        yield fake


@pytest.fixture
async def client(
    tmp_path: Path, market: FakeMarketplace, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TestClient]:
    without_proxies(monkeypatch)
    config = Config.from_env(
        store_env(
            tmp_path,
            MARKETPLACE_URL=market.url,
            SERVER_KEY=KEY,
            MAX_PLUGIN_PACKAGE_SIZE="200000",
            NO_PROXY="*",
        )
    )
    os.makedirs(config.state_path, exist_ok=True)
    node = Node(config)
    catalogue = SqliteCatalogue(os.path.join(config.state_path, "store.sqlite3"), "pair", "node-a")
    store = PluginStore(config, catalogue, StandaloneNode(), node.registry)
    await store.open()
    async with TestClient(TestServer(build_app(node, ControlLoop(node, backend=None), store=store))) as test:
        yield test
    await store.close()


def outside(tmp_path: Path) -> list[str]:
    """Files anywhere under tmp_path but outside the plugin root and hotstandby's state."""
    allowed = (tmp_path / "storage", tmp_path / "state")
    return [
        str(p)
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_relative_to(allowed[0]) and not p.is_relative_to(allowed[1])
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/internal/preload"),
        ("PUT", f"/internal/plugins/{make_plugin().identifier}"),
        ("GET", "/internal/plugins"),
        ("GET", f"/internal/plugins/{make_plugin().identifier}"),
        ("GET", f"/internal/plugins/{make_plugin().identifier}/package"),
        ("POST", "/internal/verify"),
        ("DELETE", "/internal/plugins/corrupted"),
        ("GET", "/internal/events"),
        ("GET", "/internal/workdirs"),
    ],
)
async def test_every_store_route_needs_the_server_key(client: TestClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status == 401
    response = await client.request(method, path, headers={"Authorization": "Bearer wrong-key-0000"})
    assert response.status == 401


async def test_upload_list_read_and_stream_a_package(client: TestClient) -> None:
    plugin = make_plugin(size=30_000)
    path = f"/internal/plugins/{plugin.identifier}"
    response = await client.put(path, data=plugin.data, headers=AUTH)
    assert response.status == 201, await response.text()
    assert (await client.put(path, data=plugin.data, headers=AUTH)).status == 200
    listing = await (await client.get("/internal/plugins", headers=AUTH)).json()
    [entry] = listing["plugins"]
    assert entry["identifier"] == plugin.identifier and entry["status"] == "ok" and entry["kind"] == "package"
    one = await (await client.get(path, headers=AUTH)).json()
    assert one["package"]["checksum"] == plugin.checksum and one["installed"] is None
    streamed = await client.get(f"{path}/package", headers=AUTH)
    assert streamed.status == 200 and await streamed.read() == plugin.data
    assert streamed.headers["X-Plugin-Checksum"] == plugin.checksum
    encoded = URL(
        f"/internal/plugins/{plugin.identifier.replace(':', '%3A').replace('@', '%40')}", encoded=True
    )
    assert (await client.get(encoded, headers=AUTH)).status == 200


async def test_an_upload_that_does_not_match_its_identifier_is_422_and_leaves_nothing(
    client: TestClient,
    tmp_path: Path,
) -> None:
    plugin, other = make_plugin(), make_plugin(name="other")
    response = await client.put(f"/internal/plugins/{plugin.identifier}", data=other.data, headers=AUTH)
    body = await response.json()
    assert response.status == 422 and body["title"] == "checksum mismatch"
    assert body["expected"] == plugin.checksum and body["actual"] == other.checksum
    assert not list((tmp_path / "storage").rglob("*demo*"))
    too_big = await client.put(f"/internal/plugins/{plugin.identifier}", data=b"x" * 300_000, headers=AUTH)
    assert too_big.status == 413


@pytest.mark.parametrize(
    "raw",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E/%2E%2E/x:1.0@" + "a" * 64,
        "langgenius/..%2F..%2F..%2Fescape:1.0@" + "a" * 64,
        "langgenius/demo:1.0@" + "a" * 64 + "%0A",
        "LangGenius/demo:1.0@" + "a" * 64,
        "%2Fetc%2Fpasswd",
        "a/b/c/d",
    ],
)
async def test_bad_identifiers_and_traversal_attempts_are_refused(
    client: TestClient,
    tmp_path: Path,
    raw: str,
) -> None:
    url = URL(f"/internal/plugins/{raw}", encoded=True)
    for method in ("PUT", "GET"):
        response = await client.request(
            method, url, data=make_plugin().data if method == "PUT" else None, headers=AUTH
        )
        assert response.status in (400, 404), await response.text()
        if response.status == 400:
            assert PATTERN in (await response.json())["detail"]
    assert outside(tmp_path) == []
    assert not list((tmp_path / "storage").rglob("*passwd*"))


async def test_preload_takes_a_form_field_or_json_and_explains_bad_input(
    client: TestClient,
    market: FakeMarketplace,
) -> None:
    plugin = market.publish(make_plugin())
    form = FormData({"plugin_identifier": plugin.identifier})
    response = await client.post("/internal/preload", data=form, headers=AUTH)
    body = await response.json()
    assert response.status == 201 and body["identifier"] == plugin.identifier and body["attempts"] == 1
    again = await client.post(
        "/internal/preload", json={"plugin_identifier": plugin.identifier}, headers=AUTH
    )
    assert again.status == 200 and (await again.json())["already_present"]
    missing = await client.post("/internal/preload", json={}, headers=AUTH)
    assert missing.status == 400 and "plugin_identifier" in (await missing.json())["detail"]
    bad = await client.post("/internal/preload", json={"plugin_identifier": "../../x"}, headers=AUTH)
    assert bad.status == 400 and PATTERN in (await bad.json())["detail"]
    unknown = await client.post(
        "/internal/preload", json={"plugin_identifier": "nobody/nothing"}, headers=AUTH
    )
    assert unknown.status == 404 and (await unknown.json())["title"] == "not found"


async def test_verify_purge_and_events(client: TestClient, tmp_path: Path) -> None:
    plugin = make_plugin()
    await client.put(f"/internal/plugins/{plugin.identifier}", data=plugin.data, headers=AUTH)
    stored = tmp_path / "storage" / "plugin_packages" / plugin.identifier
    stored.write_bytes(stored.read_bytes()[:-10])
    report = await (await client.post("/internal/verify", headers=AUTH)).json()
    assert [c["identifier"] for c in report["quarantined"]] == [plugin.identifier]
    assert (await client.get(f"/internal/plugins/{plugin.identifier}/package", headers=AUTH)).status == 404
    purged = await (await client.delete("/internal/plugins/corrupted", headers=AUTH)).json()
    assert purged["count"] == 1 and purged["removed"][0]["original"] == f"plugin_packages/{plugin.identifier}"
    events = await (await client.get("/internal/events?kind=quarantine", headers=AUTH)).json()
    assert [e["identifier"] for e in events["events"]] == [plugin.identifier]
    kinds = {e["kind"] for e in (await (await client.get("/internal/events", headers=AUTH)).json())["events"]}
    assert {"upload", "verification", "quarantine", "purge"} <= kinds
    assert (await client.get("/internal/events?limit=0", headers=AUTH)).status == 400
    assert (await client.get("/metrics")).status == 200
    text = await (await client.get("/metrics")).text()
    assert "plugin_packages_corrupted 0.0" in text and "plugin_download_success_rate" in text


async def test_a_posted_event_with_an_epoch_out_of_range_is_refused_not_stored(client: TestClient) -> None:
    for epoch in (MAX_PEER_EPOCH + 1, 2**63, -1, "3", True):
        answer = await client.post("/internal/events", json={"kind": "drill", "epoch": epoch}, headers=AUTH)
        assert answer.status == 400, epoch
        assert "epoch" in (await answer.json())["detail"]
    kept = await client.post("/internal/events", json={"kind": "drill", "epoch": 9}, headers=AUTH)
    assert kept.status == 201 and (await kept.json())["epoch"] == 9
    events = (await (await client.get("/internal/events?kind=drill", headers=AUTH)).json())["events"]
    assert [e["epoch"] for e in events] == [9]
