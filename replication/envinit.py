"""How long plugin environments take to become ready, seen from the leader's watcher.

A plugin working directory (`[cwd/]<author>/<name>-<version>@<checksum>`) appears when the
Dify daemon starts installing a plugin; its ready marker (`.venv/dify/plugin.json`)
appears when the environment is complete. The time between the two is
`python_env_init_duration_seconds` (the seeds alert above 60 s); directories still
without a marker are counted in `plugin_env_init_in_progress`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import Gauge, Histogram

from replication.exclude import ReadyMarkers

PLUGIN_DIR = re.compile(r"^(?:cwd/)?[^/]+/[^/]+@[^/]+$")
BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)


class EnvInitTracker:
    def __init__(
        self,
        markers: ReadyMarkers,
        histogram: Histogram,
        in_progress: Gauge,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._markers = markers
        self._histogram = histogram
        self._clock = clock
        self._started: dict[str, float] = {}
        in_progress.set_function(lambda: float(len(self._started)))

    def directory_appeared(self, path: str) -> None:
        if PLUGIN_DIR.match(path) and path not in self._started:
            self._started[path] = self._clock()

    def file_written(self, path: str) -> None:
        plugin_dir = self._markers.plugin_dir(path)
        if plugin_dir is None:
            return
        started = self._started.pop(plugin_dir, None)
        if started is not None:
            self._histogram.observe(self._clock() - started)

    def removed(self, path: str) -> None:
        for plugin_dir in [d for d in self._started if d == path or d.startswith(path + "/")]:
            del self._started[plugin_dir]
