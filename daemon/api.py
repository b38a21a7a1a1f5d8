"""The HTTP API: health and metrics for everyone, /internal for holders of SERVER_KEY."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.node import Node
from daemon.problems import HTTPProblem, problem, problem_middleware
from replication.receiver import Receiver

NODE = web.AppKey("node", Node)
JSON_BODY_LIMIT = 32 * 1024 * 1024


def build_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[problem_middleware, auth_middleware], client_max_size=JSON_BODY_LIMIT)
    app[NODE] = node
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/internal/status", status)
    app.router.add_post("/internal/sync", full_sync)
    app.router.add_post("/internal/replication/hello", replication_hello)
    app.router.add_post("/internal/replication/batch", replication_batch)
    app.router.add_get("/internal/replication/manifest", replication_manifest)
    app.router.add_post("/internal/replication/hashes", replication_hashes)
    return app


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With SERVER_KEY set, every /internal route needs `Authorization: Bearer <key>`."""
    node = request.app[NODE]
    key = node.config.server_key
    if key and request.path.startswith("/internal"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            node.metrics.refused.labels(reason="unauthorized").inc()
            response = problem(
                401, "unauthorized", "a valid 'Authorization: Bearer <SERVER_KEY>' header is required"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    report = request.app[NODE].health_report()
    return web.json_response(report, status=200 if report["status"] == "healthy" else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[NODE].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].status())


async def full_sync(request: web.Request) -> web.Response:
    summary = await request.app[NODE].full_sync()
    return web.json_response(summary.to_json())


# -- the replication link (slave side) ------------------------------------------------
def _receiver(request: web.Request) -> Receiver:
    receiver = request.app[NODE].receiver
    if receiver is None:
        raise HTTPProblem(
            409, "not a replica", f"this node is {request.app[NODE].role}; it does not accept replication"
        )
    return receiver


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise HTTPProblem(400, "malformed JSON", "the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "malformed JSON", "the request body must be a JSON object")
    return data


def _int_field(data: Mapping[str, Any], name: str) -> int:
    try:
        number = int(data.get(name, ""))
    except (TypeError, ValueError):
        raise HTTPProblem(400, "bad request", f"{name} must be an integer") from None
    if number < 0:
        raise HTTPProblem(400, "bad request", f"{name} must not be negative")
    return number


async def replication_hello(request: web.Request) -> web.Response:
    receiver = _receiver(request)
    data = await _json_object(request)
    answer = receiver.hello(
        journal_id=str(data.get("journal_id", "")),
        epoch=_int_field(data, "epoch"),
        node_id=str(data.get("node_id", "")),
    )
    return web.json_response(answer)


async def replication_batch(request: web.Request) -> web.Response:
    receiver = _receiver(request)
    journal_id = request.headers.get("X-Hotstandby-Journal", "")
    try:
        if not journal_id:
            raise HTTPProblem(400, "bad request", "X-Hotstandby-Journal header is required")
        epoch = _int_field(request.headers, "X-Hotstandby-Epoch")
    except HTTPProblem:
        request.app[NODE].metrics.refused.labels(reason="bad_headers").inc()
        raise
    result = await receiver.apply_batch(journal_id=journal_id, epoch=epoch, read=request.content.readexactly)
    return web.json_response(result.to_json())


async def replication_manifest(request: web.Request) -> web.Response:
    receiver = _receiver(request)
    return web.json_response({"entries": await asyncio.to_thread(receiver.manifest)})


async def replication_hashes(request: web.Request) -> web.Response:
    receiver = _receiver(request)
    paths = (await _json_object(request)).get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise HTTPProblem(400, "bad request", "paths must be a list of strings")
    return web.json_response({"hashes": await asyncio.to_thread(receiver.hashes, paths)})
