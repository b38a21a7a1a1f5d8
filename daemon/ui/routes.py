"""The status page: GET /ui (and / redirecting there), its static files, and three read-only JSON routes.

The page itself (HTML, script, style: package data, no build step, nothing from elsewhere) is served
to anyone: it holds no data, only the login form. Its data comes from /ui/api/*, which needs
`Authorization: Bearer <key>` with SERVER_KEY or the read-only STATUS_KEY (when neither is set the API
is open, like /internal). The page keeps the key in sessionStorage and sends it as that header; it is
never part of a URL and nothing here logs it. No route here changes anything, and STATUS_KEY opens
no other route (the API's own middleware asks SERVER_KEY for /internal).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from daemon import __version__
from daemon.ha_loop import ControlLoop
from daemon.node import Node
from daemon.plugin_daemon import PluginDaemon
from daemon.problems import HTTPProblem, problem
from daemon.store.store import PluginStore
from daemon.ui.cluster import cluster_view
from daemon.ui.details import Details
from daemon.ui.recent import RECENT

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
DRILL_ID = re.compile(r"[A-Za-z0-9._#:-]{1,80}")


@dataclass
class UiContext:
    node: Node
    control: ControlLoop
    gate: PluginDaemon
    details: Details
    files: dict[str, bytes] = field(default_factory=dict)
    """The static files, read at the page's first request (load_static): a start does not wait for them."""


UI = web.AppKey("status_page", UiContext)


def load_static() -> dict[str, bytes]:
    """Every file under daemon/ui/static, read once from the installed package."""
    from importlib import resources  # late, like the files: only the page needs it

    folder = resources.files("daemon.ui").joinpath("static")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}


def add_ui_routes(
    app: web.Application, node: Node, control: ControlLoop, gate: PluginDaemon, store: PluginStore | None
) -> None:
    details = Details(node, node.config.peer_urls, store)
    app[UI] = UiContext(node, control, gate, details)
    router = app.router
    router.add_get("/", to_page)
    router.add_get("/ui", to_page)
    router.add_get("/ui/", page)
    router.add_get("/ui/drill", drill_page)
    router.add_get("/ui/static/{name}", static)
    router.add_get("/ui/api/login", login_info)
    router.add_get("/ui/api/cluster", cluster)
    router.add_get("/ui/api/details", details_route)
    router.add_get("/ui/api/drills/{drill_id}", drill)


def _file(request: web.Request, name: str, cache: str = "no-cache") -> web.Response:
    files = request.app[UI].files
    if not files:
        files.update(load_static())
    suffix = name[name.rfind(".") :] if "." in name else ""
    if name not in files or suffix not in STATIC_TYPES:
        raise HTTPProblem(404, "not found", "no such file in the status page")
    headers = {**SECURITY_HEADERS, "Cache-Control": cache}
    return web.Response(body=files[name], headers={**headers, "Content-Type": STATIC_TYPES[suffix]})


async def to_page(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def page(request: web.Request) -> web.Response:
    return _file(request, "index.html")


async def drill_page(request: web.Request) -> web.Response:
    return _file(request, "drill.html")


async def static(request: web.Request) -> web.Response:
    return _file(request, request.match_info["name"])


def access(request: web.Request) -> str | None:
    """ "operator" (SERVER_KEY), "read-only" (STATUS_KEY), "open" (no key configured), None: refused."""
    config = request.app[UI].node.config
    keys = [("operator", config.server_key), ("read-only", config.status_key)]
    configured = [(name, key) for name, key in keys if key]
    if not configured:
        return "open"
    given = request.headers.get("Authorization", "").encode()
    found = None
    for name, key in configured:  # every key is compared, in constant time each
        if hmac.compare_digest(given, f"Bearer {key}".encode()) and found is None:
            found = name
    return found


def viewer(handler: Callable[[web.Request, str], Awaitable[web.Response]]) -> Handler:
    """Answer only holders of a key (see `access`); 401 with nothing else for anyone else."""

    async def checked(request: web.Request) -> web.StreamResponse:
        level = access(request)
        if level is None:
            request.app[UI].node.metrics.refused.labels(reason="unauthorized").inc()
            response = problem(
                401,
                "unauthorized",
                "the status page needs 'Authorization: Bearer <SERVER_KEY or STATUS_KEY>'",
            )
            response.headers.update({"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"})
            return response
        return await handler(request, level)

    return checked


def _json(body: object) -> web.Response:
    return web.json_response(body, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


async def login_info(request: web.Request) -> web.Response:
    """What the login form shows: whether a key is needed, and the /health facts anyone may see."""
    node = request.app[UI].node
    required = bool(node.config.server_key or node.config.status_key)
    status, reason = node.health_without_probe()  # /health's probe would be a change to replicate
    health = {"status": status, "reason": reason, "role": node.role, "version": __version__}
    return _json({"key_required": required, "health": health})


@viewer
async def cluster(request: web.Request, level: str) -> web.Response:
    ui = request.app[UI]
    own = ui.node.status()
    own["ha"] = ui.control.last_reason
    own["plugin_daemon"] = ui.gate.status()
    return _json(cluster_view(ui.node.config, own, ui.control.peers, level, RECENT.newest_first()))


@viewer
async def details_route(request: web.Request, _level: str) -> web.Response:
    return _json(await request.app[UI].details.get())


@viewer
async def drill(request: web.Request, _level: str) -> web.Response:
    drill_id = request.match_info["drill_id"]
    if not DRILL_ID.fullmatch(drill_id):
        raise HTTPProblem(400, "bad request", "not a drill id")
    details = request.app[UI].details
    if drill_id not in details.drills:
        await details.get(fresh=details.age() > 1.0)  # a drill recorded since the last look
    found = details.drills.get(drill_id)
    if found is None:
        raise HTTPProblem(404, "not found", f"no drill {drill_id} in the history this node sees")
    return _json(found)
