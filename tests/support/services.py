"""Real Redis and PostgreSQL servers on 127.0.0.1 for tests.

Each service gets a free port and its own scratch folder, and is always
stopped and removed by the context manager (or fixture) that started it.
`stop()` / `start()` take the service away under a running client and bring it
back on the same port with the same data folder; `freeze()` / `thaw()` leave it
listening but silent (SIGSTOP), which is how a hung server looks to a client.

Tests run as root, and initdb/postgres refuse root: PostgreSQL runs as the
`postgres` system user in a folder of its own under /dev/shm (or /tmp),
because pytest's tmp_path sits below a 0700 folder that user cannot traverse.
initdb runs once per test process; each cluster starts as a copy of that.

Use the fixtures from any test module:

    from tests.support.services import postgres_service, redis_service  # noqa: F401
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

PG_USER = "postgres"
START_TIMEOUT = 20.0


class ServiceError(RuntimeError):
    """A test service did not start or stop; the message carries its log tail."""


@functools.cache
def postgres_bin(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The newest installed PostgreSQL's bin/ (Debian puts each major version in its own folder), or
    the folder of `initdb` on PATH; whichever version the machine has, not one written here."""

    def major(folder: Path) -> tuple[int, str]:
        return (int(folder.parent.name), "") if folder.parent.name.isdigit() else (-1, folder.parent.name)

    found = sorted((p.parent for p in root.glob("*/bin/postgres")), key=major)
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ServiceError(f"no PostgreSQL server found under {root} or on PATH (make system-deps installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(ready: Callable[[], bool], what: str, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} not ready after {timeout}s:\n{_log_tail(log)}")


@dataclass
class RedisService:
    """redis-server without persistence: a restart starts from an empty dataset."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.folder / "redis.log"

    def start(self) -> None:
        if self.proc is not None:
            return
        args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            "--logfile",
            str(self.log),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        _wait_for(self._answers_ping, f"redis-server on port {self.port}", self.log)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None, "redis-server is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None, "redis-server is not running"
        self.proc.send_signal(signal.SIGCONT)

    def _answers_ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError(f"redis-server exited with {self.proc.returncode}:\n{_log_tail(self.log)}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@dataclass
class PostgresService:
    """A throwaway cluster (initdb, trust auth on loopback) run as the postgres user."""

    folder: Path
    port: int = field(default_factory=free_port)
    running: bool = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def init(self) -> None:
        """A fresh cluster: a copy of this process's initdb template, set to our port and folder."""
        # cp -a keeps the template's owner (postgres) and modes, and is several times faster than copytree.
        subprocess.run(["cp", "-a", str(_template()), str(self.data)], check=True, timeout=60)
        settings = [
            f"port = {self.port}",
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.folder}'",
        ]
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            self._as_postgres(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            )
        except ServiceError as exc:
            raise ServiceError(f"{exc}\npostgres on port {self.port}:\n{_log_tail(self.log)}") from exc
        _wait_for(self._accepts_connections, f"postgres on port {self.port}", self.log)

    def stop(self) -> None:
        """Stop at once, like a crash: no checkpoint, clients see their sockets close."""
        if not self.running:
            return
        self.thaw()
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        self.running = False

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open but nothing answers."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _pids(self) -> list[int]:
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *_children(postmaster)]

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _as_postgres(self, program: str, *args: str, check: bool = True) -> None:
        _run_as_postgres(self.folder, program, *args, check=check)


_templates: list[Path] = []


def _template() -> Path:
    """One initdb per test process (it is most of a cluster's start-up time), removed at exit."""
    if not _templates:
        folder = _postgres_folder("hotstandby-pgtemplate-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        data = folder / "data"
        _run_as_postgres(
            folder,
            "initdb",
            "-D",
            str(data),
            "-U",
            PG_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        # Fast and crash-unsafe on purpose: PostgresLease must (and does) ask for
        # synchronous_commit itself, and test_a_stopped_service... shows it.
        settings = [
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 30",
        ]
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")
        _templates.append(data)
    return _templates[0]


def _postgres_folder(prefix: str) -> Path:
    """A folder the postgres user owns and can reach (tmp_path's parents are 0700).

    In RAM (/dev/shm) when there is one: a cluster is about a thousand small
    files, and copying them to disk takes most of a second on a slow VM disk.
    """
    scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else "/tmp"
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))
    folder.chmod(0o755)
    user = pwd.getpwnam(PG_USER)
    os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


def _run_as_postgres(cwd: Path, program: str, *args: str, check: bool = True) -> None:
    cmd = ["runuser", "-u", PG_USER, "--", str(postgres_bin() / program), *args]
    try:
        subprocess.run(
            cmd,
            check=check,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
            cwd=cwd,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"{program} failed: {exc.stderr.decode(errors='replace').strip()}") from exc


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def running_redis(tmp_path: Path) -> Iterator[RedisService]:
    """A started RedisService in tmp_path/redis, stopped on exit whatever happened."""
    folder = tmp_path / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    service = RedisService(folder)
    try:
        service.start()
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresService]:
    """A started PostgresService in its own scratch folder, stopped and removed on exit."""
    folder = _postgres_folder("hotstandby-pg-")
    service = PostgresService(folder)
    try:
        service.init()
        service.start()
        yield service
    finally:
        try:
            service.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """Just the URL of a running redis-server, for tests that never stop it."""
    with running_redis(tmp_path) as service:
        yield service.url


@contextlib.contextmanager
def postgres_server(tmp_path: Path | None = None) -> Iterator[str]:
    """Just the DSN of a running PostgreSQL (tmp_path is unused: see the module docstring)."""
    with running_postgres() as service:
        yield service.dsn


@pytest.fixture
def redis_service(tmp_path: Path) -> Iterator[RedisService]:
    with running_redis(tmp_path) as service:
        yield service


@pytest.fixture
def postgres_service() -> Iterator[PostgresService]:
    with running_postgres() as service:
        yield service
