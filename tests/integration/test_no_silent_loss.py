"""Promise 4: a watcher that misses events is noticed, counted and repaired by a rescan."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Pair, running_pair, wait_until

MAX_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


def test_a_real_inotify_queue_overflow_triggers_a_rescan_and_the_trees_converge(pair: Pair) -> None:
    queue_size = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    folders = [pair.master.storage / f"burst/d{i:02d}" for i in range(50)]
    for folder in folders:
        folder.mkdir(parents=True)
    pair.wait_converged(10)
    # Folders exist and are watched: no new-folder scan can pick these files up, only events can.
    files = queue_size // 2 + 1000  # create + modify + close per file: well past the kernel queue
    pair.master.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        for i in range(files):
            (folders[i % 50] / f"f{i:06d}").write_bytes(b"%d" % i)
    finally:
        pair.master.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    pair.wait_converged(120)  # a full rescan of ~9k files; a loaded machine needed over 60 s
    assert pair.master.metric("plugin_sync_full_rescans_total", {"reason": "inotify_overflow"}) >= 1


def test_anti_entropy_repairs_drift_made_directly_on_the_slave(tmp_path: Path) -> None:
    env = {"ANTI_ENTROPY_INTERVAL": "1.5"}
    with running_pair(tmp_path, master_env=env) as pair:
        (pair.master.storage / "config.yaml").write_text("model: a\n")
        (pair.master.storage / "keep").write_text("k")
        pair.wait_converged(10)
        (pair.slave.storage / "config.yaml").write_text("model: B\n")  # same size, other bytes
        (pair.slave.storage / "stray").write_text("only on the slave")
        os.unlink(pair.slave.storage / "keep")
        pair.wait_converged(15)
        assert (pair.slave.storage / "config.yaml").read_text() == "model: a\n"
        assert pair.master.metric("plugin_sync_full_rescans_total", {"reason": "anti_entropy"}) >= 1
        # Protocol 4: the replica's one digest told the drift, and its manifest was then compared;
        # once repaired, a pass finds the digests equal and compares no manifest.
        assert False in digests_compared(pair.master.log_path)
        wait_until(lambda: True in digests_compared(pair.master.log_path), 15, message="an equal digest")


def digests_compared(log_path: Path) -> list[bool]:
    """Whether each tree_digests_compared the leader logged found the two digests equal."""
    found = []
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == "tree_digests_compared":
                found.append(record["equal"])
    return found


def watches_in_use() -> int:
    """inotify watches every process holds now (the limit counts them all: everything runs as root here)."""
    total = 0
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            total += fdinfo.read_text().count("inotify wd:")
        except OSError:
            continue
    return total


@contextlib.contextmanager
def few_inotify_watches(spare: int) -> Iterator[None]:
    """Lower the kernel's per-user watch limit to what is in use plus `spare`; always restored."""
    original = MAX_WATCHES.read_text()
    MAX_WATCHES.write_text(str(watches_in_use() + spare))
    try:
        yield
    finally:
        MAX_WATCHES.write_text(original)


@pytest.mark.serial
def test_running_out_of_inotify_watches_is_reported_and_covered_by_rescans(tmp_path: Path) -> None:
    master_storage = tmp_path / "master" / "storage"
    for i in range(300):
        (master_storage / f"dir{i:03d}").mkdir(parents=True)
    with few_inotify_watches(100), running_pair(tmp_path) as pair:
        wait_until(
            lambda: pair.master.call("GET", "/health", auth=False)[1]["status"] == "degraded",
            15,
            message="/health to report the watcher as degraded",
        )
        status, body = pair.master.call("GET", "/health", auth=False)
        assert status == 200 and "inotify watches ran out" in body["reason"]
        assert pair.master.metric("plugin_sync_watcher_healthy") == 0
        assert "watcher_failed" in pair.master.log_path.read_text()
        # The rescan runs when the sender next takes a batch: after its initial reconciliation, which
        # may still be under way when the watcher has already failed.
        wait_until(
            lambda: pair.master.metric("plugin_sync_full_rescans_total", {"reason": "watcher_failed"}) >= 1,
            15,
            message="a rescan for the failed watcher",
        )
        # A change in an unwatched folder still arrives, through the rescan.
        (master_storage / "dir299" / "late.txt").write_text("seen by a rescan, not by inotify")
        pair.master.call("POST", "/internal/sync")
        pair.wait_converged(15)
