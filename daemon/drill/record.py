"""What one phase (failover or fail-back) recorded: its moments, its load, and what it found.

Moments are seconds since the drill started (the report gives the wall-clock start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.drill import verify
from daemon.drill.load import Load, Outcome, reported
from daemon.drill.parts import Parts
from daemon.drill.plugin_probe import PluginProbe

MOMENTS = (
    "load_started",
    "stop_issued",
    "stop_returned",
    "haproxy_marked_down",
    "new_leader_primary",
    "haproxy_new_leader_up",
    "first_write_ok",
    "first_plugin_call_ok",
    "other_replicas_follow",
    "load_stopped",
    "start_issued",
    "start_returned",
    "old_leader_answers",
    "old_leader_rejoined",
    "lag_under_bound",
    "replica_in_step",
    "every_node_in_step",
)


@dataclass
class PhaseReport:
    number: int
    name: str
    parts: Parts
    urls: tuple[str, ...]
    """Every node's URL, in --nodes order (the indexes in `parts`)."""
    old_epoch: int
    new_epoch: int | None = None
    moments: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(MOMENTS))
    load: Load | None = None
    plugin_probe: PluginProbe | None = None
    """--plugin-call: the plugin calls made through HAProxy during the phase."""
    verification: verify.Verification | None = None
    """The acknowledged writes on the new leader (or, when nodes cannot serve files, on the old one)."""
    everywhere: list[verify.Verification] = field(default_factory=list)
    """The acknowledged writes on every node that follows the new leader, once each is in step."""
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    conflicts_error: str | None = None
    both_primary: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def old(self) -> int:
        return self.parts.old

    @property
    def old_url(self) -> str:
        return self.urls[self.parts.old]

    @property
    def new_url(self) -> str | None:
        """None until a replica became the leader."""
        return None if self.parts.new is None else self.urls[self.parts.new]

    @property
    def other_urls(self) -> list[str]:
        """The replicas that did not become the leader."""
        return [self.urls[i] for i in self.parts.others]

    def since_stop(self, moment: str) -> float | None:
        at, stop = self.moments.get(moment), self.moments.get("stop_issued")
        return None if at is None or stop is None else at - stop

    def since_start(self, moment: str) -> float | None:
        at, start = self.moments.get(moment), self.moments.get("start_issued")
        return None if at is None or start is None else at - start

    @property
    def switchover(self) -> float | None:
        """Seconds from the stop to the first write acknowledged by the new leader through HAProxy."""
        return self.since_stop("first_write_ok")

    @property
    def plugin_switchover(self) -> float | None:
        """Seconds from the stop to the first plugin call that succeeded again (--plugin-call)."""
        return self.since_stop("first_plugin_call_ok")

    @property
    def outcomes(self) -> list[Outcome]:
        return [] if self.load is None else self.load.outcomes

    def window(self) -> tuple[float, float] | None:
        stop = self.moments["stop_issued"]
        end = self.moments["first_write_ok"] or self.moments["load_stopped"]
        return None if stop is None or end is None else (stop, end)

    def failed_requests(self) -> dict[str, int]:
        """Failed requests that started during the switchover (stop .. first write acknowledged), and
        outside it."""
        window = self.window()
        first, last = (reported(window[0]), reported(window[1])) if window is not None else (1.0, 0.0)
        counts = {"writes": 0, "reads": 0, "outside": 0}
        for o in self.outcomes:
            if o.ok:
                continue
            if first <= reported(o.started) <= last:  # as the report shows them (a recount agrees)
                counts["writes" if o.kind == "write" else "reads"] += 1
            else:
                counts["outside"] += 1
        return counts

    def write_gap(self) -> float | None:
        """Seconds between the last write acknowledged before the stop and the first after it."""
        stop, first = self.moments["stop_issued"], self.moments["first_write_ok"]
        if stop is None or first is None:
            return None
        before = [o.ended for o in self.outcomes if o.kind == "write" and o.ok and o.ended <= stop]
        return first - max(before) if before else None

    @property
    def passed(self) -> bool:
        return not self.failures
