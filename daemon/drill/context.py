"""What every step of a drill shares: settings, clock, step log, the nodes' API, the monitor, the stopper,
and which nodes the drill has stopped and not yet seen back."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.drill.config import DrillConfig, Target
from daemon.drill.haproxy import View
from daemon.drill.monitor import Monitor
from daemon.drill.nodes import Nodes
from daemon.drill.steps import Clock, StepLog
from daemon.drill.stoppers import Stopper


@dataclass
class Context:
    config: DrillConfig
    drill_id: str
    clock: Clock
    log: StepLog
    nodes: Nodes
    view: View | None
    monitor: Monitor
    stopper: Stopper
    stopped: set[int] = field(default_factory=set)
    """Indexes of nodes the drill stopped that have not answered /health since."""

    def target(self, index: int) -> Target:
        return self.config.targets[index]
