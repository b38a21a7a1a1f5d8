"""Operator commands against a real pair: `status`, `promote`, `switchover` and `haproxy-config`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import SERVER_KEY, Node, Pair, http, make_pair, wait_until

FAST = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3"}
HAPROXY = "/usr/sbin/haproxy"
CTL_ENV_NAMES = ("HOTSTANDBY_NODES", "SYNC_TARGET", "SYNC_SOURCE", "SERVER_PORT", "REPLICA_MAX_LAG")

pytestmark = pytest.mark.timeout(120)


def ctl_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CTL_ENV_NAMES}
    return {**env, "SERVER_KEY": SERVER_KEY, **extra}


def ctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env or ctl_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def nodes(pair: Pair) -> str:
    return f"{pair.master.url},{pair.slave.url}"


def primary(node: Node) -> bool:
    try:
        return http("GET", f"{node.url}/primary", timeout=1)[0] == 200
    except OSError:
        return False


def put(node: Node, path: str, data: bytes) -> int:
    try:
        headers = {"Authorization": f"Bearer {SERVER_KEY}"}
        return http("PUT", f"{node.url}/internal/files/{path}", body=data, headers=headers, timeout=5)[0]
    except OSError:
        return 0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    started = make_pair(tmp_path, master_env=dict(FAST), slave_env=dict(FAST))
    try:
        started.start()
        wait_until(lambda: primary(started.master), 10, message="the master to lead")
        wait_until(lambda: started.slave.status()["synced"], 10, message="the slave to be synced")
        yield started
    finally:
        started.stop()


class TimedOutput:
    """Runs the CLI in the background and notes when each line of its output arrived."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            env=ctl_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.first_line = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.first_line.set()

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stderr is not None
        return code, "\n".join(line for _t, line in self.lines), self.proc.stderr.read()

    def when(self, prefix: str) -> float:
        return next(t for t, line in self.lines if line.startswith(prefix))


@dataclass
class Write:
    path: str
    data: bytes
    code: int
    started: float
    ended: float


class Writer(threading.Thread):
    """Writes a new file every few milliseconds to whichever node answers 200 on /primary."""

    def __init__(self, pair: Pair) -> None:
        super().__init__(daemon=True)
        self.pair = pair
        self.writes: list[Write] = []
        self.stop = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            target = next((n for n in (self.pair.master, self.pair.slave) if primary(n)), None)
            if target is None:
                time.sleep(0.01)
                continue
            path = f"w/{number:05d}.bin"
            data = os.urandom(64 + number % 4096)
            started = time.monotonic()
            code = put(target, path, data)
            self.writes.append(Write(path, data, code, started, time.monotonic()))
            number += 1
            time.sleep(0.005)

    def __enter__(self) -> Writer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10)


def test_status_exits_0_on_a_healthy_pair_and_the_table_names_both_nodes(pair: Pair) -> None:
    done = ctl("status", "--nodes", nodes(pair))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split()[:3] == ["NODE", "ROLE", "EPOCH"]
    master_row = next(r for r in rows if r.startswith(pair.master.url))
    slave_row = next(r for r in rows if r.startswith(pair.slave.url))
    assert master_row.split()[1:4] == ["master", "1", "yes"]
    assert slave_row.split()[1:4] == ["slave", "1", "no"]
    assert "connected" in slave_row.split()
    assert "healthy" in rows[-1]
    # From the node's own environment: this node's SERVER_PORT and its SYNC_TARGET; and as JSON.
    env = ctl_env(SERVER_PORT=str(pair.master.port), SYNC_TARGET=pair.slave.url)
    done = ctl("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["healthy"] is True
    assert [n["status"]["role"] for n in report["nodes"]] == ["master", "slave"]


def test_status_exits_1_naming_the_unreachable_slave_when_it_is_stopped(pair: Pair) -> None:
    pair.slave.stop()
    done = ctl("status", "--nodes", nodes(pair))
    assert done.returncode == 1
    assert "unreachable" in next(r for r in done.stdout.splitlines() if r.startswith(pair.slave.url))
    reason = done.stderr.strip().splitlines()
    assert len(reason) == 1 and f"{pair.slave.url} unreachable" in reason[0], done.stderr


def test_status_with_a_wrong_key_or_no_pair_is_a_usage_error(pair: Pair, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("not-the-key-at-all\n")
    done = ctl("status", "--nodes", nodes(pair), "--key-file", str(key_file))
    assert done.returncode == 2 and "401" in done.stderr
    done = ctl("status", "--nodes", pair.master.url)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_promote_is_refused_while_the_leader_accepts_writes(pair: Pair) -> None:
    done = ctl("promote", pair.slave.url)
    assert done.returncode == 1
    assert "refused" in done.stderr and "still accepts writes" in done.stderr
    assert pair.slave.status()["role"] == "slave"
    assert primary(pair.master)
    assert ctl("promote", "not-a-url").returncode == 2


def test_switchover_swaps_roles_without_losing_an_acknowledged_write(pair: Pair) -> None:
    with Writer(pair) as writer:
        time.sleep(1.0)
        run = TimedOutput("switchover", "--nodes", nodes(pair), "--timeout", "20")
        code, out, err = run.wait()
        assert code == 0, out + err
        time.sleep(1.0)
    checked, promoted = run.when("[1/5]"), run.when("[4/5]")
    assert "switchover complete" in out.splitlines()[-1]
    slave, master = pair.slave.status(), pair.master.status()
    assert slave["role"] == "master" and slave["writable"] and slave["epoch"] == 2
    assert master["role"] == "slave" and master["epoch"] == 2
    ok = [w for w in writer.writes if w.code == 200]
    outside = [w for w in writer.writes if w.code != 200 and (w.ended < checked or w.started > promoted)]
    assert outside == [], f"writes refused outside the drain window: {outside[:5]}"
    assert any(w.started > promoted for w in ok), "no write reached the new leader"
    assert any(w.ended < checked for w in ok), "no write reached the old leader"
    for write in ok:
        assert (pair.slave.storage / write.path).read_bytes() == write.data, f"{write.path} lost"
    pair.wait_converged(15)  # what the new leader took goes back to the old one


def test_switchover_aborts_and_undrains_the_leader_when_the_replica_cannot_catch_up(pair: Pair) -> None:
    assert pair.slave.proc is not None
    run = TimedOutput("switchover", "--nodes", nodes(pair), "--timeout", "2")
    try:
        assert run.first_line.wait(20), "switchover printed nothing"
        pair.slave.proc.send_signal(signal.SIGSTOP)  # after the health check, before the catch-up
        code, out, err = run.wait(30)
    finally:
        pair.slave.proc.send_signal(signal.SIGCONT)
    assert code == 1, out + err
    assert "[2/5] drained" in out
    assert "aborted" in err and "restored" in err, err
    assert primary(pair.master)
    status = pair.master.status()
    assert status["role"] == "master" and status["writable"] and status["epoch"] == 1
    assert pair.slave.status()["role"] == "slave"
    assert put(pair.master, "after-abort.txt", b"still the leader") == 200


def test_a_drained_leader_acknowledges_no_write_after_the_drain_answered(pair: Pair) -> None:
    """Switchover promotes once the replica has every change the drained leader produced: a write the
    leader still accepts after answering the drain can land after that check and be lost."""
    body = b"slow upload " * 1000
    head = f"PUT /internal/files/slow.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVER_KEY}\r\n"
    with socket.create_connection(("127.0.0.1", pair.master.port), timeout=10) as upload:
        upload.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        time.sleep(0.3)  # the request is in: headers read, waiting for its body
        drained: list[tuple[int, float]] = []

        def request_drain() -> None:
            code, _body = pair.master.call("POST", "/internal/drain")
            drained.append((code, time.monotonic()))

        drain = threading.Thread(target=request_drain)
        drain.start()
        drain.join(1.0)  # a drain may wait for writes in flight, or answer at once
        body_sent = time.monotonic()
        upload.sendall(body[100:])
        status_line = upload.recv(4096).split(b"\r\n", 1)[0].decode()
        drain.join(10)
    assert drained and drained[0][0] == 200, drained
    acknowledged = status_line.split()[1] == "200"
    assert not (acknowledged and drained[0][1] < body_sent), (
        f"the leader answered {status_line!r} to a write whose body arrived after its drain had answered"
    )


def test_haproxy_config_check_renders_a_config_haproxy_accepts(tmp_path: Path) -> None:
    args = ["--master-addr", "127.0.0.2", "--standby-addr", "127.0.0.3", "--init-state", "off"]
    args += ["--stats-socket", str(tmp_path / "admin.sock"), "--haproxy", HAPROXY]
    done = ctl("haproxy-config", *args, "--check", "--output", str(tmp_path / "haproxy.cfg"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "haproxy.cfg").read_text()
    assert "127.0.0.2:5002" in text and "127.0.0.3:5002" in text
    assert ctl("haproxy-config", "--bind", "nowhere").returncode == 2


def _read_pty(fd: int, proc: subprocess.Popen[bytes], until: bytes, timeout: float) -> bytes:
    """What the command wrote to its terminal, until `until` appeared, it exited, or the timeout."""
    import select

    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and until not in out:
        ready, _w, _x = select.select([fd], [], [], 0.2)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        out += chunk
    return out


def test_status_watch_redraws_in_place_in_a_terminal(pair: Pair) -> None:
    import pty

    argv = [sys.executable, "-m", "daemon", "status", "--nodes", nodes(pair), "--watch", "0.2"]
    leader, terminal = pty.openpty()
    proc = subprocess.Popen([*argv, "--count", "3"], env=ctl_env(), stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    try:
        out = _read_pty(leader, proc, b"never", timeout=30).decode()
        assert proc.wait(30) == 0
    finally:
        os.close(leader)
    assert out.count("\x1b[H") == 3 and out.count("\x1b[J") == 3, out
    assert out.count("1 replica(s) in step") == 3 and "PROGRESS" in out

    leader, terminal = pty.openpty()
    proc = subprocess.Popen(argv, env=ctl_env(), stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    try:
        first = _read_pty(leader, proc, b"in step", timeout=30)
        assert b"in step" in first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0  # Ctrl-C ends the watch with the last verdict, no traceback
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()

    plain = ctl("status", "--nodes", nodes(pair), "--watch", "0.1", "--count", "2")
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout
    assert plain.stdout.count("hotstandby status, every 0.1s") == 2
    assert ctl("status", "--nodes", nodes(pair), "--watch", "0").returncode == 2
