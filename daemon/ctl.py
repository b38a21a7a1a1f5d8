"""Operator commands against running nodes: `status`, `promote`, `demote` and `switchover`.

Each command asks the nodes' /internal API (with SERVER_KEY) and prints what it saw or did; nothing
is kept between runs. Exit status: 0 done or healthy, 1 refused, unhealthy or aborted, 2 usage errors
(raised here as UsageError, a ConfigError, and printed as one line by the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

from daemon.client import (
    REQUEST_TIMEOUT,
    Client,
    ClientSettings,
    Refused,
    Unreachable,
    base_url,
    local_url,
)
from daemon.errors import UsageError
from daemon.roles import shown_as_leader, shown_as_replica

ROLE_REQUEST_TIMEOUT = 15.0  # the daemon waits up to 10 s for its control loop to take a request
POLL_INTERVAL = 0.1
SETTLE_SECONDS = 0.5
"""Switchover: how long the replica must stay caught up, with no new change, before promotion (a write
that passed the leader's check just before the drain, or a late watcher event, lands within this)."""


def _remaining(deadline: float) -> float:
    return min(REQUEST_TIMEOUT, max(0.2, deadline - time.monotonic()))


# -- status ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeStatus:
    url: str
    body: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.body is not None

    def get(self, name: str) -> Any:
        return None if self.body is None else self.body.get(name)

    @property
    def role(self) -> str | None:
        return str(self.get("role")) if self.reachable else None

    @property
    def writable(self) -> bool:
        return bool(self.get("writable"))

    @property
    def epoch(self) -> int:
        return int(self.get("epoch") or 0)

    @property
    def lag(self) -> float:
        return float(self.get("lag_seconds") or 0.0)


def fetch_status(client: Client, url: str, timeout: float | None = None) -> NodeStatus:
    try:
        status, body = client.call("GET", url, "/internal/status", timeout)
    except Unreachable as exc:
        return NodeStatus(url, error=str(exc))
    if status != 200:
        return NodeStatus(url, error=f"HTTP {status}: {body.get('detail') or body.get('title') or body}")
    return NodeStatus(url, body)


def fetch_all(client: Client, urls: Sequence[str], timeout: float | None = None) -> list[NodeStatus]:
    """Every node's status, asked in parallel so one hung node costs one timeout, not one each."""
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return list(pool.map(lambda url: fetch_status(client, url, timeout), urls))


def assess(statuses: Sequence[NodeStatus], max_lag: float) -> str | None:
    """None when exactly one node leads and accepts writes and every other one follows it closely;
    otherwise one sentence saying what is wrong."""
    for node in statuses:
        if not node.reachable:
            return f"{node.url} unreachable: {node.error}"
    for node in statuses:
        for peer in node.get("peers") or []:
            if isinstance(peer, dict) and peer.get("failure") == "untrusted":
                why = f"{peer.get('error')} (check SERVER_KEY and TLS)"
                return f"{node.url} cannot trust {peer.get('url')}: {why}"
    leaders = [s for s in statuses if shown_as_leader(s.role)]
    writable = [s for s in leaders if s.writable]
    if len(leaders) > 1:
        return f"two leaders: {' and '.join(s.url for s in leaders)} both report role master"
    if not writable:
        if leaders:
            return f"no leader: {leaders[0].url} is master but does not accept writes (draining?)"
        return "no leader: every node is a replica"
    for node in statuses:
        if node is writable[0]:
            continue
        if not shown_as_replica(node.role):
            return f"{node.url} reports role {node.role!r}, not slave"
        if not node.get("peer_connected"):
            return f"replica {node.url} disconnected from the leader"
        if node.lag >= max_lag:
            return f"replica {node.url} lagging: {node.lag:.1f}s behind (REPLICA_MAX_LAG is {max_lag:g}s)"
    return None


COLUMNS = (
    "NODE",
    "ROLE",
    "EPOCH",
    "WRITABLE",
    "LEASE LEFT",
    "LAG",
    "PENDING",
    "PEER",
    "PROGRESS",
    "LAST ERROR",
)


def _size(count: float) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def describe_progress(progress: Mapping[str, Any]) -> str:
    """One line: what is being done, files and bytes of the total known so far, the rate, time left."""
    kind = "seeding" if progress.get("kind") == "seeding" else "catching up"
    files_done, files_total = int(progress.get("files_done") or 0), int(progress.get("files_total") or 0)
    parts = [f"{files_done:,} of {files_total:,} files"]
    bytes_done, bytes_total = int(progress.get("bytes_done") or 0), int(progress.get("bytes_total") or 0)
    if bytes_total:
        parts.append(f"{_size(bytes_done)} of {_size(bytes_total)}")
    files_rate, bytes_rate = progress.get("files_per_second") or 0, progress.get("bytes_per_second") or 0
    if progress.get("stalled"):
        parts.append("stalled")
    elif files_rate or bytes_rate:
        parts.append(f"{files_rate:,.0f} files/s" + (f" ({_size(bytes_rate)}/s)" if bytes_rate else ""))
    eta = progress.get("eta_seconds")
    parts.append("time left unknown" if eta is None else f"about {_duration(float(eta))} left")
    return f"{kind}: {', '.join(parts)}"


def describe_backlog(item: Mapping[str, Any]) -> str:
    """A replica that is not in step: its long work's progress, else how many changes it lacks."""
    progress = item.get("progress")
    if isinstance(progress, Mapping):
        return describe_progress(progress)
    return f"behind: {int(item.get('pending_changes') or 0):,} change(s) pending"


def _row(node: NodeStatus, link: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not node.reachable:
        return (node.url, "unreachable", "-", "-", "-", "-", "-", "-", "-", node.error or "")
    lease = node.get("lease_seconds_left")
    source: Mapping[str, Any] = link if link is not None else (node.body or {})
    progress = "-"
    if link is not None:
        progress = (
            describe_backlog(link) if link.get("pending_changes") or link.get("progress") else "in step"
        )
    return (
        node.url,
        node.role or "?",
        str(node.epoch),
        "yes" if node.writable else "no",
        "-" if lease is None else f"{float(lease):.1f}s",
        f"{float(source.get('lag_seconds') or 0.0):.1f}s",
        f"{int(source.get('pending_changes') or 0):,}",
        "connected" if node.get("peer_connected") else "disconnected",
        progress,
        str(node.get("last_error") or "-"),
    )


def _links(statuses: Sequence[NodeStatus]) -> list[Mapping[str, Any] | None]:
    """For each replica, the writable leader's link to it (pending changes, lag, progress)."""
    leader = next((s for s in statuses if s.reachable and s.writable and shown_as_leader(s.role)), None)
    if leader is None:
        return [None for _ in statuses]
    return [None if s is leader or not s.reachable else link_to(leader, s.url) for s in statuses]


def format_table(statuses: Sequence[NodeStatus]) -> str:
    rows = [COLUMNS, *(_row(s, link) for s, link in zip(statuses, _links(statuses), strict=True))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _print_warnings(statuses: Sequence[NodeStatus]) -> None:
    """A node's own warnings (an API open to anyone, ALLOW_UNAUTHENTICATED) are not to be missed."""
    for node in statuses:
        warnings = node.get("warnings") if node.reachable else None
        for warning in warnings if isinstance(warnings, list) else []:
            print(f"warning: {node.url}: {warning}", file=sys.stderr)


def summary_line(statuses: Sequence[NodeStatus], max_lag: float) -> tuple[str, str | None]:
    """("healthy: ..." or "unhealthy: ...", the problem or None). A replica is "in step" only when
    its leader has nothing pending for it; one behind is named with its progress."""
    problem = assess(statuses, max_lag)
    if problem is not None:
        return f"unhealthy: {problem}", problem
    leader = next(s for s in statuses if s.writable)
    text = f"healthy: {leader.url} leads at epoch {leader.epoch}"
    behind = [
        (s, link)
        for s, link in zip(statuses, _links(statuses), strict=True)
        if link is not None and (link.get("pending_changes") or link.get("progress"))
    ]
    in_step = len(statuses) - 1 - len(behind)
    if in_step:
        text += f", {in_step} replica(s) in step"
    for replica, link in behind:
        text += f"; {replica.url} {describe_backlog(link)}"
    return text, None


def status(client: Client, urls: Sequence[str], max_lag: float, as_json: bool) -> int:
    statuses = fetch_all(client, urls)
    if as_json:
        problem = assess(statuses, max_lag)
        nodes = [{"url": s.url, "error": s.error, "status": s.body} for s in statuses]
        print(json.dumps({"healthy": problem is None, "reason": problem, "nodes": nodes}, indent=2))
        return 0 if problem is None else 1
    print(format_table(statuses))
    _print_warnings(statuses)
    line, problem = summary_line(statuses, max_lag)
    print(line, file=sys.stderr if problem is not None else sys.stdout)
    return 0 if problem is None else 1


HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def watch(
    client: Client,
    urls: Sequence[str],
    max_lag: float,
    interval: float,
    out: TextIO | None = None,
    count: int | None = None,
) -> int:
    """`status --watch`: the table again every `interval` seconds, drawn over the last one in a
    terminal (one block after another otherwise), until Ctrl-C or `count` refreshes; the exit status
    is the last verdict's."""
    out = out or sys.stdout
    in_place = out.isatty()
    code, shown = 0, 0
    try:
        while True:
            statuses = fetch_all(client, urls)
            line, problem = summary_line(statuses, max_lag)
            code = 0 if problem is None else 1
            stamp = time.strftime("%H:%M:%S")
            lines = [
                f"hotstandby status, every {interval:g}s, {stamp} (Ctrl-C to stop)",
                "",
                format_table(statuses),
                line,
            ]
            if in_place:
                out.write(HOME + "".join(f"{text}{CLEAR_LINE}\n" for text in "\n".join(lines).split("\n")))
                out.write(CLEAR_BELOW)
            else:
                out.write("\n".join(lines) + "\n\n")
            out.flush()
            shown += 1
            if count is not None and shown >= count:
                return code
            time.sleep(interval)
    except KeyboardInterrupt:
        return code


# -- promote and demote ---------------------------------------------------------------------------
def role_request(client: Client, url: str, kind: str, force: bool = False) -> int:
    path = f"/internal/{kind}" + ("?force=true" if force else "")
    try:
        body = client.expect("POST", url, path, ROLE_REQUEST_TIMEOUT)
    except Unreachable as exc:
        print(f"hotstandby {kind}: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    except Refused as exc:
        print(f"hotstandby {kind}: {url} refused: {exc.detail}", file=sys.stderr)
        return 1
    print(f"{url}: {body.get('reason')} (now {body.get('role')} at epoch {body.get('epoch')})")
    return 0


# -- switchover -----------------------------------------------------------------------------------
class _Steps:
    """Prints each step with the time it took since the previous one."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.began = self.mark = time.monotonic()

    def done(self, text: str) -> None:
        now = time.monotonic()
        self.number += 1
        print(f"[{self.number}/{self.total}] {text} ({now - self.mark:.2f}s)", flush=True)
        self.mark = now


def _fail(text: str) -> int:
    print(f"hotstandby switchover: {text}", file=sys.stderr, flush=True)
    return 1


def switchover(
    client: Client, urls: Sequence[str], timeout: float, max_lag: float, to: str | None = None
) -> int:
    """Drain the leader, wait until the chosen replica has everything, promote it (ELECTION=static) or
    have the leader hand it the lease under a new term (redis, postgres), wait until every other node
    follows it. Until the promotion or hand-over nothing is lost by giving up: the leader is undrained
    and keeps leading."""
    if to is not None and to not in urls:
        raise UsageError(f"--to {to} is not one of the nodes ({', '.join(urls)})")
    steps = _Steps(5)
    statuses = fetch_all(client, urls)
    problem = assess(statuses, max_lag)
    if problem is not None:
        return _fail(f"refused: the nodes are not healthy: {problem}")
    leader = next(s for s in statuses if s.writable)
    replicas = [s for s in statuses if s is not leader]
    chosen, why = choose_replica(leader, replicas, to)
    if chosen is None:
        return _fail(f"refused: {why}")
    followers = ", ".join(s.url for s in replicas)
    steps.done(f"checked the nodes: {leader.url} leads at epoch {leader.epoch}, {followers} follow; {why}")
    return _Switch(client, leader, chosen, replicas, timeout, steps).run()


def choose_replica(
    leader: NodeStatus, replicas: Sequence[NodeStatus], to: str | None
) -> tuple[NodeStatus | None, str]:
    """The replica to hand over to, with why it was chosen; (None, why not) when none may lead.

    `to` when given; else the most caught-up synced replica (its applied sequence, numbered by the
    leader's one counter; the first listed wins a tie). It must list every other node as a peer: once
    promoted it replicates to those alone, and a node it does not list would be left behind."""
    if to is not None:
        candidates = [s for s in replicas if s.url == to]
        if not candidates:
            return None, f"--to {to} is the leader, not a replica"
    else:
        candidates = [s for s in replicas if s.get("synced") and s.get("peer_connected")]
        candidates.sort(key=lambda s: -int(s.get("applied_sequence") or 0))
    if not candidates:
        return None, "no replica is synced and connected"
    chosen = candidates[0]
    if not chosen.get("synced"):
        return None, f"replica {chosen.url} never completed a full sync"
    peers = chosen.get("peer_urls")
    if isinstance(peers, list) and len(peers) < len(replicas):
        return None, (
            f"{chosen.url} lists {len(peers)} other node(s) in SYNC_SOURCE, but {len(replicas)} would follow"
            " it: list every other node there (comma-separated) so that, once leader, it replicates to all"
        )
    if len(replicas) == 1:
        return chosen, f"handing over to {chosen.url}"
    if to is not None:
        return chosen, f"handing over to {chosen.url} (--to)"
    return (
        chosen,
        f"handing over to {chosen.url}, the most caught-up (sequence {chosen.get('applied_sequence')})",
    )


@dataclass
class _Switch:
    client: Client
    leader: NodeStatus
    replica: NodeStatus
    """The one promoted."""
    replicas: Sequence[NodeStatus]
    """Every replica at the start, the promoted one included."""
    timeout: float
    steps: _Steps

    @property
    def followers(self) -> list[str]:
        """Who must follow the new leader at the end: the old leader and every other replica."""
        return [self.leader.url, *(s.url for s in self.replicas if s.url != self.replica.url)]

    def run(self) -> int:
        old, new = self.leader.url, self.replica.url
        try:
            self.client.expect("POST", old, "/internal/drain", ROLE_REQUEST_TIMEOUT)
        except Unreachable as exc:
            return self.abort(f"draining {old} failed: {exc}")
        except Refused as exc:
            return _fail(f"refused: {old} would not drain: {exc.detail}")
        drained_at = time.monotonic()
        self.steps.done(f"drained {old}: it refuses writes and answers 503 on /primary")
        head, why = self.wait_caught_up()
        if head is None:
            return self.abort(f"replica {new} did not catch up within {self.timeout:g}s ({why})")
        self.steps.done(f"{new} acknowledged every change (sequence {head})")
        if self.leased:
            handed, why = self.hand_over()
            if handed is None:
                return self.abort(f"handing the lease to {new} failed: {why}")
            self.steps.done(f"{old} handed the lease to {new} ({handed}); it takes it and leads")
            above = self.leader.epoch + 1
        else:
            promoted, why = self.promote()
            if promoted is None:
                return self.abort(f"promoting {new} failed: {why}")
            self.steps.done(f"promoted {new} to epoch {promoted}")
            above = promoted
        writable_at, epoch, stuck = self.wait_swapped(above)
        if stuck is not None:
            return _fail(f"incomplete: {new} leads at epoch {epoch}, but {stuck}")
        self.steps.done(f"{', '.join(self.followers)} follow(s) at epoch {epoch}; {new} accepts writes")
        print(
            f"switchover complete in {time.monotonic() - self.steps.began:.2f}s: {new} leads at epoch"
            f" {epoch} (was {old} at epoch {self.leader.epoch}); writes were refused for"
            f" {writable_at - drained_at:.2f}s"
        )
        return 0

    @property
    def leased(self) -> bool:
        """With a lease backend the leader hands the lease over; with static the replica is promoted."""
        return str(self.leader.get("election") or "static") != "static"

    def abort(self, why: str) -> int:
        old = self.leader.url
        try:
            code, body = self.client.call("POST", old, "/internal/undrain", ROLE_REQUEST_TIMEOUT)
        except Unreachable as exc:
            code, body = 0, {"detail": str(exc)}
        if code == 200:
            return _fail(f"aborted: {why}; leader {old} restored (accepting writes again)")
        return _fail(
            f"aborted: {why}; could NOT restore leader {old} ({body.get('detail')}):"
            f" POST {old}/internal/undrain by hand"
        )

    def wait_caught_up(self) -> tuple[int | None, str]:
        """The leader's produced sequence once the replica has acknowledged it all and nothing new came
        for SETTLE_SECONDS; (None, why) at the deadline."""
        deadline = time.monotonic() + self.timeout
        steady_since, steady_head = 0.0, -1
        while True:
            head, why = self.lag_check(deadline)
            now = time.monotonic()
            if head is None:
                steady_head = -1
            elif head != steady_head:
                steady_since, steady_head = now, head
            elif now - steady_since >= SETTLE_SECONDS:
                return head, ""
            if now >= deadline:
                return None, why or "still settling"
            time.sleep(POLL_INTERVAL)

    def lag_check(self, deadline: float) -> tuple[int | None, str]:
        leader, replica = fetch_all(self.client, [self.leader.url, self.replica.url], _remaining(deadline))
        if not leader.reachable:
            return None, f"leader unreachable: {leader.error}"
        if not replica.reachable:
            return None, f"replica unreachable: {replica.error}"
        if not shown_as_replica(replica.role) or not replica.get("peer_connected"):
            return None, "replica disconnected"
        produced = int(leader.get("produced_sequence") or 0)
        link = link_to(leader, replica.url)
        source = leader.body if link is None else link  # unknown link: every replica must have it all
        assert source is not None
        key = "acknowledged_sequence" if link is None else "confirmed_sequence"
        acked = int(source.get(key) or 0)
        pending = int(source.get("pending_changes") or 0)
        if not shown_as_leader(leader.role) or acked != produced or pending:
            return None, f"{pending} change(s) pending, acknowledged {acked} of {produced}"
        return produced, ""

    def promote(self) -> tuple[int | None, str]:
        """The new epoch, or (None, why). A replica that polled the leader just before the drain still
        believes it writable for one poll: that refusal is retried until the deadline."""
        deadline = time.monotonic() + self.timeout
        url = self.replica.url
        while True:
            try:
                body = self.client.expect("POST", url, "/internal/promote", ROLE_REQUEST_TIMEOUT)
            except Refused as exc:
                if "still accepts writes" not in exc.detail or time.monotonic() >= deadline:
                    return None, exc.detail
                time.sleep(POLL_INTERVAL)
                continue
            except Unreachable as exc:
                after = fetch_status(self.client, url)  # the answer may be lost while the promotion held
                if shown_as_leader(after.role) and after.epoch > self.leader.epoch:
                    return after.epoch, ""
                return None, str(exc)
            return int(body.get("epoch") or 0), ""

    def hand_over(self) -> tuple[str | None, str]:
        """The leader's word on it, or (None, why): the drained leader gives its lease to the chosen
        replica under a new term, and that replica takes it on its next control tick. Only the holder
        can do this, and only to a replica it sees connected with every change confirmed."""
        old, to = self.leader.url, self.replica.get("node_id")
        if not to:
            return None, f"{self.replica.url} did not report its node id"
        path = f"/internal/handover?to={quote(str(to), safe='')}"
        try:
            body = self.client.expect("POST", old, path, ROLE_REQUEST_TIMEOUT)
        except Refused as exc:
            return None, exc.detail
        except Unreachable as exc:
            after = fetch_status(self.client, old)  # the answer may be lost while the hand-over held
            if shown_as_replica(after.role):
                return "its answer was lost, but it follows now", ""
            return None, str(exc)
        return str(body.get("reason") or "done"), ""

    def wait_swapped(self, at_least: int) -> tuple[float, int, str | None]:
        """(when the new leader was first seen accepting writes at an epoch >= `at_least`, that epoch,
        None) once every other node follows it there; (now, its epoch, what is missing) at the deadline.
        With a lease that epoch is the term the hand-over created."""
        deadline = time.monotonic() + self.timeout
        writable_at: float | None = None
        while True:
            new, *others = fetch_all(self.client, [self.replica.url, *self.followers], _remaining(deadline))
            now = time.monotonic()
            leads = new.writable and new.epoch >= at_least
            if writable_at is None and leads:
                writable_at = now
            leader_id = new.get("node_id")
            behind = [s for s in others if not _follows(s, new.epoch, leader_id)]
            if not behind and leads:
                return writable_at or now, new.epoch, None
            if now >= deadline:
                writes = "accepts" if new.writable else "refuses"
                shown = "; ".join(f"{s.url} reports {_following(s)}" for s in behind) or "every node follows"
                return now, new.epoch, f"after {self.timeout:g}s {new.url} {writes} writes; {shown}"
            time.sleep(POLL_INTERVAL)


def link_to(leader: NodeStatus, url: str) -> Mapping[str, Any] | None:
    """The leader's link to the replica at `url` (its `replicas` entry), by URL, or the only one; None
    when the leader names its replicas otherwise (DNS names against addresses, say)."""
    links = [r for r in leader.get("replicas") or [] if isinstance(r, dict)]
    named = [r for r in links if str(r.get("target", "")).rstrip("/").lower() == url.lower()]
    if named:
        return named[0]
    return links[0] if len(links) == 1 else None


def _follows(node: NodeStatus, epoch: int, leader_id: Any) -> bool:
    return (
        shown_as_replica(node.role)
        and node.epoch == epoch
        and bool(node.get("peer_connected"))
        and (leader_id is None or node.get("master_node") == leader_id)
    )


def _following(node: NodeStatus) -> str:
    if not node.reachable:
        return node.error or "no answer"
    link = "connected" if node.get("peer_connected") else "disconnected"
    return f"role {node.role} at epoch {node.epoch}, {link}"


# -- command line ---------------------------------------------------------------------------------
def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", metavar="FILE", help="read SERVER_KEY from this file (default: env)")


def add_nodes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes",
        metavar="URL,URL[,URL...]",
        help="every node's API URL (default: env HOTSTANDBY_NODES, else this node and its SYNC_TARGET"
        " or SYNC_SOURCE)",
    )
    parser.add_argument(
        "--max-lag", type=float, metavar="SECONDS", help="replica lag still healthy (env REPLICA_MAX_LAG, 10)"
    )


def add_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The operator subcommands, on the `hotstandby` subparsers object."""
    show = commands.add_parser("status", help="show every node; exit 0 only when they are healthy")
    add_nodes(show)
    show.add_argument("--json", action="store_true", help="print the nodes' status as JSON")
    show.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="refresh in place every SECONDS (2) until Ctrl-C",
    )
    show.add_argument("--count", type=int, metavar="N", help=argparse.SUPPRESS)  # --watch: stop after N
    add_common(show)
    promote = commands.add_parser("promote", help="promote the replica at URL")
    promote.add_argument("url", metavar="URL")
    promote.add_argument("--force", action="store_true", help="promote even if unsynced or a leader is live")
    add_common(promote)
    demote = commands.add_parser("demote", help="demote the leader at URL")
    demote.add_argument("url", metavar="URL")
    add_common(demote)
    switch = commands.add_parser(
        "switchover", help="planned, zero-loss hand-over from the leader to a replica"
    )
    add_nodes(switch)
    switch.add_argument(
        "--to", metavar="URL", help="the replica to promote (default: the most caught-up synced one)"
    )
    switch.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per wait (catch-up, roles); 30"
    )
    add_common(switch)


COMMANDS = ("status", "promote", "demote", "switchover")


def run(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    settings = ClientSettings.from_env(
        environ, key_file=args.key_file, max_lag=getattr(args, "max_lag", None)
    )
    client = settings.client()
    if args.command in ("promote", "demote"):
        return role_request(client, base_url(args.url, "URL"), args.command, getattr(args, "force", False))
    urls = node_urls(args.nodes, environ)
    max_lag = settings.max_lag
    if args.command == "status":
        if args.watch is not None:
            if args.json or args.watch <= 0:
                raise UsageError("--watch takes a positive number of seconds and no --json")
            return watch(client, urls, max_lag, args.watch, count=args.count)
        return status(client, urls, max_lag, args.json)
    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    to = None if args.to is None else base_url(args.to, "--to")
    return switchover(client, urls, args.timeout, max_lag, to)


def node_urls(given: str | None, environ: Mapping[str, str]) -> list[str]:
    """--nodes, else HOTSTANDBY_NODES, else this node (SERVER_PORT) and its peers; at least two."""
    source = "--nodes" if given is not None else "HOTSTANDBY_NODES"
    text = given if given is not None else environ.get("HOTSTANDBY_NODES", "")
    if not text.strip() and given is None:
        source = "SYNC_TARGET/SYNC_SOURCE"
        text = ",".join(
            [local_url(environ), environ.get("SYNC_TARGET", "") or environ.get("SYNC_SOURCE", "")]
        )
    urls: list[str] = []
    for part in text.split(","):
        if part.strip() and (url := base_url(part, source)) not in urls:
            urls.append(url)
    if len(urls) < 2:
        found = ", ".join(urls) or "none"
        raise UsageError(
            f"need at least two node URLs, {source} gave {found}: use --nodes URL,URL[,URL...] or"
            " HOTSTANDBY_NODES"
        )
    return urls
