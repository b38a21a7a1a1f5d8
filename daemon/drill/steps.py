"""The drill's clock and its step log: every step is printed when it ends, with its duration, and kept
for the report."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.drill.errors import StepFailed


class Clock:
    """Seconds since the drill started, on the monotonic clock; `unix` turns them into wall time."""

    def __init__(self) -> None:
        self.mono0 = time.monotonic()
        self.unix0 = time.time()

    def now(self) -> float:
        return time.monotonic() - self.mono0

    def unix(self, at: float) -> float:
        return self.unix0 + at


@dataclass
class StepRecord:
    name: str
    started: float
    ended: float | None = None
    ok: bool | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "started": round(self.started, 3),
            "ended": None if self.ended is None else round(self.ended, 3),
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "ok": self.ok,
            "detail": self.detail,
            **({"data": self.data} if self.data else {}),
        }


Printer = Callable[[str], None]


def print_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class StepLog:
    def __init__(self, clock: Clock, out: Printer = print_line) -> None:
        self.clock = clock
        self.out = out
        self.records: list[StepRecord] = []

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[StepRecord]:
        """Times the body; StepFailed (or any error) marks the step failed and propagates."""
        record = StepRecord(name, self.clock.now())
        self.records.append(record)
        try:
            yield record
        except BaseException as exc:
            record.ok = False
            if not record.detail or isinstance(exc, StepFailed):
                record.detail = _describe(exc)
            raise
        else:
            record.ok = True
        finally:
            record.ended = self.clock.now()
            verdict = "ok" if record.ok else "FAILED"
            took = f"({record.seconds or 0:.2f}s)"
            self.out(f"[{record.ended:7.2f}s] {name}: {verdict} {took} {record.detail}".rstrip())

    def note(self, text: str) -> None:
        self.out(f"[{self.clock.now():7.2f}s] {text}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StepFailed):
        return str(exc)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or type(exc).__name__ == "CancelledError":
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"
