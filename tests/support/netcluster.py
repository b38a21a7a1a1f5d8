"""A hotstandby pair and a Redis server, each in its own network namespace, for fault tests.

Built on harness/netns.py's `NamespaceNetwork`: one namespace per host plus a client namespace,
all plugged into a bridge that lives in a namespace of its own, addresses in 198.18.0.0/24.
Nothing is added to the root namespace: the test process itself moves its main thread into the
client namespace (`setns(2)` is per thread) for as long as the cluster runs, so every request the
test makes travels over the bridge like a load balancer's would, and a partitioned host is
unreachable from the test too. What a partitioned node says is recorded from inside its own
namespace by a sampler process (tests/support/ns_sampler.py) polling its /primary on 127.0.0.1;
CLOCK_MONOTONIC is shared by every namespace, so the samplers' timelines can be merged.

A partition from everyone takes the host's veth end down in the bridge namespace; healing brings
it up again. The kernel here has no sch_netem and no tc filters, so delay, loss and a partition
between two hosts only (both still reaching everyone else) go through `impair`: the host's veth
leaves the bridge and tests/support/linkem.py relays its frames, delayed, dropped or blocked.

Everything (processes, namespaces, /etc/netns entries) is removed when the context manager
exits, also when the test failed; namespaces that cannot be created fail the test loudly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.netns import CLIENT, NamespaceNetwork, NetworkError
from tests.support.cluster import SERVER_KEY, Node, http, wait_until

CLONE_NEWNET = 0x40000000
PORT = 5002
REDIS_PORT = 6379
ROOT = Path(__file__).resolve().parents[2]


class NamespaceSwitchError(OSError):
    """setns(2) into a test namespace (or back) failed."""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceSwitchError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the calling thread (only) in network namespace `ns`; sockets made meanwhile stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


@dataclass
class NsNode(Node):
    """A `hotstandby serve` process started with `ip netns exec`, listening on all its addresses."""

    ns: str = ""
    address: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["SERVER_HOST"] = "0.0.0.0"
        return env

    def start(self, wait: bool = True) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "daemon", "serve"],
            env=self.env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            wait_until(self.is_up, 20, message=f"{self.name} to answer /health")


@dataclass
class Sample:
    started: float
    ended: float
    status: int  # 0: no answer


@dataclass
class Sampler:
    """tests/support/ns_sampler.py polling one node's /primary from inside its namespace."""

    name: str
    out: Path
    proc: subprocess.Popen[bytes]

    def samples(self) -> list[Sample]:
        result = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                result.append(Sample(float(parts[0]), float(parts[1]), int(parts[2])))
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class NetCluster:
    network: NamespaceNetwork
    workdir: Path
    nodes: dict[str, NsNode] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    samplers: dict[str, Sampler] = field(default_factory=dict)
    relays: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def master(self) -> NsNode:
        return self.nodes["master"]

    @property
    def slave(self) -> NsNode:
        return self.nodes["slave"]

    def address(self, host: str) -> str:
        return self.network.addresses[host]

    @property
    def redis_url(self) -> str:
        return f"redis://{self.address('redis')}:{REDIS_PORT}/0"

    # -- services ------------------------------------------------------------------
    def start_redis(self) -> None:
        folder = self.workdir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--bind", "0.0.0.0", "--port", str(REDIS_PORT), "--protected-mode", "no"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "log")]
        self.processes.append(subprocess.Popen(self.network.wrap("redis", args), stdin=subprocess.DEVNULL))
        wait_until(self._redis_answers, 15, message="redis-server in its namespace")

    def _redis_answers(self) -> bool:
        try:
            with socket.create_connection((self.address("redis"), REDIS_PORT), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def redis_command(self, *words: str) -> bytes:
        """One RESP command to the Redis server; the raw first line of its answer."""
        payload = f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words
        )
        with socket.create_connection((self.address("redis"), REDIS_PORT), timeout=2) as sock:
            sock.sendall(payload)
            return sock.recv(4096).split(b"\r\n", 1)[0]

    def add_node(self, name: str, role: str, env: dict[str, str]) -> NsNode:
        node = NsNode(
            name, role, self.workdir / name, port=PORT, extra_env=dict(env), ns=self.network.namespace(name)
        )
        node.address = self.address(name)
        self.nodes[name] = node
        return node

    def start_sampler(self, name: str, interval: float = 0.05) -> Sampler:
        node = self.nodes[name]
        out = self.workdir / f"primary-{name}.log"
        argv = [sys.executable, "-m", "tests.support.ns_sampler", str(node.port), str(out), str(interval)]
        proc = subprocess.Popen(self.network.wrap(name, argv), cwd=ROOT, stdin=subprocess.DEVNULL)
        sampler = Sampler(name, out, proc)
        self.samplers[name] = sampler
        wait_until(lambda: out.exists() and bool(sampler.samples()), 10, message=f"{name}'s sampler")
        return sampler

    # -- faults --------------------------------------------------------------------
    def veth(self, host: str) -> str:
        """The bridge-side end of `host`'s link (NamespaceNetwork names them by position)."""
        return f"v{list(self.network.addresses).index(host)}"

    def link(self, host: str, up: bool) -> None:
        ip("-n", self.network.bridge_ns, "link", "set", self.veth(host), "up" if up else "down")

    def impair(
        self, host: str, delay: float = 0.0, loss: float = 0.0, seed: int = 1, cut_from: str = ""
    ) -> None:
        """netem's `delay DELAY loss LOSS` on `host`'s link, both ways (tests/support/linkem.py):
        the host's veth leaves the bridge and a relay forwards its frames to a new veth on it.
        With `cut_from`, nothing passes between `host` and that host (everyone else still does)."""
        bridge, veth = self.network.bridge_ns, self.veth(host)
        inner, outer = f"e{veth}", f"b{veth}"
        ip("-n", bridge, "link", "set", veth, "nomaster")
        ip("-n", bridge, "link", "add", inner, "type", "veth", "peer", "name", outer)
        ip("-n", bridge, "link", "set", outer, "master", "br0", "up")
        ip("-n", bridge, "link", "set", inner, "up")
        argv = [sys.executable, "-m", "tests.support.linkem", veth, inner, f"--delay={delay}"]
        argv += [f"--loss={loss}", f"--seed={seed}"]
        if cut_from:
            argv.append(f"--block={self.address(host)},{self.address(cut_from)}")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", bridge, *argv], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", f"the link emulator did not start: {line!r}"
        self.relays[host] = proc

    def restore(self, host: str) -> str:
        """Undo `impair`; returns the relay's counts (relayed, dropped)."""
        proc = self.relays.pop(host)
        proc.terminate()
        out, _err = proc.communicate(timeout=10)
        bridge, veth = self.network.bridge_ns, self.veth(host)
        ip("-n", bridge, "link", "del", f"e{veth}")
        ip("-n", bridge, "link", "set", veth, "master", "br0")
        return out.decode().strip()

    def local(self, host: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """A request to `host`'s node on its own loopback, made from inside its namespace (reachable
        when partitioned, and never over the link under test); status 0 when nothing answered."""
        node = self.nodes[host]
        headers = {"Authorization": f"Bearer {SERVER_KEY}"}
        url = f"http://127.0.0.1:{node.port}{path}"
        with inside(self.network.namespace(host)):
            try:
                status, _h, raw = http(method, url, body=body, headers=headers)
            except OSError:
                return 0, b""
        return status, raw

    # -- teardown ------------------------------------------------------------------
    def close(self) -> list[str]:
        problems: list[str] = []
        for sampler in self.samplers.values():
            sampler.stop()
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)
                try:
                    node.stop(timeout=10)
                except AssertionError as exc:
                    problems.append(str(exc))
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        problems += self.network.teardown()
        return problems


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def namespaces() -> set[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


@contextlib.contextmanager
def net_cluster(workdir: Path, hosts: tuple[str, ...] = ("master", "slave", "redis")) -> Iterator[NetCluster]:
    """The namespaces, with this thread in the client's; torn down (and checked gone) on exit."""
    assert threading.current_thread() is threading.main_thread(), "setns would move the wrong thread"
    run_id = secrets.token_hex(3)
    network = NamespaceNetwork.create(run_id, hosts, {})  # raises, never skips, without namespaces
    cluster = NetCluster(network, workdir)
    problems: list[str] = []
    try:
        with inside(network.namespace(CLIENT)):
            try:
                yield cluster
            finally:
                for name, node in cluster.nodes.items():
                    print(f"--- {name} log\n{node.log_tail(30)}")
                problems = cluster.close()
    finally:
        problems += network.teardown()
        left = {ns for ns in namespaces() if ns.startswith(f"hs-{run_id}-")}
        assert not left, f"namespaces left behind: {left} ({problems})"


def overlaps(a: list[Sample], b: list[Sample]) -> list[tuple[float, float]]:
    """Moments where both timelines may have said 200 at once.

    Each run of consecutive 200 answers counts as one interval, from the start of its first
    request to the end of its last (conservative: the node may have been primary all along);
    any intersection between the two sides' intervals is reported."""
    left, right = _runs(a), _runs(b)
    return [(max(s1, s2), min(e1, e2)) for s1, e1 in left for s2, e2 in right if s1 <= e2 and s2 <= e1]


def _runs(samples: list[Sample]) -> list[tuple[float, float]]:
    runs: list[tuple[float, float]] = []
    current: tuple[float, float] | None = None
    for sample in samples:
        if sample.status == 200:
            current = (sample.started, sample.ended) if current is None else (current[0], sample.ended)
        elif current is not None:
            runs.append(current)
            current = None
    if current is not None:
        runs.append(current)
    return runs


def describe(samples: list[Sample], since: float) -> str:
    """Status changes of one timeline, for assertion messages."""
    out, last = [], None
    for s in samples:
        if s.status != last:
            out.append(f"{s.started - since:+.2f}s {s.status}")
            last = s.status
    return ", ".join(out)
