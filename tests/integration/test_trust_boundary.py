"""Containment on the sending side (issue 13): a real master and a real replica, a file outside the
master's STORAGE_PATH holding a unique marker, and everything that could make the master read it.

- A relay on the replication link rewrites the replica's answers (resend lists, manifests, hashes,
  signatures) with paths climbing out of the storage, absolute paths, NUL bytes, paths through the
  storage's own symlink to the outside folder, huge lists, then answers with a huge epoch: the
  master refuses all of it (counted, logged once), is never fenced, and the trees converge.
- A thread swaps a folder of the master's storage for a symlink to the outside folder as fast as
  it can while the master sends and rescans: nothing of the outside folder is ever shipped.
- FIFOs, a socket, a device and setuid/setgid/sticky modes in the storage: the master keeps
  answering /health, the special files are skipped (counted), the modes arrive without the bits.

In every test the marker must never appear in the bytes the relay forwarded nor in any file of the
replica (storage, state, log).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Node, Pair, http, make_pair, wait_until
from tests.support.tamper_relay import Answer, TamperRelay, running_relay

pytestmark = pytest.mark.timeout(120)

MAX_EPOCH = 1 << 62
HUGE_EPOCHS = [MAX_EPOCH, 2**63, 10**30]
"""The first is exactly the API's upper bound: following it would leave no epoch for a promotion."""


# -- helpers -------------------------------------------------------------------------------------------
def new_marker() -> bytes:
    return f"OUTSIDE-MARKER-{uuid.uuid4().hex}".encode()


def files_holding(base: Path, marker: bytes) -> list[str]:
    """Regular files under `base` holding `marker` (symlinks never followed, special files never opened)."""
    found = []
    for dirpath, _dirs, names in os.walk(base):
        for name in names:
            full = os.path.join(dirpath, name)
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # a symlink (ELOOP), a socket (ENXIO), gone
            with os.fdopen(fd, "rb") as fh:
                if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) and marker in fh.read():
                    found.append(full)
    return found


def replicated_view(root: Path) -> dict[str, tuple[Any, ...]]:
    """What replication promises to carry: type, mode, bytes, mtime (s), link text; special files left out."""
    view: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    view[rel] = ("symlink", os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    view[rel] = ("dir", stat.S_IMODE(st.st_mode) & 0o777)
                elif stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                    view[rel] = ("file", stat.S_IMODE(st.st_mode) & 0o777, digest, int(st.st_mtime))
            except FileNotFoundError:
                view[rel] = ("vanished",)
    return view


def wait_converged(pair: Pair, timeout: float) -> None:
    diff: list[str] = []

    def same() -> bool:
        nonlocal diff
        left, right = replicated_view(pair.master.storage), replicated_view(pair.slave.storage)
        diff = [
            f"{p}: {left.get(p)} != {right.get(p)}"
            for p in sorted(set(left) | set(right))
            if left.get(p) != right.get(p)
        ]
        return not diff

    try:
        wait_until(same, timeout, interval=0.1, message="the trees to converge")
    except AssertionError:
        raise AssertionError(
            f"trees differ after {timeout}s: {diff[:20]}\n--- master log\n{pair.master.log_tail(60)}"
            f"\n--- slave log\n{pair.slave.log_tail(30)}"
        ) from None


def request_sync(node: Node, timeout: float = 20) -> float:
    """POST /internal/sync (a reconciliation through the link); its answer may time out here.
    Returns the seconds it took."""
    started = time.monotonic()
    with contextlib.suppress(OSError):
        node.call("POST", "/internal/sync", timeout=timeout)
    return time.monotonic() - started


def assert_marker_never_crossed(pair: Pair, relay: TamperRelay | None, marker: bytes) -> None:
    if relay is not None:
        assert relay.hits == [], f"the marker crossed the link: {relay.hits[:5]}"
        assert relay.forwarded_bytes > 0
    assert files_holding(pair.slave.base, marker) == []


def assert_master_sound(pair: Pair, epoch: int) -> None:
    status = pair.master.status()
    assert (status["role"], status["epoch"], status["writable"]) == ("master", epoch, True), status
    log = pair.master.log_path.read_text(errors="replace")
    for bad in ("Traceback", "sender_failed", "control_tick_failed"):
        assert bad not in log, log[-3000:]


@contextlib.contextmanager
def relayed_pair(tmp_path: Path, marker: bytes, **env: dict[str, str]) -> Iterator[tuple[Pair, TamperRelay]]:
    """A pair whose master reaches its replica only through a TamperRelay; not started yet."""
    pair = make_pair(tmp_path, **env)
    with running_relay(pair.slave.url, [marker]) as relay:
        pair.master.extra_env["SYNC_TARGET"] = relay.url
        try:
            yield pair, relay
        finally:
            pair.stop()


# -- 1. a man in the middle rewrites the replica's answers --------------------------------------------
def hostile_paths(outside: Path) -> list[str]:
    return [
        "../outside/secret.txt",
        "data/../../outside/secret.txt",
        str(outside / "secret.txt"),
        "escape/secret.txt",  # through the master's own symlink to the outside folder
        "escape/sub/secret.txt",
        "escape",
        "data/a\x00b",
        ".hs~evil.1",
        "/",
        "",
    ]


def tamper_answers(outside: Path) -> Any:
    bad = hostile_paths(outside)

    def tamper(answer: Answer) -> tuple[int, Any] | None:
        if answer.status != 200 or not isinstance(answer.body, dict):
            return None
        body = dict(answer.body)
        if answer.route == "batch":
            body["resend"] = [*body.get("resend", []), *bad, *(["../x"] * 20_000)]
        elif answer.route == "manifest":
            body["entries"] = [
                *body["entries"],
                *([p, "file", 0o644, 1_700_000_000_000_000_000, 12, None] for p in bad),
                ["escape/secret.txt", "symlink", 0o777, 0, 0, "/etc/passwd"],
                *(["../x", "file", 0o644, 0, 1, None] for _ in range(5_000)),
            ]
        elif answer.route == "hashes":
            body["hashes"] = {**{p: "0" * 64 for p in bad if p}, **{k: "zz" for k in body["hashes"]}}
        elif answer.route == "signatures":
            body["signatures"] = {**{p: "AAAA" for p in bad if p}, **{k: "!!" for k in body["signatures"]}}
        elif answer.route == "hello":
            body["epoch"] = 2**63  # not used by the master, but hostile all the same
        else:
            return None
        return 200, body

    return tamper


def huge_epoch_refusals() -> Any:
    epochs = iter(HUGE_EPOCHS * 100)

    def tamper(answer: Answer) -> tuple[int, Any] | None:
        if answer.route != "batch":
            return None
        detail = "not a replica: " + "x" * 5000
        return 409, {"status": 409, "title": "not a replica", "detail": detail, "peer_epoch": next(epochs)}

    return tamper


def seed_tamper_trees(pair: Pair, outside: Path, marker: bytes) -> None:
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(marker)
    (outside / "sub" / "secret.txt").write_bytes(marker * 50)
    master, slave = pair.master.storage, pair.slave.storage
    (master / "data").mkdir(parents=True)
    slave.mkdir(parents=True)
    for i in range(10):
        (master / "data" / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    big = os.urandom(64 * 1024)
    (master / "big.bin").write_bytes(big)
    (slave / "big.bin").write_bytes(big[:30_000] + b"changed" + big[30_007:])  # signatures asked
    for root, mtime in ((master, 1_700_000_000), (slave, 1_600_000_000)):
        (root / "same.txt").write_bytes(b"same content, other mtime")  # hashes asked
        os.utime(root / "same.txt", (mtime, mtime))
    (slave / "stale.txt").write_bytes(b"only on the replica")
    (master / "escape").symlink_to(outside, target_is_directory=True)


def metric(node: Node, reason: str) -> float:
    return node.metric("plugin_sync_peer_input_refused_total", {"reason": reason})


def test_a_tampering_relay_never_gets_an_outside_file_and_replication_goes_on(tmp_path: Path) -> None:
    marker = new_marker()
    outside = tmp_path / "outside"
    master_env = {"DELTA_MIN_SIZE": "4096", "ANTI_ENTROPY_INTERVAL": "3600"}
    with relayed_pair(tmp_path, marker, master_env=master_env) as (pair, relay):
        seed_tamper_trees(pair, outside, marker)
        relay.tamper = tamper_answers(outside)
        pair.start()
        epoch = pair.master.status()["epoch"]

        # Every kind of answer is tampered with; the master refuses the bad entries and goes on.
        for i in range(10, 20):
            (pair.master.storage / "data" / f"f{i}.txt").write_bytes(f"written later {i}\n".encode())
        wait_converged(pair, 20)
        wait_until(
            lambda: {"batch", "manifest", "hashes", "signatures"} <= set(relay.tampered),
            10,
            message=f"every answer tampered with (so far {dict(relay.tampered)})",
        )
        for reason in ("path", "unsolicited", "too_many"):
            assert metric(pair.master, reason) > 0, reason
        # Each tampered batch answer carries 20,000 entries beyond the batch's own changes; what is counted is
        # the excess over the batch's size, so a large batch (a loaded machine coalesces more) counts less.
        assert metric(pair.master, "too_many") >= 10_000
        assert (pair.slave.storage / "big.bin").read_bytes() == (pair.master.storage / "big.bin").read_bytes()
        assert not (pair.slave.storage / "stale.txt").exists()

        # Refusals with an epoch at or beyond the bound: refused, never followed, never persisted.
        relay.tamper = huge_epoch_refusals()
        (pair.master.storage / "data" / "during-epoch-attack.txt").write_bytes(b"still replicated")
        wait_until(lambda: metric(pair.master, "epoch") >= 3, 15, message="three huge epochs refused")
        relay.tamper = None
        request_sync(pair.master)
        wait_converged(pair, 20)

        assert_marker_never_crossed(pair, relay, marker)
        assert_master_sound(pair, epoch)
        state = "".join(p.read_text(errors="replace") for p in pair.master.state.rglob("*") if p.is_file())
        for huge in HUGE_EPOCHS:
            assert str(huge) not in state
        log = pair.master.log_path.read_text(errors="replace")
        refusal_lines = log.count("peer_input_refused")
        assert 0 < refusal_lines < 40, (
            f"{refusal_lines} log lines for the refusals: logged once, not per entry"
        )
        assert "x" * 400 not in log  # a peer's detail is quoted short

        # The replica side bounds a hostile master's epoch the same way.
        before = pair.slave.status()["epoch"]
        for huge in HUGE_EPOCHS:
            code, _body = pair.slave.call(
                "POST", "/internal/replication/hello", {"journal_id": "j", "epoch": huge, "node_id": "evil"}
            )
            assert code == 400
        assert pair.slave.status()["epoch"] == before


# -- 2. a folder swapped for a symlink while the master sends ------------------------------------------
class Swapper:
    """Swaps storage/race between the real folder and a symlink to outside, as fast as it can."""

    def __init__(self, storage: Path, outside: Path) -> None:
        self.race, self.real, self.outside = storage / "race", storage / "race.real", outside
        self.stop = threading.Event()
        self.swaps = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                os.rename(self.race, self.real)
                os.symlink(self.outside, self.race)
                time.sleep(0.0005)
                os.unlink(self.race)
                os.rename(self.real, self.race)
                self.swaps += 1
                time.sleep(0.001)  # every swap is 3 journal changes: leave the link a chance to drain
        except BaseException as exc:
            self.errors.append(exc)


class Writer:
    """Rewrites the real folder's files through a held fd, whatever its name is at the moment."""

    def __init__(self, folder: Path, count: int) -> None:
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self.count = count
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                name = f"f{n % self.count}.txt"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.fd)
                os.write(fd, f"inside {n}\n".encode() * 10)
                os.close(fd)
                n += 1
                time.sleep(0.002)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            os.close(self.fd)


def test_a_symlink_swap_race_on_the_master_never_ships_an_outside_file(tmp_path: Path) -> None:
    marker = new_marker()
    outside = tmp_path / "outside"
    outside.mkdir()
    master_env = {"ANTI_ENTROPY_INTERVAL": "1"}  # rescans run into the race as well
    with relayed_pair(tmp_path, marker, master_env=master_env) as (pair, relay):
        race = pair.master.storage / "race"
        race.mkdir(parents=True)
        for i in range(12):
            (race / f"f{i}.txt").write_bytes(f"inside {i}\n".encode())
            (outside / f"f{i}.txt").write_bytes(marker * (i + 1))  # same names as inside
        pair.start()
        epoch = pair.master.status()["epoch"]
        wait_converged(pair, 15)

        swapper, writer = Swapper(pair.master.storage, outside), Writer(race, 12)
        threads = [threading.Thread(target=t.run, daemon=True) for t in (swapper, writer)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                request_sync(pair.master, timeout=2)
        finally:
            swapper.stop.set()
            writer.stop.set()
            for thread in threads:
                thread.join(10)
        assert swapper.errors == [] and writer.errors == []
        assert swapper.swaps > 100, f"only {swapper.swaps} swaps: the race was hardly run"
        assert race.is_dir() and not race.is_symlink()

        request_sync(pair.master)
        wait_converged(pair, 30)
        assert_marker_never_crossed(pair, relay, marker)
        assert_master_sound(pair, epoch)


# -- 3. special files and special mode bits -------------------------------------------------------------
def make_socket(path: Path) -> None:
    """A unix socket file at `path` (bound from a child process whose working folder is its folder)."""
    code = "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])"
    subprocess.run(["python3", "-c", code, path.name], cwd=path.parent, check=True, timeout=30)


def make_device(path: Path) -> bool:
    """A character device like /dev/null; False where this process may not create one."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


class HealthProbe:
    """Polls /health in a thread; keeps the slowest answer (a blocked event loop would show here)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stop = threading.Event()
        self.slowest = 0.0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            started = time.monotonic()
            try:
                status = http("GET", f"{self.node.url}/health", timeout=5)[0]
                if status != 200:
                    self.failures.append(f"/health answered {status}")
            except OSError as exc:
                self.failures.append(f"/health: {exc!r}")
            self.slowest = max(self.slowest, time.monotonic() - started)


def test_special_files_are_skipped_and_modes_lose_their_special_bits(tmp_path: Path) -> None:
    marker = new_marker()
    master_env = {"DELTA_MIN_SIZE": "4096", "ANTI_ENTROPY_INTERVAL": "3600"}
    with relayed_pair(tmp_path, marker, master_env=master_env) as (pair, relay):
        storage, replica = pair.master.storage, pair.slave.storage
        for folder in (storage / "pipes", storage / "bin", storage / "shared", storage / "tmp", replica):
            folder.mkdir(parents=True)
        os.mkfifo(storage / "pipes" / "fifo")
        make_socket(storage / "pipes" / "sock")
        has_device = make_device(storage / "pipes" / "null")
        (storage / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
        (storage / "bin" / "tool").chmod(0o4755)
        (storage / "bin" / "group-tool").write_bytes(b"#!/bin/sh\n")
        (storage / "bin" / "group-tool").chmod(0o2750)
        (storage / "shared").chmod(0o2775)
        (storage / "tmp").chmod(0o1777)
        (storage / "big.bin").write_bytes(os.urandom(64 * 1024))
        os.mkfifo(replica / "big.bin")  # where the replica reads its basis for a delta

        pair.start()
        epoch = pair.master.status()["epoch"]
        probe = HealthProbe(pair.master)
        probe.thread.start()
        try:
            wait_converged(pair, 20)
            # After the start: a new FIFO (seen by the watcher) and a file replaced by a FIFO.
            (storage / "swapped.txt").write_bytes(b"a file for now")
            wait_until(lambda: (replica / "swapped.txt").exists(), 10, message="swapped.txt on the replica")
            os.mkfifo(storage / "pipes" / "late-fifo")
            os.mkfifo(storage / "fifo.tmp")
            os.rename(storage / "fifo.tmp", storage / "swapped.txt")
            wait_until(
                lambda: not (replica / "swapped.txt").exists(), 10, message="swapped.txt gone on the replica"
            )
            for node in (pair.master, pair.slave):
                started = time.monotonic()
                code, _body = node.call("GET", "/internal/files/pipes/fifo", timeout=5)
                assert code == 404 and time.monotonic() - started < 3
            request_sync(pair.master)
            wait_converged(pair, 20)
        finally:
            probe.stop.set()
            probe.thread.join(10)

        assert probe.failures == [] and probe.slowest < 2.0, (probe.failures, probe.slowest)
        for name in ("fifo", "sock", "null", "late-fifo"):
            assert not os.path.lexists(replica / "pipes" / name), name
        assert stat.S_ISREG((replica / "big.bin").lstat().st_mode)
        assert (replica / "big.bin").read_bytes() == (storage / "big.bin").read_bytes()
        modes = {
            rel: stat.S_IMODE((replica / rel).lstat().st_mode)
            for rel in ("bin/tool", "bin/group-tool", "shared", "tmp")
        }
        assert modes == {"bin/tool": 0o755, "bin/group-tool": 0o750, "shared": 0o775, "tmp": 0o777}

        skipped = {
            kind: pair.master.metric("plugin_sync_special_files_skipped_total", {"type": kind})
            for kind in ("fifo", "socket", "char_device")
        }
        assert skipped["fifo"] >= 2 and skipped["socket"] >= 1, skipped
        assert skipped["char_device"] >= 1 or not has_device, skipped
        assert pair.master.metric("plugin_sync_mode_bits_stripped_total", {"side": "sent"}) >= 4
        log = pair.master.log_path.read_text(errors="replace")
        logged = re.findall(r"special_file_skipped.*?path=(\S+)", log)
        assert sorted(set(logged)) == sorted(logged), "each special file is logged once"
        assert_marker_never_crossed(pair, relay, marker)
        assert_master_sound(pair, epoch)
