"""One failover (or fail-back): load through HAProxy, stop the leader, measure, settle, verify, check the
other replicas follow the new leader, start the old leader again, watch it rejoin, check every node has
the acknowledged writes, report conflicts.

Moments are seconds since the drill started (the report gives the wall-clock start). A failed step ends
the phase; whatever it stopped is started again by the drill's restore, which always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from daemon.drill import conflicts, rejoin, verify
from daemon.drill.context import Context
from daemon.drill.errors import StepFailed, StopperError
from daemon.drill.load import Load
from daemon.drill.monitor import Snapshot
from daemon.drill.parts import Parts
from daemon.drill.plugin_probe import PluginProbe
from daemon.drill.preflight import Preflight
from daemon.drill.record import PhaseReport
from daemon.tls import client_context

AFTER_RESUME_GRACE = 3.0
"""How long, once writes resumed, to wait for the other moments (HAProxy's marks) still to come."""


async def run_phase(ctx: Context, pre: Preflight, number: int, name: str) -> PhaseReport:
    urls = tuple(t.url for t in ctx.config.targets)
    report = PhaseReport(number, name, Parts.at_start(pre.leader, len(urls)), urls, pre.epoch)
    load = Load(
        ctx.config.haproxy.url,
        ctx.config.server_key,
        ctx.config.load,
        ctx.clock,
        ctx.drill_id,
        number,
        pre.read_mode,
        ctx.config.tls,
    )
    report.load = load
    if ctx.config.plugin_call is not None:
        report.plugin_probe = PluginProbe(
            ctx.config.plugin_call, ctx.clock, ctx.config.poll_interval, client_context(ctx.config.tls)
        )
    # Lost writes are a finding, not a reason to leave the old leader down: after the switchover,
    # verification failing does not stop the start and rejoin; anything else failing ends the phase.
    if await _done(report, _switch(ctx, report, load)):
        await _done(report, _verify_on_leader(ctx, report, pre))
        if report.parts.others:
            await _done(report, rejoin.others_follow(ctx, report, pre))
        started = await _done(report, rejoin.start_old(ctx, report))
        rejoined = started and await _done(report, rejoin.rejoin(ctx, report))
        if rejoined:
            await _done(report, rejoin.verify_everywhere(ctx, report, pre))
    await conflicts.collect(ctx, report, pre)
    _judge(ctx, report)
    return report


async def _done(report: PhaseReport, step: Coroutine[Any, Any, None]) -> bool:
    """Run one step; a StepFailed becomes one of the phase's failures."""
    try:
        await step
    except StepFailed as exc:
        report.failures.append(str(exc))
        return False
    return True


async def _switch(ctx: Context, report: PhaseReport, load: Load) -> None:
    clock, log, config = ctx.clock, ctx.log, ctx.config
    old = ctx.target(report.old)
    report.moments["load_started"] = clock.now()
    task = asyncio.create_task(load.run(), name="drill-load")
    probe = report.plugin_probe
    probing = None if probe is None else asyncio.create_task(probe.run(), name="drill-plugin-calls")
    try:
        async with log.step(f"{report.name}: load through HAProxy") as step:
            await _watch(task, config.warmup)
            # A loaded pair may answer its first write after the warm-up: give it one request's time.
            patience = clock.now() + config.load.request_timeout
            while not load.acked and clock.now() < patience:
                await _watch(task, 0.05)
            acked = len(load.acked)
            if not acked:
                waited = config.warmup + config.load.request_timeout
                raise StepFailed(f"no write acknowledged in {waited:g}s: {load.last_write_error()}")
            step.detail = f"{acked} writes acknowledged, {len(load.outcomes) - acked} other requests"
            if probe is not None:
                if not probe.ok_before(clock.now()):
                    raise StepFailed(f"no plugin call succeeded before the stop: {probe.last_error()}")
                step.detail += f", {probe.ok_before(clock.now())} plugin calls answered"
        async with log.step(f"{report.name}: stop {old.name} ({ctx.stopper.kind})") as step:
            report.moments["stop_issued"] = clock.now()
            ctx.stopped.add(report.old)
            try:
                report.outputs["stop"] = await ctx.stopper.stop(old)
            except StopperError as exc:
                raise StepFailed(str(exc)) from None
            report.moments["stop_returned"] = clock.now()
            step.detail = ctx.stopper.describe("stop", old)
        async with log.step(f"{report.name}: switchover") as step:
            await _measure(ctx, report, load)
            step.detail = _switch_text(report, ctx.monitor.server_names is not None)
        async with log.step(f"{report.name}: settle") as step:
            await _watch(task, config.settle)
            step.detail = f"load kept on for {config.settle:g}s"
    finally:
        load.stop()
        with contextlib.suppress(Exception):
            await task
        if probe is not None and probing is not None:
            probe.stop()
            probing.cancel()
            with contextlib.suppress(BaseException):
                await probing
        report.moments["load_stopped"] = clock.now()


async def _watch(task: asyncio.Task[None], seconds: float) -> None:
    """Sleep while the load runs; a load that dies fails the step."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        exc = task.exception()
        raise StepFailed(f"the load stopped: {exc!r}" if exc else "the load stopped by itself")


async def _measure(ctx: Context, report: PhaseReport, load: Load) -> None:
    stop = report.moments["stop_issued"]
    assert stop is not None
    old, replicas = report.old, report.parts.replicas
    limit = ctx.config.thresholds.max_switchover
    remaining = max(0.0, limit - (ctx.clock.now() - stop))
    monitor = ctx.monitor

    def marked_down(s: Snapshot) -> bool:
        status = s.servers[old]
        return status is not None and status.startswith(("DOWN", "MAINT"))

    def promoted(s: Snapshot) -> bool:
        return _primary_replica(s, replicas) is not None

    def new_up(s: Snapshot) -> bool:
        return any((s.servers[i] or "").startswith("UP") for i in replicas)

    waits = {"new_leader_primary": monitor.wait(promoted, stop, remaining)}
    if monitor.server_names is not None:
        waits["haproxy_marked_down"] = monitor.wait(marked_down, stop, remaining)
    if monitor.server_names is not None or monitor.inferred:
        waits["haproxy_new_leader_up"] = monitor.wait(new_up, stop, remaining)
    tasks = {name: asyncio.create_task(wait) for name, wait in waits.items()}
    try:
        first = await load.wait_write_ok(stop, report.old_epoch + 1, remaining)
        await asyncio.wait(set(tasks.values()), timeout=AFTER_RESUME_GRACE if first else 0)
    finally:
        for task in tasks.values():
            task.cancel()
    snapshots: dict[str, Snapshot | None] = {}
    for name, task in tasks.items():
        snapshot = task.result() if task.done() and not task.cancelled() else None
        snapshots[name] = snapshot
        report.moments[name] = None if snapshot is None else snapshot.at
    new = _new_leader(report, snapshots["new_leader_primary"], monitor.latest)
    latest = monitor.latest
    if new is not None and latest is not None and latest.nodes[new].reachable:
        report.new_epoch = latest.nodes[new].status.epoch
    if first is None:
        raise StepFailed(
            f"writes through HAProxy did not resume within {limit:g}s of the stop"
            f" (last error: {load.last_write_error()})"
        )
    report.moments["first_write_ok"] = first.ended
    report.new_epoch = first.epoch
    if new is None:
        raise StepFailed("writes resumed, but no replica was seen answering 200 on /primary")
    await _measure_plugin_calls(ctx, report, stop, limit)


async def _measure_plugin_calls(ctx: Context, report: PhaseReport, stop: float, limit: float) -> None:
    """What a Dify user feels: the new leader's plugin daemon must start and launch before calls work."""
    probe = report.plugin_probe
    if probe is None:
        return
    remaining = max(0.0, limit - (ctx.clock.now() - stop))
    # A call begun before the stop command returned may have been answered by the old leader.
    stopped = report.moments["stop_returned"] or stop
    call = await probe.wait_ok_after(stopped, remaining)
    if call is None:
        raise StepFailed(
            f"plugin calls through HAProxy did not succeed again within {limit:g}s of the stop"
            f" (last error: {probe.last_error()})"
        )
    report.moments["first_plugin_call_ok"] = call.ended


def _primary_replica(s: Snapshot, replicas: tuple[int, ...]) -> int | None:
    return next((i for i in replicas if s.nodes[i].primary is True), None)


def _new_leader(report: PhaseReport, promoted: Snapshot | None, latest: Snapshot | None) -> int | None:
    """Which replica took over: the first seen answering 200 on /primary (else the one leading now);
    a pair's only replica is known from the start."""
    if report.parts.new is not None:
        return report.parts.new
    for snapshot in (promoted, latest):
        found = None if snapshot is None else _primary_replica(snapshot, report.parts.replicas)
        if found is not None:
            report.parts = report.parts.promoted(found)
            return found
    return None


def _switch_text(report: PhaseReport, haproxy_view: bool) -> str:
    def show(moment: str) -> str:
        value = report.since_stop(moment)
        return "not seen" if value is None else f"{value:.2f}s"

    down = f"HAProxy marked the old leader down {show('haproxy_marked_down')}, " if haproxy_view else ""
    which = f" {report.new_url}" if len(report.parts.replicas) > 1 and report.new_url else ""
    calls = f"; plugin calls {show('first_plugin_call_ok')}" if report.plugin_probe is not None else ""
    return (
        f"writes resumed {show('first_write_ok')} after the stop ({down}the new leader{which} answered"
        f" /primary {show('new_leader_primary')}){calls}"
    )


async def _verify_on_leader(ctx: Context, report: PhaseReport, pre: Preflight) -> None:
    if pre.read_mode != "file":
        return
    assert report.load is not None and report.new_url is not None
    async with ctx.log.step(f"{report.name}: verify acknowledged writes on the new leader") as step:
        result = await verify.on_leader(ctx.nodes, report.new_url, report.load.acked)
        report.verification = result
        step.detail = result.summary()
        if not result.ok:
            raise StepFailed(step.detail)


def _judge(ctx: Context, report: PhaseReport) -> None:
    limits = ctx.config.thresholds
    failures = report.failures
    switchover = report.switchover
    if switchover is not None and switchover >= limits.max_switchover:
        failures.append(f"switchover took {switchover:.2f}s, not under {limits.max_switchover:g}s")
    result = report.verification
    if result is None and report.load is not None and report.load.acked and not failures:
        failures.append("acknowledged writes were not verified")
    elif result is not None and result.lost:
        failures.append(f"{result.lost} acknowledged write(s) lost (must be 0)")
    for elsewhere in report.everywhere:
        if elsewhere is not result and elsewhere.lost:
            failures.append(f"{elsewhere.lost} acknowledged write(s) missing on {elsewhere.node} (must be 0)")
    if report.load is not None and report.load.bad_reads:
        failures.append(f"{report.load.bad_reads} read(s) returned other content than the acknowledged write")
    window_end = report.moments["lag_under_bound"] or ctx.clock.now()
    start = report.moments["load_started"] or 0.0
    report.both_primary = [t for t in ctx.monitor.both_primary if start <= t <= window_end]
    if report.both_primary:
        failures.append(f"two nodes answered 200 on /primary at {report.both_primary[0]:.2f}s (split brain)")
    if ctx.monitor.server_names is not None and report.moments["haproxy_marked_down"] is None and switchover:
        failures.append("HAProxy was never seen marking the old leader down")
