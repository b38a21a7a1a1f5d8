"""Is every acknowledged write present and intact (same SHA-256) after the failover?

Directly on the new leader when the nodes serve `GET /internal/files/{path}` (the preflight finds out).
Without that endpoint, no HTTP call reads a file on a leader: the drill then checks the old leader once
it has rejoined as the new leader's replica and caught up (the replica's tree is then the leader's: files
the leader lacks are removed from it), through the replication link's `POST /internal/replication/hashes`.
The report names the method; only the first is a direct read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from daemon.client import Unreachable
from daemon.drill.load import AckedWrite
from daemon.drill.nodes import Nodes

HASH_BATCH = 1000
READ_CONCURRENCY = 8


@dataclass
class Verification:
    method: str
    node: str
    direct: bool
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def lost(self) -> int:
        return len(self.missing) + len(self.corrupted)

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost == 0

    def summary(self) -> str:
        text = f"{self.checked - self.lost} of {self.checked} intact ({self.method})"
        if self.missing:
            text += f"; missing: {', '.join(self.missing[:5])}{' ...' if len(self.missing) > 5 else ''}"
        if self.corrupted:
            text += f"; corrupted: {', '.join(self.corrupted[:5])}{' ...' if len(self.corrupted) > 5 else ''}"
        if self.error:
            text += f"; {self.error}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "node": self.node,
            "direct": self.direct,
            "checked": self.checked,
            "intact": self.checked - self.lost,
            "lost": self.lost,
            "missing": self.missing,
            "corrupted": self.corrupted,
            "error": self.error,
        }


async def can_read(nodes: Nodes, url: str, path: str, data: bytes) -> bool:
    """Whether `url` serves GET /internal/files/{path} with the bytes just written there."""
    try:
        status, raw = await nodes.get_bytes(url, f"/internal/files/{quote(path)}")
    except Unreachable:
        return False
    return status == 200 and raw == data


async def on_leader(nodes: Nodes, url: str, acked: Mapping[str, AckedWrite]) -> Verification:
    return await read_back(nodes, url, acked, "read from the new leader (GET /internal/files)")


async def read_back(
    nodes: Nodes, url: str, acked: Mapping[str, AckedWrite], method: str = "read back (GET /internal/files)"
) -> Verification:
    """Every acknowledged write read from `url` (any node serves GET /internal/files) and hashed."""
    result = Verification(method, url, direct=True)
    slots = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(write: AckedWrite) -> None:
        async with slots:
            try:
                status, raw = await nodes.get_bytes(url, f"/internal/files/{quote(write.path)}")
            except Unreachable as exc:
                result.error = f"{url} stopped answering: {exc}"
                return
        result.checked += 1
        if status == 404:
            result.missing.append(write.path)
        elif status != 200:
            result.error = f"{url} answered HTTP {status} for {write.path}"
        elif hashlib.sha256(raw).hexdigest() != write.sha256:
            result.corrupted.append(write.path)

    await asyncio.gather(*(one(w) for w in acked.values()))
    result.missing.sort()
    result.corrupted.sort()
    return result


async def on_replica(
    nodes: Nodes,
    url: str,
    acked: Mapping[str, AckedWrite],
    method: str = "hashes on the old leader after it rejoined as replica and caught up (indirect)",
) -> Verification:
    result = Verification(method, url, direct=False)
    paths = sorted(acked)
    for i in range(0, len(paths), HASH_BATCH):
        batch = paths[i : i + HASH_BATCH]
        status, body = await nodes.send_json("POST", url, "/internal/replication/hashes", {"paths": batch})
        hashes = body.get("hashes")
        if status != 200 or not isinstance(hashes, dict):
            result.error = (
                f"{url} answered HTTP {status} to /internal/replication/hashes: {body.get('detail')}"
            )
            return result
        for path in batch:
            result.checked += 1
            found = hashes.get(path)
            if found is None:
                result.missing.append(path)
            elif found != acked[path].sha256:
                result.corrupted.append(path)
    return result
