"""The tools under test, each started and stopped the same careful way, all on 127.0.0.1.

- RsyncDaemon: `rsync --daemon` on a free port with one module ("bench") pointing at the slave folder;
  plain rsync and lsyncd push to it, so rsync always crosses a TCP connection like hotstandby does.
- Lsyncd: the Debian lsyncd with a generated config: `default.rsync` to the rsync daemon, either with
  lsyncd's default settings (delay 15 s) or tuned for latency (delay 0), run with -nodaemon.
- Hotstandby: a master and a slave daemon through the test harness (tests/support/cluster.py).

Every process is started in its own session and stopped by killing its whole process group, so no
rsync child survives a benchmark run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.cluster import Pair, free_port, make_pair  # noqa: E402

MODULE = "bench"


class ToolError(RuntimeError):
    """A tool failed to start, finish or stop: the run is reported as failed, never as a number."""


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it (children included)."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ToolError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ToolError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def version_of(command: list[str]) -> str:
    """First line of a tool's version output, for the machine section of the report."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return " ".join(text[0].split()) if text else "unknown"


# ---------------------------------------------------------------- rsync


class RsyncDaemon:
    """An rsync daemon whose module "bench" is the slave folder (writable, chrooted into it, as root)."""

    def __init__(self, workdir: Path, module_path: Path) -> None:
        self.workdir = workdir
        self.module_path = module_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, port: int | None = None) -> str:
        return f"rsync://127.0.0.1:{port or self.port}/{MODULE}/"

    def __enter__(self) -> RsyncDaemon:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rsyncd.conf"
        # Chroot on purpose: without it the daemon sanitizes symlinks (an absolute target such as a venv's
        # /usr/bin/python3 arrives as usr/bin/python3), so the copy would not be identical.
        conf.write_text(
            f"pid file = {self.workdir / 'rsyncd.pid'}\n"
            f"log file = {self.workdir / 'rsyncd.log'}\n"
            "use chroot = yes\nmunge symlinks = no\nuid = root\ngid = root\n"
            f"[{MODULE}]\n  path = {self.module_path}\n  read only = no\n"
        )
        self.proc = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                "--address=127.0.0.1",
                f"--port={self.port}",
                f"--config={conf}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_port(self.port, 10, self.proc)
        except BaseException:
            stop_group(self.proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_group(self.proc)


@dataclass
class RsyncRun:
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)


_STAT_LINES = {
    "Number of regular files transferred": "files_transferred",
    "Total transferred file size": "transferred_size",
    "Literal data": "literal",
    "Matched data": "matched",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}


def parse_rsync_stats(text: str) -> dict[str, int]:
    """The numbers of `rsync --stats` we report (rsync prints them with thousands separators)."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        label, _sep, rest = line.partition(":")
        key = _STAT_LINES.get(label.strip())
        match = re.match(r"\s*([\d,]+)", rest)
        if key and match:
            stats[key] = int(match.group(1).replace(",", ""))
    return stats


def rsync_push(src: Path, url: str, options: list[str], timeout: float = 3600) -> RsyncRun:
    """One `rsync <options> --stats src/ url` in its own session; wall time from spawn to exit."""
    command = ["rsync", *options, "--stats", f"{src}/", url]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise ToolError(f"{' '.join(command)} did not finish within {timeout}s") from None
    finally:
        stop_group(proc)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise ToolError(
            f"{' '.join(command)} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}"
        )
    return RsyncRun(seconds, parse_rsync_stats(out.decode(errors="replace")))


# ---------------------------------------------------------------- lsyncd


class Lsyncd:
    """lsyncd -nodaemon with `sync { default.rsync, source, target [, delay] }` and nothing else.

    delay=None keeps lsyncd's default (15 s): the "default configuration". The log goes to stdout
    (captured in a file), which is how we see "Startup of ... finished." for readiness.
    """

    def __init__(self, workdir: Path, source: Path, target: str, delay: float | None) -> None:
        self.workdir = workdir
        self.source = source
        self.target = target
        self.delay = delay
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def log_path(self) -> Path:
        return self.workdir / "lsyncd.out"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def config_text(self) -> str:
        delay = "" if self.delay is None else f", delay = {self.delay:g}"
        return f'sync {{ default.rsync, source = "{self.source}", target = "{self.target}"{delay} }}\n'

    def __enter__(self) -> Lsyncd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> float:
        """Spawn lsyncd; returns the monotonic time just before the spawn (the start of its clock)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "lsyncd.lua"
        conf.write_text(self.config_text())
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                ["lsyncd", "-nodaemon", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.started

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_startup(self, timeout: float, interval: float = 0.02) -> float:
        """Monotonic time at which lsyncd reported its startup rsync finished (its initial full sync)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if re.search(r"Startup of .* finished", text):
                return time.monotonic()
            if self.proc is not None and self.proc.poll() is not None:
                raise ToolError(f"lsyncd exited with {self.proc.returncode}:\n{text[-2000:]}")
            time.sleep(interval)
        raise ToolError(f"lsyncd startup not finished after {timeout}s:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        stop_group(self.proc)


# ---------------------------------------------------------------- hotstandby


# Keep the periodic anti-entropy pass (300 s, jittered) from firing in the middle of a measurement;
# the scale scenario times that pass on demand instead.
HOTSTANDBY_ENV = {"ANTI_ENTROPY_INTERVAL": "86400"}


class Hotstandby:
    """A master and a slave via the test harness: storage at <base>/master/storage and <base>/slave/storage.

    `target_port` routes the replication link through another port (the counting relay).
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.pair: Pair = make_pair(base, master_env=dict(HOTSTANDBY_ENV), slave_env=dict(HOTSTANDBY_ENV))
        self.first_answer: float | None = None
        """When the master first answered /internal/status after its last start (daemon start cost)."""

    @property
    def master_storage(self) -> Path:
        return self.pair.master.storage

    @property
    def slave_storage(self) -> Path:
        return self.pair.slave.storage

    @property
    def master_pid(self) -> int:
        assert self.pair.master.proc is not None
        return self.pair.master.proc.pid

    @property
    def slave_pid(self) -> int:
        assert self.pair.slave.proc is not None
        return self.pair.slave.proc.pid

    def route_link_through(self, port: int) -> None:
        self.pair.master.extra_env["SYNC_TARGET"] = f"http://127.0.0.1:{port}"

    def clear_state(self) -> None:
        """Forget everything the daemons remember (journal ids, applied sequence): a first start."""
        for node in (self.pair.master, self.pair.slave):
            shutil.rmtree(node.state, ignore_errors=True)

    def start_slave(self) -> None:
        self.pair.slave.start()

    def start_master(self) -> float:
        """Spawn the master without waiting; returns the monotonic time just before the spawn."""
        self.first_answer = None
        started = time.monotonic()
        self.pair.master.start(wait=False)
        return started

    def first_answer_seconds(self, started: float) -> float | None:
        return None if self.first_answer is None else round(self.first_answer - started, 3)

    def wait_synced(self, timeout: float, interval: float = 0.05) -> float:
        """Monotonic time at which the slave holds a full copy and nothing is pending on the master.

        Uses the daemons' own status (no tree walk competing with the copy for disk and CPU): the slave
        reports `synced` once it applied the master's reconciliation baseline; the master has nothing
        pending and its produced sequence is acknowledged.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._synced():
                return time.monotonic()
            time.sleep(interval)
        raise ToolError(
            f"hotstandby not synced after {timeout}s\n--- master\n{self.pair.master.log_tail()}"
            f"\n--- slave\n{self.pair.slave.log_tail()}"
        )

    def wait_leading(self, timeout: float, interval: float = 0.05) -> float:
        """Monotonic time at which the master leads with its link up (a restarted master first checks
        its peer, and its watcher may be ready before it accepts writes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, OSError):
                status = self.pair.master.status()
                if status.get("writable") and status.get("peer_connected"):
                    return time.monotonic()
            time.sleep(interval)
        raise ToolError(f"hotstandby master not leading after {timeout}s\n{self.pair.master.log_tail()}")

    def _synced(self) -> bool:
        master, slave = self.pair.master, self.pair.slave
        for node in (master, slave):
            if node.proc is not None and node.proc.poll() is not None:
                raise ToolError(
                    f"hotstandby {node.name} exited with {node.proc.returncode}:\n{node.log_tail()}"
                )
        try:
            m = master.status()
            if self.first_answer is None:
                self.first_answer = time.monotonic()
            s = slave.status()
        except (AssertionError, OSError):
            return False
        return bool(
            s.get("synced")
            and m.get("peer_connected")
            and m.get("pending_changes") == 0
            and m.get("acknowledged_sequence", -1) >= m.get("produced_sequence", 0)
        )

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.pair.master.metric(name, labels)

    def call(self, method: str, path: str, timeout: float = 600.0) -> tuple[int, Any]:
        return self.pair.master.call(method, path, timeout=timeout)

    def stop_master(self) -> None:
        with contextlib.suppress(AssertionError):
            self.pair.master.stop()
        self.pair.master.kill()

    def stop(self) -> None:
        self.pair.stop()

    def __enter__(self) -> Hotstandby:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hotstandby_version() -> str:
    """Package version and the git commit (with +dirty), since the code changes under us."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        from importlib.metadata import version

        pkg = version("hotstandby")
    except Exception:
        pkg = "unknown"
    return f"{pkg} ({commit or 'no git'})"
