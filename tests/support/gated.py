"""A plugin daemon's gate (daemon/plugin_gate.py) beside a test node, as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cluster import SERVER_KEY, Node


@dataclass
class Gate:
    """`python -m daemon.plugin_gate ... -- command` asking `node`; its log beside the node's."""

    node: Node
    command: Sequence[str]
    interval: float = 0.2
    orphan_timeout: float = 2.0
    stop_grace: float = 5.0
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.node.base / "gate.log"

    @property
    def state_file(self) -> Path:
        return self.node.base / "gate-state.json"

    def healthcheck(self, url: str) -> int:
        """The container health check's answer (`plugin-gate --healthcheck URL STATE_FILE`)."""
        argv = [sys.executable, "-m", "daemon.plugin_gate", "--healthcheck", url, str(self.state_file)]
        return subprocess.run(argv, capture_output=True, timeout=10).returncode

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "daemon.plugin_gate",
            "--url",
            self.node.url,
            "--interval",
            str(self.interval),
            "--orphan-timeout",
            str(self.orphan_timeout),
            "--stop-grace",
            str(self.stop_grace),
            "--",
            *self.command,
        ]
        env = {**os.environ, "HOTSTANDBY_KEY": SERVER_KEY, "PLUGIN_GATE_STATE": str(self.state_file)}
        env.update(self.env)
        self.node.base.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_grace + 5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(5)

    def kill_tree(self) -> None:
        """SIGKILL the gate and everything below it (the daemon, its plugins): a host losing its power."""
        if self.proc is None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first found by their parent in /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found
