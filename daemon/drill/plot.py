"""The drill's timeline as a PNG: request outcomes over time, each node's role and HAProxy's view of it,
and the measured moments as vertical lines. Drawn from the JSON report alone, so any stored report.json
can be drawn again (`python -m daemon.drill.plot report.json out.png`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.typing import LineStyleType

ROLE_COLOURS = {
    "leader": "#2e7d32",
    "leader, not writable": "#f9a825",
    "replica": "#1565c0",
    "replica, disconnected": "#90caf9",
    "down": "#c62828",
}
MOMENTS: dict[str, tuple[str, str, LineStyleType]] = {
    "stop_issued": ("stop", "#c62828", "--"),
    "haproxy_marked_down": ("HAProxy: old leader down", "#ef6c00", ":"),
    "new_leader_primary": ("new leader /primary 200", "#6a1b9a", "-."),
    "first_write_ok": ("first write acknowledged", "#2e7d32", "-"),
    "first_plugin_call_ok": ("first plugin call answered", "#00838f", "-"),
    "start_issued": ("start old leader", "#616161", "--"),
    "old_leader_rejoined": ("old leader rejoined", "#1565c0", ":"),
}
OUTCOME_STYLES = {
    ("write", True): ("write ok", "#2e7d32", "o"),
    ("write", False): ("write failed", "#c62828", "x"),
    ("read", True): ("read ok", "#1565c0", "."),
    ("read", False): ("read failed", "#ef6c00", "x"),
}


def render(report: dict[str, Any], path: str) -> None:
    repeated = len(report["phases"]) > 1
    figure = Figure(figsize=(13, 12 if repeated else 9), layout="constrained")
    grid = figure.add_gridspec(3 if repeated else 2, 1, height_ratios=[3, 2, 2] if repeated else [3, 2])
    requests = figure.add_subplot(grid[0])
    roles = figure.add_subplot(grid[1], sharex=requests)
    requests.tick_params(labelbottom=False)
    if repeated:
        _distribution(figure.add_subplot(grid[2]), report)
    drill = report["drill"]
    figure.suptitle(f"hotstandby failover drill {drill['started_at']}: {drill['result'].upper()}")
    end = float(drill.get("finished_seconds") or 0.0)
    _requests(requests, report)
    _roles(roles, report, end)
    _moments([requests, roles], report)
    _legend(figure, requests)
    roles.set_xlabel("seconds since the drill started")
    roles.set_xlim(left=0, right=max(end, 1.0))
    figure.savefig(path, dpi=100)


def _requests(axes: Any, report: dict[str, Any]) -> None:
    points: dict[tuple[str, bool], tuple[list[float], list[float]]] = {}
    for phase in report["phases"]:
        names = phase["outcome_fields"]
        for row in phase["outcomes"]:
            o = dict(zip(names, row, strict=True))
            xs, ys = points.setdefault((o["kind"], bool(o["ok"])), ([], []))
            xs.append(o["started"])
            ys.append(max(o["ended"] - o["started"], 0.001))
    for key, (label, colour, marker) in OUTCOME_STYLES.items():
        xs, ys = points.get(key, ([], []))
        axes.scatter(xs, ys, s=14, c=colour, marker=marker, label=f"{label} ({len(xs)})", linewidths=1)
    if any(xs for xs, _ys in points.values()):
        axes.set_yscale("log")
    else:
        axes.text(0.5, 0.5, "no request was sent", transform=axes.transAxes, ha="center", va="center")
    axes.set_ylabel("request duration (s)")
    axes.set_title("requests through HAProxy (by start time)", loc="left", fontsize=10)
    axes.grid(True, alpha=0.3)


def _roles(axes: Any, report: dict[str, Any], end: float) -> None:
    timeline = report.get("timeline") or {}
    nodes = report["settings"]["nodes"]
    rows: list[str] = []
    for i, node in enumerate(nodes):
        changes = (timeline.get("nodes") or [[] for _ in nodes])[i]
        y = len(rows)
        rows.append(f"{node['name']}\nrole")
        _bars(axes, y, [(c[0], c[1]) for c in changes], end, ROLE_COLOURS)
        servers = (timeline.get("haproxy") or [[] for _ in nodes])[i]
        if servers:
            y = len(rows)
            inferred = report["settings"]["haproxy"]["view"] == "inferred from traffic"
            rows.append(f"{node['name']}\n{'served (inferred)' if inferred else 'in HAProxy'}")
            colours = {s: "#2e7d32" if s.startswith("UP") else "#c62828" for _, s in servers}
            _bars(axes, y, [(c[0], c[1]) for c in servers], end, colours)
    axes.set_yticks(range(len(rows)), rows, fontsize=8)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.invert_yaxis()
    axes.set_title("each node's role, and HAProxy's view of its server", loc="left", fontsize=10)


def _bars(axes: Any, y: int, changes: list[tuple[float, str]], end: float, colours: dict[str, str]) -> None:
    for (start, label), following in zip(changes, [*changes[1:], (end, "")], strict=True):
        width = max(following[0] - start, 0.01)
        axes.broken_barh([(start, width)], (y - 0.35, 0.7), color=colours.get(label, "#9e9e9e"), alpha=0.8)


def _moments(all_axes: list[Any], report: dict[str, Any]) -> None:
    for phase in report["phases"]:
        for key, (_label, colour, style) in MOMENTS.items():
            at = phase["moments"].get(key)
            if at is None:
                continue
            for axes in all_axes:
                axes.axvline(at, color=colour, linestyle=style, linewidth=1.2)
            all_axes[0].annotate(
                f"{phase['number']}", (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color=colour,
                ha="center", va="bottom",
            )  # fmt: skip


DIRECTION_COLOURS = ("#2e7d32", "#1565c0", "#6a1b9a", "#ef6c00")


def _distribution(axes: Any, report: dict[str, Any]) -> None:
    """One bar per failover (coloured by direction), with the median, p95 and worst as lines."""
    phases = report["phases"]
    names = {n["url"]: n["name"] for n in report["settings"]["nodes"]}
    directions: dict[str, str] = {}
    for phase in phases:
        label = f"{names.get(phase['old_leader'], phase['old_leader'])} -> "
        label += names.get(phase["new_leader"], phase["new_leader"] or "none")
        colour = directions.setdefault(label, DIRECTION_COLOURS[len(directions) % len(DIRECTION_COLOURS)])
        seconds = phase["durations"]["switchover"]
        if seconds is None:
            axes.plot(phase["number"], 0, marker="x", color="#c62828", markersize=10)
            continue
        axes.bar(phase["number"], seconds, color=colour, alpha=0.8)
        lost = (phase.get("verification") or {}).get("lost")
        if lost:
            axes.annotate(
                f"{lost} lost", (phase["number"], seconds), ha="center", va="bottom", color="#c62828"
            )
    d = report.get("distribution") or {}
    for key, style in (("median", "-"), ("p95", "--"), ("worst", ":")):
        if d.get(key) is not None:
            axes.axhline(d[key], color="#424242", linestyle=style, linewidth=1, label=f"{key} {d[key]:.2f}s")
    handles = [Patch(color=c, alpha=0.8, label=label) for label, c in directions.items()]
    axes.legend(handles=[*handles, *axes.get_legend_handles_labels()[0]], fontsize=8, loc="upper right")
    axes.set_xticks([p["number"] for p in phases])
    axes.set_xlabel("failover (run number)")
    axes.set_ylabel("switchover (s)")
    axes.set_title(
        f"switchover per failover (stop to first write acknowledged); acknowledged writes lost in all:"
        f" {d.get('lost_writes', '?')}",
        loc="left",
        fontsize=10,
    )
    axes.grid(True, axis="y", alpha=0.3)


def _legend(figure: Figure, requests: Any) -> None:
    """One legend under the plots: request outcomes, roles and HAProxy states, moments (by phase number)."""
    handles: list[Any] = list(requests.get_legend_handles_labels()[0])
    handles += [Patch(color=c, alpha=0.8, label=label) for label, c in ROLE_COLOURS.items()]
    handles += [
        Patch(color="#2e7d32", alpha=0.8, label="HAProxy: UP"),
        Patch(color="#c62828", alpha=0.8, label="HAProxy: DOWN"),
    ]
    handles += [Line2D([0], [0], color=c, linestyle=s, label=label) for label, c, s in MOMENTS.values()]
    figure.legend(handles=handles, loc="outside lower center", ncols=6, fontsize=8)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m daemon.drill.plot REPORT.json OUT.png", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        render(json.load(fh), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
