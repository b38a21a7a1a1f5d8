"""Drive the plugin daemon model (tests/support/plugin_daemon_model.py) from a test.

`running_model(storage, port, events_path, extra_args)` starts one model process in a
session of its own and kills its whole process group on exit, whatever happened. The
returned ModelProcess waits on the model's events file (`wait_for_event`), reads
/model/status, calls a plugin's tool over the real HTTP route (`call_tool`, server-sent
events parsed) and stops the model with SIGTERM (`terminate`) or SIGKILL (`kill`).

Sync on purpose: tests drive real processes and poll files, like tests/support/cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.plugin_daemon_model import DEFAULT_SERVER_KEY, REPO_ROOT


@dataclass
class ModelProcess:
    """One model process for a test: start, wait on its events, call it, stop it, never leak it.

    Started in a session of its own, so `kill()` can SIGKILL the whole process group
    (the model, its plugins and any uv still running).
    """

    storage: Path
    port: int
    events_path: Path
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        args = [
            sys.executable, "-m", "tests.support.plugin_daemon_model",
            "--storage", str(self.storage), "--port", str(self.port), "--host", "127.0.0.1",
            "--events", str(self.events_path), *self.extra_args,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.wait_until(self.healthy, timeout, "the model to answer /health/check")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the model exited with {self.proc.returncode}")
        try:
            return self.get("/health/check")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def status(self) -> dict[str, Any]:
        return dict(self.get("/model/status")[1])

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for_event(
        self, name: str | tuple[str, ...], plugin: str | None = None, timeout: float = 20.0, after: int = 0
    ) -> dict[str, Any]:
        """The first event `name` (or any of several names) for `plugin`, if given, at index >= `after`
        in the events file."""
        found: list[dict[str, Any]] = []
        names = (name,) if isinstance(name, str) else name

        def seen() -> bool:
            for event in self.events()[after:]:
                if event["event"] in names and (plugin is None or event["plugin"] == plugin):
                    found.append(event)
                    return True
            return False

        try:
            self.wait_until(seen, timeout, f"event {name} for {plugin or 'any plugin'}")
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc}; the model's processes:\n{self.group_processes()}\n"
                f"its log ends with:\n{self.log_tail()}"
            ) from None
        return found[0]

    def group_processes(self) -> str:
        """One line per process of the model's group: pid, state, kernel wait channel, command line.

        Printed when an awaited event never comes, so that a hang says where it hangs (a child
        stopped, blocked in the kernel, or never started) instead of only that it did.
        """
        if self.proc is None:
            return "(not started)"
        lines = []
        for proc_dir, fields in _group_members(self.proc.pid):
            with contextlib.suppress(OSError):
                wchan = (proc_dir / "wchan").read_text().strip() or "-"
                command = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                lines.append(f"  {proc_dir.name} {fields[0]} {wchan} {command.strip()[:200]}")
        return "\n".join(lines) or "  (none left)"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def log(self) -> Path:
        """The model's stdout and stderr (its events are echoed there too)."""
        return self.log_path or self.events_path.with_suffix(".log")

    def call_tool(
        self,
        plugin_id: str,
        text: str = "hello",
        tenant_id: str = "tenant-1",
        server_key: str = DEFAULT_SERVER_KEY,
    ) -> tuple[int, list[dict[str, Any]] | dict[str, Any]]:
        """POST a tool invocation: (status, the SSE chunks) on 200, else (status, the JSON error)."""
        body = {
            "tenant_id": tenant_id,
            "user_id": "user-1",
            "data": {
                "provider": "hsplug",
                "tool": "echo",
                "tool_parameters": {"text": text},
                "credentials": {},
            },
        }
        request = urllib.request.Request(
            f"{self.url}/plugin/{tenant_id}/dispatch/tool/invoke",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-Api-Key": server_key, "X-Plugin-ID": plugin_id},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                text_body = answer.read().decode()
                return answer.status, parse_sse(text_body)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: the model's exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (the model and everything it started)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def group_alive(self) -> bool:
        """Whether any process of the model's process group is still there."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Zombies of the group count as gone.
        return any(fields[0] != "Z" for _, fields in _group_members(self.proc.pid))

    @staticmethod
    def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _group_members(pgid: int) -> Iterator[tuple[Path, list[str]]]:
    """Each process of group `pgid`: its /proc folder and the fields of its stat after the name
    (state first, then ppid, pgrp, ...). Processes that end while being read are left out."""
    for stat in sorted(Path("/proc").glob("[0-9]*/stat")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                yield stat.parent, fields


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The `data: ...` payloads of a server-sent-events body."""
    return [
        json.loads(line[len("data: ") :])
        for block in text.split("\n\n")
        for line in block.splitlines()
        if line.startswith("data: ")
    ]


@contextlib.contextmanager
def running_model(
    storage: Path, port: int, events_path: Path, extra_args: list[str] | None = None
) -> Iterator[ModelProcess]:
    """A started ModelProcess; on exit its whole process group is killed, whatever happened."""
    model = ModelProcess(storage, port, events_path, list(extra_args or []))
    try:
        model.start()
        yield model
    finally:
        model.kill()
