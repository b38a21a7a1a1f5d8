"""A client load through HAProxy: writes of known content and reads, each at its own steady rate.

Writes are `PUT /internal/files/<prefix>/<drill>/p<phase>-<n>.bin` with content derived from the drill,
phase and number (so anyone can recompute it); an answer of 200 whose sha256 is ours is an acknowledged
write, kept with its hash. Reads fetch an acknowledged file and compare its hash when the nodes serve
`GET /internal/files/{path}`; otherwise they read `GET /internal/status`, which must come from the
writable leader. Every request is kept as an Outcome. A new connection per request: a pooled
keep-alive connection closed by HAProxy would fail for reasons no client of a failover cares about.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from daemon.client import Answer, AsyncClient, Unreachable
from daemon.drill.config import LoadSettings
from daemon.drill.steps import Clock
from daemon.roles import shown_as_leader
from daemon.tls import TLSFiles, client_context

Kind = Literal["write", "read"]
ReadMode = Literal["file", "status"]


def reported(seconds: float) -> float:
    """A time as the report writes it (milliseconds): counts in the report are made from these, so
    anyone recounting from its rows gets the same numbers."""
    return round(seconds, 3)


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    started: float
    ended: float
    status: int
    """HTTP status; 0 when there was no answer (refused, reset, timed out)."""
    ok: bool
    epoch: int | None = None
    node: str | None = None
    error: str | None = None

    def to_json(self) -> list[Any]:
        return [
            self.kind,
            reported(self.started),
            reported(self.ended),
            self.status,
            self.ok,
            self.epoch,
            self.node,
            self.error,
        ]


OUTCOME_FIELDS = ("kind", "started", "ended", "status", "ok", "epoch", "node", "error")


@dataclass(frozen=True)
class AckedWrite:
    path: str
    sha256: str
    size: int
    epoch: int
    replicated: bool
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "epoch": self.epoch,
            "replicated": self.replicated,
            "at": round(self.at, 3),
        }


def content(drill_id: str, phase: int, number: int) -> bytes:
    """The known content of one write: a header line, then SHA-256 blocks to 256..4095 bytes."""
    head = f"hotstandby drill {drill_id} phase {phase} write {number}\n".encode()
    size = 256 + (number * 97) % 3840
    block = hashlib.sha256(head).digest()
    body = (block * (size // len(block) + 1))[: max(0, size - len(head))]
    return head + body


class Load:
    def __init__(
        self,
        url: str,
        key: str,
        settings: LoadSettings,
        clock: Clock,
        drill_id: str,
        phase: int,
        read_mode: ReadMode,
        tls: TLSFiles | None = None,
    ) -> None:
        self.url = url
        self.tls = tls or TLSFiles()
        self.key = key
        self.settings = settings
        self.clock = clock
        self.drill_id = drill_id
        self.phase = phase
        self.read_mode = read_mode
        self.outcomes: list[Outcome] = []
        self.acked: dict[str, AckedWrite] = {}
        self.bad_reads = 0
        """Reads answered 200 with content other than what was acknowledged."""
        self._number = 0
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: AsyncClient | None = None

    async def run(self) -> None:
        tls = client_context(self.tls)
        async with AsyncClient(tls, self.key, limit=self.settings.max_in_flight, force_close=True) as http:
            self._http = http
            loops = [self._loop(self._write, self.settings.write_rate)]
            if self.settings.read_rate > 0:
                loops.append(self._loop(self._read, self.settings.read_rate))
            try:
                await asyncio.gather(*loops)
            finally:
                await self._drain()

    def stop(self) -> None:
        self._stopping.set()

    async def _loop(self, one: Any, rate: float) -> None:
        period = 1.0 / rate
        next_at = self.clock.now()
        while not self._stopping.is_set():
            await self._slots.acquire()
            task = asyncio.create_task(self._guarded(one))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at = max(next_at + period, self.clock.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(0.0, next_at - self.clock.now()))

    async def _guarded(self, one: Any) -> None:
        try:
            await one()
        finally:
            self._slots.release()

    async def _drain(self) -> None:
        """Requests in flight finish (each is bounded by the request timeout); then none is left."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.request_timeout + 1)
        for task in set(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- one request ------------------------------------------------------------------------------
    async def _write(self) -> None:
        number, self._number = self._number, self._number + 1
        path = f"{self.settings.prefix}/{self.drill_id}/p{self.phase}-{number:06d}.bin"
        data = content(self.drill_id, self.phase, number)
        digest = hashlib.sha256(data).hexdigest()
        started = self.clock.now()
        status, body, error = await self._request("PUT", f"/internal/files/{quote(path)}", data)
        ended = self.clock.now()
        epoch = _int(body.get("epoch"))
        ok = status == 200 and body.get("sha256") == digest
        if status == 200 and not ok:
            error = f"acknowledged with sha256 {body.get('sha256')}, not {digest}"
        if ok:
            replicated = bool(body.get("replicated"))
            self.acked[path] = AckedWrite(path, digest, len(data), epoch or 0, replicated, ended)
        self.outcomes.append(Outcome("write", started, ended, status, ok, epoch, None, error))

    async def _read(self) -> None:
        if self.read_mode == "status":
            await self._read_status()
            return
        if not self.acked:
            return
        write = random.choice(list(self.acked.values()))
        started = self.clock.now()
        status, raw, error = await self._raw("GET", f"/internal/files/{quote(write.path)}")
        ok = status == 200 and hashlib.sha256(raw).hexdigest() == write.sha256
        if status == 200 and not ok:
            self.bad_reads += 1
            error = f"{write.path}: content differs from the acknowledged write"
        self.outcomes.append(Outcome("read", started, self.clock.now(), status, ok, None, None, error))

    async def _read_status(self) -> None:
        started = self.clock.now()
        status, body, error = await self._request("GET", "/internal/status", None)
        ok = status == 200 and shown_as_leader(body.get("role")) and bool(body.get("writable"))
        if status == 200 and not ok:
            error = f"answered by a node that is {body.get('role')}, writable={body.get('writable')}"
        node = body.get("node_id")
        outcome = Outcome(
            "read", started, self.clock.now(), status, ok, _int(body.get("epoch")), node and str(node), error
        )
        self.outcomes.append(outcome)

    async def _request(
        self, method: str, path: str, data: bytes | None
    ) -> tuple[int, dict[str, Any], str | None]:
        status, raw, error = await self._raw(method, path, data)
        try:
            body = Answer(path, status, raw).json()
        except ValueError:
            body = {}
        return status, body, error

    async def _raw(self, method: str, path: str, data: bytes | None = None) -> tuple[int, bytes, str | None]:
        """(status, body, why it is not a success); status 0 when nothing answered."""
        assert self._http is not None
        try:
            answer = await self._http.send(
                method, self.url + path, data=data, timeout=self.settings.request_timeout
            )
        except Unreachable as exc:
            return 0, b"", str(exc)[:200]
        error = None if answer.status == 200 else f"HTTP {answer.status}"
        if answer.status != 200 and answer.raw and not answer.raw.startswith(b"{"):
            error = f"HTTP {answer.status}: {answer.raw[:120].decode(errors='replace').strip()}"
        return answer.status, answer.raw, error

    # -- what happened ----------------------------------------------------------------------------
    def first_write_ok(self, after: float, min_epoch: int) -> Outcome | None:
        """The first write acknowledged after `after` by a leader at `min_epoch` or later."""
        hits = [o for o in self.outcomes if o.kind == "write" and o.ok and o.ended >= after]
        hits = [o for o in hits if (o.epoch or 0) >= min_epoch]
        return min(hits, key=lambda o: o.ended, default=None)

    async def wait_write_ok(self, after: float, min_epoch: int, timeout: float) -> Outcome | None:
        deadline = self.clock.now() + timeout
        while True:
            found = self.first_write_ok(after, min_epoch)
            if found is not None or self.clock.now() >= deadline:
                return found
            await asyncio.sleep(0.02)

    def last_write_error(self) -> str | None:
        return next((o.error for o in reversed(self.outcomes) if o.kind == "write" and not o.ok), None)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
