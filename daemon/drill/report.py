"""The drill's report: everything it saw, as JSON (report.json) and as a Markdown summary (report.md).

Times in `moments` and in outcomes are seconds since the drill started (`drill.started_unix` is that
instant in Unix time); `durations` are measured from the stop (or, for rejoin and catch-up, from the
start) of the old leader.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from daemon import __version__
from daemon.drill.config import DrillConfig
from daemon.drill.load import OUTCOME_FIELDS, reported
from daemon.drill.preflight import Preflight
from daemon.drill.record import PhaseReport
from daemon.drill.steps import StepRecord

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_REFUSED, EXIT_NOT_RESTORED = 0, 1, 2, 3, 4


@dataclass
class Restore:
    node: str
    name: str
    ok: bool
    detail: str
    command: str

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "command": self.command,
        }


@dataclass
class DrillReport:
    drill_id: str
    started_unix: float
    config: DrillConfig
    stopper_kind: str
    commands: dict[str, dict[str, str]] = field(default_factory=dict)
    preflight: Preflight | None = None
    phases: list[PhaseReport] = field(default_factory=list)
    restore: list[Restore] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    timeline: dict[str, Any] = field(default_factory=dict)
    finished: float = 0.0
    interrupted: bool = False
    error: str | None = None
    history: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    file_errors: list[str] = field(default_factory=list)
    plot_skipped: str | None = None
    """Why timeline.png was not drawn on purpose (no matplotlib); not a failure."""

    @property
    def started_at(self) -> str:
        return dt.datetime.fromtimestamp(self.started_unix, dt.UTC).isoformat(timespec="seconds")

    @property
    def result(self) -> str:
        if self.preflight is None or not self.preflight.ok:
            return "refused"
        return "pass" if not self.reasons else "fail"

    @property
    def passed(self) -> bool:
        return self.result == "pass"

    @property
    def reasons(self) -> list[str]:
        """Why the drill did not pass; empty when it did."""
        found: list[str] = []
        if self.preflight is not None and not self.preflight.ok:
            found += [f"preflight: {p}" for p in self.preflight.problems]
        if self.error:
            found.append(f"error: {self.error}")
        if self.interrupted:
            found.append("interrupted")
        found += [f"{p.name}: {f}" for p in self.phases for f in p.failures]
        if self.preflight is not None and self.preflight.ok and len(self.phases) < self.expected_phases:
            found.append(f"{self.expected_phases - len(self.phases)} phase(s) not run")
        found += [f"not restored: {r.node}: {r.detail}" for r in self.restore if not r.ok]
        if self.preflight is not None and self.preflight.ok and self.final and not self.final.get("healthy"):
            found.append(f"nodes not healthy at the end: {self.final.get('reason')}")
        found += [f"report: {e}" for e in self.file_errors]
        return found

    @property
    def expected_phases(self) -> int:
        return self.config.runs

    def distribution(self) -> dict[str, Any]:
        """Over every failover of the drill (--repeat): the switchover's median, p95 and worst, and
        the sum of acknowledged writes lost."""
        times = [p.switchover for p in self.phases if p.switchover is not None]
        lost = [p.verification.lost for p in self.phases if p.verification is not None]
        return {
            "runs": len(self.phases),
            "measured": len(times),
            "median": _round(statistics.median(times)) if times else None,
            "p95": _round(percentile(times, 95)) if times else None,
            "worst": _round(max(times)) if times else None,
            "best": _round(min(times)) if times else None,
            "lost_writes": sum(lost),
            "unverified_runs": len(self.phases) - len(lost),
            "switchovers": [_round(p.switchover) for p in self.phases],
        }

    @property
    def exit_status(self) -> int:
        if any(not r.ok for r in self.restore):
            return EXIT_NOT_RESTORED
        return {"pass": EXIT_PASS, "refused": EXIT_REFUSED}.get(self.result, EXIT_FAIL)

    def summary(self) -> dict[str, Any]:
        """The short form kept in the event history."""
        return {
            "drill_id": self.drill_id,
            "started_at": self.started_at,
            "result": self.result,
            "passed": self.passed,
            "reason": one_line(self),
            "nodes": [t.url for t in self.config.targets],
            "thresholds": _thresholds(self.config),
            "phases": [
                {
                    "name": p.name,
                    "from": p.old_url,
                    "to": p.new_url,
                    "other_replicas": p.other_urls,
                    "switchover_seconds": _round(p.switchover),
                    "haproxy_detection_seconds": _round(p.since_stop("haproxy_marked_down")),
                    "promotion_seconds": _round(p.since_stop("new_leader_primary")),
                    "rejoin_seconds": _round(p.since_start("old_leader_rejoined")),
                    "failed_requests": p.failed_requests(),
                    "acknowledged_writes": len(p.load.acked) if p.load else 0,
                    "lost_writes": p.verification.lost if p.verification else None,
                    "passed": p.passed,
                }
                for p in self.phases
            ],
            "distribution": self.distribution(),
            "not_restored": [r.node for r in self.restore if not r.ok],
            "report_dir": self.files.get("dir"),
        }

    def to_json(self) -> dict[str, Any]:
        config = self.config
        return {
            "drill": {
                "id": self.drill_id,
                "version": __version__,
                "started_at": self.started_at,
                "started_unix": round(self.started_unix, 3),
                "finished_seconds": round(self.finished, 3),
                "result": self.result,
                "passed": self.passed,
                "exit_status": self.exit_status,
                "reasons": self.reasons,
                "interrupted": self.interrupted,
                "error": self.error,
            },
            "settings": {
                "nodes": [{"url": t.url, "name": t.name} for t in config.targets],
                "haproxy": {
                    "url": config.haproxy.url,
                    "view": config.haproxy.source,
                    "servers": list(self.preflight.servers)
                    if self.preflight and self.preflight.servers
                    else None,
                },
                "stopper": {"kind": self.stopper_kind, "commands": self.commands},
                "thresholds": _thresholds(config),
                "load": {
                    "write_rate": config.load.write_rate,
                    "read_rate": config.load.read_rate,
                    "prefix": config.load.prefix,
                    "request_timeout": config.load.request_timeout,
                },
                "warmup": config.warmup,
                "settle": config.settle,
                "poll_interval": config.poll_interval,
                "failback": config.failback,
                "repeat": config.runs,
            },
            "distribution": self.distribution(),
            "preflight": None if self.preflight is None else self.preflight.to_json(),
            "phases": [phase_json(p, config) for p in self.phases],
            "restore": [r.to_json() for r in self.restore],
            "final": self.final,
            "steps": [s.to_json() for s in self.steps],
            "timeline": self.timeline,
            "history": self.history,
            "files": self.files,
            "plot_skipped": self.plot_skipped,
        }


def _thresholds(config: DrillConfig) -> dict[str, float]:
    t = config.thresholds
    return {
        "max_switchover": t.max_switchover,
        "target_switchover": t.target_switchover,
        "max_lag": t.max_lag,
        "rejoin_timeout": t.rejoin_timeout,
    }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (one of the values, never an interpolation)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * pct / 100)) - 1]


def _shown(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _round(value: float | None) -> float | None:
    return None if value is None else reported(value)


def phase_json(p: PhaseReport, config: DrillConfig) -> dict[str, Any]:
    outcomes = p.outcomes
    writes = [o for o in outcomes if o.kind == "write"]
    reads = [o for o in outcomes if o.kind == "read"]
    acked = p.load.acked if p.load else {}
    return {
        "number": p.number,
        "name": p.name,
        "old_leader": p.old_url,
        "new_leader": p.new_url,
        "other_replicas": p.other_urls,
        "old_epoch": p.old_epoch,
        "new_epoch": p.new_epoch,
        "passed": p.passed,
        "failures": p.failures,
        "moments": {k: _round(v) for k, v in p.moments.items()},
        "durations": {
            "haproxy_detection": _round(p.since_stop("haproxy_marked_down")),
            "promotion": _round(p.since_stop("new_leader_primary")),
            "haproxy_new_leader_up": _round(p.since_stop("haproxy_new_leader_up")),
            "switchover": _round(p.switchover),
            "plugin_call_switchover": _round(p.plugin_switchover),
            "write_gap": _round(p.write_gap()),
            "stop_command": _round(p.since_stop("stop_returned")),
            "other_replicas_follow": _round(p.since_stop("other_replicas_follow")),
            "rejoin": _round(p.since_start("old_leader_rejoined")),
            "catch_up": _round(p.since_start("lag_under_bound")),
        },
        "target_met": None if p.switchover is None else p.switchover < config.thresholds.target_switchover,
        "requests": {
            "writes_sent": len(writes),
            "writes_acknowledged": len(acked),
            "acknowledged_without_replica": sum(not w.replicated for w in acked.values()),
            "reads_sent": len(reads),
            "reads_ok": sum(o.ok for o in reads),
            "read_mode": p.load.read_mode if p.load else None,
            "bad_reads": p.load.bad_reads if p.load else 0,
            "failed_during_switchover": {k: v for k, v in p.failed_requests().items() if k != "outside"},
            "failed_outside_switchover": p.failed_requests()["outside"],
        },
        "verification": None if p.verification is None else p.verification.to_json(),
        "verification_everywhere": [v.to_json() for v in p.everywhere],
        "plugin_calls": None
        if p.plugin_probe is None
        else {
            "plugin": p.plugin_probe.settings.plugin,
            "calls": len(p.plugin_probe.calls),
            "ok": sum(c.ok for c in p.plugin_probe.calls),
            "failed_during_switchover": p.plugin_probe.failed_between(*(p.window() or (0.0, -1.0))),
            "last_error": p.plugin_probe.last_error(),
        },
        "conflicts": p.conflicts,
        "conflicts_error": p.conflicts_error,
        "both_primary": [round(t, 3) for t in p.both_primary],
        "outputs": p.outputs,
        "acknowledged_writes": [w.to_json() for w in acked.values()],
        "outcome_fields": list(OUTCOME_FIELDS),
        "outcomes": [o.to_json() for o in outcomes],
    }


def one_line(report: DrillReport) -> str:
    if report.result == "refused":
        return "drill refused: " + "; ".join(report.reasons[:3])
    parts = []
    for p in report.phases:
        s = "-" if p.switchover is None else f"{p.switchover:.1f}s"
        lost = "?" if p.verification is None else str(p.verification.lost)
        parts.append(f"{p.name} {s}, {lost} lost")
    verdict = "passed" if report.passed else "FAILED"
    limits = report.config.thresholds
    if len(report.phases) > 2:
        d = report.distribution()
        parts = [
            f"{d['runs']} failovers: switchover median {_shown(d['median'])}, p95 {_shown(d['p95'])},"
            f" worst {_shown(d['worst'])}; {d['lost_writes']} lost"
        ]
    text = f"drill {verdict}: {'; '.join(parts) or 'no phase ran'}"
    text += f" (bound {limits.max_switchover:g}s, target {limits.target_switchover:g}s)"
    if not report.passed:
        text += ": " + "; ".join(report.reasons[:2])
    return text
