"""Issue 15's benchmark table (bench/bulk_report.py): ratios the right way round, targets judged on them."""

from __future__ import annotations

from pathlib import Path

from bench import bulk_report, report, scenarios


def tools(**seconds: float) -> dict[str, object]:
    return {"tools": {tool.replace("_", "-"): {"median": {"seconds": s}} for tool, s in seconds.items()}}


RESULTS = {
    "small": {
        "params": {"tree": {"files": 10_000, "bytes": 1}},
        **tools(hotstandby=10.0, rsync=5.0, rsync_fsync=20.0),
    },
    "delta": {
        "edits": {
            "1-byte change": {
                "hotstandby": {"median": {"wire_bytes": 300, "seconds": 2.0}},
                "rsync": {"median": {"wire_bytes": 200, "seconds": 1.0}},
            }
        }
    },
}


def test_time_ratios_are_speeds_and_byte_ratios_are_ours_over_theirs():
    lines = {line.workload: line for line in bulk_report.lines(RESULTS)}
    small = lines["initial sync, 10,000 small files"]
    assert small.ratio("rsync") == 0.5 and small.ratio("rsync-fsync") == 2.0
    assert lines["delta, 1-byte change: bytes on the wire"].ratio("rsync") == 1.5
    assert lines["delta, 1-byte change: time"].ratio("rsync") == 0.5


def test_targets_are_judged_on_the_issue_goals():
    verdicts = {name: met for name, _goal, _value, met in bulk_report.targets(RESULTS)}
    assert verdicts["initial sync, 10,000 small files: speed vs rsync -a --fsync"] is True
    assert verdicts["initial sync, 10,000 small files: speed vs rsync -a"] is False
    assert verdicts["delta, 1-byte change: bytes on the wire vs rsync"] is True  # 1.5x is within the goal
    assert verdicts["delta, 1-byte change: time vs rsync"] is False


def test_the_table_names_every_tool_and_says_how_to_read_the_ratios():
    text = bulk_report.table(RESULTS)
    header = text.splitlines()[0]
    for column in ("hotstandby", "rsync -a", "rsync --fsync", "lsyncd d0", "vs rsync -a", "vs --fsync"):
        assert column in header
    assert "0.50x" in text and "2.00x" in text and "their time / ours" in text
    assert bulk_report.table({}) == ""


def test_the_file_creation_probe_measures_and_leaves_nothing(tmp_path: Path) -> None:
    took = report.file_create_us(tmp_path)
    assert 0 < took < 1_000_000
    assert list(tmp_path.iterdir()) == []


def test_old_trees_go_to_the_graveyard_when_there_is_one_else_away(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    (workspace / scenarios.GRAVEYARD).mkdir(parents=True)
    old = workspace / "small" / "slave"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "file").write_bytes(b"x")
    assert scenarios.fresh(old) == old
    assert list(old.iterdir()) == []
    buried = list((workspace / scenarios.GRAVEYARD).iterdir())
    assert [(p / "sub" / "file").read_bytes() for p in buried] == [b"x"]
    scenarios.set_aside(workspace / "small")
    assert len(list((workspace / scenarios.GRAVEYARD).iterdir())) == 2
    elsewhere = tmp_path / "elsewhere" / "tree"
    elsewhere.mkdir(parents=True)
    scenarios.set_aside(elsewhere)  # no graveyard above it: deleted at once
    assert not elsewhere.exists()
    assert len(list((workspace / scenarios.GRAVEYARD).iterdir())) == 2
