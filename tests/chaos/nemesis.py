"""The nemesis: every few seconds, one random fault, and the recovery of earlier ones.

Faults: kill -9 the leader (restarted a few seconds later), SIGSTOP a node (SIGCONT later),
partition a node (its veth end down in the bridge namespace), heal (end a partition, a SIGSTOP or
a full disk early), restart a node (SIGTERM, wait, start), fill a node's disk (a ballast file
until ENOSPC). At most MAX_ACTIVE faults are active at once, so the cluster can make progress
between them; every one also ends by itself after a while. Every injection and recovery is
logged with monotonic and wall-clock times.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.cluster import ChaosCluster, ChaosNode

KINDS = ("kill_leader", "sigstop", "partition", "heal", "restart", "fill_disk")
PROCESS_FAULTS = ("kill_leader", "sigstop")
MAX_ACTIVE = 2
LASTS = {"kill_leader": (2.0, 6.0), "sigstop": (1.0, 6.0), "partition": (3.0, 15.0), "fill_disk": (3.0, 15.0)}
SETTLE = 3.0  # a process fault waits until the node has run this long (a restart needs a started node)
TERM_BOUND = 15.0  # SHUTDOWN_TIMEOUT is 5 s; a node that needs longer to stop on SIGTERM is a finding


@dataclass
class EventLog:
    events: list[dict[str, Any]] = field(default_factory=list)
    echo: bool = True

    def add(self, event: str, **details: Any) -> dict[str, Any]:
        entry = {"mono": round(time.monotonic(), 3), "wall": round(time.time(), 3), "event": event, **details}
        self.events.append(entry)
        if self.echo:
            extra = " ".join(f"{k}={v}" for k, v in details.items() if k != "log_tail")
            print(f"[{time.strftime('%H:%M:%S')}] {event} {extra}", flush=True)
        return entry


@dataclass
class ActiveFault:
    kind: str
    node: ChaosNode
    since: float
    until: float


@dataclass
class Nemesis:
    cluster: ChaosCluster
    rng: random.Random
    log: EventLog
    active: list[ActiveFault] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)

    def step(self) -> None:
        """Recover what is due, notice crashes, then inject one fault (or heal when enough are active)."""
        self.notice_exits()  # first: an exit while the disk is full must be judged while it is full
        now = time.monotonic()
        for fault in [f for f in self.active if f.until <= now]:
            self._recover(fault, "timer")
        kind = "heal" if len(self.active) >= MAX_ACTIVE else self.rng.choice(KINDS)
        for _attempt in range(5):
            if self._inject(kind):
                return
            kind = self.rng.choice([k for k in KINDS if k != "heal"])

    def _inject(self, kind: str) -> bool:
        if kind == "heal":
            healable = [f for f in self.active if f.kind != "kill_leader"]
            if not healable:
                return False
            self._recover(self.rng.choice(healable), "heal")
            self.injected["heal"] += 1
            return True
        target = self._target(kind)
        if target is None:
            return False
        now = time.monotonic()
        if kind == "kill_leader":
            target.signal(signal.SIGKILL)
            assert target.proc is not None
            target.proc.wait(10)
        elif kind == "sigstop":
            target.signal(signal.SIGSTOP)
        elif kind == "partition":
            self.cluster.set_link(target, up=False)
        elif kind == "fill_disk":
            self.log.add("fill_disk_ballast", node=target.name, bytes=target.fill_disk())
        elif kind == "restart":
            self._restart(target)
        self.injected[kind] += 1
        if kind in LASTS:
            low, high = LASTS[kind]
            self.active.append(ActiveFault(kind, target, now, now + self.rng.uniform(low, high)))
        self.log.add(
            "inject", kind=kind, node=target.name, active=[f"{f.kind}:{f.node.name}" for f in self.active]
        )
        return True

    def _target(self, kind: str) -> ChaosNode | None:
        nodes = list(self.cluster.nodes.values())
        busy = {f.node.name for f in self.active if f.kind in PROCESS_FAULTS}
        if kind in ("kill_leader", "sigstop", "restart"):
            now = time.monotonic()
            candidates = [
                n for n in nodes if n.alive() and n.name not in busy and now - n.started_at >= SETTLE
            ]
            if kind == "kill_leader":
                leader = self.cluster.leader()
                candidates = [n for n in candidates if leader is not None and n is leader]
        else:
            taken = {f.node.name for f in self.active if f.kind == kind}
            candidates = [n for n in nodes if n.name not in taken]
        return self.rng.choice(candidates) if candidates else None

    def _restart(self, node: ChaosNode) -> None:
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        assert node.proc is not None
        try:
            code = node.proc.wait(TERM_BOUND)
        except Exception:
            node.proc.kill()
            code = node.proc.wait(10)
            self.findings.append(f"{node.name} did not stop within {TERM_BOUND}s of SIGTERM")
            self.log.add("finding", problem=self.findings[-1], log_tail=node.log_tail())
        self.log.add("stopped", node=node.name, exit_code=code, seconds=round(time.monotonic() - started, 2))
        node.start()

    def _recover(self, fault: ActiveFault, why: str) -> None:
        self.active.remove(fault)
        node = fault.node
        if fault.kind == "kill_leader":
            node.start()
        elif fault.kind == "sigstop":
            node.signal(signal.SIGCONT)
        elif fault.kind == "partition":
            self.cluster.set_link(node, up=True)
        elif fault.kind == "fill_disk":
            node.free_disk()
        self.log.add(
            "recover",
            kind=fault.kind,
            node=node.name,
            by=why,
            lasted=round(time.monotonic() - fault.since, 2),
        )

    def notice_exits(self) -> None:
        """A node that exited without being told to is a finding; it is started again.

        One exit is expected: `hotstandby serve` refuses to start, with status 1 and one line
        saying why, when it cannot write its state because its disk is full. The nemesis then acts
        as compose's `restart: always` or Kubernetes would: it starts the node again at its next step."""
        for node in self.cluster.nodes.values():
            if node.proc is not None and not node.alive() and not node.expected_exit:
                if _refused_to_start_on_full_disk(node):
                    self.log.add("start_refused_on_full_disk", node=node.name)
                    node.start()
                    continue
                problem = f"{node.name} exited by itself with status {node.proc.returncode}"
                self.findings.append(problem)
                self.log.add("finding", problem=problem, log_tail=node.log_tail())
                node.start()

    def watching_exits(self, check: Callable[[], bool]) -> Callable[[], bool]:
        """`check`, after starting again any node that refused to start on a full disk (notice_exits)."""

        def watched() -> bool:
            self.notice_exits()
            return check()

        return watched

    def heal_all(self) -> None:
        self.notice_exits()
        for fault in list(self.active):
            self._recover(fault, "final heal")
        for node in self.cluster.nodes.values():
            if node.stopped:
                node.signal(signal.SIGCONT)
            node.free_disk()
            self.cluster.set_link(node, up=True)
        self.notice_exits()
        for node in self.cluster.nodes.values():
            if not node.alive():
                node.start()
        self.log.add("healed_everything")


def _refused_to_start_on_full_disk(node: ChaosNode) -> bool:
    """Status 1 with hotstandby's one-line ENOSPC refusal, before the process logged `started`, while
    its disk was full: a refusal to start, not a crash of a running node."""
    assert node.proc is not None
    log = node.log_tail(200)
    this_run = log[log.rfind('"event": "starting"') :]
    return (
        node.proc.returncode == 1
        and node.disk_full_since_start()
        and '"event": "starting"' in log
        and '"event": "started"' not in this_run
        and this_run.rstrip().endswith("hotstandby: cannot start: [Errno 28] No space left on device")
    )
