"""The quarterly failover drill (`hotstandby drill`): stop the leader under load through HAProxy, measure
the switchover, verify that no acknowledged write was lost, restore the nodes, report.

Python API: `report = await run_drill(config, stopper=None)`; `report.exit_status` is 0 only on a pass.
"""

from daemon.drill.config import DrillConfig, Target
from daemon.drill.report import DrillReport
from daemon.drill.run import run_drill
from daemon.drill.stoppers import CallableStopper

__all__ = ["CallableStopper", "DrillConfig", "DrillReport", "Target", "run_drill"]
