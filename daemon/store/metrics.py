"""The store's Prometheus metrics, registered on the node's registry.

plugin_download_success_rate is the share of successful downloads among those that
finished within the last WINDOW seconds (1.0 when there were none, so an alert on
`< 0.95` fires only on real failures). Preloads answered from a package already
present count as `already_present`, not as downloads.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Outcome = Literal["success", "failure", "already_present"]
SUCCESS_RATE_WINDOW = 3600.0
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class SuccessWindow:
    """Outcomes of the downloads that finished in the last `window` seconds."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque()

    def add(self, ok: bool) -> None:
        self._outcomes.append((self.clock(), ok))

    def rate(self) -> float:
        horizon = self.clock() - self.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
        if not self._outcomes:
            return 1.0
        return sum(ok for _at, ok in self._outcomes) / len(self._outcomes)


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry, window: float = SUCCESS_RATE_WINDOW) -> None:
        self.registry = registry
        self.downloads = Counter(
            "plugin_downloads",
            "Plugin package downloads from the marketplace, by result (success, failure, already_present).",
            ["result"],
            registry=registry,
        )
        self.window = SuccessWindow(window)
        self.success_rate = Gauge(
            "plugin_download_success_rate",
            f"Share of successful marketplace downloads over the last {window:g} s (1 when none).",
            registry=registry,
        )
        self.success_rate.set_function(self.window.rate)
        self.duration = Histogram(
            "plugin_download_duration_seconds",
            "Time to download and verify a package, retries included.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.corrupted = Gauge(
            "plugin_packages_corrupted",
            "Corrupted packages and installed plugins found and not yet removed (quarantined or in place).",
            registry=registry,
        )
        for result in ("success", "failure", "already_present"):
            self.downloads.labels(result=result)

    def download_finished(self, outcome: Outcome, seconds: float | None = None) -> None:
        self.downloads.labels(result=outcome).inc()
        if outcome != "already_present":
            self.window.add(outcome == "success")
        if seconds is not None:
            self.duration.observe(seconds)
