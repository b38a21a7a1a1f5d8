"""The nodes' API as the drill uses it: daemon/client.py's client and ctl's helpers (blocking, so run off the
event loop), plus the calls ctl has no use for (request bodies, raw bytes) on one aiohttp session, with
the same Authorization header (client.auth_headers)."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp

from daemon import ctl
from daemon.client import Client, Unreachable, auth_headers

THREADS = 16
T = TypeVar("T")


class Nodes:
    """Blocking calls run on a pool of their own: a node that does not answer holds a thread for the
    whole timeout, and the watch on the other node must not queue behind it."""

    def __init__(
        self,
        key: str,
        session: aiohttp.ClientSession,
        timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.key = key
        self.session = session
        self.client = Client(key, timeout, ssl_context)
        self.pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="drill-http")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(function, *args))

    async def status(self, url: str, timeout: float | None = None) -> ctl.NodeStatus:
        return await self._blocking(ctl.fetch_status, self.client, url, timeout)

    async def statuses(self, urls: list[str], timeout: float | None = None) -> list[ctl.NodeStatus]:
        return list(await asyncio.gather(*(self.status(url, timeout) for url in urls)))

    async def call(
        self, method: str, url: str, path: str, timeout: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """ctl's request: (status, JSON body); raises Unreachable, or UsageError on HTTP 401."""
        return await self._blocking(self.client.call, method, url, path, timeout)

    async def answers(self, url: str, path: str, timeout: float | None = None) -> int | None:
        """The HTTP status of GET path, None when the node does not answer."""
        try:
            return (await self.call("GET", url, path, timeout))[0]
        except Unreachable:
            return None

    async def send_json(
        self, method: str, url: str, path: str, body: dict[str, Any], timeout: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        """A JSON request ctl cannot make; (0, {"detail": why}) when the node does not answer."""
        try:
            async with self.session.request(
                method,
                url + path,
                data=json.dumps(body, default=str),
                headers={**auth_headers(self.key), "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                return resp.status, _json_object(raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return 0, {"detail": str(exc) or type(exc).__name__}

    async def get_bytes(self, url: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        async with self.session.get(
            url + path, headers=auth_headers(self.key), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            return resp.status, await resp.read()


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return {"detail": raw[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"value": body}


async def put_bytes(
    session: aiohttp.ClientSession, key: str, url: str, path: str, data: bytes, timeout: float = 15.0
) -> tuple[int, dict[str, Any]]:
    """PUT raw bytes; (0, {"detail": why}) when nothing answered."""
    try:
        async with session.put(
            url + path, data=data, headers=auth_headers(key), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            return resp.status, _json_object(await resp.read())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return 0, {"detail": str(exc) or type(exc).__name__}
