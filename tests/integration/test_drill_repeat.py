"""`hotstandby drill --repeat N`: N failovers in a row, alternating direction, on a PostgreSQL lease with the
daemons' default timings behind HAProxy with the shipped checks; the report, the Markdown and the plot give
the median, p95 and worst switchover and the lost writes summed. The runs double as a timed check of
issue 16's bound for the PostgreSQL lease (median under 5 s, worst under 8 s)."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest
from PIL import Image

from daemon.drill import run_drill
from daemon.drill.markdown import markdown
from tests.integration.test_drill import SYNC, Observer, command_stopper, config_for, drill_site, load_report
from tests.support.failover_timing import template_checks
from tests.support.services import running_postgres

RUNS = 3


@pytest.mark.timeout(150)
def test_drill_repeat_alternates_direction_and_reports_the_distribution(tmp_path: Path) -> None:
    with running_postgres() as postgres:
        env = {**SYNC, "ELECTION": "postgres", "DATABASE_URL": postgres.dsn}
        with drill_site(tmp_path, dict(env), dict(env), **template_checks()) as site, Observer(site) as seen:
            config = config_for(site, tmp_path, command_stopper(site), repeat=RUNS)
            report = asyncio.run(run_drill(config, out=print))
    assert report.exit_status == 0, report.reasons
    assert seen.samples and not any(all(primaries) for _t, _s, primaries in seen.samples)
    data = load_report(report)
    phases = data["phases"]
    assert [p["name"] for p in phases] == [f"run {n}" for n in range(1, RUNS + 1)]
    assert [p["old_leader"] for p in phases] == [site.urls[n % 2] for n in range(RUNS)], "not alternating"
    assert all(p["new_leader"] == site.urls[(n + 1) % 2] for n, p in enumerate(phases))
    times = [p["durations"]["switchover"] for p in phases]
    d = data["distribution"]
    assert d["switchovers"] == times and d["runs"] == d["measured"] == RUNS
    assert d["median"] == pytest.approx(statistics.median(times), abs=0.002)
    assert d["worst"] == pytest.approx(max(times), abs=0.002) == d["p95"]
    assert d["lost_writes"] == 0 and all(p["verification"]["lost"] == 0 for p in phases)
    assert d["median"] < 5.0 and d["worst"] < 8.0, times
    assert data["settings"]["repeat"] == RUNS
    text = markdown(report)
    assert f"## {RUNS} failovers" in text and "median **" in text and "p95 **" in text
    assert "acknowledged writes lost, summed over every run: **0**" in text
    assert f"{RUNS} failovers: switchover median" in report.summary()["reason"]
    with Image.open(report.files["png"]) as image:
        assert image.size[1] >= 1100, image.size  # the third panel: one bar per failover
    print(f"drill --repeat {RUNS} on a PostgreSQL lease: switchovers {times}")
