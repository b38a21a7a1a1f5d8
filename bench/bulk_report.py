"""Issue 15's table: bulk replication side by side with rsync -a, rsync -a --fsync and lsyncd, with ratios.

Ratios of times are speeds: the other tool's time divided by ours (1.0x = as fast, above = faster).
Ratios of bytes and memory are ours divided by theirs (below 1.0x = fewer). Every cell is a median
of the run's runs; "-" where a scenario was not run or a tool does not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HS, RSYNC, RSYNC_FSYNC, LSYNCD = "hotstandby", "rsync", "rsync-fsync", "lsyncd-delay0"
MIB = 1 << 20


@dataclass(frozen=True)
class Line:
    workload: str
    unit: str
    values: dict[str, float | None]
    """Tool -> median (hotstandby, rsync, rsync-fsync, lsyncd-delay0)."""
    speed: bool = True
    """A time (ratios are speeds) or an amount (ratios are ours / theirs)."""

    def ratio(self, other: str) -> float | None:
        ours, theirs = self.values.get(HS), self.values.get(other)
        if not ours or not theirs:
            return None
        return theirs / ours if self.speed else ours / theirs


def _get(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, int | float) and not isinstance(node, bool) else None


def _tools(result: dict[str, Any], *path: str) -> dict[str, float | None]:
    tools = result.get("tools", {})
    return {tool: _get(tools, tool, "median", *path) for tool in (HS, RSYNC, RSYNC_FSYNC, LSYNCD)}


def _initial(results: dict[str, Any], name: str, label: Callable[[dict[str, Any]], str]) -> list[Line]:
    result = results.get(name)
    if not result or "error" in result:
        return []
    return [Line(label(result["params"]["tree"]), "s", _tools(result, "seconds"))]


def lines(results: dict[str, Any]) -> list[Line]:
    found: list[Line] = []
    found += _initial(results, "full", lambda t: f"initial sync, mixed tree {t['bytes'] / MIB:,.0f} MiB")
    found += _initial(results, "small", lambda t: f"initial sync, {t['files']:,} small files")
    scale = results.get("scale")
    if scale and "error" not in scale:
        files = scale["params"]["tree"]["files"]
        from bench.report import scale_peak_rss

        seed = {
            HS: _get(scale, "initial", "initial_sync_seconds"),
            RSYNC: _get(scale, "rsync_seed", "seconds"),
        }
        found.append(Line(f"seed, {files:,} files", "s", seed))
        passes = {
            HS: _get(scale, "initial", "no_change_pass_median_seconds"),
            RSYNC: _get(scale, "tools", RSYNC, "median", "warm", "dry_run_seconds"),
        }
        found.append(Line(f"no-change pass, {files:,} files (rsync -an)", "s", passes))
        rss = {
            HS: scale_peak_rss(scale),
            LSYNCD: _get(scale, "tools", LSYNCD, "median", "cold", "peak_rss_mib"),
        }
        found.append(Line(f"peak RSS, {files:,} files (either node)", "MiB", rss, speed=False))
    burst = results.get("burst")
    if burst and "error" not in burst:
        label = f"burst of {burst['params']['files']:,} files until identical"
        found.append(Line(label, "s", _tools(burst, "seconds")))
    delta = results.get("delta")
    if delta and "error" not in delta:
        for edit, tools in delta["edits"].items():
            wire = {tool: _get(tools, tool, "median", "wire_bytes") for tool in (HS, RSYNC, LSYNCD)}
            found.append(Line(f"delta, {edit}: bytes on the wire", "B", wire, speed=False))
            took = {tool: _get(tools, tool, "median", "seconds") for tool in (HS, RSYNC, RSYNC_FSYNC, LSYNCD)}
            found.append(Line(f"delta, {edit}: time", "s", took))
    lag = results.get("lag")
    if lag and "error" not in lag:
        for rate, tools in lag["rates"].items():
            p99 = {tool: _get(tools, tool, "median", "p99_ms") for tool in (HS, LSYNCD)}
            found.append(Line(f"streaming lag p99 at {rate} files/s", "ms", p99))
    start = results.get("start")
    if start and "error" not in start:
        for role in ("master", "slave"):
            value = {HS: _get(start, "tools", HS, "median", f"{role}_seconds")}
            found.append(Line(f"start to healthy, {role}", "s", value))
        files = start.get("params", {}).get("files")
        for role in ("master", "slave") if files else ():
            value = {HS: _get(start, "tools", HS, "median", f"{role}_seconds_{files}_files")}
            found.append(Line(f"start to healthy, {role}, {files:,} files", "s", value))
    return found


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B" or value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(results: dict[str, Any]) -> str:
    found = lines(results)
    if not found:
        return ""
    head = (
        "workload (issue 15)",
        "hotstandby",
        "rsync -a",
        "rsync --fsync",
        "lsyncd d0",
        "vs rsync -a",
        "vs --fsync",
    )
    rows = [head]
    for line in found:
        cells = [f"{line.workload} ({line.unit})"]
        cells += [_num(line.values.get(tool), line.unit) for tool in (HS, RSYNC, RSYNC_FSYNC, LSYNCD)]
        cells += [_ratio(line.ratio(RSYNC)), _ratio(line.ratio(RSYNC_FSYNC))]
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    text = [
        "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    text.insert(1, "-" * len(text[0]))
    text.append("ratios: times as speeds (their time / ours, 1.0x = as fast); bytes and RSS as ours / theirs")
    return "\n".join(text)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(name, goal, value, met) for issue 15's targets that this run measured."""
    found: list[tuple[str, str, str, bool | None]] = []
    by_name = {line.workload: line for line in lines(results)}
    for line in by_name.values():
        if line.workload.startswith("initial sync"):
            for other, goal in ((RSYNC_FSYNC, 1.0), (RSYNC, 0.8)):
                r = line.ratio(other)
                name = (
                    f"{line.workload}: speed vs {'rsync -a --fsync' if other == RSYNC_FSYNC else 'rsync -a'}"
                )
                found.append((name, f">= {goal}x", _ratio(r), None if r is None else r >= goal))
        elif line.workload.startswith("seed,"):
            r = line.ratio(RSYNC)
            found.append(
                (
                    line.workload + ": speed vs rsync -a",
                    ">= 0.83x (<= 1.2x its time)",
                    _ratio(r),
                    None if r is None else r >= 1 / 1.2,
                )
            )
        elif line.workload.startswith("no-change pass"):
            r = line.ratio(RSYNC)
            found.append(
                (
                    line.workload + ": speed vs rsync -an",
                    ">= 1.0x",
                    _ratio(r),
                    None if r is None else r >= 1.0,
                )
            )
        elif line.workload.startswith("peak RSS"):
            v = line.values.get(HS)
            found.append(
                (line.workload, "< 100 MiB", _num(v, "MiB") + " MiB", None if v is None else v < 100)
            )
        elif line.workload.startswith("burst"):
            r = line.ratio(RSYNC)
            found.append(
                (
                    line.workload + ": vs one-shot rsync -a",
                    ">= 1.0x",
                    _ratio(r),
                    None if r is None else r >= 1.0,
                )
            )
        elif line.workload.startswith("delta") and line.unit == "B":
            r = line.ratio(RSYNC)
            found.append((line.workload + " vs rsync", "<= 1.5x", _ratio(r), None if r is None else r <= 1.5))
        elif line.workload.startswith("delta"):
            r = line.ratio(RSYNC)
            found.append((line.workload + " vs rsync", ">= 1.0x", _ratio(r), None if r is None else r >= 1.0))
        elif line.workload.startswith("streaming lag") and line.workload.endswith(" 1000 files/s"):
            v = line.values.get(HS)
            found.append((line.workload, "< 20 ms", _num(v, "ms") + " ms", None if v is None else v < 20))
        elif line.workload.startswith("start to healthy"):
            v = line.values.get(HS)
            found.append((line.workload, "< 0.5 s", _num(v, "s") + " s", None if v is None else v < 0.5))
    return found
