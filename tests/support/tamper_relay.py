"""A man in the middle of the replication link, for trust-boundary tests.

The master's SYNC_TARGET points here; every request goes on to the real
replica, and the replica's answers come back, possibly rewritten by the
test's `tamper` function (paths climbing out of the storage, huge lists, a
huge epoch, ...). Every byte that crosses in either direction is searched
for the test's marker strings (across chunk boundaries), so a test can
assert that nothing outside the master's STORAGE_PATH ever left it.

Runs its own event loop in a thread of the test process, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.cluster import free_port

LINK_PREFIX = "/internal/replication/"
FORWARDED_HEADERS = ("authorization", "content-type")


@dataclass(frozen=True)
class Answer:
    """A replica's answer as the relay received it; `body` is its JSON (None if it is not JSON)."""

    route: str
    status: int
    body: Any


Tamper = Callable[[Answer], tuple[int, Any] | None]
"""Returns (status, JSON body) to send instead, or None to pass the answer on unchanged."""


class MarkerScanner:
    """Finds any of `markers` in a byte stream fed in pieces (a marker may straddle two pieces)."""

    def __init__(self, markers: Sequence[bytes], where: str, hits: list[str]) -> None:
        self._markers = markers
        self._keep = max((len(m) for m in markers), default=1) - 1
        self._tail = b""
        self._where = where
        self._hits = hits

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk
        for marker in self._markers:
            if marker in window:
                self._hits.append(f"{self._where}: {marker!r}")
        self._tail = window[-self._keep :] if self._keep else b""


class TamperRelay:
    def __init__(self, upstream: str, markers: Sequence[bytes]) -> None:
        self.upstream = upstream.rstrip("/")
        self.markers = list(markers)
        self.port = free_port()
        self.tamper: Tamper | None = None
        """Set and cleared by the test at any time (one attribute write: thread-safe enough)."""
        self.hits: list[str] = []
        self.tampered: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.forwarded_bytes = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle (test thread) -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tamper-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the relay did not start within 10 s")
        if self._error is not None:
            raise AssertionError(f"the relay failed to start: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    # -- the relay's own thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            app = web.Application()

            async def relay(request: web.Request) -> web.Response:
                return await self._relay(session, request)

            app.router.add_route("*", "/{tail:.*}", relay)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    async def _relay(self, session: aiohttp.ClientSession, request: web.Request) -> web.Response:
        route = (
            request.path.removeprefix(LINK_PREFIX) if request.path.startswith(LINK_PREFIX) else request.path
        )
        outgoing = MarkerScanner(self.markers, f"request {request.method} {request.path}", self.hits)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in FORWARDED_HEADERS or k.lower().startswith("x-hotstandby-")
        }
        data = self._streamed(request, outgoing) if request.body_exists else None
        async with session.request(
            request.method, f"{self.upstream}{request.path_qs}", headers=headers, data=data
        ) as resp:
            raw = await resp.read()
            status, content_type = resp.status, resp.headers.get("Content-Type", "application/json")
        self.answers[route] += 1
        status, raw = self._rewrite(Answer(route, status, _json(raw)), status, raw)
        MarkerScanner(self.markers, f"answer {request.path}", self.hits).feed(raw)
        self.forwarded_bytes += len(raw)
        return web.Response(status=status, body=raw, content_type=content_type.split(";")[0])

    async def _streamed(self, request: web.Request, scanner: MarkerScanner) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_any():
            scanner.feed(chunk)
            self.forwarded_bytes += len(chunk)
            yield chunk

    def _rewrite(self, answer: Answer, status: int, raw: bytes) -> tuple[int, bytes]:
        tamper = self.tamper
        if tamper is None:
            return status, raw
        replaced = tamper(answer)
        if replaced is None:
            return status, raw
        self.tampered[answer.route] += 1
        new_status, body = replaced
        return new_status, json.dumps(body).encode()


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@contextlib.contextmanager
def running_relay(upstream: str, markers: Sequence[bytes]) -> Iterator[TamperRelay]:
    relay = TamperRelay(upstream, markers)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()
