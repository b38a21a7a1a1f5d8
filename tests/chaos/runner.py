"""The chaos run: `python -m tests.chaos.runner --duration 600 --seed N --out DIR`.

Start the cluster (cluster.py), write through HAProxy (client.py) while the nemesis injects a
random fault every 2-6 s (nemesis.py), then heal everything, wait for convergence and check what
was promised (checks.py): no acknowledged write lost on either node, no file on the leader that
was never written, identical trees, never two leaders at one sampled moment, no node crashed or
hung on SIGTERM. Prints a summary table and writes DIR/chaos.json (every fault, every check) and
DIR/writes.jsonl (every write); the nodes', Redis's and HAProxy's logs stay in DIR/logs.
Exit status 0 when every check passed, 1 otherwise, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.netns import NetworkError
from tests.chaos.checks import (
    CheckResult,
    Recovery,
    Write,
    check_acknowledged,
    check_only_written,
    check_single_leader,
    check_trees_identical,
    longest_gap,
    recoveries,
)
from tests.chaos.client import Writer
from tests.chaos.cluster import ChaosCluster, ChaosNode, ClusterError
from tests.chaos.nemesis import EventLog, Nemesis

READY_BOUND = 60.0
CONVERGENCE_BOUND = 60.0
RESUME_BOUND = 30.0
PAUSE = (2.0, 6.0)


class ChaosError(RuntimeError):
    """The cluster could not be brought up, so no chaos was run."""


@dataclass
class Report:
    seed: int
    duration: float
    out: Path
    checks: list[CheckResult] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    writes: list[Write] = field(default_factory=list)
    longest_unavailability: tuple[float, float] = (0.0, 0.0)
    convergence_seconds: float | None = None
    conflicts: dict[str, int | None] = field(default_factory=dict)  # divergent writes preserved, per node
    recoveries: list[Recovery] = field(default_factory=list)

    def recovery_line(self) -> str:
        pauses = [r for r in self.recoveries if r.length >= PAUSE[0]]
        came = sorted(r.first_ack for r in pauses if r.first_ack is not None)
        if not pauses:
            return f"writes after fault-free pauses: no pause of {PAUSE[0]:.0f} s or more"
        if not came:
            return f"writes after fault-free pauses of {PAUSE[0]:.0f} s or more: none in {len(pauses)} pauses"
        return (
            f"writes after fault-free pauses of {PAUSE[0]:.0f} s or more: the first acknowledged one after "
            f"{statistics.median(came):.1f} s (median), {came[-1]:.1f} s (max); {len(pauses) - len(came)} of "
            f"{len(pauses)} pauses had none"
        )

    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def summary(self) -> str:
        outcomes = Counter(w.outcome for w in self.writes)
        overwrites = sum(1 for w in self.writes if w.overwrite and w.outcome == "acked")
        gap, _at = self.longest_unavailability
        converged = "-" if self.convergence_seconds is None else f"{self.convergence_seconds:.1f} s"
        lines = [
            f"chaos run: seed {self.seed}, {self.duration:.0f} s of faults, results in {self.out}",
            "faults injected: " + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            f"writes: {outcomes['acked']} acknowledged ({overwrites} overwrites), "
            f"{outcomes['failed']} failed, {outcomes['unknown']} unknown",
            f"longest unavailability (no acknowledged write): {gap:.1f} s",
            f"convergence after healing: {converged}",
            self.recovery_line(),
            "divergent writes preserved (GET /internal/conflicts): "
            + (", ".join(f"{node} {count}" for node, count in self.conflicts.items()) or "-"),
            "",
            f"{'check':<30} {'result':<6} detail",
        ]
        for check in self.checks:
            lines.append(f"{check.name:<30} {'PASS' if check.passed else 'FAIL':<6} {check.detail}")
            lines += [f"{'':<37}- {p}" for p in check.problems]
        return "\n".join(lines)

    def write_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        document = {
            "seed": self.seed,
            "duration": self.duration,
            "passed": self.passed,
            "faults": dict(self.faults),
            "writes": dict(Counter(w.outcome for w in self.writes)),
            "longest_unavailability_seconds": round(self.longest_unavailability[0], 3),
            "longest_unavailability_from_mono": round(self.longest_unavailability[1], 3),
            "convergence_seconds": self.convergence_seconds,
            "conflicts": self.conflicts,
            "recoveries": [r.__dict__ for r in self.recoveries],
            "checks": [c.to_json() for c in self.checks],
            "events": self.events,
        }
        (self.out / "chaos.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
        with open(self.out / "writes.jsonl", "w", encoding="utf-8") as fh:
            for write in self.writes:
                fh.write(json.dumps(write.to_json()) + "\n")
        (self.out / "summary.txt").write_text(self.summary() + "\n", encoding="utf-8")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> float | None:
    """Seconds it took until predicate() held, or None after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    return None


def _replica_ready(cluster: ChaosCluster, leader: ChaosNode) -> bool:
    others = [n for n in cluster.nodes.values() if n is not leader]
    statuses = [cluster.status(n) for n in others]
    return all(s is not None and s.get("role") == "slave" and s.get("synced") for s in statuses)


def _ready(cluster: ChaosCluster) -> bool:
    cluster.check_services()
    leader = cluster.leader()
    return (
        leader is not None
        and _replica_ready(cluster, leader)
        and "UP" in cluster.haproxy_states().values()
        and cluster.request("GET", f"{cluster.haproxy_url}/primary", timeout=2)[0] == 200
    )


def _converged(cluster: ChaosCluster) -> bool:
    """One leader with its replica connected and synced, and the trees identical."""
    leader = cluster.leader()
    if leader is None or not _replica_ready(cluster, leader):
        return False
    status = cluster.status(leader)
    if status is None or not status.get("writable") or not status.get("peer_connected"):
        return False
    a, b = (n.storage for n in cluster.nodes.values())
    return not check_trees_identical(a, b, ("n1", "n2")).problems


def run(duration: float, seed: int, out: Path, echo: bool = True) -> Report:
    rng = random.Random(seed)
    out = out.resolve()  # Redis and the samplers run in other folders: every path they get is absolute
    report = Report(seed, duration, out)
    events = EventLog(echo=echo)
    report.events = events.events
    writer: Writer | None = None
    try:
        with ChaosCluster(out / "logs") as cluster:
            events.add("cluster_starting", run_id=cluster.run_id, work=str(cluster.work))
            took = wait_for(lambda: _ready(cluster), READY_BOUND)
            if took is None:
                raise ChaosError(f"the cluster was not ready within {READY_BOUND}s; see {out / 'logs'}")
            events.add(
                "cluster_ready", seconds=round(took, 1), leader=getattr(cluster.leader(), "name", None)
            )
            assert cluster.network is not None
            writer = Writer(
                cluster.haproxy_url, cluster.network.namespace("client"), random.Random(rng.random())
            )
            report.writes = writer.writes
            writer.start()
            time.sleep(2.0)
            nemesis = Nemesis(cluster, rng, events)
            faults_from = time.monotonic()
            events.add("faults_start", duration=duration)
            while time.monotonic() - faults_from < duration:
                nemesis.step()
                time.sleep(min(rng.uniform(*PAUSE), max(0.0, duration - (time.monotonic() - faults_from))))
            nemesis.heal_all()
            healed = time.monotonic()
            report.faults = nemesis.injected
            # Until the checks, the nemesis goes on acting as `restart: always`: a node started while its
            # disk was still full (a kill's recovery just before the heal) refuses to start only after it.
            after_heal = nemesis.watching_exits
            resumed = wait_for(
                after_heal(lambda: any(w.outcome == "acked" and w.started >= healed for w in writer.writes)),
                RESUME_BOUND,
            )
            events.add("writes_resumed" if resumed is not None else "writes_not_resumed", seconds=resumed)
            writer.stop()
            report.recoveries = recoveries(events.events, writer.writes, time.monotonic())
            converged = wait_for(after_heal(lambda: _converged(cluster)), CONVERGENCE_BOUND, interval=0.5)
            report.convergence_seconds = None if converged is None else round(time.monotonic() - healed, 2)
            events.add(
                "converged" if converged is not None else "not_converged", seconds=report.convergence_seconds
            )
            nemesis.notice_exits()
            report.longest_unavailability = longest_gap(writer.writes, faults_from, healed + (resumed or 0.0))
            report.checks = _checks(cluster, nemesis, writer.writes, converged, resumed)
            report.conflicts = {node.name: cluster.conflicts(node) for node in cluster.nodes.values()}
            for check in report.checks:
                events.add("check", **check.to_json())
    finally:
        if writer is not None:
            try:
                writer.stop()
            except RuntimeError as exc:
                events.add("writer_failed", error=str(exc))
        report.write_files()
    return report


def _checks(
    cluster: ChaosCluster,
    nemesis: Nemesis,
    writes: list[Write],
    converged: float | None,
    resumed: float | None,
) -> list[CheckResult]:
    leader = cluster.leader()
    nodes = list(cluster.nodes.values())
    checks = [
        CheckResult(
            "converged",
            converged is not None,
            f"one leader, replica synced and trees identical within {CONVERGENCE_BOUND:.0f}s of healing"
            + (f" (leader {leader.name})" if leader else " (no leader)"),
        ),
        CheckResult(
            "writes_resumed",
            resumed is not None,
            f"an acknowledged write within {RESUME_BOUND:.0f}s of healing"
            + (f" ({resumed:.1f}s)" if resumed is not None else ""),
        ),
        check_acknowledged(writes, {n.name: n.storage for n in nodes}),
    ]
    if leader is not None:
        checks.append(check_only_written(writes, leader.storage, leader.name))
    else:
        checks.append(CheckResult("no_file_never_written", False, "no leader to check at the end"))
    checks.append(check_trees_identical(nodes[0].storage, nodes[1].storage, (nodes[0].name, nodes[1].name)))
    checks.append(check_single_leader({n.name: n.samples() for n in nodes}))
    checks.append(
        CheckResult(
            "processes_behaved",
            not nemesis.findings,
            "no node exited by itself or hung on SIGTERM"
            if not nemesis.findings
            else "; ".join(nemesis.findings),
        )
    )
    return checks


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: leave through the same cleanup as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default chaos-results/<time>)"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    out = args.out or Path("chaos-results") / time.strftime("%Y%m%d-%H%M%S")
    print(f"chaos run: seed {seed} (reproduce with --seed {seed}), {args.duration:.0f} s, results in {out}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args.duration, seed, out)
    except KeyboardInterrupt:
        print("interrupted: everything was torn down", file=sys.stderr)
        return 130
    except (ChaosError, ClusterError, NetworkError) as exc:
        print(f"chaos run failed to start: {exc}", file=sys.stderr)
        return 1
    print()
    print(report.summary())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
