"""The standby's disk fills up: it says so, the master keeps serving, nothing half-written shows.

The standby's STORAGE_PATH sits on an 8 MiB tmpfs that a ballast file (beside STORAGE_PATH, on
the same filesystem) mostly fills. The master then writes more than fits. The standby must report
it (/health "degraded" naming the disk, `plugin_sync_storage_full` 1, an error log line), the
master must keep accepting writes and keep the changes queued, a reader on the standby must never
see a partial file (temp files start with `.hs~` and are allowed), and once the ballast is
deleted the trees must converge without anyone's help.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import Node, Pair, http, tree_diff, wait_until
from tests.support.ha import FAST, put

DISK = "8m"
BALLAST = 6 << 20
FILE_SIZE = 256 << 10
FILES = 16  # 4 MiB: more than the ~2 MiB left


@dataclass
class SmallDiskNode(Node):
    """A node whose STORAGE_PATH is on its own small filesystem, mounted at base/disk."""

    @property
    def disk(self) -> Path:
        return self.base / "disk"

    @property
    def storage(self) -> Path:
        return self.disk / "storage"


def content(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (FILE_SIZE // 32)


@pytest.fixture
def full_disk_pair(tmp_path: Path) -> Iterator[Pair]:
    slave = SmallDiskNode("slave", "slave", tmp_path / "slave", extra_env=dict(FAST))
    master = Node("master", "master", tmp_path / "master", extra_env=dict(FAST))
    master.extra_env["SYNC_TARGET"] = slave.url
    slave.extra_env["SYNC_SOURCE"] = master.url
    slave.disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(slave.disk)], check=True)
    pair = Pair(master, slave)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
        print(f"--- master log\n{master.log_tail(20)}\n--- slave log\n{slave.log_tail(20)}")
        subprocess.run(["umount", "-l", str(slave.disk)], check=True)


class PartialFileWatcher:
    """Walks the standby's tree in a thread; records any visible file that is not whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial: list[str] = []
        self.walks = 0
        self.temp_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PartialFileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._walk()
            self.walks += 1
            time.sleep(0.02)

    def _walk(self) -> None:
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                if name.startswith(".hs~"):
                    self.temp_seen += 1
                    continue
                if not name.startswith("f"):
                    continue
                try:
                    data = (Path(dirpath) / name).read_bytes()
                except FileNotFoundError:
                    continue
                if data != content(int(name[1:].split(".")[0])):
                    self.partial.append(f"{name}: {len(data)} bytes")


def retries(master: Node) -> int:
    """Times the master backed off from a full replica so far (without that: every 0.1 s)."""
    return master.log_path.read_text().count('"event": "replica_storage_full"')


def health(node: Node) -> dict[str, str]:
    status, _headers, raw = http("GET", f"{node.url}/health", timeout=5)
    assert status == 200, raw
    return dict(json.loads(raw))


@pytest.mark.timeout(120)
def test_full_standby_disk_is_reported_queued_on_the_master_and_healed_once_space_returns(
    full_disk_pair: Pair,
) -> None:
    pair = full_disk_pair
    slave = pair.slave
    assert isinstance(slave, SmallDiskNode)
    ballast = slave.disk / "ballast"
    ballast.write_bytes(b"\0" * BALLAST)
    data = pair.master.storage / "data"
    with PartialFileWatcher(slave.storage) as watcher:
        data.mkdir()
        # Replicated before the files appear, so that each file travels on its writer's close: a new
        # folder's scan may send a file caught between its open(O_TRUNC) and first write, which the
        # master had too, and which is not what this test is about.
        wait_until(lambda: (slave.storage / "data").is_dir(), 10, message="the folder to replicate")
        for i in range(FILES):
            (data / f"f{i}.bin").write_bytes(content(i))

        wait_until(lambda: health(slave)["status"] == "degraded", 30, message="the standby to say degraded")
        report = health(slave)
        assert "no space left" in report["reason"] and str(slave.storage) in report["reason"], report
        assert slave.metric("plugin_sync_storage_full") == 1
        assert '"event": "storage_full"' in slave.log_path.read_text()
        assert health(pair.master)["status"] == "healthy"

        # The master keeps serving: API writes are acknowledged (async mode), changes stay queued.
        assert put(pair.master, "data/f100.bin", content(100)) == 200
        status = pair.master.status()
        assert status["pending_changes"] > 0, status
        assert tree_diff(pair.master.storage, slave.storage), "everything fitted: the test proves nothing"
        before = retries(pair.master)
        time.sleep(3)  # a few retries against the full disk, each slower than the last
        assert before >= 1 and retries(pair.master) - before <= 5, (before, retries(pair.master))
        assert health(slave)["status"] == "degraded" and slave.metric("plugin_sync_storage_full") == 1

        ballast.unlink()
        pair.wait_converged(60)
        wait_until(lambda: health(slave)["status"] == "healthy", 10, message="the standby to recover")
        assert slave.metric("plugin_sync_storage_full") == 0
        time.sleep(0.5)
    assert watcher.walks > 20
    assert watcher.partial == [], watcher.partial
    assert not [p for p in slave.storage.rglob(".hs~*")], "temp files left behind"
    wait_until(lambda: pair.master.status()["pending_changes"] == 0, 10, message="every change acked")
