"""The chaos cluster: two `hotstandby serve` nodes, Redis and HAProxy, each in its own namespace.

harness/netns.py's NamespaceNetwork gives every host a network namespace plugged into a bridge
that lives in a namespace of its own; the client (this runner's worker threads, see nsthread.py)
has one too. A partition takes a node's veth end down *in the bridge namespace*: the node loses
the other node, Redis, HAProxy and the client at once, while a sampler running inside the node's
own namespace still sees it. Each node's storage and state sit on a small tmpfs of its own, so a
ballast file fills that disk for real. `ChaosCluster` is a context manager: leaving it (also on an
exception or Ctrl-C) stops every process and removes the namespaces, /etc/netns entries, mounts
and the scratch folder, and reports what could not be removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from daemon.haproxy_config import HAProxySettings, render
from harness.netns import NamespaceNetwork
from tests.chaos.checks import Sample, read_samples
from tests.chaos.nsthread import NamespaceCaller
from tests.support.cluster import SERVER_KEY, http
from tests.support.haproxy import FAST_CHECKS, HAPROXY

REPO = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2")
HOSTS = (*NODES, "redis", "haproxy")  # order decides the veth names in the bridge: v0, v1, ...
PORT = 5002
REDIS_PORT = 6379
DISK_MB = 96
SYNC_WRITE_TIMEOUT = 4.0
NODE_ENV = {
    "LOG_LEVEL": "INFO",
    "CONTROL_INTERVAL": "0.1",
    "HEARTBEAT_INTERVAL": "0.3",
    "SHUTDOWN_TIMEOUT": "5",
    "ELECTION": "redis",
    "LEASE_TTL": "3",
    "LEASE_RENEW_INTERVAL": "0.8",
    "ELECTION_TIMEOUT": "0.5",
    "LEASE_SAFETY_MARGIN": "0.5",
    "SYNC_MODE": "sync",
    "SYNC_MODE_FALLBACK": "none",  # an acknowledged write is on both nodes, or it is refused
    "SYNC_WRITE_TIMEOUT": str(SYNC_WRITE_TIMEOUT),
}


class ClusterError(RuntimeError):
    """A part of the cluster did not start or a fault could not be applied."""


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ChaosNode:
    name: str
    role: str
    mount: Path
    namespace: str
    address: str
    veth: str
    logs: Path
    env: dict[str, str]
    wrap: Callable[[list[str]], list[str]]
    proc: subprocess.Popen[bytes] | None = None
    sampler: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped by the nemesis
    expected_exit: bool = True  # False while running: an exit we did not cause is a finding
    started_at: float = 0.0
    disk_full_from: float | None = None  # while the ballast fills the disk
    last_full: tuple[float, float] | None = None  # the last time the disk was full: from, to

    @property
    def storage(self) -> Path:
        return self.mount / "storage"

    @property
    def ballast(self) -> Path:
        return self.mount / "ballast"

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}.log"

    @property
    def samples_path(self) -> Path:
        return self.logs / f"{self.name}.primary.txt"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PORT}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.wrap([sys.executable, "-m", "daemon", "serve"]),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
            )
        self.stopped = False
        self.expected_exit = False
        self.started_at = time.monotonic()

    def start_sampler(self) -> None:
        with open(self.logs / f"{self.name}.sampler.err", "ab") as err:
            self.sampler = subprocess.Popen(
                self.wrap(
                    [
                        sys.executable,
                        "-m",
                        "tests.chaos.sampler",
                        f"http://127.0.0.1:{PORT}/primary",
                        str(self.samples_path),
                    ]
                ),
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ClusterError(f"{self.name} is not running")
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.expected_exit = True
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False

    def last_sample(self) -> Sample | None:
        """The sampler's latest /primary answer, read from the end of its file."""
        try:
            with open(self.samples_path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 200))
                lines = fh.read().decode("ascii", errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines[1:] if len(lines) > 1 else lines):
            parts = line.split()
            if len(parts) == 3:
                with contextlib.suppress(ValueError):
                    return Sample(float(parts[0]), float(parts[1]), int(parts[2]))
        return None

    def samples(self) -> list[Sample]:
        return read_samples(self.samples_path) if self.samples_path.exists() else []

    def fill_disk(self) -> int:
        """Write the ballast until the tmpfs is full; returns its size in bytes."""
        self.disk_full_from = time.monotonic()
        chunk = b"\0" * (1 << 20)
        written = 0
        with open(self.ballast, "ab") as fh:
            try:
                while True:
                    written += os.write(fh.fileno(), chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return written

    def free_disk(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()
        if self.disk_full_from is not None:
            self.last_full = (self.disk_full_from, time.monotonic())
        self.disk_full_from = None

    def disk_full_since_start(self) -> bool:
        """Whether the ballast filled the disk at some moment since the current process was started."""
        if self.disk_full_from is not None:
            return True
        return self.last_full is not None and self.last_full[1] >= self.started_at

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


@dataclass
class ChaosCluster:
    logs: Path
    run_id: str = field(default_factory=lambda: "c" + secrets.token_hex(3))
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hs-chaos-")))
    network: NamespaceNetwork | None = None
    nodes: dict[str, ChaosNode] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None
    haproxy: subprocess.Popen[bytes] | None = None
    client: NamespaceCaller | None = None
    haproxy_settings: HAProxySettings | None = None

    # -- set-up ----------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        problems = self.teardown()
        if problems and exc[0] is None:
            raise ClusterError("teardown left things behind: " + "; ".join(problems))

    def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.network = NamespaceNetwork.create(self.run_id, HOSTS, {})
        self.client = NamespaceCaller(self.network.namespace("client"))
        self._start_redis()
        for index, name in enumerate(NODES):
            self.nodes[name] = self._make_node(index, name)
        for node in self.nodes.values():
            node.start_sampler()
            node.start()
        self._start_haproxy()

    def address(self, host: str) -> str:
        assert self.network is not None
        return self.network.addresses[host]

    def _wrap(self, host: str) -> Callable[[list[str]], list[str]]:
        network = self.network
        assert network is not None
        return lambda argv: network.wrap(host, argv)

    def _start_redis(self) -> None:
        folder = self.work / "redis"
        folder.mkdir()
        argv = ["redis-server", "--bind", "0.0.0.0", "--port", str(REDIS_PORT), "--protected-mode", "no"]
        argv += [
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--logfile",
            str(self.logs / "redis.log"),
        ]
        self.redis = subprocess.Popen(
            self._wrap("redis")(argv), stdin=subprocess.DEVNULL, start_new_session=True
        )

    def _make_node(self, index: int, name: str) -> ChaosNode:
        mount = self.work / name
        mount.mkdir()
        _run("mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", f"hs-chaos-{name}", str(mount))
        self.mounts.append(mount)
        (mount / "storage").mkdir()
        peer = NODES[1 - index]
        env = {k: v for k, v in os.environ.items() if k not in ("ROLE", "SYNC_TARGET", "SYNC_SOURCE")}
        env.update(NODE_ENV)
        env.update(
            {
                "ROLE": "master" if index == 0 else "slave",
                "STORAGE_PATH": str(mount / "storage"),
                "STATE_PATH": str(mount / "state"),
                "SERVER_HOST": "0.0.0.0",
                "SERVER_PORT": str(PORT),
                "SERVER_KEY": SERVER_KEY,
                "REDIS_URL": f"redis://{self.address('redis')}:{REDIS_PORT}/0",
                "SYNC_TARGET" if index == 0 else "SYNC_SOURCE": f"http://{self.address(peer)}:{PORT}",
            }
        )
        assert self.network is not None
        return ChaosNode(
            name=name,
            role=env["ROLE"],
            mount=mount,
            namespace=self.network.namespace(name),
            address=self.address(name),
            veth=f"v{index}",
            logs=self.logs,
            env=env,
            wrap=self._wrap(name),
        )

    def _start_haproxy(self) -> None:
        settings = HAProxySettings(
            mode="api",
            master_addr=self.address("n1"),
            standby_addr=self.address("n2"),
            traffic_port=PORT,
            bind_addr="0.0.0.0",
            bind_port=PORT,
            stats_socket=str(self.work / "haproxy.sock"),
            **FAST_CHECKS,
        )
        self.haproxy_settings = settings
        config = self.work / "haproxy.cfg"
        config.write_text(render(settings), encoding="utf-8")
        with open(self.logs / "haproxy.log", "ab") as log:
            self.haproxy = subprocess.Popen(
                self._wrap("haproxy")([HAPROXY, "-db", "-f", str(config)]),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def haproxy_url(self) -> str:
        return f"http://{self.address('haproxy')}:{PORT}"

    # -- questions ---------------------------------------------------------------------
    def request(
        self, method: str, url: str, body: bytes | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        """One HTTP request from the client namespace; status 0 when there was no answer."""
        assert self.client is not None

        def send() -> tuple[int, bytes]:
            try:
                status, _headers, raw = http(
                    method, url, body=body, timeout=timeout, headers={"Authorization": f"Bearer {SERVER_KEY}"}
                )
                return status, raw
            except OSError as exc:
                return 0, str(exc).encode()

        return self.client.call(send, timeout=timeout + 10)

    def status(self, node: ChaosNode) -> dict[str, Any] | None:
        code, raw = self.request("GET", f"{node.url}/internal/status", timeout=2)
        if code != 200:
            return None
        try:
            return dict(json.loads(raw))
        except ValueError:
            return None

    def conflicts(self, node: ChaosNode) -> int | None:
        """How many divergent writes the node has preserved (GET /internal/conflicts), None without answer."""
        code, raw = self.request("GET", f"{node.url}/internal/conflicts", timeout=5)
        try:
            return len(json.loads(raw)["conflicts"]) if code == 200 else None
        except (ValueError, KeyError, TypeError):
            return None

    def leader(self) -> ChaosNode | None:
        """The node whose sampler saw 200 on /primary most recently within the last second."""
        now = time.monotonic()
        best: tuple[float, ChaosNode] | None = None
        for node in self.nodes.values():
            sample = node.last_sample()
            recent = sample is not None and sample.status == 200 and now - sample.end < 1.0
            if sample is not None and recent and (best is None or sample.end > best[0]):
                best = (sample.end, node)
        return best[1] if best else None

    def haproxy_states(self) -> dict[str, str]:
        assert self.haproxy_settings is not None
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.haproxy_settings.stats_socket)
                sock.sendall(b"show stat\n")
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
        except OSError:
            return {}
        lines = raw.decode(errors="replace").splitlines()
        if not lines:
            return {}
        header = lines[0].removeprefix("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "nodes" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                states[row["svname"]] = row["status"]
        return states

    def check_services(self) -> None:
        for name, proc in (("redis", self.redis), ("haproxy", self.haproxy)):
            if proc is None or proc.poll() is not None:
                raise ClusterError(f"{name} is not running")

    # -- faults ------------------------------------------------------------------------
    def set_link(self, node: ChaosNode, up: bool) -> None:
        assert self.network is not None
        _run("ip", "-n", self.network.bridge_ns, "link", "set", node.veth, "up" if up else "down")

    # -- teardown ----------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Stop everything and remove what was made; returns what could not be removed."""
        problems: list[str] = []
        for node in self.nodes.values():
            node.expected_exit = True
            _stop(node.sampler, signal.SIGTERM)
            _stop(node.proc)
        _stop(self.haproxy)
        _stop(self.redis)
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.network is not None:
            problems += self.network.teardown()
            self.network = None
        for mount in reversed(self.mounts):
            done = subprocess.run(["umount", str(mount)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
                problems.append(f"umount {mount}: {done.stderr.strip()} (lazily unmounted)")
        self.mounts.clear()
        shutil.rmtree(self.work, ignore_errors=True)
        return problems
