"""Node start to healthy, both roles (issue 15: under 0.5 s; imports were a large part of it).

From spawning `python -m daemon serve` to the first 200 on GET /health, on an empty storage, with the
peer running; warm caches (the interpreter and the packages were loaded by the previous start).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.tools import Hotstandby, ToolError
from tests.support.cluster import Node

HS = "hotstandby"


def _until_healthy(node: Node, timeout: float = 30.0) -> float:
    node.stop()
    started = time.monotonic()
    node.start(wait=False)
    while time.monotonic() - started < timeout:
        if node.is_up():
            return time.monotonic() - started
        time.sleep(0.005)
    raise ToolError(f"{node.name} not healthy within {timeout} s:\n{node.log_tail()}")


def start_to_healthy(workspace: Path, runs: int) -> dict[str, Any]:
    measured: list[dict[str, Any]] = []
    with Hotstandby(workspace) as hs:
        hs.start_slave()
        hs.pair.master.start()
        for _ in range(runs):
            slave = _until_healthy(hs.pair.slave)
            master = _until_healthy(hs.pair.master)
            measured.append({"slave_seconds": round(slave, 3), "master_seconds": round(master, 3)})
    median = {
        key: round(statistics.median(run[key] for run in measured), 3)
        for key in ("slave_seconds", "master_seconds")
    }
    median["seconds"] = max(median.values())
    return {"params": {"runs": runs}, "tools": {HS: {"runs": measured, "median": median}}}
