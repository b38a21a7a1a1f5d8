"""The quarterly failover drill (`hotstandby drill`): stop the leader under load through HAProxy, measure
the switchover, verify that no acknowledged write was lost, restore the nodes, report.

Python API: `report = await run_drill(config, stopper=None)`; `report.exit_status` is 0 only on a pass.
The names below load on first use, so `hotstandby <other command>` never pays for the drill.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CallableStopper": "daemon.drill.stoppers",
    "DrillConfig": "daemon.drill.config",
    "DrillReport": "daemon.drill.report",
    "Target": "daemon.drill.config",
    "run_drill": "daemon.drill.run",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'daemon.drill' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
