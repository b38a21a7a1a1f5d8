"""A fake Dify marketplace for the plugin store's tests: a real aiohttp server on 127.0.0.1.

It serves real .difypkg zips built here (a manifest.yaml and a few files) on the same paths
as the real marketplace (see daemon/store/marketplace.py), and injects faults on request:
a stall longer than the client's read timeout, HTTP 500, a truncated body, wrong content,
a body larger than announced. Use it inside a test's event loop (`async with
FakeMarketplace() as market`) or, for real daemon processes, in a thread of its own
(`with running_marketplace() as market`).

`dify_checksum` computes a package's identifier checksum from the files that went into it,
without reading the zip: an independent check of the daemon-side implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import threading
import zipfile
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry

from daemon.config import Config
from daemon.store.catalogue_sqlite import SqliteCatalogue
from daemon.store.node_view import StandaloneNode
from daemon.store.store import PluginStore

Fault = str
"""One of: stall, slow_body, error500, error404, truncate, wrong, oversize, chunked."""


def dify_checksum(files: dict[str, bytes]) -> str:
    """sha256 over, for each file sorted by path, sha256(path) + sha256(content) (raw digests)."""
    joined = b"".join(
        hashlib.sha256(path.encode()).digest() + hashlib.sha256(content).digest()
        for path, content in sorted(files.items())
    )
    return hashlib.sha256(joined).hexdigest()


def build_zip(files: dict[str, bytes]) -> bytes:
    """The same bytes every time: entries carry a fixed timestamp, not the clock's (Plugin.data is built
    on each access, and a test comparing two accesses across a second boundary would see two zips)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, content in files.items():
            archive.writestr(
                zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0)), content, zipfile.ZIP_DEFLATED
            )
    return buffer.getvalue()


@dataclass(frozen=True)
class Plugin:
    author: str
    name: str
    version: str
    files: dict[str, bytes]

    @property
    def checksum(self) -> str:
        return dify_checksum(self.files)

    @property
    def identifier(self) -> str:
        return f"{self.author}/{self.name}:{self.version}@{self.checksum}"

    @property
    def data(self) -> bytes:
        return build_zip(self.files)


def make_plugin(
    author: str = "langgenius", name: str = "demo", version: str = "0.0.1", size: int = 0
) -> Plugin:
    """A small but real plugin package; `size` adds that many bytes of incompressible padding."""
    manifest = f"version: {version}\ntype: plugin\nauthor: {author}\nname: {name}\n".encode()
    files = {
        "manifest.yaml": manifest,
        "main.py": f"print('{author}/{name} {version}')\n".encode(),
        "provider/demo.yaml": b"identity:\n  name: demo\n",
        "_assets/icon.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    }
    if size:
        files["data.bin"] = hashlib.shake_256(name.encode()).digest(size)
    return Plugin(author, name, version, files)


@dataclass
class FakeMarketplace:
    stall_seconds: float = 3.0
    packages: dict[str, bytes] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    always: dict[str, Fault] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, plugin: Plugin, *, latest: bool = True) -> Plugin:
        self.packages[plugin.identifier] = plugin.data
        if latest:
            self.latest[f"{plugin.author}/{plugin.name}"] = plugin.identifier
        return plugin

    def fail(self, identifier: str, *faults: Fault) -> None:
        """Answer the next requests for `identifier` with these faults, in order, then normally."""
        self.faults.setdefault(identifier, deque()).extend(faults)

    def fail_always(self, identifier: str, fault: Fault) -> None:
        self.always[identifier] = fault

    async def __aenter__(self) -> FakeMarketplace:
        app = web.Application()
        app.router.add_get("/api/v1/plugins/download", self._download)
        app.router.add_get("/api/v1/plugins/{author}/{name}", self._plugin)
        app.router.add_get("/api/v1/plugins/{author}/{name}/{version}", self._version)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _download(self, request: web.Request) -> web.StreamResponse:
        identifier = request.query.get("unique_identifier", "")
        self.requests[identifier] += 1
        data = self.packages.get(identifier)
        if data is None:
            return web.json_response({"code": 404, "msg": "not found"}, status=404)
        queue = self.faults.get(identifier)
        fault = queue.popleft() if queue else self.always.get(identifier)
        if fault is None:
            return web.Response(body=data, content_type="application/octet-stream")
        return await self._faulty(request, fault, data)

    async def _faulty(self, request: web.Request, fault: Fault, data: bytes) -> web.StreamResponse:
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            return web.Response(body=data)
        if fault in ("error500", "error404"):
            return web.json_response({"msg": fault}, status=int(fault[-3:]))
        if fault == "wrong":
            return web.Response(body=make_plugin("someone", "other", "9.9.9").data)
        response = web.StreamResponse()
        if fault != "chunked":
            response.content_length = len(data) * (3 if fault == "oversize" else 1)
        await response.prepare(request)
        if fault == "chunked":
            for _ in range(3):
                await response.write(data)
            await response.write_eof()
            return response
        await response.write(data[: len(data) // 2])
        if fault == "slow_body":
            await asyncio.sleep(self.stall_seconds)
        if request.transport is not None:
            request.transport.close()  # truncate (and oversize): the body ends before its length
        return response

    async def _plugin(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['author']}/{request.match_info['name']}"
        self.requests[key] += 1
        if key not in self.latest:
            return web.json_response({"code": 404}, status=404)
        identifier = self.latest[key]
        version = identifier.split(":", 1)[1].split("@", 1)[0]
        document: dict[str, Any] = {"latest_version": version, "latest_package_identifier": identifier}
        return web.json_response({"code": 0, "data": {"plugin": document}})

    async def _version(self, request: web.Request) -> web.Response:
        author, name, version = (request.match_info[k] for k in ("author", "name", "version"))
        for identifier in self.packages:
            if identifier.startswith(f"{author}/{name}:{version}@"):
                document = {"version": version, "unique_identifier": identifier}
                return web.json_response({"code": 0, "data": {"version": document}})
        return web.json_response({"code": 404}, status=404)


class ThreadedMarketplace:
    """A FakeMarketplace on an event loop in a thread, for tests that drive real daemon processes."""

    def __init__(self, market: FakeMarketplace) -> None:
        self.market = market
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake-marketplace")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.market, name)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the marketplace's loop (its state is not thread-safe)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.market.__aenter__(), self.loop).result(10)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.market.__aexit__(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def running_marketplace(stall_seconds: float = 3.0) -> Iterator[ThreadedMarketplace]:
    threaded = ThreadedMarketplace(FakeMarketplace(stall_seconds=stall_seconds))
    threaded.start()
    try:
        yield threaded
    finally:
        threaded.stop()


class RecordingProxy:
    """A minimal HTTP forward proxy (plain http only) that records the URLs it forwarded."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RecordingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _version = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.seen.append(target)
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            up_writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
            )
            await up_writer.drain()
            writer.write(await up_reader.read())
            await writer.drain()
            up_writer.close()
        finally:
            writer.close()


# -- a store under test ------------------------------------------------------------------------
class ReplicaNode(StandaloneNode):
    """A node that must not write the replicated storage."""

    role = "slave"

    def writable(self) -> bool:
        return False


async def open_store(tmp_path: Path, link: StandaloneNode | None = None, **env: str) -> PluginStore:
    """A PluginStore on SQLite with its root in tmp_path/storage (see store_env), opened; close it after."""
    config = Config.from_env(store_env(tmp_path, **env))
    os.makedirs(config.state_path, exist_ok=True)
    catalogue = SqliteCatalogue(os.path.join(config.state_path, "store.sqlite3"), "pair", "node-a")
    store = PluginStore(config, catalogue, link or StandaloneNode(), CollectorRegistry())
    await store.open()
    return store


def without_proxies(monkeypatch: Any) -> None:
    """The fake marketplace is on loopback: keep a proxy from the environment out of the way."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "")


def store_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Environment for a Config whose plugin root is tmp_path/storage; fast timeouts, no periodic jobs."""
    env = {
        "STORAGE_PATH": str(tmp_path / "storage"),
        "STATE_PATH": str(tmp_path / "state"),
        "SERVER_HOST": "127.0.0.1",
        "MARKETPLACE_URL": "",
        "DOWNLOAD_CONNECT_TIMEOUT": "1",
        "DOWNLOAD_READ_TIMEOUT": "0.5",
        "DOWNLOAD_RETRIES": "2",
        "DOWNLOAD_BACKOFF": "0.01",
        "VERIFY_INTERVAL": "0",
        "WORKDIR_SCAN_INTERVAL": "0",
    }
    env.update(overrides)
    return env


def make_workdir(working: Path, plugin: Plugin, *, complete: bool = True) -> Path:
    """An unpacked plugin folder as the daemon leaves it: the package's files, a .venv, its ready marker."""
    folder = working / plugin.author / f"{plugin.name}-{plugin.version}@{plugin.checksum}"
    for path, content in plugin.files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    (folder / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    (folder / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    if complete:
        (folder / ".venv" / "dify").mkdir(parents=True, exist_ok=True)
        (folder / ".venv" / "dify" / "plugin.json").write_text("{}")
    return folder
