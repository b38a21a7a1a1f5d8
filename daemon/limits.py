"""Bounds on what one client can make the API hold or wait for.

- Size: every body read whole (request.read(), .json(), .post()) is bounded by the app's
  client_max_size (413 beyond it, as a problem document). Streamed bodies (the replication batch,
  package uploads) are read by their handlers in bounded pieces and checked against their own
  limits (protocol.MAX_HEADER_BYTES, delta.MAX_LITERAL, MAX_PLUGIN_PACKAGE_SIZE).
- Request head: aiohttp's keep-alive timer runs from the moment a connection is accepted and after
  each response, and closes a connection still waiting for a complete request head when it fires:
  with keepalive_timeout=REQUEST_HEADER_TIMEOUT, a client trickling its headers is cut off then.
- Body: a body must have arrived within REQUEST_BODY_TIMEOUT. A streamed body may take as long as
  it needs while bytes keep coming, but not stall that long. A client that fails either has its
  connection closed (the answer it would get, 408, could not reach it reliably mid-upload).
- Answers: a JSON answer this node asks for (a peer's status, a marketplace document) is read up to
  a limit and parsed only then (`read_json`), so a hostile server cannot make it hold more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from typing import Any

import structlog
from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler, Middleware

from replication.errors import HotstandbyError

log = structlog.get_logger("daemon.limits")


class AnswerTooLarge(HotstandbyError, ValueError):
    """A JSON answer beyond the reader's limit: not worth a retry."""


async def read_json(content: StreamReader, limit: int, source: str) -> Any:
    """The JSON of a body read up to `limit` bytes; AnswerTooLarge beyond, ValueError when not JSON.

    An empty body is None. RecursionError ("[[[[..." deeper than the parser goes) becomes ValueError.
    """
    return parse_json(await read_limited(content, limit, source), source)


async def read_limited(content: StreamReader, limit: int, source: str) -> bytes:
    """A body read up to `limit` bytes, never more: AnswerTooLarge beyond."""
    raw = bytearray()
    while len(raw) <= limit and (chunk := await content.read(limit + 1 - len(raw))):
        raw += chunk
    if len(raw) > limit:
        raise AnswerTooLarge(f"{source} answered more than {limit} bytes")
    return bytes(raw)


def parse_json(raw: bytes, source: str) -> Any:
    """`raw` as JSON; None when blank, ValueError when not JSON or nested deeper than the parser goes."""
    try:
        return json.loads(raw) if raw.strip() else None
    except RecursionError:
        raise ValueError(f"{source} answered JSON nested too deeply") from None


class _BodyWatch:
    """Checks, every `timeout`, that the request's body is complete (or, if streamed, still moving)."""

    def __init__(self, request: web.Request, timeout: float, streamed: bool) -> None:
        self.request = request
        self.timeout = timeout
        self.streamed = streamed
        self.fired = False
        self._seen = request.content.total_bytes
        self._handle = asyncio.get_running_loop().call_later(timeout, self._check)

    def _check(self) -> None:
        content = self.request.content
        if content.is_eof():
            return
        if self.streamed and content.total_bytes > self._seen:
            self._seen = content.total_bytes
            self._handle = asyncio.get_running_loop().call_later(self.timeout, self._check)
            return
        self.fired = True
        log.warning(
            "slow_client_cut_off",
            path=self.request.path,
            peer=self.request.remote,
            received=content.total_bytes,
            expected=self.request.content_length,
            seconds=self.timeout,
            streamed=self.streamed,
        )
        transport = self.request.transport
        if transport is not None:
            transport.close()

    def cancel(self) -> None:
        self._handle.cancel()


def body_deadline(timeout: float, streamed: Collection[str]) -> Middleware:
    """The body timeout as a middleware; `streamed` names the routes (canonical paths) read in pieces."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        resource = request.match_info.route.resource
        is_streamed = resource is not None and resource.canonical in streamed
        watch = _BodyWatch(request, timeout, is_streamed)
        try:
            return await handler(request)
        except Exception:
            if watch.fired:
                raise web.HTTPRequestTimeout(text="the request body did not arrive in time") from None
            raise
        finally:
            watch.cancel()

    return middleware
