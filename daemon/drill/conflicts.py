"""Conflicts that appeared during a phase, on any node, each with why it is there."""

from __future__ import annotations

from typing import Any

from daemon.drill.context import Context
from daemon.drill.preflight import Preflight
from daemon.drill.record import PhaseReport


async def collect(ctx: Context, report: PhaseReport, pre: Preflight) -> None:
    """Conflicts (divergent writes kept aside) that appeared during this phase, on any node."""
    async with ctx.log.step(f"{report.name}: conflicts") as step:
        found: list[dict[str, Any]] = []
        errors = []
        for index in report.parts.everyone:
            url = ctx.target(index).url
            try:
                code, body = await ctx.nodes.call("GET", url, "/internal/conflicts")
            except Exception as exc:  # the node may be the one that could not be restarted
                errors.append(f"{url}: {exc}")
                continue
            items = body.get("conflicts") if code == 200 else None
            if not isinstance(items, list):
                errors.append(f"{url}: HTTP {code}")
                continue
            earlier = pre.conflicts[index] if index < len(pre.conflicts) else None
            before = {_key(c) for c in (earlier or [])}
            found += [{"node": url, **c} for c in items if isinstance(c, dict) and _key(c) not in before]
        report.conflicts = [{**c, "class": classify(ctx, report, pre, c)} for c in found]
        report.conflicts_error = "; ".join(errors) or None
        step.detail = conflicts_text(report)
        if errors:
            step.detail += f" (not asked: {report.conflicts_error})"


CONFLICT_CLASSES = {
    "copy": "copies of acknowledged writes the new leader has",
    "unacknowledged": "drill writes the old leader took but never acknowledged",
    "differs": "acknowledged drill writes in another version",
    "other": "other divergent changes (not the drill's)",
}


def classify(ctx: Context, report: PhaseReport, pre: Preflight, conflict: dict[str, Any]) -> str:
    """Why a conflict is there: the old leader copies whatever it changed after the last point it knows
    its replica had, so acknowledged writes just before the stop show up as copies."""
    path, digest = str(conflict.get("path")), conflict.get("sha256")
    known = {w.path: w.sha256 for w in (report.load.acked.values() if report.load else [])}
    if pre.probe is not None:
        known[pre.probe[0]] = pre.probe[1]
    lost = set(report.verification.missing + report.verification.corrupted) if report.verification else set()
    if path in known:
        return "copy" if digest == known[path] and path not in lost else "differs"
    if path.startswith(f"{ctx.config.load.prefix}/{ctx.drill_id}/"):
        return "unacknowledged"
    return "other"


def conflicts_text(report: PhaseReport) -> str:
    counts = {kind: 0 for kind in CONFLICT_CLASSES}
    for conflict in report.conflicts:
        counts[conflict["class"]] += 1
    parts = [f"{n} {CONFLICT_CLASSES[kind]}" for kind, n in counts.items() if n]
    return f"{len(report.conflicts)} new conflict(s)" + (f": {', '.join(parts)}" if parts else "")


def _key(conflict: dict[str, Any]) -> tuple[str, str, str]:
    return (str(conflict.get("epoch")), str(conflict.get("path")), str(conflict.get("sha256")))
