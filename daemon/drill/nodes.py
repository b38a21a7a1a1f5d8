"""The nodes' API as the drill uses it: ctl's status (blocking, on daemon/client.py's Client, so run off the
event loop), and the calls ctl has no use for (request bodies, raw bytes) on the drill's AsyncClient: the
same key, TLS and error types as every other client of the nodes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from daemon import ctl
from daemon.client import AsyncClient, Client, Unreachable

THREADS = 16
T = TypeVar("T")


class Nodes:
    """Blocking calls run on a pool of their own: a node that does not answer holds a thread for the
    whole timeout, and the watch on the other node must not queue behind it."""

    def __init__(self, http: AsyncClient, timeout: float = 2.0) -> None:
        self.http = http
        self.client = Client(http.key, timeout, http.ssl_context)
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
        return await self._send(method, url + path, timeout, payload=body)

    async def put_bytes(
        self, url: str, path: str, data: bytes, timeout: float = 15.0
    ) -> tuple[int, dict[str, Any]]:
        """PUT raw bytes; (0, {"detail": why}) when nothing answered."""
        return await self._send("PUT", url + path, timeout, data=data)

    async def get_bytes(self, url: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, raw body); Unreachable when the node does not answer."""
        answer = await self.http.send("GET", url + path, timeout=timeout)
        return answer.status, answer.raw

    async def _send(
        self, method: str, url: str, timeout: float, data: bytes | None = None, payload: Any = None
    ) -> tuple[int, dict[str, Any]]:
        try:
            answer = await self.http.send(method, url, data=data, payload=payload, timeout=timeout)
        except Unreachable as exc:
            return 0, {"detail": str(exc)}
        return answer.status, answer.body()
