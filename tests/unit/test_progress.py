"""Progress of long work (seeding, catch-up): files and bytes of the total known so far, rate, time left."""

from __future__ import annotations

from collections import deque

import pytest

from daemon import ctl
from replication.progress import BACKLOG, RATE_WINDOW, STALLED_AFTER, Progress, rate, time_left


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_spans_the_window_up_to_now() -> None:
    samples = deque([(0.0, 0, 0), (5.0, 50, 5000), (10.0, 100, 10_000)])
    assert rate(samples, 10.0) == (10.0, 1000.0)
    # nothing acknowledged for 10 s more: the same work spread over twice the time
    assert rate(samples, 20.0) == (5.0, 500.0)
    # beyond the window the base moves to the newest sample at least a window old
    assert rate(samples, 25.0, window=20.0) == pytest.approx((50 / 20, 5000 / 20))


def test_rate_needs_some_observation() -> None:
    assert rate(deque([(0.0, 0, 0)]), 0.1) == (0.0, 0.0)
    assert rate(deque(), 5.0) == (0.0, 0.0)


def test_time_left_is_the_slower_of_files_and_bytes() -> None:
    assert time_left(100, 10.0, None, 0.0) == 10.0
    assert time_left(100, 10.0, 1_000_000, 50_000.0) == 20.0
    assert time_left(100, 10.0, 1_000, 50_000.0) == 10.0
    assert time_left(0, 0.0, 0, 0.0) == 0.0
    assert time_left(100, 0.0, None, 0.0) is None  # no rate yet: unknown, never infinite


def test_seeding_counts_files_and_bytes_of_the_plan_and_finishes() -> None:
    clock = Clock()
    progress = Progress(clock)
    sizes = {f"f{i}": 1000 for i in range(10)}
    progress.planned("initial", sizes, pending=10, bytes_sent=500)
    snap = progress.snapshot(pending=10)
    assert snap is not None
    assert (snap["kind"], snap["files_done"], snap["files_total"]) == ("seeding", 0, 10)
    assert (snap["bytes_done"], snap["bytes_total"]) == (0, 10_000)
    assert snap["eta_seconds"] is None  # nothing done yet: no rate to go by

    for i in range(4):
        progress.sending(f"f{i}")
    clock.now += 2.0
    progress.acknowledged(4, pending=6, bytes_sent=500 + 4000)
    snap = progress.snapshot(pending=6)
    assert snap is not None
    assert (snap["files_done"], snap["files_total"]) == (4, 10)
    assert (snap["bytes_done"], snap["bytes_total"]) == (4000, 10_000)
    assert snap["files_per_second"] == 2.0
    assert snap["bytes_per_second"] == 2000
    assert snap["eta_seconds"] == 3.0  # 6 files at 2/s, 6000 bytes at 2000/s

    for i in range(4, 10):
        progress.sending(f"f{i}")
    clock.now += 3.0
    progress.acknowledged(6, pending=0, bytes_sent=500 + 10_000)
    assert progress.snapshot(pending=0) is None
    assert progress.last is not None
    assert (progress.last["kind"], progress.last["files"], progress.last["bytes"]) == ("seeding", 10, 10_000)
    assert progress.last["seconds"] == 5.0


def test_the_total_grows_with_changes_that_arrive_meanwhile() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.planned("resume_gap", {"a": 10, "b": 10}, pending=2, bytes_sent=0)
    clock.now += 1
    progress.acknowledged(1, pending=5, bytes_sent=10)  # one done, four new changes recorded
    snap = progress.snapshot(pending=5)
    assert snap is not None
    assert snap["kind"] == "catch-up"
    assert (snap["files_done"], snap["files_total"]) == (1, 6)


def test_a_backlog_becomes_catch_up_work_only_beyond_the_threshold() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.acknowledged(3, pending=BACKLOG - 1, bytes_sent=0)
    assert progress.snapshot(pending=BACKLOG - 1) is None
    progress.acknowledged(0, pending=4000, bytes_sent=0)  # e.g. the first answer after an outage
    clock.now += 4
    progress.acknowledged(1000, pending=3000, bytes_sent=0)
    snap = progress.snapshot(pending=3000)
    assert snap is not None
    assert (snap["kind"], snap["files_done"], snap["files_total"]) == ("catch-up", 1000, 4000)
    assert snap["eta_seconds"] == 12.0
    assert snap["bytes_total"] == 0  # a journal backlog's sizes are known only as files are sent


def test_stalled_work_has_no_rate_and_no_time_left() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.planned("initial", {"a": 1, "b": 1}, pending=2, bytes_sent=0)
    clock.now += 1
    progress.acknowledged(1, pending=1, bytes_sent=1)
    clock.now += STALLED_AFTER + 1
    snap = progress.snapshot(pending=1)
    assert snap is not None
    assert snap["stalled"] is True
    assert (snap["files_per_second"], snap["eta_seconds"]) == (0.0, None)


def test_samples_older_than_the_window_are_dropped() -> None:
    clock = Clock()
    progress = Progress(clock)
    progress.planned("initial", {f"f{i}": 1 for i in range(1000)}, pending=1000, bytes_sent=0)
    for _ in range(200):
        clock.now += 1
        progress.acknowledged(1, pending=500, bytes_sent=0)
    assert progress.current is not None
    assert len(progress.current.samples) <= RATE_WINDOW + 2


def test_a_reconciliation_during_catch_up_makes_it_seeding_and_replans_sizes() -> None:
    progress = Progress(Clock())
    progress.acknowledged(0, pending=BACKLOG, bytes_sent=0)
    progress.planned("initial", {"a": 100}, pending=BACKLOG + 1, bytes_sent=0)
    progress.planned("initial", {"a": 300}, pending=BACKLOG + 1, bytes_sent=0)  # the same path again
    snap = progress.snapshot(pending=BACKLOG + 1)
    assert snap is not None
    assert (snap["kind"], snap["bytes_total"]) == ("seeding", 300)


def test_status_line_says_how_far_a_replica_is_instead_of_in_step() -> None:
    leader = ctl.NodeStatus(
        "http://a:1",
        {
            "role": "master",
            "writable": True,
            "epoch": 3,
            "replicas": [
                {
                    "target": "http://b:2",
                    "pending_changes": 4000,
                    "lag_seconds": 2.0,
                    "progress": {
                        "kind": "catch-up",
                        "files_done": 1000,
                        "files_total": 5000,
                        "bytes_done": 0,
                        "bytes_total": 0,
                        "files_per_second": 250.0,
                        "bytes_per_second": 0,
                        "eta_seconds": 16.0,
                        "stalled": False,
                    },
                }
            ],
        },
    )
    replica = ctl.NodeStatus(
        "http://b:2", {"role": "slave", "epoch": 3, "peer_connected": True, "lag_seconds": 2}
    )
    line, problem = ctl.summary_line([leader, replica], max_lag=10)
    assert problem is None
    assert "in step" not in line
    assert "http://b:2 catching up: 1,000 of 5,000 files, 250 files/s, about 16s left" in line
    table = ctl.format_table([leader, replica])
    assert "4,000" in table and "catching up" in table

    plain = ctl.NodeStatus("http://b:2", {"role": "slave", "epoch": 3, "peer_connected": True})
    leader.body["replicas"][0].update(pending_changes=40, progress=None)  # type: ignore[index]
    line, _ = ctl.summary_line([leader, plain], max_lag=10)
    assert line.endswith("http://b:2 behind: 40 change(s) pending")
    leader.body["replicas"][0].update(pending_changes=0)  # type: ignore[index]
    line, _ = ctl.summary_line([leader, plain], max_lag=10)
    assert line == "healthy: http://a:1 leads at epoch 3, 1 replica(s) in step"


def test_progress_wording_with_bytes() -> None:
    text = ctl.describe_progress(
        {
            "kind": "seeding",
            "files_done": 12_000,
            "files_total": 100_000,
            "bytes_done": 3 * 1024**3 // 2,
            "bytes_total": 12 * 1024**3,
            "files_per_second": 800.0,
            "bytes_per_second": 90 * 1024**2,
            "eta_seconds": 125.0,
            "stalled": False,
        }
    )
    assert text == (
        "seeding: 12,000 of 100,000 files, 1.5 GiB of 12.0 GiB, 800 files/s (90.0 MiB/s), about 2m05s left"
    )
