"""A real HAProxy in front of two nodes, for integration tests and the drill.

`running_haproxy(...)` renders daemon/haproxy.cfg.template with fast check timings, runs
`haproxy -db` (foreground) on a free 127.0.0.1 port with its stats socket in a temporary folder,
and always stops it on exit. `FakeNode` is a stand-in host whose /primary answers 200 or 503 as
the test decides. Every address used here is in 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from daemon.haproxy_config import HAProxySettings, Mode, render
from tests.support.cluster import free_port, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "nodes"  # the backend name in the template
FAST_CHECKS: dict[str, Any] = {
    "check_inter_ms": 200,
    "check_fastinter_ms": 100,
    "check_downinter_ms": 200,
    "check_fall": 2,
    "check_rise": 2,
    "timeout_check_ms": 500,
    "timeout_connect_ms": 500,
}


@dataclass
class RunningHAProxy:
    settings: HAProxySettings
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.bind_port}"

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One runtime API command on the stats socket; returns HAProxy's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.settings.stats_socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self) -> dict[str, str]:
        """Server name -> status as `show stat` reports it: UP, DOWN, 'UP 1/2' (going down), ..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].removeprefix("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
                states[row["svname"]] = row["status"]
        return states

    def wait_for_state(self, expected: Mapping[str, str], timeout: float = 5.0) -> dict[str, str]:
        """Wait until every named server has the expected status; returns all states."""
        seen: dict[str, str] = {}

        def reached() -> bool:
            nonlocal seen
            self.check_running()
            seen = self.server_states()
            return all(seen.get(name) == state for name, state in expected.items())

        try:
            wait_until(reached, timeout, interval=0.02, message=f"servers {dict(expected)}")
        except AssertionError:
            raise AssertionError(f"servers are {seen}, expected {dict(expected)} within {timeout}s") from None
        return seen

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: HAProxy's hard stop
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)


@contextlib.contextmanager
def running_haproxy(
    master_addr: str,
    standby_addr: str,
    traffic_port: int,
    *,
    check_port: int | None = None,
    mode: Mode = "api",
    workdir: Path | None = None,
    more_standbys: tuple[str, ...] = (),
    **overrides: Any,
) -> Iterator[RunningHAProxy]:
    """HAProxy on a free 127.0.0.1 port in front of master_addr and standby_addr (both on
    traffic_port, checked on check_port). `overrides` are HAProxySettings fields over FAST_CHECKS.
    `more_standbys`: addresses of further nodes, each a `backup` server standby2, standby3, ... like
    the standby's line (the template names two; a fan-out set has more)."""
    settings = HAProxySettings(
        **{
            "mode": mode,
            "master_addr": master_addr,
            "standby_addr": standby_addr,
            "traffic_port": traffic_port,
            "check_port": check_port,
            "bind_addr": "127.0.0.1",
            "bind_port": free_port(),
            "stats_socket": "/run/haproxy/admin.sock",  # replaced below by a path in a fresh folder
            **FAST_CHECKS,
            **overrides,
        }
    )
    sockets = Path(tempfile.mkdtemp(prefix="hs-haproxy-"))  # short: unix socket paths are limited
    haproxy: RunningHAProxy | None = None
    try:
        settings = replace(settings, stats_socket=str(sockets / "admin.sock"))
        folder = workdir or sockets
        config_path, log_path = folder / "haproxy.cfg", folder / "haproxy.log"
        config_path.write_text(_with_standbys(render(settings), settings, more_standbys), encoding="utf-8")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        haproxy = RunningHAProxy(settings, config_path, log_path, proc)
        wait_until(lambda: _answers(haproxy), 10, message="haproxy's stats socket")
        yield haproxy
    finally:
        if haproxy is not None:
            haproxy.stop()
        shutil.rmtree(sockets, ignore_errors=True)


def _with_standbys(text: str, settings: HAProxySettings, addresses: tuple[str, ...]) -> str:
    standby = next(line for line in text.splitlines() if line.strip().startswith("server standby "))
    check_port = settings.check_port or settings.traffic_port
    more = [
        f"    server standby{n} {addr}:{settings.traffic_port} check port {check_port} backup"
        for n, addr in enumerate(addresses, start=2)
    ]
    return text.replace(standby, "\n".join([standby, *more]), 1)


def _answers(haproxy: RunningHAProxy) -> bool:
    haproxy.check_running()
    try:
        return "Name: HAProxy" in haproxy.command("show info", timeout=1)
    except OSError:
        return False


def free_port_on(*hosts: str) -> int:
    """A port that is free on every one of these loopback addresses."""
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


# --- a stand-in node -----------------------------------------------------------------------------


@dataclass
class FakeNode:
    """One host. HEAD and GET /primary answer 200 while `primary` is true, else 503, on check_port
    (hotstandby), or on traffic_port when there is no separate check_port. On traffic_port,
    GET /stream sends a line every 50 ms for 10 s and any other path answers the node's name."""

    name: str
    host: str
    traffic_port: int
    check_port: int | None = None
    primary: bool = False
    requests: list[tuple[int, str, str]] = field(default_factory=list)  # (port, method, path)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FakeNode:
        for port in {self.traffic_port, self.check_port or self.traffic_port}:
            server = ThreadingHTTPServer((self.host, port), _handler_for(self, port))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def served(self, path: str, port: int | None = None) -> int:
        """How many requests for `path` (any method) this node has answered, on one port or any."""
        return sum(1 for p, _m, q in list(self.requests) if q == path and port in (None, p))

    def answers_primary_on(self, port: int) -> bool:
        return port == (self.check_port or self.traffic_port)


def _handler_for(node: FakeNode, port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def _answer(self, with_body: bool) -> None:
            node.requests.append((port, self.command, self.path))
            if self.path == "/primary" and node.answers_primary_on(port):
                self._send(
                    200 if node.primary else 503,
                    b"primary\n" if node.primary else b"not primary\n",
                    with_body,
                )
            elif self.path == "/primary" or port != node.traffic_port:
                self._send(404, b"not found\n", with_body)
            elif self.path == "/stream":
                self._stream()
            else:
                self._send(200, node.name.encode(), with_body)

        def _send(self, status: int, body: bytes, with_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()  # no length: the body ends when the connection closes
            with contextlib.suppress(OSError):
                for i in range(200):
                    if node._stopping.is_set():
                        return
                    self.wfile.write(f"{node.name} {i}\n".encode())
                    self.wfile.flush()
                    time.sleep(0.05)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
