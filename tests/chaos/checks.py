"""The final checks of a chaos run, as pure functions over what the run recorded.

Kept apart from the processes so that each check can be shown to fail on a made-up history
(tests/chaos/test_checks.py): a check that cannot fail proves nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.support.cluster import tree_diff

Outcome = Literal["acked", "failed", "unknown"]
SHOWN = 20  # problems listed per check; the count says how many there were


@dataclass(frozen=True)
class Write:
    """One PUT through HAProxy. `acked`: 200 with "replicated": true (durable on both nodes);
    `failed`: refused before anything was written (503 from the node or from HAProxy);
    `unknown`: anything else (timeout, 502, 504, ...): it may or may not have landed."""

    path: str
    sha256: str
    size: int
    overwrite: bool
    started: float
    ended: float
    status: int
    outcome: Outcome
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Sample:
    """One /primary request: sent at `start`, answered (or given up) at `end`, monotonic seconds."""

    start: float
    end: float
    status: int


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, "problems": self.problems}


def _result(name: str, problems: list[str], ok_detail: str) -> CheckResult:
    if not problems:
        return CheckResult(name, True, ok_detail)
    return CheckResult(name, False, f"{len(problems)} problem(s); {ok_detail}", problems[:SHOWN])


def acceptable_contents(writes: Iterable[Write]) -> dict[str, set[str]]:
    """For each path with an acknowledged write: the contents it may hold at the end.

    That is the last acknowledged content, plus the content of every unknown write to the path:
    an unknown write issued after the last acknowledged one may have landed after it, and one
    issued before it may still have been in flight on a stalled leader (linearizability allows
    either). The client never overwrites a path with an unknown write in its history, so in
    practice the set is the last acknowledged content plus at most one later unknown write.
    Failed writes were refused before anything was written: they never count."""
    by_path: dict[str, list[Write]] = {}
    for write in writes:
        by_path.setdefault(write.path, []).append(write)
    result: dict[str, set[str]] = {}
    for path, history in by_path.items():
        acked = [w for w in history if w.outcome == "acked"]
        if acked:
            result[path] = {acked[-1].sha256} | {w.sha256 for w in history if w.outcome == "unknown"}
    return result


def sha256_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def check_acknowledged(writes: Iterable[Write], roots: Mapping[str, Path]) -> CheckResult:
    """Every acknowledged write is on every node (the leader and the replica) with acceptable content."""
    expected = acceptable_contents(writes)
    problems = []
    for node, root in roots.items():
        for path, shas in sorted(expected.items()):
            found = sha256_of(root / path)
            if found is None:
                problems.append(f"{node}: acknowledged {path} is missing")
            elif found not in shas:
                problems.append(f"{node}: {path} has content {found[:12]}, acknowledged {sorted(shas)}")
    return _result(
        "no_acknowledged_write_lost",
        problems,
        f"{len(expected)} acknowledged paths checked on {', '.join(roots)}",
    )


def check_only_written(writes: Iterable[Write], root: Path, node: str) -> CheckResult:
    """Every file on the leader is a path the client wrote, holding a content the client sent in a
    write that may have landed (acknowledged or unknown, never a refused one)."""
    may_hold: dict[str, set[str]] = {}
    attempted: set[str] = set()
    for write in writes:
        attempted.add(write.path)
        if write.outcome != "failed":
            may_hold.setdefault(write.path, set()).add(write.sha256)
    problems, files = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                problems.append(f"{rel}: a symlink the client never made")
            elif full.is_file():
                files += 1
                if rel not in attempted:
                    problems.append(f"{rel}: never written by the client")
                elif sha256_of(full) not in may_hold.get(rel, set()):
                    problems.append(f"{rel}: content the client never sent (or only in a refused write)")
    return _result(
        "no_file_never_written", problems, f"{files} files on {node}, {len(attempted)} paths attempted"
    )


def check_trees_identical(a: Path, b: Path, names: tuple[str, str]) -> CheckResult:
    diffs = tree_diff(a, b)
    return _result(
        "trees_identical", diffs, f"{names[0]} and {names[1]} compared (paths, types, bytes, modes, mtimes)"
    )


def leader_overlaps(timelines: Mapping[str, list[Sample]]) -> list[str]:
    """Moments where two nodes may both have answered 200 on /primary.

    Conservative: a 200 means the node was the leader at some instant between the request's start
    and end, so any overlap of two such windows from different nodes is reported."""
    windows = sorted(
        (s.start, s.end, node) for node, samples in timelines.items() for s in samples if s.status == 200
    )
    problems = []
    open_until: dict[str, float] = {}
    for start, end, node in windows:
        for other, until in open_until.items():
            if other != node and until >= start:
                problems.append(
                    f"{node} 200 at [{start:.3f}, {end:.3f}] while {other} was 200 until {until:.3f}"
                )
        open_until[node] = max(open_until.get(node, start), end)
    return problems


def check_single_leader(timelines: Mapping[str, list[Sample]]) -> CheckResult:
    counts = ", ".join(
        f"{node}: {len(s)} samples, {sum(1 for x in s if x.status == 200)} x 200"
        for node, s in timelines.items()
    )
    if any(not samples for samples in timelines.values()):
        return CheckResult("never_two_leaders", False, f"a node was never sampled ({counts})")
    return _result("never_two_leaders", leader_overlaps(timelines), counts)


def read_samples(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) == 3:  # a line being written when the sampler stopped is dropped
            samples.append(Sample(float(parts[0]), float(parts[1]), int(parts[2])))
    return samples


def longest_gap(writes: Iterable[Write], start: float, end: float) -> tuple[float, float]:
    """The longest stretch within [start, end] without an acknowledged write: (length, its start)."""
    moments = [
        start,
        *sorted(w.ended for w in writes if w.outcome == "acked" and start <= w.ended <= end),
        end,
    ]
    best = (0.0, start)
    for earlier, later in itertools.pairwise(moments):
        if later - earlier > best[0]:
            best = (later - earlier, earlier)
    return best


@dataclass(frozen=True)
class Recovery:
    """A stretch with no fault active (from the moment the last one ended, or a restart was done, until
    the next injection) and how long the first acknowledged write took in it (None: none came)."""

    start: float
    length: float
    first_ack: float | None


def recoveries(events: Iterable[Mapping[str, Any]], writes: Iterable[Write], end: float) -> list[Recovery]:
    """The longest unavailability alone mostly measures faults back to back; this says how fast writes
    came back whenever the nemesis left the cluster alone."""
    acks = sorted(w.ended for w in writes if w.outcome == "acked")
    found: list[Recovery] = []
    active: set[tuple[str, str]] = set()
    quiet_from: float | None = None

    def close(at: float) -> None:
        if quiet_from is not None:
            index = bisect.bisect_left(acks, quiet_from)
            first = acks[index] - quiet_from if index < len(acks) and acks[index] <= at else None
            found.append(Recovery(quiet_from, at - quiet_from, first))

    for event in events:
        kind, node, moment = event.get("kind"), event.get("node"), float(event["mono"])
        if event["event"] == "inject" and kind == "restart":
            if not active:
                close(moment)
                quiet_from = moment
        elif event["event"] == "inject" and kind != "heal":
            close(moment)
            quiet_from = None
            active.add((str(kind), str(node)))
        elif event["event"] == "recover":
            active.discard((str(kind), str(node)))
            if not active:
                close(moment)
                quiet_from = moment
    close(end)
    return found
