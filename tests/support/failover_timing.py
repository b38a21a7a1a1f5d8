"""How long writes stop when the leader dies: kill -9 of the leader through a real HAProxy.

Shared by `make bench` (bench/switchover.py: 5 runs per election backend) and the bounded test
(tests/integration/test_failover_timing.py: 2 runs each). One run: a fresh pair on 127.0.0.2 and
127.0.0.3 (one port, as two hosts), HAProxy rendered from the shipped template with its own check
settings (not the tests' fast ones), a client writing through HAProxy every 20 ms with SYNC_MODE=sync,
then SIGKILL of the leader's process. Measured from the kill: when HAProxy marks the dead leader
down, when the replica answers 200 on /primary, when HAProxy marks it up, and the first write
acknowledged again (the switchover time). Afterwards every acknowledged write must be on the new
leader, and no sample ever saw both nodes answer 200 on /primary.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from daemon.haproxy_config import HAProxySettings
from tests.support.cluster import SERVER_KEY, Node, Pair, http, make_pair, wait_until
from tests.support.haproxy import RunningHAProxy, free_port_on, running_haproxy
from tests.support.services import running_postgres, running_redis

HOSTS = ("127.0.0.2", "127.0.0.3")
WRITE_EVERY = 0.02
BACKENDS = ("static", "redis", "postgres")


def template_checks() -> dict[str, Any]:
    """The check settings `hotstandby haproxy-config` renders by default (what we ship)."""
    shipped = HAProxySettings()
    names = (
        "check_inter_ms",
        "check_fastinter_ms",
        "check_downinter_ms",
        "check_fall",
        "check_rise",
        "timeout_check_ms",
        "timeout_connect_ms",
    )
    return {name: getattr(shipped, name) for name in names}


def node_env(backend: str, service_url: str, cluster: str, settings: dict[str, str]) -> dict[str, str]:
    """Both nodes' environment for one backend: the daemon's defaults unless `settings` says otherwise."""
    env = {
        "SYNC_MODE": "sync",
        "SYNC_MODE_FALLBACK": "async",
        "HEARTBEAT_INTERVAL": "1",  # the daemon's default (the test harness sets 0.5)
        "CLUSTER_NAME": cluster,
    }
    if backend == "static":
        env.update({"FAILOVER": "auto", "FAILOVER_TIMEOUT": "3"})
    elif backend == "redis":
        env.update({"ELECTION": "redis", "REDIS_URL": service_url})
    elif backend == "postgres":
        env.update({"ELECTION": "postgres", "DATABASE_URL": service_url})
    else:
        raise ValueError(f"unknown backend {backend!r}")
    env.update(settings)
    return env


@contextlib.contextmanager
def election_service(backend: str, workdir: Path) -> Iterator[str]:
    """The URL of a fresh Redis or PostgreSQL for `backend` (shared by its runs); '' for static."""
    if backend == "redis":
        with running_redis(workdir) as redis:
            yield redis.url
    elif backend == "postgres":
        with running_postgres() as postgres:
            yield postgres.dsn
    else:
        yield ""


class Writer:
    """Sends a new file through HAProxy every WRITE_EVERY seconds, each on its own connection and
    thread (like many clients: one request held by HAProxy's retries does not delay the next), and
    remembers what was acknowledged."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: dict[str, bytes] = {}
        self.outcomes: list[tuple[float, float, int]] = []
        """(sent, answered, status) of every finished request."""
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="writer")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending; wait for the requests in flight (each bounded by its timeout)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        number = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._write, number)
            number += 1
            next_at = max(next_at + WRITE_EVERY, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _write(self, number: int) -> None:
        path, data = f"timing/{number:06d}.bin", os.urandom(64 + number % 1024)
        sent = time.monotonic()
        try:
            status = http(
                "PUT",
                f"{self.url}/internal/files/{path}",
                body=data,
                timeout=5,
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
            )[0]
        except OSError:
            status = 0
        if status == 200:
            self.acknowledged[path] = data
        self.outcomes.append((sent, time.monotonic(), status))

    def first_success_after(self, moment: float) -> float | None:
        """When the first write sent after `moment` was acknowledged."""
        done = [answered for sent, answered, status in list(self.outcomes) if sent > moment and status == 200]
        return min(done) if done else None

    def failed_after(self, moment: float) -> int:
        return sum(1 for sent, _done, status in list(self.outcomes) if sent > moment and status != 200)


class Watch:
    """Samples HAProxy's view and both nodes' /primary every 50 ms on a thread, noting first moments."""

    def __init__(self, pair: Pair, haproxy: RunningHAProxy) -> None:
        self.pair = pair
        self.haproxy = haproxy
        self.first: dict[str, float] = {}
        self.both_primary: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _note(self, name: str, happened: bool, now: float) -> None:
        if happened and name not in self.first:
            self.first[name] = now

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with contextlib.suppress(OSError):
                states = self.haproxy.server_states()
                self._note("haproxy_old_down", states.get("master", "").startswith("DOWN"), now)
                self._note("haproxy_new_up", states.get("standby") == "UP", now)
            slave, master = _primary(self.pair.slave), _primary(self.pair.master)
            self._note("replica_primary", slave, now)
            if slave and master:
                self.both_primary.append(now)
            self._stop.wait(0.05)


def _primary(node: Node) -> bool:
    try:
        return http("GET", f"{node.url}/primary", timeout=0.5)[0] == 200
    except OSError:
        return False


@dataclass
class Run:
    backend: str
    switchover: float | None
    """Kill to the first write acknowledged again through HAProxy (None: never within the bound)."""
    haproxy_old_down: float | None
    replica_primary: float | None
    haproxy_new_up: float | None
    failed_requests: int
    acknowledged: int
    lost: int
    both_primary: int
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def one_run(
    workdir: Path,
    backend: str,
    service_url: str,
    settings: dict[str, str],
    number: int,
    checks: dict[str, Any] | None = None,
    bound: float = 30.0,
) -> Run:
    """Kill -9 the leader of a fresh pair behind HAProxy once; the measured moments of that run."""
    port = free_port_on(*HOSTS)
    env = node_env(backend, service_url, f"timing-{backend}-{number}-{os.getpid()}", settings)
    pair = make_pair(workdir / f"run-{number}", master_env=env, slave_env=dict(env), hosts=HOSTS, port=port)
    with contextlib.ExitStack() as stack:
        stack.callback(pair.stop)
        pair.start()
        checks = {**template_checks(), **(checks or {})}
        haproxy = stack.enter_context(running_haproxy(*HOSTS, port, **checks))
        haproxy.wait_for_state({"master": "UP", "standby": "DOWN"}, timeout=15)
        wait_until(lambda: pair.slave.status().get("synced", False), 15, message="the slave to be synced")
        writer = stack.enter_context(Writer(haproxy.url))
        wait_until(lambda: len(writer.acknowledged) >= 25, 15, message="writes through haproxy")
        with Watch(pair, haproxy) as watch:
            killed = time.monotonic()
            pair.master.kill()
            with contextlib.suppress(AssertionError):
                wait_until(lambda: writer.first_success_after(killed) is not None, bound, interval=0.02)
            time.sleep(0.5)
        writer.stop()
        resumed = writer.first_success_after(killed)
        lost = sum(1 for path, data in writer.acknowledged.items() if _read(pair.slave, path) != data)

        def since(moment: float | None) -> float | None:
            return None if moment is None else round(moment - killed, 3)

        return Run(
            backend=backend,
            switchover=since(resumed),
            haproxy_old_down=since(watch.first.get("haproxy_old_down")),
            replica_primary=since(watch.first.get("replica_primary")),
            haproxy_new_up=since(watch.first.get("haproxy_new_up")),
            failed_requests=writer.failed_after(killed),
            acknowledged=len(writer.acknowledged),
            lost=lost,
            both_primary=len(watch.both_primary),
            error=None if resumed is not None else f"writes did not resume within {bound:g}s",
        )
    raise AssertionError("unreachable")  # pragma: no cover - the with block returns


def _read(node: Node, path: str) -> bytes | None:
    try:
        return (node.storage / path).read_bytes()
    except OSError:
        return None


def measure(
    workdir: Path,
    backend: str,
    runs: int,
    settings: dict[str, str] | None = None,
    checks: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[Run]:
    """`runs` kills for one backend (one Redis or PostgreSQL for all of them, a fresh pair each)."""
    found: list[Run] = []
    with election_service(backend, workdir / f"{backend}-service") as url:
        for number in range(runs):
            try:
                run = one_run(workdir / backend, backend, url, settings or {}, number, checks)
            except Exception as exc:  # a failed run is reported, never a number
                run = Run(backend, None, None, None, None, 0, 0, 0, 0, error=f"{type(exc).__name__}: {exc}")
            found.append(run)
            log(f"{backend} run {number + 1}/{runs}: {describe(run)}")
    return found


def describe(run: Run) -> str:
    if run.switchover is None:
        return f"FAILED ({run.error})"
    return (
        f"writes resumed {run.switchover:.2f}s after kill -9 (haproxy old down {run.haproxy_old_down}, "
        f"replica /primary {run.replica_primary}, haproxy new up {run.haproxy_new_up}); "
        f"{run.failed_requests} failed requests, lost {run.lost}, both primary {run.both_primary}"
    )


def summary(runs: list[Run]) -> dict[str, Any]:
    """Median, p95 and worst switchover over the runs that resumed, and the sums that must be 0."""
    times = sorted(r.switchover for r in runs if r.switchover is not None)
    return {
        "runs": len(runs),
        "failed_runs": sum(1 for r in runs if r.switchover is None),
        "median": round(statistics.median(times), 3) if times else None,
        "p95": round(percentile(times, 95), 3) if times else None,
        "worst": times[-1] if times else None,
        "best": times[0] if times else None,
        "lost": sum(r.lost for r in runs),
        "both_primary": sum(r.both_primary for r in runs),
        "replica_primary_median": _median([r.replica_primary for r in runs]),
        "haproxy_new_up_median": _median([r.haproxy_new_up for r in runs]),
    }


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def sigstop(node: Node, seconds: float) -> None:
    """Freeze a node for `seconds`, then let it go on (a slow but living process)."""
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        node.proc.send_signal(signal.SIGCONT)
