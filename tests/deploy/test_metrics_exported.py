"""Every metric the alerts and the dashboard use is exported by a running daemon.

A real master and slave on loopback; /metrics fetched from both. A metric of a feature not merged
yet goes in PENDING, and the test also checks it is still absent: the day it appears, the test
fails and says to take it off the list, so the list cannot outlive its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import used_metrics
from tests.support.cluster import http, running_pair

pytestmark = pytest.mark.timeout(45)

PENDING: dict[str, str] = {
    # metric name: "pending: built in issue N (what it is)". Empty now: the plugin store's metrics
    # (plugin_downloads_total, plugin_download_success_rate, plugin_download_duration_seconds,
    # plugin_packages_corrupted) and python_env_init_duration_seconds / plugin_env_init_in_progress
    # are all exported by the daemon, and so checked like every other metric.
}
"""Metrics the monitoring files use before the feature that exports them is merged."""

SYNTHETIC = {"up": "Prometheus's own series for every target it scrapes"}

_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition has or declares (a labelled family may have no sample yet)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)))
    return names


def problems(used: Mapping[str, Set[str]], exported: Set[str], pending: Mapping[str, str]) -> list[str]:
    found = []
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exported | pending.keys() | SYNTHETIC.keys()
    }
    if missing:
        found.append(f"used by the monitoring files but not exported by the daemon: {missing}")
    arrived = sorted(name for name in pending if name in exported)
    if arrived:
        found.append(
            f"{arrived} are exported now: remove them from PENDING in tests/deploy/{Path(__file__).name}, "
            "so that they are checked like every other metric"
        )
    unused = sorted(pending.keys() - used.keys())
    if unused:
        found.append(f"{unused} are in PENDING but no alert or panel uses them: remove them from PENDING")
    return found


def test_exported_names_include_declared_families_without_samples() -> None:
    text = (
        "# HELP x_total refused\n# TYPE x_total counter\n"
        '# HELP h seconds\n# TYPE h histogram\nh_bucket{le="+Inf"} 1.0\nh_count 1.0\nh_sum 2.0\n'
    )
    assert {"x_total", "h_bucket", "h_count", "h_sum"} <= exported_names(text)


def test_a_pending_metric_that_arrived_or_is_unused_fails_the_check() -> None:
    used = {"a_total": {"alert A"}, "b": {"panel B/A"}}
    assert problems(used, {"a_total"}, {"b": "issue 1"}) == []
    arrived = problems(used, {"a_total", "b"}, {"b": "issue 1"})
    assert len(arrived) == 1 and "['b'] are exported now: remove them from PENDING" in arrived[0]
    unused = problems(used, {"a_total", "b"}, {"c": "issue 2"})
    assert len(unused) == 1 and "['c'] are in PENDING but no alert or panel uses them" in unused[0]
    missing = problems(used, {"a_total"}, {})
    assert len(missing) == 1 and "'b': ['panel B/A']" in missing[0]


def test_every_metric_in_the_alerts_and_the_dashboard_is_exported(tmp_path: Path) -> None:
    exported: set[str] = set()
    with running_pair(tmp_path) as pair:
        for node in (pair.master, pair.slave):
            status, _headers, body = http("GET", f"{node.url}/metrics")
            assert status == 200, body[:200]
            exported |= exported_names(body.decode())
    assert not problems(used_metrics(), exported, PENDING)
