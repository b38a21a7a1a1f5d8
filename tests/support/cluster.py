"""Real hotstandby processes on 127.0.0.1 for integration tests.

Each node is a `python -m daemon serve` subprocess with its own storage and
state folders under the test's tmp_path, on a free ephemeral port.
Everything started here is stopped by the fixture that owns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@dataclass
class Node:
    name: str
    role: str
    base: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    code_root: Path | None = None
    """Run the daemon from this source tree (another release) instead of the one under test."""

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "node.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SYNC_TARGET", "SYNC_SOURCE", "ROLE")}
        env.update(
            {
                "ROLE": self.role,
                "STORAGE_PATH": str(self.storage),
                "STATE_PATH": str(self.state),
                "SERVER_HOST": self.host,
                "SERVER_PORT": str(self.port),
                "SERVER_KEY": SERVER_KEY,
                "LOG_LEVEL": "INFO",
                "HEARTBEAT_INTERVAL": "0.5",
                "SHUTDOWN_TIMEOUT": "5",
            }
        )
        env.update(self.extra_env)
        if self.code_root is not None:
            env["PYTHONPATH"] = str(self.code_root)
        return env

    def start(self, wait: bool = True) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "serve"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.code_root,
        )
        log.close()
        if wait:
            wait_until(self.is_up, 15, message=f"{self.name} to answer /health")

    def is_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return http("GET", f"{self.url}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not stop within {timeout}s after signal {sig}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def call(
        self, method: str, path: str, payload: Any = None, *, auth: bool = True, timeout: float = 30.0
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {SERVER_KEY}"} if auth else {}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        status, _headers, raw = http(method, f"{self.url}{path}", body=body, headers=headers, timeout=timeout)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def status(self) -> dict[str, Any]:
        code, body = self.call("GET", "/internal/status")
        assert code == 200, body
        return dict(body)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        _status, _h, raw = http("GET", f"{self.url}/metrics")
        total = 0.0
        for line in raw.decode().splitlines():
            match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in (labels or {}).items()):
                total += float(match.group(3))
        return total


@dataclass
class Pair:
    master: Node
    slave: Node

    def start(self) -> None:
        self.slave.start()
        self.master.start()
        try:
            wait_until(lambda: self.master.status()["peer_connected"], 15, message="the replication link")
        except AssertionError:
            raise AssertionError(
                f"no replication link after 15s; master status {self.master.status()}"
                f"\n--- master log\n{self.master.log_tail()}\n--- slave log\n{self.slave.log_tail()}"
            ) from None

    def stop(self) -> None:
        for node in (self.master, self.slave):
            with contextlib.suppress(AssertionError):
                node.stop()
            node.kill()

    def wait_converged(self, timeout: float = 30.0, subdir: str = "") -> None:
        """Wait until the slave's tree (or one subdirectory of it) equals the master's."""
        last: list[str] = []

        def same() -> bool:
            nonlocal last
            last = tree_diff(self.master.storage / subdir, self.slave.storage / subdir)
            return not last

        try:
            wait_until(same, timeout, interval=0.1, message="the trees to converge")
        except AssertionError:
            raise AssertionError(
                f"trees differ after {timeout}s: {last[:20]}\n--- master log\n{self.master.log_tail()}"
                f"\n--- slave log\n{self.slave.log_tail()}"
            ) from None


def make_pair(
    tmp_path: Path,
    master_env: dict[str, str] | None = None,
    slave_env: dict[str, str] | None = None,
    hosts: tuple[str, str] | None = None,
    port: int | None = None,
) -> Pair:
    """Two nodes; with `hosts` (and `port`) they listen on distinct loopback addresses, one port."""
    master_host, slave_host = hosts or ("127.0.0.1", "127.0.0.1")
    slave = Node("slave", "slave", tmp_path / "slave", extra_env=dict(slave_env or {}), host=slave_host)
    master = Node("master", "master", tmp_path / "master", extra_env=dict(master_env or {}), host=master_host)
    if port is not None:
        slave.port = master.port = port
    master.extra_env.setdefault("SYNC_TARGET", slave.url)
    slave.extra_env.setdefault("SYNC_SOURCE", master.url)
    return Pair(master, slave)


@contextlib.contextmanager
def running_pair(tmp_path: Path, **kwargs: Any) -> Iterator[Pair]:
    pair = make_pair(tmp_path, **kwargs)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything the convergence promise covers, per relative path."""
    result: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    result[rel] = ("symlink", os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    result[rel] = ("dir", stat.S_IMODE(st.st_mode))
                else:
                    with open(full, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                    result[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, digest, int(st.st_mtime))
            except FileNotFoundError:
                result[rel] = ("vanished",)
    return result


def tree_diff(a: Path, b: Path) -> list[str]:
    left, right = snapshot(a), snapshot(b)
    diffs = []
    for path in sorted(set(left) | set(right)):
        if left.get(path) != right.get(path):
            diffs.append(f"{path}: {left.get(path)} != {right.get(path)}")
    return diffs
