"""Random, truncated and malformed requests to every route of running daemons.

The routes come from the app's own router (built here the way the server builds it), so a new
route is fuzzed without touching this file. Each request has a random method (mostly the route's
own), random path parameters and query, random headers, a random or truncated body, and the
Bearer key, a wrong key or none. The promises: no answer is a 500 (a 503 only where it is a
documented state, e.g. "not the primary"), no answer carries a traceback, the daemon logs no
unexpected exception, it still answers /health afterwards, and nothing is written outside its
STORAGE_PATH and STATE_PATH. A leader (master, no peer) and a replica (slave, no peer) are fuzzed,
each for FUZZ_SECONDS after one pass over every route.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.api import build_app
from daemon.config import Config
from daemon.ha_loop import ControlLoop
from daemon.node import Node as DaemonNode
from daemon.store.routes import store_app
from tests.support.cluster import SERVER_KEY, Node, http, snapshot

pytestmark = pytest.mark.timeout(240)

FUZZ_SECONDS = 15.0
SEED = int(os.environ.get("HOTSTANDBY_FUZZ_SEED", "20261123"))
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/', b'.py", line ')
STATE_ANSWERS = {
    "not the primary",
    "no replica connected",
    "peer unavailable",
    "not configured",
    "catalogue unavailable",
}
"""5xx titles that describe the node's state, not a failure to handle the request."""
ROLE_CHECKS = {"/health", "/liveness", "/primary", "/read-write", "/replica"}
"""Role and health checks answer 503 by design when the node is not what they ask about."""
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "get", "CONNECT"]
IDENTIFIER = "langgenius/openai:0.0.1@" + "0123456789abcdef" * 4


@dataclass(frozen=True)
class Route:
    method: str
    canonical: str


def _routes(app: web.Application) -> Iterator[Route]:
    """The app's routes and its sub-applications' (the store's), with their full paths."""
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            yield from _routes(resource.get_info()["app"])
        else:
            yield from (Route(r.method, resource.canonical) for r in resource)


def app_routes(tmp_path: Path) -> list[Route]:
    """Every route of the daemon's app, with the store's: what the server serves."""
    folder = tmp_path / "route-list"
    config = Config.from_env(
        {"STORAGE_PATH": str(folder / "s"), "STATE_PATH": str(folder / "st"), "SERVER_HOST": "127.0.0.1"}
    )

    async def build() -> list[Route]:
        node = DaemonNode(config)
        app = build_app(node, ControlLoop(node, None))
        app.add_subapp("/internal", store_app(object()))  # type: ignore[arg-type]  # only its routes are wanted
        return list(_routes(app))

    return asyncio.run(build())


# -- request generation ------------------------------------------------------------------------------
def _text(rng: random.Random, size: int) -> str:
    alphabet = "abc/._-~%:@ \x00\n\\é" + "".join(chr(rng.randrange(32, 0x3000)) for _ in range(4))
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(size + 1)))


def _param(rng: random.Random, name: str) -> str:
    choices = {
        "path": ["a.txt", "dir/b.bin", "../escape", "a/../../x", "/abs", ".hs~tmp", "x" * 300, "a//b"],
        "identifier": [IDENTIFIER, IDENTIFIER + "/../../x", "../../etc/passwd:1.0@" + "a" * 64, "openai"],
        "name": ["app.js", "index.html", "../api.py", "%2e%2e%2fapi.py", "app.js.map", ".hidden"],
        "drill_id": ["20260101T000000Z-abcdef", "../../x", "a" * 200, "node#1", "x y"],
    }.get(name, ["x"])
    value = rng.choice(choices) if rng.random() < 0.6 else _text(rng, 40) or "z"
    return urllib.parse.quote(value, safe="/" if rng.random() < 0.5 else "")


def _target(rng: random.Random, route: Route) -> str:
    path = route.canonical
    for name in ("path", "identifier", "name", "drill_id"):
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", _param(rng, name))
    identifier = urllib.parse.quote(rng.choice([IDENTIFIER, _text(rng, 20)]))
    queries = ["", "", "?lag=abc", "?lag=-1", "?force=true", "?limit=-5", "?limit=999999"]
    query = rng.choice([*queries, "?kind=" + _text(rng, 8), f"?plugin_identifier={identifier}"])
    return path + urllib.parse.quote(query, safe="?=&%")


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**70, 1.5, float("inf") if rng.random() < 0.1 else 3])
    if kind in (2, 3, 4):
        return _text(rng, 20)
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["paths", "epoch", "journal_id", "node_id", "plugin_identifier", "kind", "head_seq", _text(rng, 6)]
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _body(rng: random.Random) -> tuple[bytes, str | None]:
    kind = rng.randrange(7)
    if kind == 0:
        return b"", None
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 4096)), rng.choice([None, "application/octet-stream"])
    if kind == 2:
        value = _json_value(rng)
        return json.dumps(value, allow_nan=True).encode(), "application/json"
    if kind == 3:  # a replication frame, plausible or not
        header = json.dumps(
            {
                "op": rng.choice(["put", "delta", "end", "rename"]),
                "seq": rng.randrange(5),
                "path": _text(rng, 10),
                "size": rng.randrange(100),
            }
        ).encode()
        frame = struct.pack(">I", rng.choice([len(header), rng.randrange(2**32)])) + header
        return frame + rng.randbytes(rng.randrange(64)), None
    if kind == 4:
        return (
            f"plugin_identifier={urllib.parse.quote(_text(rng, 30))}".encode(),
            "application/x-www-form-urlencoded",
        )
    if kind == 5:
        boundary = rng.choice(["xyz", "", "a" * 100])
        part = (
            f'--xyz\r\nContent-Disposition: form-data; name="plugin_identifier"\r\n\r\n{_text(rng, 20)}\r\n'
        )
        return (part + rng.choice(["--xyz--\r\n", ""])).encode(), f"multipart/form-data; boundary={boundary}"
    return b"{" * rng.randrange(1, 5000), "application/json"


@dataclass
class Request:
    raw: bytes
    truncated: bool
    auth: str
    description: str


def make_request(rng: random.Random, route: Route, auth: str | None = None) -> Request:
    method = route.method if rng.random() < 0.75 else rng.choice(METHODS)
    target = _target(rng, route)
    body, content_type = _body(rng)
    auth = auth or rng.choice(["key", "key", "none", "wrong"])
    headers = ["Host: fuzz", "Connection: close"]
    if auth == "key":
        headers.append(f"Authorization: Bearer {SERVER_KEY}")
    elif auth == "wrong":
        headers.append(
            rng.choice(["Authorization: Bearer nope", "Authorization: Basic Zm9v", "Authorization:"])
        )
    if content_type is not None:
        headers.append(f"Content-Type: {content_type}")
    if rng.random() < 0.5:
        headers.append(f"X-Hotstandby-Journal: {rng.choice(['j1', '', _text(rng, 10).replace(chr(10), '')])}")
        headers.append(f"X-Hotstandby-Epoch: {rng.choice(['0', '1', '-3', 'x', '99999999999999999999'])}")
        headers.append(f"X-Hotstandby-Baseline: {rng.choice(['-1', '0', 'y'])}")
    if rng.random() < 0.05:
        headers.append("X-Long: " + "v" * rng.choice([100, 9000]))
    truncated = bool(body) and rng.random() < 0.25
    declared = len(body) + (rng.randrange(1, 10_000) if truncated else 0)
    if rng.random() < 0.1 and not truncated:
        headers.append("Transfer-Encoding: chunked")
        ending = rng.choice([b"\r\n0\r\n\r\n", b"\r\n", b"zz\r\n"])
        truncated = ending != b"\r\n0\r\n\r\n"  # a chunked body that never ends: as good as cut
        body = f"{len(body):x}\r\n".encode() + body + ending
    elif body or method in ("POST", "PUT"):
        headers.append(f"Content-Length: {declared}")
    head = f"{method} {target} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    raw = head.encode("utf-8", "surrogateescape") + body
    description = f"{method} {target} auth={auth} body={len(body)}B{' truncated' if truncated else ''}"
    return Request(raw, truncated, auth, description)


# -- sending and judging -------------------------------------------------------------------------------
def send(node: Node, request: Request, timeout: float = 60.0) -> bytes:
    """The answer, b"" if the server closed without one. Reading stops at the end of the answer's
    body: the server may go on reading (and discarding) a body it did not need before it closes."""
    with socket.create_connection((node.host, node.port), timeout=timeout) as sock:
        try:
            sock.sendall(request.raw)
            if request.truncated:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer (413, 400) and close before reading everything
        answer = b""
        try:
            while not _complete(answer, request.raw.startswith(b"HEAD ")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def _complete(answer: bytes, head_only: bool) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if head_only or match is None:
        return head_only
    return len(body) >= int(match.group(1))


def judge(route: Route, request: Request, answer: bytes) -> str | None:
    """What is wrong with the answer, or None."""
    if not answer:
        return None if request.truncated else "no answer"
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        return f"not an HTTP answer: {status_line[:80]!r}"
    if any(marker in answer for marker in TRACEBACK_MARKERS):
        return f"{status} with a traceback: {body[:300]!r}"
    if status < 500:
        return None
    if status == 503 and route.canonical in ROLE_CHECKS:
        return None
    try:
        title = json.loads(body).get("title")
    except ValueError:
        title = None
    if status in (503, 502) and title in STATE_ANSWERS:
        return None
    return f"{status} {title or body[:200]!r}"


def outside_roots(base: Path) -> dict[str, Any]:
    """Everything under the test's folder except the nodes' storage, state and logs."""
    tree = snapshot(base)
    skip = ("storage", "state", "node.log")
    return {rel: v for rel, v in tree.items() if not any(part in skip for part in Path(rel).parts[1:2])}


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    env = {"MARKETPLACE_URL": "", "REQUEST_BODY_TIMEOUT": "2", "REQUEST_HEADER_TIMEOUT": "5"}
    started = [
        Node("leader", "master", tmp_path / "nodes" / "leader", extra_env=dict(env)),
        Node("replica", "slave", tmp_path / "nodes" / "replica", extra_env=dict(env)),
    ]
    try:
        for node in started:
            node.start()
        yield started
    finally:
        for node in started:
            node.stop()


def test_every_route_survives_random_and_truncated_requests(nodes: list[Node], tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert len(routes) >= 40 and Route("POST", "/internal/replication/batch") in routes
    assert Route("GET", "/ui/api/cluster") in routes and Route("GET", "/") in routes
    before = outside_roots(tmp_path / "nodes")
    rng = random.Random(SEED)
    problems: list[str] = []
    sent = 0
    for node in nodes:
        plan = [(route, auth) for route in routes for auth in ("key", "none", "wrong")]
        deadline = time.monotonic() + FUZZ_SECONDS
        while plan or time.monotonic() < deadline:
            route, auth = plan.pop(0) if plan else (rng.choice(routes), None)
            request = make_request(rng, route, auth)
            problem = judge(route, request, send(node, request))
            sent += 1
            if problem is not None:
                problems.append(f"{node.name}: {request.description}: {problem}")
        assert http("GET", f"{node.url}/health")[0] == 200, f"{node.name} is not healthy after fuzzing"
    for node in nodes:
        log = node.log_path.read_text()
        assert node.proc is not None and node.proc.poll() is None, f"{node.name} exited"
        unexpected = [line for line in log.splitlines() if '"request_failed"' in line or "Traceback" in line]
        problems += [f"{node.name} log: {line[:400]}" for line in unexpected[:5]]
    assert not problems, f"seed {SEED}, {sent} requests:\n" + "\n".join(problems[:30])
    assert outside_roots(tmp_path / "nodes") == before, (
        "something was written outside STORAGE_PATH/STATE_PATH"
    )
    for node in nodes:  # the status page's data needs a key; its page and login facts do not
        for route in routes:
            if route.method != "GET" or not route.canonical.startswith("/ui"):
                continue
            path = route.canonical.replace("{name}", "app.js").replace(
                "{drill_id}", "20260101T000000Z-abcdef"
            )
            code = http("GET", f"{node.url}{path}")[0]
            public = not path.startswith("/ui/api/") or path == "/ui/api/login"
            assert code == (200 if public else 401), f"{node.name}: GET {path} without a key answered {code}"
    print(f"fuzzed {sent} requests over {len(routes)} routes on {len(nodes)} nodes (seed {SEED})")
