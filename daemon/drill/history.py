"""Past drills: each report's summary goes to the catalogue's event history (kind "drill", on the leader)
and to a local JSON-lines file; `hotstandby drill --history` reads both and merges them by drill id.

The catalogue part needs `POST /internal/events` on the nodes; a node without it answers 404 or 405 and
the report says the drill was not recorded there (never pretends it was). Reading uses
`GET /internal/events?kind=drill`. With SQLite catalogues each node keeps its own events (the leader
changes with every drill), so every node is asked; with PostgreSQL they share one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from daemon.client import Client, Unreachable
from daemon.drill.nodes import Nodes
from daemon.drill.report import DrillReport

EVENT_KIND = "drill"


async def record(
    nodes: Nodes, leader: str | None, report: DrillReport, history_file: str | None
) -> dict[str, str]:
    """Record the report's summary; says, per place, whether it was recorded."""
    summary = report.summary()
    done: dict[str, str] = {}
    if report.config.record_catalogue:
        done["catalogue"] = await _post(nodes, leader, summary, attachment(report, summary))
    if history_file:
        done["file"] = append(history_file, summary)
    return done


async def _post(
    nodes: Nodes, leader: str | None, summary: dict[str, Any], attachment: dict[str, Any] | None = None
) -> str:
    if leader is None:
        return "not recorded: no node leads now"
    event = {"kind": EVENT_KIND, **summary, **(attachment or {})}
    status, body = await nodes.send_json("POST", leader, "/internal/events", event)
    if status in (200, 201):
        return f"recorded on {leader} (event {body.get('id')})"
    if status in (404, 405):
        return f"not recorded: {leader} does not serve POST /internal/events (HTTP {status})"
    return f"not recorded: {leader} answered HTTP {status}: {body.get('detail') or body.get('title') or body}"


ATTACHMENT_BUDGET = 56 * 1024
"""An event is at most 64 KiB of JSON (daemon/store/routes.py): the summary, then this much more."""


def attachment(report: DrillReport, summary: dict[str, Any]) -> dict[str, Any]:
    """What the nodes' status page shows of a drill beyond its summary: the Markdown report and a
    timeline (each phase's moments, each node's role and HAProxy's view over time), cut to fit."""
    from daemon.drill.markdown import markdown  # imports the report's modules; not needed to read

    timeline = {
        "nodes": [t.url for t in report.config.targets],
        "phases": [
            {"name": p.name, "moments": {k: None if v is None else round(v, 3) for k, v in p.moments.items()}}
            for p in report.phases
        ],
        "roles": report.timeline.get("nodes") or [],
        "haproxy": report.timeline.get("haproxy") or [],
        "finished": round(report.finished, 3),
    }
    text = markdown(report)
    budget = ATTACHMENT_BUDGET - len(json.dumps(summary))
    if len(json.dumps(timeline)) > budget // 2:
        timeline["roles"], timeline["haproxy"] = [], []  # the moments alone still draw the switchover
    room = budget - len(json.dumps(timeline))
    if len(json.dumps(text)) > room:
        cut = "\n\n(cut here to fit the event history; report.md holds the whole report)\n"
        keep = len(text)
        while keep > 0 and len(json.dumps(text[:keep] + cut)) > room:
            keep -= max(256, len(json.dumps(text[:keep] + cut)) - room)
        text = text[: max(0, keep)] + cut
    return {"report_md": text, "timeline": timeline}


def append(path: str, summary: dict[str, Any]) -> str:
    full = os.path.expanduser(path)
    try:
        os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
        with open(full, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(summary, sort_keys=True) + "\n")
    except OSError as exc:
        return f"not recorded in {full}: {exc.strerror or exc}"
    return f"recorded in {full}"


# -- reading --------------------------------------------------------------------------------------------
def gather(
    client: Client, urls: Sequence[str], history_file: str | None, limit: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """(drills newest first, notes on what could not be read)."""
    found: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for url in urls:
        try:
            status, body = client.call("GET", url, f"/internal/events?kind={EVENT_KIND}&limit={limit}")
        except Unreachable as exc:
            notes.append(f"{url}: {exc}")
            continue
        events = body.get("events")
        if status != 200 or not isinstance(events, list):
            notes.append(f"{url}: GET /internal/events answered HTTP {status}")
            continue
        for event in events:
            if isinstance(event, dict):
                _merge(found, event, f"catalogue {url}")
    if history_file:
        _read_file(os.path.expanduser(history_file), found, notes)
    drills = sorted(found.values(), key=lambda d: str(d.get("started_at")), reverse=True)
    return drills[:limit], notes


def _merge(found: dict[str, dict[str, Any]], entry: dict[str, Any], source: str) -> None:
    key = str(entry.get("drill_id") or f"{source}#{entry.get('id')}")
    kept = found.setdefault(key, {**entry, "sources": []})
    kept["sources"].append(source)


def _read_file(path: str, found: dict[str, dict[str, Any]], notes: list[str]) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return
    except OSError as exc:
        notes.append(f"{path}: {exc.strerror or exc}")
        return
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            notes.append(f"{path}:{number}: not JSON, skipped")
            continue
        if isinstance(entry, dict):
            _merge(found, entry, "file")


def format_table(drills: Sequence[dict[str, Any]]) -> str:
    header = (
        "STARTED",
        "RESULT",
        "SWITCHOVER",
        "HAPROXY DOWN",
        "FAILED REQ",
        "LOST",
        "REJOIN",
        "RECORDED IN",
    )
    rows = [header]
    for d in drills:
        phases = [p for p in d.get("phases") or [] if isinstance(p, dict)]
        rows.append(
            (
                str(d.get("started_at", "?")),
                str(d.get("result", "?")),
                _each(phases, "switchover_seconds", "s"),
                _each(phases, "haproxy_detection_seconds", "s"),
                " / ".join(str(_failed(p)) for p in phases) or "-",
                _each(phases, "lost_writes", ""),
                _each(phases, "rejoin_seconds", "s"),
                ", ".join(d.get("sources") or []),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _each(phases: Sequence[dict[str, Any]], key: str, unit: str) -> str:
    values = []
    for p in phases:
        value = p.get(key)
        values.append(
            "-" if value is None else (f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}")
        )
    return " / ".join(values) or "-"


def _failed(phase: dict[str, Any]) -> int:
    failed = phase.get("failed_requests") or {}
    return int(failed.get("writes", 0)) + int(failed.get("reads", 0)) if isinstance(failed, dict) else 0
