"""The store's HTTP routes, all under /internal (the API's auth middleware guards them).

Mounted by the API as a sub-application at /internal (store_app); store errors reach daemon/problems.py,
which turns them into problem responses. What a promotion needs of the store is not here: it is a
promotion check the node runs (Node.promotion_checks, added by daemon/store/factory.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from daemon.epochs import MAX_PEER_EPOCH, from_outside
from daemon.problems import HTTPProblem
from daemon.store.catalogue import MAX_EVENTS
from daemon.store.store import PluginStore

log = structlog.get_logger("daemon.store.routes")

STORE = web.AppKey("plugin_store", PluginStore)
CHUNK = 256 * 1024
IDENTIFIER = "{identifier:.+}"


def store_app(store: PluginStore) -> web.Application:
    """The store as a sub-application for the API to mount at /internal (the API's middlewares, auth and
    problem documents included, run for it too); opening and closing the store is its cleanup_ctx."""
    app = web.Application()
    app[STORE] = store
    app.cleanup_ctx.append(_store_lifecycle)
    router = app.router
    router.add_post("/preload", preload)
    router.add_post("/verify", verify)
    router.add_get("/workdirs", workdirs)
    router.add_get("/events", events)
    router.add_post("/events", add_event)
    router.add_get("/plugins", list_plugins)
    router.add_delete("/plugins/corrupted", purge)
    router.add_get(f"/plugins/{IDENTIFIER}/package", package)
    router.add_get(f"/plugins/{IDENTIFIER}", get_plugin)
    router.add_put(f"/plugins/{IDENTIFIER}", upload)
    return app


async def _store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    yield
    await store.close()


async def _identifier_field(request: web.Request) -> str:
    """`plugin_identifier` from a JSON body or a form (urlencoded or multipart)."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise HTTPProblem(400, "malformed JSON", "the request body must be a JSON object") from None
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            data = dict(await request.post())
        except ValueError as exc:  # aiohttp's parsers: a bad boundary, a malformed part
            raise HTTPProblem(400, "malformed form", f"the form cannot be read: {exc}") from None
    else:
        data = dict(request.query)
    value = data.get("plugin_identifier") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise HTTPProblem(
            400,
            "bad request",
            "plugin_identifier is required (a JSON body, a form field or a query parameter)",
        )
    return value


async def preload(request: web.Request) -> web.Response:
    answer = await request.app[STORE].preload(await _identifier_field(request))
    return web.json_response(answer, status=200 if answer["already_present"] else 201)


async def upload(request: web.Request) -> web.Response:
    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk

    answer, created = await request.app[STORE].upload(
        request.match_info["identifier"], chunks(), request.content_length
    )
    return web.json_response(answer, status=201 if created else 200)


async def list_plugins(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STORE].list_plugins())


async def get_plugin(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STORE].get_plugin(request.match_info["identifier"]))


async def package(request: web.Request) -> web.StreamResponse:
    fd, size, identifier = await request.app[STORE].open_package(request.match_info["identifier"])
    filename = f"{identifier.name}-{identifier.version}.difypkg"
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Plugin-Identifier": str(identifier),
                "X-Plugin-Checksum": identifier.checksum,
            }
        )
        response.content_length = size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


async def verify(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STORE].verify_all("request"))


async def purge(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STORE].purge_corrupted())


async def workdirs(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STORE].check_workdirs("request"))


async def events(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise HTTPProblem(400, "bad request", f"limit must be an integer 1..{MAX_EVENTS}") from None
    if not 1 <= limit <= MAX_EVENTS:
        raise HTTPProblem(400, "bad request", f"limit must be an integer 1..{MAX_EVENTS}")
    kind = request.query.get("kind") or None
    return web.json_response({"events": await request.app[STORE].events(kind, limit)})


EVENT_BODY_LIMIT = 64 * 1024
EVENT_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")


async def add_event(request: web.Request) -> web.Response:
    """Record an event from outside the daemon (the drill's report); any role may keep history."""
    if request.content_length is not None and request.content_length > EVENT_BODY_LIMIT:
        raise HTTPProblem(413, "event too large", f"an event is at most {EVENT_BODY_LIMIT} bytes of JSON")
    raw = await request.content.read(EVENT_BODY_LIMIT + 1)
    if len(raw) > EVENT_BODY_LIMIT:
        raise HTTPProblem(413, "event too large", f"an event is at most {EVENT_BODY_LIMIT} bytes of JSON")
    try:
        body = json.loads(raw)
    except ValueError:
        raise HTTPProblem(400, "malformed JSON", "the body must be a JSON object with a 'kind'") from None
    kind = body.pop("kind", None) if isinstance(body, dict) else None
    if not isinstance(kind, str) or not EVENT_KIND.fullmatch(kind):
        raise HTTPProblem(400, "bad request", "'kind' must be a short lowercase word, e.g. \"drill\"")
    if "epoch" in body and from_outside(body["epoch"]) is None:
        raise HTTPProblem(400, "bad request", f"'epoch' must be an integer in 0..{MAX_PEER_EPOCH}")
    event = await request.app[STORE].record_event(kind, **body)
    return web.json_response(event, status=201)
