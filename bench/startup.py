"""Node start to healthy, both roles (issue 15: under 0.5 s; imports were a large part of it).

From spawning `python -m daemon serve` to the first 200 on GET /health, with the peer running; warm
caches (the interpreter and the packages were loaded by the previous start). On an empty storage, and
again with 10,000 small files on both nodes: a start whose cost grows with the storage would show there
(the temp-file sweep walked it before serving until session 9: 0.05 s per 10,000 files with warm caches,
as here, 0.5 s cold).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench import data
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


def start_to_healthy(workspace: Path, runs: int, files: int = 10_000) -> dict[str, Any]:
    empty = _measure(workspace / "empty", runs, 0)
    full = _measure(workspace / "full", runs, files)
    median = dict(empty["median"])
    median.update({f"{key}_{files}_files": value for key, value in full["median"].items()})
    return {
        "params": {"runs": runs, "files": files},
        "tools": {HS: {"runs": empty["runs"], f"runs_{files}_files": full["runs"], "median": median}},
    }


def _measure(workspace: Path, runs: int, files: int) -> dict[str, Any]:
    measured: list[dict[str, Any]] = []
    with Hotstandby(workspace) as hs:
        if files:
            data.small_tree(hs.master_storage, files, 7)
        hs.start_slave()
        hs.pair.master.start()
        if files:
            hs.wait_synced(600)
        for _ in range(runs):
            slave = _until_healthy(hs.pair.slave)
            master = _until_healthy(hs.pair.master)
            measured.append({"slave_seconds": round(slave, 3), "master_seconds": round(master, 3)})
    median = {
        key: round(statistics.median(run[key] for run in measured), 3)
        for key in ("slave_seconds", "master_seconds")
    }
    median["seconds"] = max(median.values())
    return {"runs": measured, "median": median}
