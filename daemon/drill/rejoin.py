"""After the switchover: check the other replicas follow the new leader, start the old leader, watch it
rejoin as the new leader's replica and catch up, then check the acknowledged writes on every node that
follows the new leader (and, when the nodes cannot serve a file back, count that as the verification)."""

from __future__ import annotations

from daemon.drill import verify
from daemon.drill.context import Context
from daemon.drill.errors import StepFailed, StopperError
from daemon.drill.monitor import Snapshot
from daemon.drill.preflight import Preflight
from daemon.drill.record import PhaseReport
from daemon.roles import shown_as_replica


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


def _rejoined(s: Snapshot, node: int, epoch: int) -> bool:
    st = s.nodes[node].status
    return shown_as_replica(st.role) and st.epoch >= epoch and bool(st.get("peer_connected"))


def _follows(s: Snapshot, node: int, leader_id: str | None, epoch: int) -> bool:
    """The node is a connected replica of this leader (not of the one the drill stopped)."""
    return (
        _rejoined(s, node, epoch)
        and leader_id is not None
        and s.nodes[node].status.get("master_node") == leader_id
    )


def _under_bound(s: Snapshot, old: int, epoch: int, max_lag: float) -> bool:
    replica = s.nodes[old].status
    return _rejoined(s, old, epoch) and bool(replica.get("synced")) and replica.lag < max_lag


def _in_step(s: Snapshot, followers: tuple[int, ...], new: int, leader_id: str | None, epoch: int) -> bool:
    """Every follower follows this leader, and the leader has every change acknowledged by all its
    replicas (a `synced` flag alone may still be the one kept from an earlier leader until the first
    batch of the new one)."""
    leader = s.nodes[new].status
    produced = leader.get("produced_sequence")
    return (
        all(_follows(s, i, leader_id, epoch) and bool(s.nodes[i].status.get("synced")) for i in followers)
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


def _new(report: PhaseReport) -> int:
    new = report.parts.new
    assert new is not None, "the switchover step names the new leader or fails"
    return new


async def others_follow(ctx: Context, report: PhaseReport, pre: Preflight) -> None:
    """The replicas that were not promoted now follow the new leader (while the old one is still down)."""
    stop = report.moments["stop_issued"] or 0.0
    others, epoch, leader_id = report.parts.others, _epoch(report), pre.node_ids[_new(report)]
    timeout = ctx.config.thresholds.rejoin_timeout
    async with ctx.log.step(f"{report.name}: other replicas follow {report.new_url}") as step:
        seen = await ctx.monitor.wait(
            lambda s: all(_follows(s, i, leader_id, epoch) for i in others), stop, timeout
        )
        if seen is None:
            behind = ", ".join(report.other_urls)
            raise StepFailed(
                f"{behind} did not follow {report.new_url} at epoch >= {epoch} within {timeout:g}s"
            )
        report.moments["other_replicas_follow"] = seen.at
        step.detail = (
            f"{', '.join(report.other_urls)} follow(s) at epoch {epoch},"
            f" {report.since_stop('other_replicas_follow') or 0:.2f}s after the stop"
        )


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


async def verify_everywhere(ctx: Context, report: PhaseReport, pre: Preflight) -> None:
    """Once every follower has all the new leader produced, every acknowledged write is on each of them:
    read back when the nodes serve files, else by hash through the replication API (on the old leader
    that is then the phase's verification: no other read reached the new leader's files)."""
    assert report.load is not None
    new, followers, epoch = _new(report), report.parts.followers, _epoch(report)
    leader_id = pre.node_ids[new]
    async with ctx.log.step(f"{report.name}: verify acknowledged writes on every node") as step:
        since = report.moments["start_issued"] or 0.0
        in_step = await ctx.monitor.wait(
            lambda s: _in_step(s, followers, new, leader_id, epoch), since, _left(ctx, report)
        )
        if in_step is None:
            raise StepFailed(
                f"cannot verify: {', '.join(report.urls[i] for i in followers)} never had everything"
                f" {report.new_url} produced within {ctx.config.thresholds.rejoin_timeout:g}s of the start"
            )
        report.moments["every_node_in_step"] = report.moments["replica_in_step"] = in_step.at
        for index in followers:
            url = report.urls[index]
            if pre.read_mode == "file":
                result = await verify.read_back(ctx.nodes, url, report.load.acked)
            elif index == report.old:
                result = await verify.on_replica(ctx.nodes, url, report.load.acked)
                report.verification = result
            else:
                method = "hashes on a replica that followed the new leader and caught up (indirect)"
                result = await verify.on_replica(ctx.nodes, url, report.load.acked, method)
            report.everywhere.append(result)
        step.detail = "; ".join(f"{r.node}: {r.summary()}" for r in report.everywhere)
        if not all(r.ok for r in report.everywhere):
            raise StepFailed(step.detail)
