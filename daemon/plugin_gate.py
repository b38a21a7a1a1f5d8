"""Run the Dify plugin daemon only while the hotstandby node beside it is the writable leader.

The real plugin daemon scans its `plugin/` folder every 30 s, launches what it finds and
deletes and rebuilds any venv whose ready marker has not arrived yet; on a replica that
would fight the replicator. This wrapper is the daemon container's command (or the pod
container's, or the no-Docker runner's): it asks its node, every `--interval`, whether the
daemon may run, starts it when the answer is yes and stops it when the answer is no, and
tells the node each time whether it is running, so a replica applies nothing while it is.

It fails closed: when the node has not answered for `--orphan-timeout` seconds the daemon
is stopped, and it is never started without an explicit yes. It uses only the standard
library because it runs with the plugin daemon image's own python3:

    python3 plugin_gate.py --url http://127.0.0.1:5003 --key-file /run/secrets/k -- /app/entrypoint.sh

The container's health check asks the same file (`--healthcheck URL`): healthy while the gate
holds the daemon stopped on a replica, and while the daemon it runs answers URL on the leader.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

GATE_PATH = "/internal/plugin-daemon/gate"
DEFAULT_STATE_FILE = "/tmp/plugin-gate.json"
STATE_MAX_AGE = 30.0
"""A state file older than this means the gate itself is stuck: unhealthy."""
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0)
"""Seconds before starting the daemon again after it exited on its own, one step per exit in a row."""


@dataclass(frozen=True)
class GateSettings:
    url: str
    key: str
    interval: float
    orphan_timeout: float
    stop_grace: float
    command: tuple[str, ...]
    ca_file: str = ""
    state_file: str = DEFAULT_STATE_FILE

    @property
    def stop_bound(self) -> float:
        """Seconds after its last answer by which the node may take the daemon for stopped."""
        return self.orphan_timeout + self.stop_grace + self.interval


class Gate:
    """The loop: ask, then start or stop the daemon; signals only set a flag."""

    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self.child: subprocess.Popen[bytes] | None = None
        self.permitted = False
        self.last_answer = time.monotonic()
        self.exits_in_a_row = 0
        self.restart_at = 0.0
        self.should_exit = False
        self.unreachable = False
        self.exit_status = 0
        self._ssl = ssl.create_default_context(cafile=settings.ca_file or None)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        say("started", command=" ".join(self.settings.command), node=self.settings.url)
        while not self.should_exit:
            self.tick()
            self._sleep(self.settings.interval)
        self.stop_child("the gate is stopping")
        self.ask()
        return self.exit_status

    def tick(self) -> None:
        self._reap()
        self._write_state()
        answer = self.ask()
        now = time.monotonic()
        if answer is not None:
            if self.unreachable:
                self.unreachable = False
                say("node_answers")
            self.last_answer = now
            self.permitted = answer.get("run") is True
            reason = str(answer.get("reason", ""))
        elif now - self.last_answer >= self.settings.orphan_timeout:
            self.permitted = False
            reason = f"the node has not answered for {self.settings.orphan_timeout:g}s"
        else:
            return  # keep the last decision for a little while
        if self.permitted and self.child is None and now >= self.restart_at:
            self.start_child(reason)
        elif not self.permitted and self.child is not None:
            self.stop_child(reason)
            self.ask()  # tell the node at once: a replica waits for this to apply anything

    # -- talking to the node -------------------------------------------------------------------
    def ask(self) -> dict[str, Any] | None:
        body = json.dumps(
            {
                "running": self.child is not None,
                "pid": self.child.pid if self.child is not None else None,
                "stop_bound_seconds": self.settings.stop_bound,
            }
        ).encode()
        request = urllib.request.Request(
            self.settings.url.rstrip("/") + GATE_PATH,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if self.settings.key:
            request.add_header("Authorization", f"Bearer {self.settings.key}")
        timeout = max(0.5, min(2.0, self.settings.orphan_timeout / 2))
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:
                answer = json.loads(response.read(65536))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._note_unreachable(exc)
            return None
        return answer if isinstance(answer, dict) else None

    def _note_unreachable(self, exc: Exception) -> None:
        """One line when the node stops answering (not one per tick), and one when it answers again."""
        if self.unreachable:
            return
        self.unreachable = True
        if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403):
            say("refused", status=exc.code, why="the node refused the key (check --key-file)")
        else:
            say("node_unreachable", error=f"{type(exc).__name__}: {exc}")

    def _write_state(self) -> None:
        """For --healthcheck: whether the daemon should be answering, and that the gate is alive."""
        state = {"running": self.child is not None, "permitted": self.permitted, "updated": time.time()}
        temp = f"{self.settings.state_file}.{os.getpid()}.tmp"
        try:
            with open(temp, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(temp, self.settings.state_file)
        except OSError as exc:
            say("state_not_written", error=str(exc))

    # -- the daemon process --------------------------------------------------------------------
    def start_child(self, reason: str) -> None:
        say("starting_daemon", why=reason)
        try:
            self.child = subprocess.Popen(
                self.settings.command, start_new_session=True, preexec_fn=_die_with_the_gate
            )
        except OSError as exc:
            say("daemon_not_started", error=str(exc))
            self._after_exit()

    def stop_child(self, reason: str) -> None:
        child = self.child
        if child is None:
            return
        say("stopping_daemon", pid=child.pid, why=reason)
        _signal_group(child, signal.SIGTERM)
        try:
            child.wait(timeout=self.settings.stop_grace)
        except subprocess.TimeoutExpired:
            say("killing_daemon", pid=child.pid, grace=self.settings.stop_grace)
            _signal_group(child, signal.SIGKILL)
            child.wait()
        _signal_group(child, signal.SIGKILL)  # whatever it left behind in its group
        say("daemon_stopped", pid=child.pid, status=child.returncode)
        self.child = None

    def _reap(self) -> None:
        if self.child is None or self.child.poll() is None:
            return
        say("daemon_exited", pid=self.child.pid, status=self.child.returncode)
        _signal_group(self.child, signal.SIGKILL)
        self.exit_status = self.child.returncode or 0
        self.child = None
        self._after_exit()

    def _after_exit(self) -> None:
        delay = RESTART_BACKOFF[min(self.exits_in_a_row, len(RESTART_BACKOFF) - 1)]
        self.exits_in_a_row += 1
        self.restart_at = time.monotonic() + delay

    def _on_signal(self, signum: int, frame: object) -> None:
        self.should_exit = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.should_exit and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def _die_with_the_gate() -> None:
    """In the daemon's process before exec: SIGKILL it when the gate dies, even by SIGKILL.

    The daemon runs in a session of its own (so that stopping it reaches its plugins), which a
    kill of the gate's session does not reach: without this a gate killed outside a container
    (the no-Docker runner, an OOM kill of the wrapper) would leave an unsupervised daemon writing
    into storage that replication must own, and the replica would refuse to apply until it went.
    """
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL))


PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
"""Resolved at import: nothing is imported or dlopen()ed between fork and exec."""


def _signal_group(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def say(event: str, **fields: Any) -> None:
    """One JSON line on stderr, like the node's own logs; never the key."""
    line = {"event": event, "logger": "plugin_gate", "timestamp": time.time(), **fields}
    print(json.dumps(line), file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> GateSettings:
    parser = argparse.ArgumentParser(
        prog="plugin-gate",
        description="Run the Dify plugin daemon only while the hotstandby node beside it leads.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("HOTSTANDBY_URL", "http://127.0.0.1:5003"),
        help="the node's API (HOTSTANDBY_URL)",
    )
    parser.add_argument(
        "--key-file",
        default=os.environ.get("HOTSTANDBY_KEY_FILE", ""),
        help="a file holding the node's SERVER_KEY (HOTSTANDBY_KEY_FILE; or HOTSTANDBY_KEY)",
    )
    parser.add_argument("--ca-file", default=os.environ.get("HOTSTANDBY_CA_FILE", ""))
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between questions")
    parser.add_argument(
        "--orphan-timeout",
        type=float,
        default=5.0,
        help="stop the daemon after the node has not answered for this long",
    )
    parser.add_argument("--stop-grace", type=float, default=10.0, help="SIGTERM, then SIGKILL after this")
    parser.add_argument("--state-file", default=os.environ.get("PLUGIN_GATE_STATE", DEFAULT_STATE_FILE))
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the plugin daemon's command")
    args = parser.parse_args(argv)
    command = tuple(args.command[1:] if args.command[:1] == ["--"] else args.command)
    if not command:
        parser.error("give the plugin daemon's command after --")
    if min(args.interval, args.orphan_timeout, args.stop_grace) <= 0:
        parser.error("--interval, --orphan-timeout and --stop-grace must be positive")
    key = os.environ.get("HOTSTANDBY_KEY", "")
    if args.key_file:
        try:
            with open(args.key_file, encoding="utf-8") as fh:
                key = fh.read().strip()
        except OSError as exc:
            parser.error(f"--key-file {args.key_file}: {exc.strerror}")
    return GateSettings(
        url=args.url,
        key=key,
        interval=args.interval,
        orphan_timeout=args.orphan_timeout,
        stop_grace=args.stop_grace,
        command=command,
        ca_file=args.ca_file,
        state_file=args.state_file,
    )


def healthcheck(argv: list[str]) -> int:
    """`--healthcheck URL [STATE_FILE]`: 0 when standing by as told, or running and answering URL."""
    url = argv[0] if argv else "http://127.0.0.1:5002/health/check"
    path = argv[1] if len(argv) > 1 else os.environ.get("PLUGIN_GATE_STATE", DEFAULT_STATE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"plugin-gate: no state in {path}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(state, dict) or time.time() - float(state.get("updated", 0)) > STATE_MAX_AGE:
        print(f"plugin-gate: {path} is stale: the gate is stuck", file=sys.stderr)
        return 1
    if not state.get("running"):
        return 0  # a replica's daemon is stopped on purpose
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"plugin-gate: the daemon does not answer {url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--healthcheck"]:
        return healthcheck(args[1:])
    return Gate(parse(args)).run()


if __name__ == "__main__":
    sys.exit(main())
