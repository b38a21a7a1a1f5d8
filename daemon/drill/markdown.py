"""The drill's Markdown summary (report.md, and what the command prints): pass or fail and why, each
duration against the bound and the target, requests failed during the switchover, acknowledged writes
lost, what was restored, and every step."""

from __future__ import annotations

from daemon import __version__
from daemon.drill.config import DrillConfig
from daemon.drill.conflicts import conflicts_text
from daemon.drill.record import PhaseReport
from daemon.drill.report import DrillReport


def markdown(report: DrillReport) -> str:
    config = report.config
    verdict = {"pass": "PASS", "fail": "FAIL", "refused": "REFUSED (nothing was stopped)"}[report.result]
    lines = [
        f"# Failover drill {report.started_at}: {verdict}",
        "",
        f"- drill `{report.drill_id}`, hotstandby {__version__}, {report.finished:.1f}s in all",
        f"- nodes: {', '.join(t.url for t in config.targets)}",
        f"- traffic through {config.haproxy.url}; HAProxy's view: {config.haproxy.source}",
        f"- stopper: {report.stopper_kind}",
        f"- switchover bound {config.thresholds.max_switchover:g}s (the seeds); our target"
        f" {config.thresholds.target_switchover:g}s",
    ]
    if report.plot_skipped:
        lines.append(f"- timeline plot skipped: {report.plot_skipped}")
    if report.reasons:
        lines += ["", "**Why it did not pass:**", ""] + [f"- {r}" for r in report.reasons]
    if len(report.phases) > 1:
        lines += ["", *_distribution_markdown(report)]
    if report.preflight is not None:
        lines += ["", "## Preflight", "", "| check | result | detail |", "|---|---|---|"]
        lines += [
            f"| {c.name} | {'ok' if c.ok else 'FAILED'} | {_cell(c.detail)} |"
            for c in report.preflight.checks
        ]
        lines += [f"- warning: {w}" for w in report.preflight.warnings]
    for p in report.phases:
        lines += ["", *_phase_markdown(p, config)]
    lines += _restore_markdown(report)
    if report.history:
        lines += ["", "## History", ""] + [f"- {k}: {v}" for k, v in report.history.items()]
    lines += ["", "## Steps", "", "| at | step | result | seconds | detail |", "|---|---|---|---|---|"]
    for s in report.steps:
        result = "ok" if s.ok else "FAILED"
        lines.append(f"| {s.started:.2f} | {s.name} | {result} | {s.seconds or 0:.2f} | {_cell(s.detail)} |")
    return "\n".join(lines) + "\n"


Row = tuple[str, str, str]
"""One line of a phase's table: measurement, value, bound."""


def _phase_markdown(p: PhaseReport, config: DrillConfig) -> list[str]:
    """One phase: its verdict in the title, a table of what was measured (the switchover, the traffic,
    the rejoin), then its failures and the notable conflicts."""
    rows = [*_switchover_rows(p, config), *_traffic_rows(p), *_rejoin_rows(p, config)]
    title = f"## {p.name.capitalize()}: {p.old_url} -> {p.new_url or '(no new leader)'}"
    title += f" (other replicas: {', '.join(p.other_urls)})" if p.parts.others else ""
    title += f": {'pass' if p.passed else 'FAIL'}"
    lines = [title, "", "| measurement | value | bound |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {_cell(c)} |" for a, b, c in rows]
    lines += [f"- failed: {f}" for f in p.failures]
    notable = [c for c in p.conflicts if c.get("class") in ("differs", "other")]
    lines += [
        f"- conflict ({c['class']}): {c.get('path')} ({c.get('size')} bytes) on {c.get('node')}"
        for c in notable[:20]
    ]
    return lines


def _since_stop(p: PhaseReport, moment: str) -> str:
    value = p.since_stop(moment)
    return "not seen" if value is None else f"{value:.2f}s after the stop"


def _since_start(p: PhaseReport, moment: str) -> str:
    value = p.since_start(moment)
    return "not seen" if value is None else f"{value:.2f}s after the start"


def _switchover_rows(p: PhaseReport, config: DrillConfig) -> list[Row]:
    """From the stop to the first acknowledged write: HAProxy's view, the new leader, the bounds."""
    limits = config.thresholds
    inferred = config.haproxy.source == "inferred from traffic"
    switch = "not measured" if p.switchover is None else f"**{p.switchover:.2f}s**"
    within = "" if p.switchover is None else (" met" if p.switchover < limits.max_switchover else " MISSED")
    target = "" if p.switchover is None else ("met" if p.switchover < limits.target_switchover else "missed")
    gap = p.write_gap()
    rows: list[Row] = [
        (
            "HAProxy marked the old leader down",
            "not measured (no HAProxy stats)" if inferred else _since_stop(p, "haproxy_marked_down"),
            "",
        ),
        ("the new leader answered 200 on /primary", _since_stop(p, "new_leader_primary"), ""),
        (
            "HAProxy sent traffic to the new leader (inferred)"
            if inferred
            else "HAProxy marked the new leader up",
            _since_stop(p, "haproxy_new_leader_up"),
            "",
        ),
        (
            "**switchover**: first write acknowledged again",
            switch,
            f"< {limits.max_switchover:g}s{within}; target < {limits.target_switchover:g}s {target}",
        ),
    ]
    if p.plugin_probe is not None:
        rows.append(
            (
                "**plugin calls**: first tool call answered again (--plugin-call)",
                _since_stop(p, "first_plugin_call_ok"),
                p.plugin_probe.settings.plugin,
            )
        )
    rows.append(
        ("writes unavailable (last ack before to first after)", "-" if gap is None else f"{gap:.2f}s", "")
    )
    return rows


def _traffic_rows(p: PhaseReport) -> list[Row]:
    """The load's requests: what failed, what was acknowledged, what of that was lost."""
    failed = p.failed_requests()
    acked = len(p.load.acked) if p.load else 0
    v = p.verification
    return [
        (
            "requests failed during the switchover",
            f"{failed['writes'] + failed['reads']} ({failed['writes']} writes, {failed['reads']} reads)",
            "",
        ),
        ("requests failed outside it", str(failed["outside"]), ""),
        ("acknowledged writes", str(acked), ""),
        (
            "**acknowledged writes lost**",
            "not verified" if v is None else f"**{v.lost}**",
            "must be 0" + ("" if v is None else f"; {v.method}"),
        ),
    ]


def _rejoin_rows(p: PhaseReport, config: DrillConfig) -> list[Row]:
    """After the switchover: the other replicas, the old leader back as a replica, every node complete."""
    rows: list[Row] = []
    if p.parts.others:
        rows.append(
            (
                "other replicas follow the new leader",
                _since_stop(p, "other_replicas_follow"),
                ", ".join(p.other_urls),
            )
        )
    return [
        *rows,
        ("old leader rejoined as replica", _since_start(p, "old_leader_rejoined"), ""),
        (f"lag back under {config.thresholds.max_lag:g}s", _since_start(p, "lag_under_bound"), ""),
        ("acknowledged writes on every node", _everywhere(p), ""),
        ("new conflicts (kept aside, never deleted)", conflicts_text(p), p.conflicts_error or ""),
    ]


def _distribution_markdown(report: DrillReport) -> list[str]:
    """Every failover in one table, then the distribution of the switchover time over them."""
    d = report.distribution()

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    probed = any(p.plugin_probe is not None for p in report.phases)
    plugin = (" first plugin call |", "---|") if probed else ("", "")
    lines = [
        f"## {d['runs']} failovers",
        "",
        f"| run | from -> to | switchover |{plugin[0]} writes unavailable | acknowledged lost | result |",
        f"|---|---|---|{plugin[1]}---|---|---|",
    ]
    for p in report.phases:
        lost = "not verified" if p.verification is None else str(p.verification.lost)
        call = f" {seconds(p.plugin_switchover)} |" if probed else ""
        lines.append(
            f"| {p.number} | {p.old_url} -> {p.new_url or '(none)'} | {seconds(p.switchover)} |{call}"
            f" {seconds(p.write_gap())} | {lost} | {'pass' if p.passed else 'FAIL'} |"
        )
    unverified = f" ({d['unverified_runs']} run(s) not verified)" if d["unverified_runs"] else ""
    lines += [
        "",
        f"- switchover over {d['measured']} measured run(s): median **{seconds(d['median'])}**, p95"
        f" **{seconds(d['p95'])}**, worst **{seconds(d['worst'])}** (best {seconds(d['best'])})",
        f"- acknowledged writes lost, summed over every run: **{d['lost_writes']}**{unverified}",
    ]
    return lines


def _restore_markdown(report: DrillReport) -> list[str]:
    lines = ["", "## Nodes after the drill", ""]
    if not report.restore:
        lines.append("- nothing left to restore: every stopped node was started again")
    for r in report.restore:
        state = "restored" if r.ok else "**NOT RESTORED**"
        lines.append(
            f"- {r.node} ({r.name}): {state}: {r.detail}" + ("" if r.ok else f"; by hand: `{r.command}`")
        )
    if report.final:
        healthy = "healthy" if report.final.get("healthy") else f"NOT healthy: {report.final.get('reason')}"
        lines.append(f"- nodes: {healthy}")
    return lines


def _everywhere(p: PhaseReport) -> str:
    if not p.everywhere:
        return "not checked"
    missing = [f"{v.node}: {v.lost} missing" for v in p.everywhere if not v.ok]
    if missing:
        return "**" + "; ".join(missing) + "**"
    return f"all on {len(p.everywhere)} node(s) following the new leader"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
