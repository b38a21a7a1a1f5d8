"""Shared by the failover tests: fast timings, the /primary question, writes, and a split-brain sampler."""

from __future__ import annotations

import threading
import time
from typing import Self

from tests.support.cluster import SERVER_KEY, Node, Pair, http

FAST = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3"}
LEASE = {
    **FAST,
    "LEASE_TTL": "3",
    "LEASE_RENEW_INTERVAL": "0.8",
    "ELECTION_TIMEOUT": "0.5",
    "LEASE_SAFETY_MARGIN": "0.5",
}


def primary(node: Node) -> bool:
    try:
        return http("GET", f"{node.url}/primary", timeout=1)[0] == 200
    except OSError:
        return False


def put(node: Node, path: str, data: bytes, timeout: float = 5) -> int:
    try:
        return http(
            "PUT",
            f"{node.url}/internal/files/{path}",
            body=data,
            timeout=timeout,
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
        )[0]
    except OSError:
        return 0


class BackgroundSampler:
    """Calls `sample()` every `interval` seconds on its own thread while the `with` block runs."""

    interval = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)


class PrimarySampler(BackgroundSampler):
    """Asks both nodes /primary every 100 ms; records any moment where both say yes."""

    def __init__(self, pair: Pair) -> None:
        super().__init__()
        self.pair = pair
        self.both: list[float] = []
        self.samples = 0

    def sample(self) -> None:
        if primary(self.pair.master) and primary(self.pair.slave):
            self.both.append(time.monotonic())
        self.samples += 1
