"""The switchover scenario: kill -9 of the leader to the first write acknowledged again through HAProxy,
for static + FAILOVER=auto (FAILOVER_TIMEOUT 3), a Redis lease and a PostgreSQL lease, side by side.

Each run is a fresh pair on 127.0.0.2/127.0.0.3 behind HAProxy rendered from the shipped template with
its own check settings, a client writing through HAProxy every 20 ms (SYNC_MODE=sync), real redis-server
and PostgreSQL (tests/support/failover_timing.py has the harness). The daemons run with their defaults
(LEASE_TTL included) unless a variant says otherwise. `--switchover-baseline` adds the settings shipped
before issue 16 (HAProxy downinter 2s rise 2, LEASE_TTL 6) for comparison.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.scenarios import Context
from tests.support.failover_timing import BACKENDS, measure, summary, template_checks

RUNS = 5
QUICK_RUNS = 2
VARIANTS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "shipped": ({}, {}),
}
BASELINE = ({"LEASE_TTL": "6"}, {"check_downinter_ms": 2000, "check_rise": 2})
"""What shipped before: HAProxy checks a down server every 2 s and wants 2 passes; 6 s leases."""


def switchover(ctx: Context, baseline: bool = False) -> dict[str, Any]:
    runs = QUICK_RUNS if ctx.quick else max(RUNS, ctx.runs)
    variants = dict(VARIANTS)
    if baseline:
        variants["before issue 16"] = BASELINE
    result: dict[str, Any] = {"params": {"runs": runs, "write_every_s": 0.02}, "variants": {}}
    for variant, (settings, checks) in variants.items():
        backends: dict[str, Any] = {}
        for backend in BACKENDS:
            used = {k: v for k, v in settings.items() if backend != "static" or not k.startswith("LEASE")}
            ctx.log(f"switchover ({variant}): {backend}, {runs} runs, settings {used or 'defaults'}")
            with tempfile.TemporaryDirectory(prefix=f"hs-switch-{backend}-", dir=ctx.workspace) as tmp:
                found = measure(Path(tmp), backend, runs, used, checks, log=ctx.log)
            backends[backend] = {
                "settings": {**_backend_defaults(backend), **used},
                "haproxy_checks": {**template_checks(), **checks},
                "summary": summary(found),
                "runs": [r.to_json() for r in found],
            }
        result["variants"][variant] = backends
    return result


def _backend_defaults(backend: str) -> dict[str, str]:
    if backend == "static":
        return {"FAILOVER": "auto", "FAILOVER_TIMEOUT": "3"}
    from daemon.config import Config

    return {"ELECTION": backend, "LEASE_TTL": f"{Config.lease_ttl:g} (default)"}


ROW_KEYS = (
    ("median", "switchover median s"),
    ("p95", "switchover p95 s"),
    ("worst", "switchover worst s"),
    ("best", "switchover best s"),
    ("replica_primary_median", "new leader /primary 200, median s"),
    ("haproxy_new_up_median", "HAProxy marks it up, median s"),
    ("lost", "acknowledged writes lost (sum)"),
    ("both_primary", "samples with two /primary 200"),
    ("failed_runs", "runs that never resumed"),
)


def table(result: dict[str, Any]) -> str:
    """One block per variant: a row per measure, a column per election backend."""
    blocks = []
    for variant, backends in result["variants"].items():
        headers = {b: f"{b} ({_short(backends[b]['settings'])})" for b in BACKENDS if backends.get(b)}
        first = f"switchover after kill -9, {result['params']['runs']} runs ({variant})"
        width = max(len(first), *(len(label) for _key, label in ROW_KEYS))
        widths = {b: 2 + max(len(h), 6) for b, h in headers.items()}
        lines = [f"{first:<{width}}" + "".join(f"{h:>{widths[b]}}" for b, h in headers.items())]
        lines.append("-" * len(lines[0]))
        for key, label in ROW_KEYS:
            cells = "".join(f"{_value(backends[b]['summary'].get(key)):>{widths[b]}}" for b in headers)
            lines.append(f"{label:<{width}}{cells}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _short(settings: dict[str, str]) -> str:
    if "FAILOVER_TIMEOUT" in settings:
        return f"FAILOVER_TIMEOUT {settings['FAILOVER_TIMEOUT']}"
    return f"LEASE_TTL {settings.get('LEASE_TTL', '?')}".replace(" (default)", "")


def _value(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def targets(result: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(name, goal, value, met) per backend of the shipped settings: issue 16's bounds."""
    found = []
    for backend, data in result["variants"].get("shipped", {}).items():
        s = data["summary"]
        median, worst = s.get("median"), s.get("worst")
        met = None if median is None or worst is None else median < 5 and worst < 8 and not s["failed_runs"]
        found.append(
            (
                f"switchover after kill -9, {backend}",
                "median < 5 s, worst < 8 s",
                f"median {_value(median)} s, worst {_value(worst)} s",
                met,
            )
        )
        found.append(
            (
                f"switchover after kill -9, {backend}: lost / two leaders",
                "0 / 0",
                f"{s['lost']} / {s['both_primary']}",
                s["lost"] == 0 and s["both_primary"] == 0,
            )
        )
    return found
