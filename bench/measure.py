"""Measuring instruments shared by every tool, so each number means the same thing for each of them.

- VisibilityObserver: an inotify observer on the slave tree that records, per file, the first moment the
  file exists under its final name with its full size. hotstandby and rsync (so lsyncd) both write a temp
  file in the same folder and rename it, so a final name with the full size is the complete file.
- wait_all_visible: the same test by polling (for bursts, where any inotify queue would overflow).
- CountingRelay: a TCP relay on 127.0.0.1 counting the bytes it forwards each way: one wire measure for
  every tool, independent of what each tool chooses to report about itself.
- Caches: drop the page cache (or, when not permitted, warm the same files the same way) before a run.
- /proc readers: inotify watch count (watcher ready) and VmHWM (peak RSS) of a process.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import select
import socket
import stat
import statistics
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


# ---------------------------------------------------------------- statistics


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p99 of 2,000 samples is stable."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds: the shape of the lag distribution, not just its centre."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
    }


def median(values: Iterable[float | None]) -> float | None:
    """Median of the runs that produced a number; None when none did (a failed run is never a zero)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# ---------------------------------------------------------------- inotify observer

_libc = ctypes.CDLL(None, use_errno=True)
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")


class VisibilityObserver:
    """First time each expected file is visible, complete, on the slave (monotonic clock, like the writer's).

    The timestamp is taken right after the kernel hands over the events, so it is an upper bound on the
    visibility moment by the observer's own wake-up latency (the same for every tool). An inotify queue
    overflow is answered by checking every pending file at that moment (counted in `overflows`).
    """

    def __init__(self, root: Path, expected: dict[str, int]) -> None:
        self.root = root
        self.expected = expected
        self.seen: dict[str, float] = {}
        self.overflows = 0
        self._dirs: dict[int, str] = {}
        self._done = threading.Event()
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="visibility", daemon=True)

    def __enter__(self) -> VisibilityObserver:
        self._watch_tree("", time.monotonic())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)

    def wait(self, timeout: float) -> bool:
        """True once every expected file has been seen complete."""
        return self._done.wait(timeout)

    def _watch_tree(self, rel: str, now: float) -> None:
        """Watch a folder and everything below it, then look at what is already there (no missed files)."""
        top = self.root / rel if rel else self.root
        for dirpath, _dirnames, filenames in os.walk(top):
            drel = os.path.relpath(dirpath, self.root)
            drel = "" if drel == "." else drel
            wd = _libc.inotify_add_watch(self._fd, os.fsencode(dirpath), _WATCH_MASK)
            if wd >= 0:
                self._dirs[wd] = drel
            for name in filenames:
                self._check(f"{drel}/{name}" if drel else name, now)

    def _check(self, rel: str, now: float) -> None:
        size = self.expected.get(rel)
        if size is None or rel in self.seen:
            return
        try:
            st = os.stat(self.root / rel)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_size == size:
            self.seen[rel] = now
            if len(self.seen) == len(self.expected):
                self._done.set()

    def _run(self) -> None:
        while True:
            ready, _w, _x = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                continue
            now = time.monotonic()
            self._handle(data, now)

    def _handle(self, data: bytes, now: float) -> None:
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = os.fsdecode(data[offset + 16 : offset + 16 + length].rstrip(b"\0"))
            offset += 16 + length
            if mask & IN_Q_OVERFLOW:
                self.overflows += 1
                for rel in list(self.expected):
                    self._check(rel, now)
                continue
            parent = self._dirs.get(wd)
            if parent is None or not name:
                continue
            rel = f"{parent}/{name}" if parent else name
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch_tree(rel, now)
            else:
                self._check(rel, now)


def wait_all_visible(
    root: Path, expected: dict[str, int], timeout: float, interval: float = 0.05
) -> tuple[float | None, int]:
    """Poll until every expected file is visible with its full size: (monotonic time, files seen).

    Each poll stats the files still missing, in order, and stops at the first one not there yet, so
    polling costs little CPU next to the tool under test; the time is accurate to `interval`.
    """
    pending = dict(expected)
    deadline = time.monotonic() + timeout
    while True:
        for rel in list(pending):
            try:
                st = os.stat(root / rel)
            except OSError:
                break
            if not (stat.S_ISREG(st.st_mode) and st.st_size == pending[rel]):
                break
            del pending[rel]
        now = time.monotonic()
        if not pending:
            return now, len(expected)
        if now > deadline:
            return None, len(expected) - len(pending)
        time.sleep(interval)


# ---------------------------------------------------------------- /proc readers


def inotify_watch_count(pid: int) -> int:
    """Inotify watches held by a process: one 'inotify wd:' line per watch in /proc/<pid>/fdinfo."""
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as fh:
                total += fh.read().count(b"\ninotify wd:")
        except OSError:
            continue
    return total


def wait_watch_count(
    pid: int, wanted: int, started: float, timeout: float, interval: float = 0.02
) -> tuple[float | None, int]:
    """Seconds from `started` until the process holds `wanted` inotify watches (None on timeout)."""
    deadline = started + timeout
    count = 0
    while time.monotonic() < deadline:
        count = inotify_watch_count(pid)
        if count >= wanted:
            return time.monotonic() - started, count
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(interval)
    return None, count


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM: the process's peak resident set, as the kernel accounts it."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far: says whether a slow copy was CPU-bound."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


# ---------------------------------------------------------------- page cache


def _can_drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


class Caches:
    """Start every tool's run from the same cache state: dropped if permitted, else warmed identically."""

    def __init__(self) -> None:
        self.mode = "drop" if _can_drop_caches() else "warm"

    def describe(self) -> str:
        if self.mode == "drop":
            return "sync + echo 3 > /proc/sys/vm/drop_caches before each measured run (cold caches)"
        return "drop_caches not permitted: source tree read once before each measured run (warm caches)"

    def reset(self, *roots: Path) -> None:
        if self.mode == "drop":
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as fh:
                fh.write("3\n")
            return
        for root in roots:
            for path in walk_files(root):
                with contextlib.suppress(OSError), open(path, "rb") as fh:
                    while fh.read(CHUNK):
                        pass


# ---------------------------------------------------------------- trees


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def tree_bytes(root: Path) -> int:
    """Bytes of regular files: the numerator of every MiB/s figure."""
    total = 0
    for path in walk_files(root):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_state(root: Path) -> dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Per relative path: (content, metadata). Content is type+size+sha256 or the link target."""
    state: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = (("link", os.readlink(full)), ())
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = (("dir",), (stat.S_IMODE(st.st_mode),))
            else:
                content = ("file", st.st_size, _sha256(full))
                state[rel] = (content, (stat.S_IMODE(st.st_mode), int(st.st_mtime)))
    return state


def compare_trees(
    src: Path,
    dst: Path,
    src_state: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] | None = None,
    ignore: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Check a run's result: content (paths, types, bytes, link targets) and metadata (modes, mtimes).

    `ignore`: paths left out of the comparison (files the tool itself wrote into the source tree).
    """
    left = {
        p: v for p, v in (src_state if src_state is not None else tree_state(src)).items() if p not in ignore
    }
    right = {p: v for p, v in tree_state(dst).items() if p not in ignore}
    missing = [p for p in left if p not in right]
    extra = [p for p in right if p not in left]
    content = [p for p in left if p in right and left[p][0] != right[p][0]]
    meta = [p for p in left if p in right and left[p][0] == right[p][0] and left[p][1] != right[p][1]]
    return {
        "identical_content": not (missing or extra or content),
        "identical_metadata": not meta,
        "missing": len(missing),
        "extra": len(extra),
        "content_differs": len(content),
        "metadata_differs": len(meta),
        "examples": (missing + extra + content + meta)[:5],
    }


def paths_added(root: Path, known: dict[str, Any]) -> list[str]:
    """Files and links under `root` that are not in `known` (a walk, no hashing)."""
    added = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel not in known:
                added.append(rel)
    return sorted(added)


# ---------------------------------------------------------------- wire bytes


class CountingRelay:
    """127.0.0.1:port -> 127.0.0.1:target_port, counting forwarded bytes in each direction.

    Every tool's traffic goes through the same relay in the delta scenario, so "bytes on the wire" is
    one measure for all of them (payload bytes over TCP, both directions, protocol overhead included).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.upstream_bytes = 0
        self.downstream_bytes = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept_loop)

    def total(self) -> int:
        with self._lock:
            return self.upstream_bytes + self.downstream_bytes

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.upstream_bytes, self.downstream_bytes

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(2)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(sock)
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
                with self._lock:
                    if upstream:
                        self.upstream_bytes += len(data)
                    else:
                        self.downstream_bytes += len(data)
        except OSError:
            pass  # either side went away: the connection is over, the counts stand
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
