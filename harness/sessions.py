"""A started service: its process and everything that process started, found by session.

Each service starts in a session of its own (its session id is its pid), so stopping it reaches
every process it started, as stopping a container does, even those in process groups of their
own (tini puts its child in one). The start time from /proc guards against a reused pid when
another process (`make down`) acts on pids recorded earlier.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks) of a live pid, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[3]), int(fields[19])


def _alive(pid: int, start_time: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == start_time


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[1] == session and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def _signal_session(session: int, sig: int) -> None:
    """Signal every process of a session: the service's process and all it started, as
    stopping a container reaches everything in it (tini puts its child in a group of its own)."""
    for pid in _session_members(session):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class Process:
    """One start of a service. Started with its own session, whose id is its pid."""

    pid: int
    start_time: int
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return _alive(self.pid, self.start_time)

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def _ours(self) -> bool:
        """Whether the session is still this start's: our unreaped child, or the same start time."""
        return self.popen is not None or _alive(self.pid, self.start_time)

    def kill(self) -> None:
        """SIGKILL to everything in the session, like `docker kill`."""
        if self._ours():
            _signal_session(self.pid, signal.SIGKILL)
        self._reap(5.0)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the service's process (tini forwards it), SIGKILL to the rest after timeout."""
        if _alive(self.pid, self.start_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _session_members(self.pid):
                self._reap(0.0)
                time.sleep(0.05)
        if self._ours() and _session_members(self.pid):
            _signal_session(self.pid, signal.SIGKILL)
        self._reap(5.0)

    def _reap(self, timeout: float) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}
