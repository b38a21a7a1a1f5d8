"""The drill, top to bottom: preflight -> failover -> (fail-back) -> restore -> report.

`run_drill(config)` is the Python API (the CLI calls it too): it returns the DrillReport, whose
`exit_status` is 0 only on a pass. Whatever happens after preflight (a failed step, an error,
cancellation by SIGINT or SIGTERM), every node the drill stopped and that does not answer is started
again, and the report says what could not be restored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import os
import secrets
import traceback

from daemon import ctl
from daemon.client import AsyncClient
from daemon.drill import history
from daemon.drill.config import DrillConfig
from daemon.drill.context import Context
from daemon.drill.errors import StepFailed, StopperError
from daemon.drill.haproxy import make_view
from daemon.drill.markdown import markdown
from daemon.drill.monitor import Monitor
from daemon.drill.nodes import Nodes
from daemon.drill.phase import run_phase
from daemon.drill.preflight import Preflight, preflight
from daemon.drill.report import DrillReport, Restore
from daemon.drill.steps import Clock, Printer, StepLog, print_line
from daemon.drill.stoppers import Stopper, make_stopper
from daemon.tls import client_context

PLOT_SKIPPED = (
    "matplotlib is not installed (the daemon image leaves it out): install hotstandby[drill] or use"
    " the hotstandby:<version>-drill image for timeline.png"
)
RESTORE_POLL = 0.5


def new_drill_id(clock: Clock) -> str:
    stamp = dt.datetime.fromtimestamp(clock.unix0, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


async def run_drill(
    config: DrillConfig, stopper: Stopper | None = None, out: Printer = print_line
) -> DrillReport:
    clock = Clock()
    drill_id = new_drill_id(clock)
    stopper = stopper or make_stopper(config.stopper)
    log = StepLog(clock, out)
    tls = client_context(config.tls)
    async with AsyncClient(tls, config.server_key) as http:
        nodes = Nodes(http)
        view = make_view(config.haproxy, http.session)
        monitor = Monitor(nodes, config.targets, view, clock, config.poll_interval)
        ctx = Context(config, drill_id, clock, log, nodes, view, monitor, stopper)
        report = DrillReport(drill_id, clock.unix0, config, stopper.kind)
        report.commands = {
            t.url: {"stop": stopper.describe("stop", t), "start": stopper.describe("start", t)}
            for t in config.targets
        }
        urls = [t.url for t in config.targets]
        log.note(f"drill {drill_id}: {', '.join(urls[:-1])} and {urls[-1]} via {config.haproxy.url}")
        watcher = asyncio.create_task(monitor.run(), name="drill-monitor")
        try:
            await _drive(ctx, report)
        except asyncio.CancelledError:
            report.interrupted = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            out(traceback.format_exc())
        finally:
            try:
                await _restore(ctx, report)
                report.final = await _final(ctx)
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                report.steps = log.records
                report.timeline = monitor.timeline()
                report.finished = clock.now()
                await _outputs(ctx, report)
            finally:
                watcher.cancel()
                nodes.close()
    return report


async def _drive(ctx: Context, report: DrillReport) -> None:
    """The failovers, one after another: each stops whichever node leads by then, so with two nodes
    they alternate direction. A phase that fails ends the drill (what follows would measure a broken
    pair)."""
    runs = ctx.config.runs
    pre = await _preflight(ctx, report, "preflight", both=runs > 1)
    for number in range(1, runs + 1):
        if number > 1:
            before = "fail-back" if runs == 2 else phase_name(number, runs)
            pre = await _preflight(ctx, report, f"preflight before {before}", both=False)
        if not pre.ok:
            return
        phase = await run_phase(ctx, pre, number, phase_name(number, runs))
        report.phases.append(phase)
        if not phase.passed:
            return


def phase_name(number: int, runs: int) -> str:
    """failover (and failback, its return) for one or two; run N for a repeated drill."""
    if runs <= 2:
        return "failover" if number == 1 else "failback"
    return f"run {number}"


async def _preflight(ctx: Context, report: DrillReport, name: str, both: bool) -> Preflight:
    result = Preflight()
    try:
        async with ctx.log.step(name) as step:
            result = await preflight(
                ctx,
                name.replace(" ", "-"),
                range(len(ctx.config.targets)) if both else ([] if report.preflight else None),
            )
            for warning in result.warnings:
                ctx.log.note(f"warning: {warning}")
            if not result.ok:
                raise StepFailed("; ".join(result.problems))
            leader = ctx.target(result.leader)
            step.detail = f"{leader.url} leads at epoch {result.epoch}; reads: {result.read_mode}"
    except StepFailed:
        pass
    if report.preflight is None:
        report.preflight = result
    elif not result.ok:
        report.error = f"{name} failed: {'; '.join(result.problems)}"
    return result


async def _restore(ctx: Context, report: DrillReport) -> None:
    """Start every node the drill stopped that does not answer now, and wait until it does."""
    for index in sorted(ctx.stopped):
        target = ctx.target(index)
        command = ctx.stopper.describe("start", target)
        try:
            async with ctx.log.step(f"restore {target.name}") as step:
                if await ctx.nodes.answers(target.url, "/health") is not None:
                    step.detail = "it answers already"
                else:
                    try:
                        await ctx.stopper.start(target)
                    except StopperError as exc:
                        raise StepFailed(f"start failed: {exc}") from None
                    await _wait_answers(ctx, target.url)
                    step.detail = f"started ({command}); it answers /health"
            ctx.stopped.discard(index)
            report.restore.append(Restore(target.url, target.name, True, step.detail, command))
        except StepFailed as exc:
            report.restore.append(Restore(target.url, target.name, False, str(exc), command))


async def _wait_answers(ctx: Context, url: str) -> None:
    timeout = ctx.config.thresholds.rejoin_timeout
    deadline = ctx.clock.now() + timeout
    while await ctx.nodes.answers(url, "/health") is None:
        if ctx.clock.now() >= deadline:
            raise StepFailed(f"started, but {url} did not answer /health within {timeout:g}s")
        await asyncio.sleep(RESTORE_POLL)


async def _final(ctx: Context) -> dict[str, object]:
    statuses = await ctx.nodes.statuses([t.url for t in ctx.config.targets])
    problem = ctl.assess(statuses, ctx.config.thresholds.max_lag)
    leader = next((s.url for s in statuses if s.writable), None)
    return {
        "healthy": problem is None,
        "reason": problem,
        "leader": leader,
        "nodes": [
            {"url": s.url, "role": s.role, "epoch": s.epoch if s.reachable else None, "error": s.error}
            for s in statuses
        ],
    }


async def _outputs(ctx: Context, report: DrillReport) -> None:
    folder = os.path.join(ctx.config.out_dir, f"hotstandby-drill-{report.drill_id}")
    report.files = {
        "dir": folder,
        "json": os.path.join(folder, "report.json"),
        "markdown": os.path.join(folder, "report.md"),
        "png": os.path.join(folder, "timeline.png"),
    }
    leader = report.final.get("leader")
    report.history = await history.record(
        ctx.nodes, leader if isinstance(leader, str) else None, report, ctx.config.history_file
    )
    await asyncio.to_thread(write_files, report)


def write_files(report: DrillReport) -> None:
    files = report.files
    try:
        os.makedirs(files["dir"], exist_ok=True)
        if importlib.util.find_spec("matplotlib") is None:
            # The daemon image leaves the plotting stack out: the report says so, and still passes.
            report.plot_skipped = PLOT_SKIPPED
            files.pop("png", None)
        else:
            from daemon.drill import plot  # matplotlib: loaded only when there is something to draw

            plot.render(report.to_json(), files["png"])
    except Exception as exc:  # matplotlib can fail in many ways; the JSON and Markdown still matter
        report.file_errors.append(f"timeline plot not written: {type(exc).__name__}: {exc}")
    for kind, text in (("json", json.dumps(report.to_json(), indent=1)), ("markdown", markdown(report))):
        try:
            with open(files[kind], "w", encoding="utf-8") as fh:
                fh.write(text + ("\n" if kind == "json" else ""))
        except OSError as exc:
            report.file_errors.append(f"{files[kind]} not written: {exc.strerror or exc}")
