"""The drill's timeline plot is optional (the `drill` extra): the daemon image has no matplotlib, and
a drill run there still writes report.json and report.md, saying the plot was skipped.
(With matplotlib, tests/integration/test_drill.py checks the PNG.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from daemon.drill.config import DrillConfig, HAProxySettings, StopperSettings, Target
from daemon.drill.markdown import markdown
from daemon.drill.report import DrillReport
from daemon.drill.run import PLOT_SKIPPED, write_files


def report_in(folder: Path) -> DrillReport:
    config = DrillConfig(
        targets=(Target("http://a:5002", "a", "a"), Target("http://b:5002", "b", "b")),
        server_key="k" * 32,
        haproxy=HAProxySettings("http://haproxy:5002"),
        stopper=StopperSettings("command", "stop {name}", "start {name}"),
        out_dir=str(folder),
        history_file=None,
    )
    report = DrillReport("d1", 1_700_000_000.0, config, "command")
    report.files = {
        "dir": str(folder / "out"),
        "json": str(folder / "out" / "report.json"),
        "markdown": str(folder / "out" / "report.md"),
        "png": str(folder / "out" / "timeline.png"),
    }
    return report


def test_without_matplotlib_the_drill_writes_its_report_and_says_the_plot_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: find_spec -> None
    report = report_in(tmp_path)
    write_files(report)
    assert report.file_errors == []
    assert report.plot_skipped == PLOT_SKIPPED
    assert "png" not in report.files
    assert not (tmp_path / "out" / "timeline.png").exists()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["plot_skipped"] == PLOT_SKIPPED
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"- timeline plot skipped: {PLOT_SKIPPED}" in text
    assert "hotstandby[drill]" in markdown(report)
    assert not any("plot" in reason for reason in report.reasons)
