"""The chaos run's checks fail when they should: each one on a made-up history that breaks it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.chaos.checks import (
    Sample,
    Write,
    acceptable_contents,
    check_acknowledged,
    check_only_written,
    check_single_leader,
    check_trees_identical,
    longest_gap,
    recoveries,
)
from tests.chaos.client import classify


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: str, data: bytes, outcome: str, at: float = 0.0, overwrite: bool = False) -> Write:
    status = {"acked": 200, "failed": 503, "unknown": 0}[outcome]
    return Write(path, sha(data), len(data), overwrite, at, at + 0.01, status, outcome)  # type: ignore[arg-type]


def test_the_last_acknowledged_content_counts_and_a_later_unknown_write_may_replace_it() -> None:
    history = [
        write("a", b"1", "acked", 1),
        write("a", b"2", "acked", 2, True),
        write("a", b"3", "failed", 3, True),
        write("a", b"4", "unknown", 4, True),
        write("b", b"x", "unknown", 5),
    ]
    assert acceptable_contents(history) == {"a": {sha(b"2"), sha(b"4")}}


def test_a_lost_or_stale_acknowledged_write_fails_the_check(tmp_path: Path) -> None:
    leader, replica = tmp_path / "l", tmp_path / "r"
    for root in (leader, replica):
        (root / "d").mkdir(parents=True)
    (leader / "d/a").write_bytes(b"2")
    (replica / "d/a").write_bytes(b"1")  # the overwrite acknowledged as "2" is not there
    history = [
        write("d/a", b"1", "acked", 1),
        write("d/a", b"2", "acked", 2, True),
        write("d/b", b"b", "acked"),
    ]
    result = check_acknowledged(history, {"leader": leader, "replica": replica})
    assert not result.passed
    assert any("replica: d/a has content" in p for p in result.problems)
    assert "leader: acknowledged d/b is missing" in result.problems
    (replica / "d/a").write_bytes(b"2")
    for root in (leader, replica):
        (root / "d/b").write_bytes(b"b")
    assert check_acknowledged(history, {"leader": leader, "replica": replica}).passed


def test_a_file_nobody_wrote_or_a_refused_write_that_landed_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a").write_bytes(b"1")
    history = [write("d/a", b"1", "acked"), write("d/c", b"c", "failed")]
    assert check_only_written(history, tmp_path, "leader").passed
    (tmp_path / "d/c").write_bytes(b"c")
    (tmp_path / "stray").write_bytes(b"?")
    result = check_only_written(history, tmp_path, "leader")
    assert not result.passed
    assert sorted(p.split(":")[0] for p in result.problems) == ["d/c", "stray"]


def test_different_trees_fail_the_check(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert check_trees_identical(tmp_path / "a", tmp_path / "b", ("a", "b")).passed
    (tmp_path / "a" / "f").write_bytes(b"x")
    assert not check_trees_identical(tmp_path / "a", tmp_path / "b", ("a", "b")).passed


def test_overlapping_200s_on_two_nodes_fail_and_a_clean_handover_passes() -> None:
    handover = {
        "n1": [Sample(0.0, 0.01, 200), Sample(1.0, 1.01, 200), Sample(5.0, 5.01, 503)],
        "n2": [Sample(0.5, 0.51, 503), Sample(4.0, 4.02, 200)],
    }
    assert check_single_leader(handover).passed
    # n2's request was answered 200 while n1's slow request (sent before, answered after) was 200 too.
    both = {"n1": [Sample(1.0, 1.5, 200)], "n2": [Sample(1.2, 1.21, 200)]}
    result = check_single_leader(both)
    assert not result.passed and "n2 200 at" in result.problems[0]
    assert not check_single_leader({"n1": [Sample(0, 1, 200)], "n2": []}).passed, "an unobserved node"


def test_longest_gap_between_acknowledged_writes() -> None:
    history = [write("a", b"1", "acked", 1.0), write("b", b"2", "failed", 2), write("c", b"3", "acked", 7)]
    gap, since = longest_gap(history, 0.0, 8.0)
    assert round(gap, 2) == 6.0 and round(since, 2) == 1.01


def test_only_answers_that_say_nothing_was_written_count_as_failed() -> None:
    assert classify(200, b'{"replicated": true}') == ("acked", "")
    assert classify(200, b'{"replicated": false}')[0] == "unknown"
    assert classify(503, b'{"title": "not the primary"}')[0] == "failed"
    assert classify(503, b"<h1>503 Service Unavailable</h1>\nNo server is available")[0] == "failed"
    assert classify(503, b'{"title": "something else"}')[0] == "unknown"
    assert classify(504, b'{"title": "not confirmed by the replica"}')[0] == "unknown"
    assert classify(0, b"timed out")[0] == "unknown"


def test_recoveries_measure_the_first_acknowledged_write_in_each_fault_free_stretch() -> None:
    events = [
        {"event": "inject", "kind": "partition", "node": "n1", "mono": 10.0},
        {"event": "inject", "kind": "sigstop", "node": "n2", "mono": 11.0},
        {"event": "recover", "kind": "partition", "node": "n1", "mono": 12.0},  # n2 still stopped
        {"event": "recover", "kind": "sigstop", "node": "n2", "mono": 13.0},  # quiet from 13
        {"event": "inject", "kind": "restart", "node": "n1", "mono": 16.0},  # quiet again from 16
        {"event": "inject", "kind": "fill_disk", "node": "n2", "mono": 20.0},
        {"event": "recover", "kind": "fill_disk", "node": "n2", "mono": 22.0},
    ]
    history = [write("a", b"1", "acked", 12.5), write("b", b"2", "acked", 14), write("c", b"3", "failed", 17)]
    found = recoveries(events, history, end=30.0)
    assert [(r.start, r.length) for r in found] == [(13.0, 3.0), (16.0, 4.0), (22.0, 8.0)]
    assert [None if r.first_ack is None else round(r.first_ack, 2) for r in found] == [1.01, None, None]
