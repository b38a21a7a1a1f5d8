"""The HTTP API: health and role checks for everyone, /internal for holders of SERVER_KEY.

Role checks answer the load balancer's question with a status code, from
state the control loop already holds: they never wait on Redis, PostgreSQL
or the peer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.ha_loop import ControlLoop
from daemon.limits import body_deadline
from daemon.node import Node
from daemon.peers import Poller
from daemon.plugin_daemon import PluginDaemon
from daemon.problems import HTTPProblem, problem, problem_middleware
from daemon.redact import Redactor
from daemon.roles import Request
from daemon.store.routes import store_app
from daemon.store.store import PluginStore
from daemon.ui.routes import add_ui_routes
from replication import versions
from replication.delta import BLOCK_HASHES, CRC_DIGEST_BYTES, DIGEST_BYTES, DIGEST_WIDTHS, block_digester
from replication.errors import ProtocolError, ReplicationError
from replication.exact_read import ExactRead
from replication.paths import StorageRoot, validate_relpath
from replication.protocol import MAX_PATHS_PER_REQUEST, MAX_PEER_EPOCH, MAX_SEQUENCE, named_check
from replication.receiver import Receiver

NODE = web.AppKey("node", Node)
CONTROL = web.AppKey("control", ControlLoop)
PLUGIN_DAEMON = web.AppKey("plugin_daemon", Poller)
GATE = web.AppKey("plugin_daemon_gate", PluginDaemon)
JSON_BODY_LIMIT = 32 * 1024 * 1024
"""Every body read whole (JSON, forms, PUT /internal/files) is at most this: 413 beyond."""
STREAMED_ROUTES = frozenset({"/internal/replication/batch", "/internal/plugins/{identifier}"})
"""Bodies read in bounded pieces, as long as they keep coming (daemon/limits.py)."""


def build_app(
    node: Node,
    control: ControlLoop,
    plugin_daemon: Poller | None = None,
    store: PluginStore | None = None,
    gate: PluginDaemon | None = None,
) -> web.Application:
    middlewares = [
        redact_middleware,
        problem_middleware,
        auth_middleware,
        body_deadline(node.config.request_body_timeout, STREAMED_ROUTES),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=JSON_BODY_LIMIT)
    app[NODE] = node
    app[CONTROL] = control
    app[REDACTOR] = node.config.redactor()
    if plugin_daemon is not None:
        app[PLUGIN_DAEMON] = plugin_daemon
    app[GATE] = gate or PluginDaemon(node, gated=node.config.plugin_daemon_gate, health=plugin_daemon)
    router = app.router
    router.add_get("/health", health)
    router.add_get("/liveness", liveness)
    for path in ("/primary", "/read-write"):
        router.add_get(path, primary)
        router.add_route("OPTIONS", path, primary)
    router.add_get("/replica", replica)
    router.add_route("OPTIONS", "/replica", replica)
    router.add_get("/metrics", metrics)
    router.add_get("/internal/status", status)
    router.add_post("/internal/sync", full_sync)
    router.add_post("/internal/promote", role_request("promote"))
    router.add_post("/internal/demote", role_request("demote"))
    router.add_post("/internal/drain", role_request("drain"))
    router.add_post("/internal/undrain", role_request("undrain"))
    router.add_post("/internal/handover", role_request("handover"))  # ?to=<node id>: lease backends
    router.add_get("/internal/conflicts", conflicts)
    router.add_post("/internal/plugin-daemon/gate", plugin_daemon_gate)
    router.add_put("/internal/files/{path:.+}", put_file)
    router.add_get("/internal/files/{path:.+}", get_file)
    router.add_post("/internal/replication/hello", replication_hello)
    router.add_post("/internal/replication/batch", replication_batch)
    router.add_get("/internal/replication/manifest", replication_manifest)
    router.add_get("/internal/replication/manifest/digest", replication_tree_digest)
    router.add_post("/internal/replication/hashes", replication_hashes)
    router.add_post("/internal/replication/signatures", replication_signatures)
    if store is not None:
        app.add_subapp("/internal", store_app(store))  # its routes, and its lifecycle in cleanup_ctx
    add_ui_routes(app, node, control, app[GATE], store)
    return app


REDACTOR = web.AppKey("redactor", Redactor)
REDACTED_TYPES = frozenset({"application/json", "application/problem+json", "text/plain"})
"""Answers whose text may quote an error, a URL or a field: a known secret is masked in them.
Files and packages are streamed as they are."""
DATA_ROUTES = ("/internal/replication/", "/internal/files/")
"""Answers that carry the storage's own paths and hashes: masking a secret that happens to be part
of a file name would corrupt them. Their problem documents are masked like all others."""


@web.middleware
async def redact_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No secret the configuration knows of leaves in a status answer or a problem document."""
    response = await handler(request)
    data = request.path.startswith(DATA_ROUTES) and response.content_type != "application/problem+json"
    if isinstance(response, web.Response) and response.content_type in REDACTED_TYPES and not data:
        body = response.body
        if isinstance(body, bytes):
            response.body = request.app[REDACTOR].body(body)
    return response


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


def _check(request: web.Request, ok: bool, body: dict[str, Any]) -> web.Response:
    """200 or 503; OPTIONS gets the bare status (HEAD drops the body by itself)."""
    status = 200 if ok else 503
    if request.method == "OPTIONS":
        return web.Response(status=status)
    return web.json_response(body, status=status)


# -- health and role checks ----------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    report = await request.app[NODE].health_report()
    return web.json_response(report, status=503 if report["status"] == "unhealthy" else 200)


async def liveness(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    since = time.monotonic() - control.last_tick
    bound = request.app[NODE].config.liveness_bound
    return web.json_response(
        {"control_loop_seconds_since_tick": round(since, 3), "bound": bound},
        status=200 if since <= bound else 503,
    )


async def primary(request: web.Request) -> web.Response:
    node = request.app[NODE]
    writable = node.accepts_writes()
    gate = request.app.get(PLUGIN_DAEMON)
    plugin_ok = gate is None or gate.fresh_ok(max_age=5.0)
    body = {
        "role": node.role,
        "epoch": node.epoch,
        "writable": writable,
        "lease_seconds_left": node.lease_time_left(),
        "plugin_daemon_ok": None if gate is None else plugin_ok,
    }
    return _check(request, writable and plugin_ok, body)


async def replica(request: web.Request) -> web.Response:
    node = request.app[NODE]
    max_lag = node.config.replica_max_lag
    if "lag" in request.query:
        try:
            max_lag = float(request.query["lag"])
        except ValueError:
            raise HTTPProblem(400, "bad request", "lag must be a number of seconds") from None
    connected = node.receiver.connected(node.config.heartbeat_interval)
    lag = node.lag_seconds()
    ok = node.role_state.role == "replica" and connected and lag <= max_lag
    body = {
        "role": node.role,
        "epoch": node.epoch,
        "connected": connected,
        "lag_seconds": round(lag, 3),
        "max_lag_seconds": max_lag,
        "synced": node.receiver.synced,
    }
    return _check(request, ok, body)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[NODE].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- operator endpoints ----------------------------------------------------------------------
async def status(request: web.Request) -> web.Response:
    body = request.app[NODE].status()
    body["ha"] = request.app[CONTROL].last_reason
    body["plugin_daemon"] = request.app[GATE].status()
    body["peers"] = request.app[CONTROL].peer_report()
    return web.json_response(body)


async def plugin_daemon_gate(request: web.Request) -> web.Response:
    """The plugin daemon's gate reports whether it runs the daemon and asks whether it may."""
    data = await _json_object(request)
    running, pid, bound = data.get("running"), data.get("pid"), data.get("stop_bound_seconds")
    if not isinstance(running, bool):
        raise HTTPProblem(400, "bad request", "running must be true or false")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 31):
        raise HTTPProblem(400, "bad request", "pid must be a process id or null")
    if not isinstance(bound, int | float) or isinstance(bound, bool) or not 0 < bound <= 3600:
        raise HTTPProblem(400, "bad request", "stop_bound_seconds must be a number of seconds in (0, 3600]")
    node = request.app[NODE]
    permit = await request.app[GATE].exchange(running, pid, float(bound))
    return web.json_response(permit.to_json(node))


async def full_sync(request: web.Request) -> web.Response:
    summary = await request.app[NODE].full_sync()
    return web.json_response(summary.to_json())


_GOALS: dict[str, tuple[str, bool | None]] = {
    "promote": ("leader", None),
    "demote": ("replica", None),
    "drain": ("leader", True),
    "undrain": ("leader", False),
    "handover": ("replica", None),
}


def role_request(kind: Request) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        force = request.query.get("force", "").lower() in ("1", "true", "yes")
        node = request.app[NODE]
        target = request.query.get("to", "")
        reports = await node.promotion_reports() if kind == "promote" else {}
        try:
            decision = await request.app[CONTROL].request(kind, force=force, target=target)
        except TimeoutError:
            raise HTTPProblem(
                503, "control loop busy", f"the {kind} request was not decided in time; try again"
            ) from None
        if kind == "drain":
            await node.writes_settled(node.config.sync_write_timeout)  # writes admitted before the drain
        role, draining = _GOALS[kind]
        state = decision.state
        reached = state.role == role and (draining is None or state.draining == draining)
        body = {
            "request": kind,
            "role": request.app[NODE].role,
            "epoch": state.epoch,
            "reason": decision.reason,
        }
        if not reached:
            raise HTTPProblem(409, f"{kind} refused", decision.reason, **body)
        return web.json_response({**body, **reports})

    return handler


async def conflicts(request: web.Request) -> web.Response:
    node = request.app[NODE]
    items = await asyncio.to_thread(node.tracker.list)
    return web.json_response({"conflicts": items, "root": node.tracker.conflicts_root})


async def put_file(request: web.Request) -> web.Response:
    """Write one file atomically on the leader; with SYNC_MODE=sync, answer once the replica has it."""
    node = request.app[NODE]
    path = validate_relpath(request.match_info["path"])
    if node.excluded.matches(path):
        raise HTTPProblem(400, "path excluded", f"{path!r} matches EXCLUDE and would not be replicated")
    if not node.accepts_writes():
        raise HTTPProblem(503, "not the primary", f"this node is {node.role} at epoch {node.epoch}")
    config = node.config
    wait = config.sync_mode == "sync" and node.peer_connected()
    if config.sync_mode == "sync" and not wait and config.sync_mode_fallback != "async":
        raise HTTPProblem(
            503,
            "no replica connected",
            "SYNC_MODE=sync needs a connected replica (or SYNC_MODE_FALLBACK=async)",
        )
    body = await request.read()
    if not node.accepts_writes():  # drained or demoted while the body was arriving
        raise HTTPProblem(503, "not the primary", f"this node stopped accepting writes (epoch {node.epoch})")
    seq = await node.write_file(path, body)
    if wait:
        try:
            await node.wait_replicated(seq, config.sync_write_timeout)
        except Exception as exc:
            raise HTTPProblem(
                504,
                "not confirmed by the replica",
                f"{path!r} is written on the primary but the replica did not confirm it: {exc}",
                seq=seq,
            ) from None
    return web.json_response(
        {
            "path": path,
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "seq": seq,
            "replicated": wait,
            "epoch": node.epoch,
        }
    )


async def get_file(request: web.Request) -> web.StreamResponse:
    """Read a file back on any node (the drill checks acknowledged writes with it); never follows links."""
    node = request.app[NODE]
    path = validate_relpath(request.match_info["path"])
    try:  # a FIFO, socket or device is never opened (lstat, then O_NONBLOCK and fstat), off the loop
        fd, st = await asyncio.to_thread(StorageRoot(node.config.storage_path).open_regular, path)
    except (OSError, ReplicationError):
        raise HTTPProblem(404, "not found", f"{path!r} is not a regular file here") from None
    with os.fdopen(fd, "rb") as fh:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = st.st_size
        await response.prepare(request)
        if request.method != "HEAD":
            while chunk := fh.read(256 * 1024):
                await response.write(chunk)
        await response.write_eof()
    return response


# -- the replication link (replica side) ---------------------------------------------------
def _receiver(request: web.Request, incoming_epoch: int, *, applies: bool = False) -> Receiver:
    node = request.app[NODE]
    if not node.receiver.accepting:
        node.note_peer_epoch(incoming_epoch)
        raise HTTPProblem(
            409, "not a replica", f"this node is {node.role} at epoch {node.epoch}", peer_epoch=node.epoch
        )
    if applies and (why := request.app[GATE].blocks_applying()) is not None:
        node.metrics.refused.labels(reason="plugin_daemon_running").inc()
        raise HTTPProblem(503, "plugin daemon running", why)
    return node.receiver


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise HTTPProblem(400, "malformed JSON", "the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "malformed JSON", "the request body must be a JSON object")
    return data


def _int_field(data: Mapping[str, Any], name: str, low: int = 0, high: int = MAX_PEER_EPOCH) -> int:
    """An integer field of a peer's request; epochs are bounded by MAX_PEER_EPOCH (protocol.py), so
    an epoch taken from a peer always leaves room for later promotions."""
    try:
        number = int(data.get(name, ""))
    except (TypeError, ValueError, OverflowError):
        raise HTTPProblem(400, "bad request", f"{name} must be an integer") from None
    if not low <= number <= high:
        raise HTTPProblem(400, "bad request", f"{name} must be an integer in [{low}, {high}]")
    return number


def _peer_epoch(request: web.Request, data: Mapping[str, Any], name: str) -> int:
    """The epoch a peer announces; one out of bounds is refused (and counted), never followed."""
    try:
        return _int_field(data, name)
    except HTTPProblem:
        request.app[NODE].metrics.refused.labels(reason="epoch").inc()
        raise


async def replication_hello(request: web.Request) -> web.Response:
    data = await _json_object(request)
    epoch = _peer_epoch(request, data, "epoch")
    receiver = _receiver(request, epoch, applies=True)
    try:
        offered = versions.offered(data)
        answer = receiver.hello(
            journal_id=str(data.get("journal_id", "")),
            epoch=epoch,
            node_id=str(data.get("node_id", "")),
            protocol=offered,
        )
    except versions.IncompatibleProtocolError as exc:
        request.app[NODE].metrics.refused.labels(reason="protocol").inc()
        low, high = versions.ours()
        raise HTTPProblem(400, versions.MISMATCH_TITLE, str(exc), protocol_min=low, protocol=high) from None
    return web.json_response(answer)


async def replication_batch(request: web.Request) -> web.Response:
    journal_id = request.headers.get("X-Hotstandby-Journal", "")
    try:
        if not journal_id:
            raise HTTPProblem(400, "bad request", "X-Hotstandby-Journal header is required")
        epoch = _int_field(request.headers, "X-Hotstandby-Epoch")  # bounded like every peer epoch
        baseline = _int_field(
            {"baseline": request.headers.get("X-Hotstandby-Baseline", "-1")}, "baseline", -1, MAX_SEQUENCE
        )
    except HTTPProblem:
        request.app[NODE].metrics.refused.labels(reason="bad_headers").inc()
        raise HTTPProblem(
            400, "bad request", "X-Hotstandby-Journal, -Epoch and -Baseline must be valid"
        ) from None
    try:
        check = named_check(request.headers.get("X-Hotstandby-Check"))
    except ProtocolError:  # a 400 naming the checks we know (problems.py)
        request.app[NODE].metrics.refused.labels(reason="bad_headers").inc()
        raise
    receiver = _receiver(request, epoch, applies=True)
    if request.transport is not None:
        request.app[NODE].leader_connection = request.transport.get_extra_info("peername")
    result = await receiver.apply_batch(
        journal_id=journal_id,
        epoch=epoch,
        read=ExactRead(request.content.readany),
        baseline=baseline,
        check=check,
    )
    return web.json_response(result.to_json())


async def replication_manifest(request: web.Request) -> web.StreamResponse:
    """The replica's manifest, written piece by piece as its walk goes (manifest_wire).

    The walk runs in a thread of its own, one piece at a time, so the socket's pace bounds what is
    held; its first piece is read before the answer starts, so a failing walk still gets a problem
    answer. A failure later cuts the answer short, which the leader refuses as incomplete.
    """
    receiver = _receiver(request, 0)
    pieces = receiver.manifest()
    walker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest")
    loop = asyncio.get_running_loop()
    try:
        piece = await loop.run_in_executor(walker, next, pieces, None)
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await response.prepare(request)
        while piece is not None:
            await response.write(piece)
            piece = await loop.run_in_executor(walker, next, pieces, None)
        await response.write_eof()
        return response
    finally:
        walker.submit(pieces.close)  # after a piece still being read, on the walk's own thread
        walker.shutdown(wait=False)


async def replication_tree_digest(request: web.Request) -> web.Response:
    """One digest of the replica's whole manifest (manifest.TreeDigest, protocol 4)."""
    receiver = _receiver(request, 0)
    return web.json_response(await asyncio.to_thread(receiver.tree_digest))


async def replication_hashes(request: web.Request) -> web.Response:
    receiver = _receiver(request, 0)
    paths = await _path_list(request)
    return web.json_response({"hashes": await asyncio.to_thread(receiver.hashes, paths)})


async def replication_signatures(request: web.Request) -> web.Response:
    receiver = _receiver(request, 0)
    paths = await _path_list(request)
    body = await _json_object(request)
    width, block_hash = body.get("digest_bytes", DIGEST_BYTES), body.get("block_hash", "sha256")
    try:
        if isinstance(width, bool) or not isinstance(width, int) or not isinstance(block_hash, str):
            raise ValueError("digest_bytes must be an integer and block_hash a string")
        block_digester(block_hash, width)
    except ValueError as exc:
        raise HTTPProblem(
            400,
            "bad request",
            f"{exc}: block_hash is one of {BLOCK_HASHES}, with digest_bytes {CRC_DIGEST_BYTES} for crc32 "
            f"or in {DIGEST_WIDTHS} for sha256",
        ) from None
    answer = await asyncio.to_thread(receiver.signatures, paths, width, block_hash)
    return web.json_response({"signatures": answer})


async def _path_list(request: web.Request) -> list[str]:
    """The `paths` of a hashes or signatures request: at most MAX_PATHS_PER_REQUEST strings (each
    costs a read of a whole file here; the sender asks in chunks)."""
    paths = (await _json_object(request)).get("paths")
    if (
        not isinstance(paths, list)
        or len(paths) > MAX_PATHS_PER_REQUEST
        or not all(isinstance(p, str) for p in paths)
    ):
        request.app[NODE].metrics.refused.labels(reason="bad_paths").inc()
        raise HTTPProblem(
            400, "bad request", f"paths must be a list of at most {MAX_PATHS_PER_REQUEST} strings"
        )
    return paths
