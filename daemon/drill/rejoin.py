"""After the switchover: start the old leader, watch it rejoin as the new leader's replica and catch up,
and (when the nodes cannot serve a file back) verify the acknowledged writes on it."""

from __future__ import annotations

from daemon.drill import verify
from daemon.drill.context import Context
from daemon.drill.errors import StopperError
from daemon.drill.monitor import Snapshot
from daemon.drill.preflight import Preflight
from daemon.drill.record import PhaseReport
from daemon.drill.steps import StepFailed


async def start_old(ctx: Context, report: PhaseReport) -> None:
    old = ctx.target(report.old)
    async with ctx.log.step(f"{report.name}: start {old.name}") as step:
        report.moments["start_issued"] = ctx.clock.now()
        try:
            report.outputs["start"] = await ctx.stopper.start(old)
        except StopperError as exc:
            raise StepFailed(str(exc)) from None
        report.moments["start_returned"] = ctx.clock.now()
        step.detail = ctx.stopper.describe("start", old)


def _rejoined(s: Snapshot, old: int, epoch: int) -> bool:
    st = s.nodes[old].status
    return st.role == "slave" and st.epoch >= epoch and bool(st.get("peer_connected"))


def _under_bound(s: Snapshot, old: int, epoch: int, max_lag: float) -> bool:
    replica = s.nodes[old].status
    return _rejoined(s, old, epoch) and bool(replica.get("synced")) and replica.lag < max_lag


def _in_step(s: Snapshot, old: int, new: int, leader_id: str | None, epoch: int) -> bool:
    """The replica follows this leader and has acknowledged all it produced (its `synced` flag alone
    may still be the one it kept from an earlier leader until the first batch of the new one)."""
    replica, leader = s.nodes[old].status, s.nodes[new].status
    produced = leader.get("produced_sequence")
    return (
        _rejoined(s, old, epoch)
        and bool(replica.get("synced"))
        and leader_id is not None
        and replica.get("master_node") == leader_id
        and leader.writable
        and int(leader.get("pending_changes") or 0) == 0
        and produced is not None
        and leader.get("acknowledged_sequence") == produced
    )


def _epoch(report: PhaseReport) -> int:
    return report.new_epoch or report.old_epoch + 1


def _left(ctx: Context, report: PhaseReport) -> float:
    start = report.moments["start_issued"] or ctx.clock.now()
    return max(0.0, start + ctx.config.thresholds.rejoin_timeout - ctx.clock.now())


async def rejoin(ctx: Context, report: PhaseReport) -> None:
    start = report.moments["start_issued"]
    assert start is not None
    old, epoch, max_lag = report.old, _epoch(report), ctx.config.thresholds.max_lag
    monitor = ctx.monitor
    async with ctx.log.step(f"{report.name}: rejoin") as step:
        answered = await monitor.wait(lambda s: s.nodes[old].reachable, start, _left(ctx, report))
        if answered is None:
            raise StepFailed(
                f"{report.old_url} did not answer within {ctx.config.thresholds.rejoin_timeout:g}s"
            )
        ctx.stopped.discard(old)
        report.moments["old_leader_answers"] = answered.at
        joined = await monitor.wait(lambda s: _rejoined(s, old, epoch), start, _left(ctx, report))
        if joined is None:
            raise StepFailed(f"{report.old_url} answers but did not rejoin as replica at epoch >= {epoch}")
        report.moments["old_leader_rejoined"] = joined.at
        caught = await monitor.wait(lambda s: _under_bound(s, old, epoch, max_lag), start, _left(ctx, report))
        if caught is None:
            raise StepFailed(f"{report.old_url} rejoined but its lag did not return under {max_lag:g}s")
        report.moments["lag_under_bound"] = caught.at
        stale = [s.at for s in monitor.snapshots if s.at >= start and s.nodes[old].primary]
        if stale:
            raise StepFailed(
                f"{report.old_url} answered 200 on /primary after its restart (at {stale[0]:.2f}s)"
            )
        step.detail = (
            f"{report.old_url} follows at epoch {joined.nodes[old].status.epoch}"
            f" {joined.at - start:.2f}s after the start, synced and under the lag bound after"
            f" {caught.at - start:.2f}s"
        )


async def verify_on_replica(ctx: Context, report: PhaseReport, pre: Preflight) -> None:
    assert report.load is not None
    old, new, epoch = report.old, report.new, _epoch(report)
    leader_id = pre.node_ids[new]
    async with ctx.log.step(f"{report.name}: verify acknowledged writes (on the rejoined replica)") as step:
        since = report.moments["start_issued"] or 0.0
        in_step = await ctx.monitor.wait(
            lambda s: _in_step(s, old, new, leader_id, epoch), since, _left(ctx, report)
        )
        if in_step is None:
            raise StepFailed(
                f"cannot verify: {report.old_url} never had everything {report.new_url} produced"
                f" within {ctx.config.thresholds.rejoin_timeout:g}s of its start"
            )
        report.moments["replica_in_step"] = in_step.at
        result = await verify.on_replica(ctx.nodes, report.old_url, report.load.acked)
        report.verification = result
        step.detail = result.summary()
        if not result.ok:
            raise StepFailed(step.detail)
