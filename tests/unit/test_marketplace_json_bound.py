"""A marketplace document is read up to JSON_LIMIT and no further (issue 13: bounded reads).

A hostile or broken marketplace (or a proxy in front of it) that answers an endless JSON body,
announced or chunked, is refused after the limit without a retry, and the error names it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from daemon.store import download
from daemon.store.download import Downloader, DownloadSettings
from daemon.store.errors import MarketplaceError

LIMIT = 4096
ASKED = web.AppKey("asked", list[str])


async def huge_chunked(request: web.Request) -> web.StreamResponse:
    request.app[ASKED].append(request.path)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"data": "')
    for _ in range(64):  # 64 x 1 KiB past the limit: the client must stop reading long before the end
        await response.write(b"x" * 1024)
    await response.write(b'"}')
    return response


async def huge_announced(request: web.Request) -> web.Response:
    request.app[ASKED].append(request.path)
    return web.json_response({"data": "x" * (LIMIT * 4)})


async def small(request: web.Request) -> web.Response:
    request.app[ASKED].append(request.path)
    return web.json_response({"data": {"version": "1.0.0"}})


@pytest.fixture
async def market() -> AsyncIterator[tuple[str, web.Application]]:
    app = web.Application()
    app[ASKED] = []
    app.router.add_get("/chunked", huge_chunked)
    app.router.add_get("/announced", huge_announced)
    app.router.add_get("/small", small)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("route", ["chunked", "announced"])
async def test_a_json_answer_beyond_the_limit_is_refused_without_a_retry(
    market: tuple[str, web.Application], route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, app = market
    monkeypatch.setattr(download, "JSON_LIMIT", LIMIT)
    downloader = Downloader(DownloadSettings(retries=3, backoff=0.01))
    try:
        with pytest.raises(MarketplaceError, match=f"(more than {LIMIT} bytes|announces \\d+ bytes)"):
            await downloader.fetch_json(f"{url}/{route}")
        assert len(app[ASKED]) == 1, "a too large answer is not worth a retry"
        document, attempts = await downloader.fetch_json(f"{url}/small")
        assert document == {"data": {"version": "1.0.0"}} and attempts == 1
    finally:
        await downloader.close()
