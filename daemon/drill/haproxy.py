"""What HAProxy thinks of the two nodes: from its stats socket (`show stat`), from its stats page (the
same CSV at `<uri>;csv`), or, with neither, nothing (the drill then infers from the traffic it sends).

Servers are matched to nodes by name (--haproxy-servers) or by address: a server whose `addr` is the
node's host (resolved) and port, else its host alone when that is unambiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from daemon.drill.config import HAProxySettings, Target
from daemon.drill.errors import HAProxyError

TIMEOUT = 2.0


@dataclass(frozen=True)
class Server:
    backend: str
    name: str
    status: str
    """As HAProxy reports it: UP, DOWN, 'UP 1/2' (going down), 'DOWN 1/2' (going up), MAINT, ..."""
    addr: str
    backup: bool

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")

    @property
    def down(self) -> bool:
        return self.status.startswith(("DOWN", "MAINT"))


class View(Protocol):
    source: str

    async def servers(self) -> list[Server]: ...


def parse_stat(text: str) -> list[Server]:
    """Server rows (type 2) of `show stat` / the stats page's CSV."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise HAProxyError(f"not HAProxy stats CSV: {text[:80]!r}")
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    return [
        Server(
            row["pxname"], row["svname"], row.get("status", ""), row.get("addr") or "", row.get("bck") == "1"
        )
        for row in rows
        if row.get("type") == "2"
    ]


class SocketView:
    source = "stats socket"

    def __init__(self, path: str) -> None:
        self.path = path

    async def servers(self) -> list[Server]:
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(self.path)
                try:
                    writer.write(b"show stat\n")
                    await writer.drain()
                    text = (await reader.read()).decode(errors="replace")
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            raise HAProxyError(f"stats socket {self.path}: {exc.strerror or exc or 'timed out'}") from None
        return parse_stat(text)


class PageView:
    source = "stats page"

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        parts = urlsplit(url)
        self.auth = aiohttp.BasicAuth(parts.username or "", parts.password or "") if parts.username else None
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self.url = parts._replace(netloc=netloc).geturl().removesuffix(";csv") + ";csv"
        self.session = session

    async def servers(self) -> list[Server]:
        try:
            async with self.session.get(
                self.url, auth=self.auth, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as resp:
                text = await resp.text(errors="replace")
                if resp.status != 200:
                    raise HAProxyError(f"stats page {self.url}: HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise HAProxyError(f"stats page {self.url}: {exc or 'timed out'}") from None
        return parse_stat(text)


def make_view(settings: HAProxySettings, session: aiohttp.ClientSession) -> View | None:
    if settings.socket:
        return SocketView(settings.socket)
    if settings.stats_url:
        return PageView(settings.stats_url, session)
    return None


def match_servers(
    servers: Sequence[Server], targets: Sequence[Target], names: Sequence[str] | None
) -> tuple[Server, ...]:
    """The server of each node, in node order; HAProxyError when they cannot be told apart."""
    if names is not None:
        found = [[s for s in servers if s.name == name] for name in names]
        for name, hits in zip(names, found, strict=True):
            if len(hits) != 1:
                where = f"{len(hits)} servers" if hits else "no server"
                raise HAProxyError(f"--haproxy-servers: {where} named {name!r} in HAProxy's stats")
        return tuple(hits[0] for hits in found)
    if servers and not any(s.addr for s in servers):
        raise HAProxyError(
            "HAProxy's stats hide the servers' addresses (the stats page shows them only with"
            " `stats show-legends`): name the nodes' servers with --haproxy-servers"
        )
    matched = [_by_address(servers, target) for target in targets]
    if len({(s.backend, s.name) for s in matched}) != len(matched):
        raise HAProxyError("two nodes match the same HAProxy server: name them with --haproxy-servers")
    return tuple(matched)


def _by_address(servers: Sequence[Server], target: Target) -> Server:
    addresses = _addresses(target.host)
    exact = [s for s in servers if _split(s.addr) in {(a, target.port) for a in addresses}]
    same_host = [s for s in servers if _split(s.addr)[0] in addresses]
    for hits in (exact, same_host):
        if len(hits) == 1:
            return hits[0]
    shown = ", ".join(f"{s.backend}/{s.name}={s.addr}" for s in servers) or "none"
    raise HAProxyError(
        f"cannot tell which HAProxy server is {target.url} (servers: {shown}): use --haproxy-servers"
    )


def _addresses(host: str) -> set[str]:
    found = {host}
    with contextlib.suppress(OSError):
        found |= {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    return found


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return addr, 0
