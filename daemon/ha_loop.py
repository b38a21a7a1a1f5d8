"""The HA control loop: gather observations, call the pure state machine, act.

Each tick: take at most one operator request, talk to the lease backend when
a renewal or an attempt is due (bounded by ELECTION_TIMEOUT), read the
pollers' cached answers, call `roles.decide`, carry out its actions, and log
the reason when it changes. /primary and /replica never wait for any of this:
they read `node.role_state` and the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import structlog

from daemon.config import Config
from daemon.election.base import ElectionError, LeaseBackend
from daemon.node import Node
from daemon.peers import PeerView, Poller
from daemon.redact import hide_password
from daemon.roles import (
    Decision,
    LeaseOutcome,
    Observations,
    Policy,
    Request,
    Role,
    decide,
    initial_state,
    may_compete,
    shown_as_leader,
    shown_as_replica,
)
from replication.ssh_target import is_ssh_url

log = structlog.get_logger("daemon.ha_loop")


@dataclass
class _Pending:
    request: Request
    force: bool
    target: str = ""
    """handover: the node id the lease goes to."""
    done: asyncio.Future[Decision] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ControlLoop:
    def __init__(
        self, node: Node, backend: LeaseBackend | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.node = node
        self.config: Config = node.config
        self.backend = backend
        self.clock = clock
        self.policy = Policy(
            election=self.config.election,
            failover_auto=self.config.failover == "auto",
            failover_timeout=self.config.failover_timeout,
            lease_ttl=self.config.lease_ttl,
            safety_margin=self.config.lease_safety_margin,
        )
        self.peers = [
            Poller(
                f"{url}/internal/status",
                interval=max(0.2, self.config.control_interval),
                timeout=1.0,
                key=self.config.server_key,
                clock=clock,
                ssl_context=node.client_tls,
            )
            for url in self.config.peer_urls
            if not is_ssh_url(url)  # a plain SSH host has no API to poll
        ]
        self._link_down_since: float | None = None
        self.connection_open: Callable[[object], bool] = lambda peer: True
        """Is the connection from this peer address still open? The server answers from its own
        table once it runs; until then every connection counts as open (no shortcut)."""
        self.last_tick = clock()
        self.last_reason = ""
        self._requests: asyncio.Queue[_Pending] = asyncio.Queue()
        self._lease_term = 0
        self._next_lease_call = 0.0
        self.on_transition: Callable[[str, Decision], Awaitable[None]] = _ignore
        """Told of every promotion and demotion (the server records them in the catalogue's history)."""

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Enter the initial role before serving: a replica accepts its leader's changes at once."""
        role: Role = "leader" if shown_as_leader(self.config.role) else "replica"
        epoch = self.node.identity.epoch
        if role == "leader" and self.config.election == "static":
            epoch = max(epoch, 1)
        state = initial_state(role, epoch, self.policy)
        self.node.role_state = state
        if state.role == "replica":
            await self.node.become_replica(state.epoch)
        log.info(
            "control_started",
            role=state.role,
            epoch=state.epoch,
            election=self.config.election,
            confirmed=state.confirmed,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must survive any single bad tick
                log.exception("control_tick_failed")
            await self._pause()

    async def _pause(self) -> None:
        """The control interval, cut short at start by the peers' first polls: a restarted leader does not
        accept writes before it heard its peer, and would otherwise wait a whole interval for nothing."""
        first_polls = [
            peer.first_poll_done.wait() for peer in self.peers if not peer.first_poll_done.is_set()
        ]
        if not first_polls:
            await asyncio.sleep(self.config.control_interval)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*first_polls), self.config.control_interval)

    async def stop(self) -> None:
        if self.node.role_state.role == "leader" and self.backend is not None and self._lease_term:
            await self._release()

    async def request(
        self, kind: Request, force: bool = False, timeout: float = 10.0, target: str = ""
    ) -> Decision:
        """Queue an operator request for the next tick and wait for its decision."""
        pending = _Pending(kind, force, target)
        await self._requests.put(pending)
        return await asyncio.wait_for(pending.done, timeout)

    # -- one tick ----------------------------------------------------------------------
    async def tick(self) -> Decision:
        pending = None if self._requests.empty() else self._requests.get_nowait()
        self.node.supervise_replication_tasks()
        state = self.node.role_state
        synced = self.node.receiver.synced or self._may_bootstrap()
        views = [peer.peer_view(max_age=max(2.0, 4 * self.config.control_interval)) for peer in self.peers]
        link_up = self.node.receiver.connected(self.config.heartbeat_interval)
        if link_up and self._leader_certainly_gone(views):
            link_up = False
        self._note_untrusted(views)
        base = Observations(now=self.clock(), synced=synced, outranked=self._outranked(views, link_up))
        lease = await self._lease_call(may_compete(state, base, self.policy))
        answered = [view for view in views if view.answered_at is not None]
        peer_epochs = self._peer_epochs(views, state.role == "replica")
        obs = Observations(
            now=self.clock(),
            peer_epoch=max(peer_epochs) if peer_epochs else None,
            peer_is_leader=any(view.writable for view in answered) if answered else None,
            peer_checked=all(peer.attempts > 0 for peer in self.peers),
            peer_untrusted=any(view.failure == "untrusted" for view in views),
            link_up=link_up,
            synced=synced,
            lease=lease,
            request=pending.request if pending else None,
            force=pending.force if pending else False,
        )
        if pending is not None and pending.request == "handover":
            obs = replace(
                obs,
                handover_to=pending.target,
                handover_target_ready=self._caught_up(views, pending.target),
            )
        decision = decide(state, obs, self.policy)
        if "handover_lease" in decision.actions:
            self.node.role_state = decision.state
            self._log(decision)
            lease = await self._hand_over(pending.target if pending else "")
            decision = decide(
                decision.state, replace(obs, now=self.clock(), lease=lease, request=None), self.policy
            )
        await self._carry_out(decision, lease)
        self._log(decision)
        if pending is not None and not pending.done.done():
            pending.done.set_result(decision)
        self.last_tick = self.clock()
        return decision

    def _log(self, decision: Decision) -> None:
        if decision.reason != self.last_reason:
            log.info(
                "ha_decision", reason=decision.reason, role=decision.state.role, epoch=decision.state.epoch
            )
            self.last_reason = decision.reason

    def _caught_up(self, views: list[PeerView], node_id: str) -> bool:
        """Whether the replica with this node id is connected to us and confirmed every change we made."""
        parts = self.node.leader
        if parts is None or not node_id:
            return False
        for peer, view in zip(self.peers, views, strict=True):
            if view.node_id != node_id:
                continue
            url = peer.url.removesuffix("/internal/status").rstrip("/")
            for link in parts.links:
                if link.target.rstrip("/") == url:
                    journal = link.journal
                    return link.sender.connected and not journal.pending and journal.confirmed >= parts.head
        return False

    def _note_untrusted(self, views: list[PeerView]) -> None:
        """Say in health, status and a metric which peer we cannot trust an answer from."""
        untrusted = [
            (peer, view) for peer, view in zip(self.peers, views, strict=True) if view.failure == "untrusted"
        ]
        self.node.peer_untrusted_gauge.set(len(untrusted))
        self.node.peer_problem = (
            "; ".join(
                f"{hide_password(peer.url.removesuffix('/internal/status'))} refuses our key or TLS "
                f"({view.error}): its role is unknown"
                for peer, view in untrusted
            )
            or None
        )

    def peer_report(self) -> list[dict[str, object]]:
        """Each peer as its poller last saw it, for /internal/status."""
        return [
            {
                "url": hide_password(peer.url.removesuffix("/internal/status")),
                "answering": bool(peer.ok),
                "failure": peer.failure,
                "error": peer.error,
            }
            for peer in self.peers
        ]

    def _leader_certainly_gone(self, views: list[PeerView]) -> bool:
        """The leader's replication connection closed and its API refuses connections: its process is gone.

        Both are certain (a FIN or RST arrived; nothing listens on its port), unlike silence, which a
        stopped, slow or partitioned leader also shows: only then does the replica skip the silence
        bound and start FAILOVER_TIMEOUT at once.
        """
        peer = self.node.leader_connection
        if peer is None or self.connection_open(peer):
            return False
        leaders = [view for view in views if view.was_leader] or views  # not seen leading yet: every peer
        return bool(leaders) and all(view.failure == "refused" for view in leaders)

    def _peer_epochs(self, views: list[PeerView], replica: bool) -> list[int]:
        """Every epoch learnt from outside for this tick; one above MAX_PEER_EPOCH is refused.

        A refused epoch is neither followed nor persisted (it would leave no valid epoch for the
        next promotion); node.outside_epoch counts and logs it.
        """
        sources: list[tuple[object, str]] = [(view.epoch, "peer_status") for view in views]
        sources.append((self.node.fenced_by, "replica_answer"))  # already filtered by the node
        sources.append((self.node.peer_epoch_seen or None, "peer_request"))
        if replica:
            sources.append((self.node.receiver.epoch, "leader_link"))
        epochs = (self.node.outside_epoch(value, source) for value, source in sources)
        return [epoch for epoch in epochs if epoch is not None]

    def _outranked(self, views: list[PeerView], link_up: bool) -> bool:
        """Another replica of the same leader holds more of its history: let it take the lease first.

        Only for one lease term after our own link to the leader went down, so a
        better-placed replica that cannot reach the election service delays a
        failover by at most LEASE_TTL rather than blocking it.
        """
        now = self.clock()
        if link_up or self.node.role_state.role != "replica":
            self._link_down_since = None
            return False
        if self._link_down_since is None:
            self._link_down_since = now
        if now - self._link_down_since > self.config.lease_ttl:
            return False
        receiver = self.node.receiver
        return any(
            view.synced
            and shown_as_replica(view.role)
            and view.journal_id is not None
            and view.journal_id == receiver.journal_id
            and (view.applied_sequence or 0) > receiver.applied_seq
            for view in views
        )

    def _may_bootstrap(self) -> bool:
        """A brand-new ROLE=master node may start a new pair before anyone synchronised it."""
        return (
            shown_as_leader(self.config.role)
            and not self.node.identity.has_led
            and not self.node.receiver.journal_id
        )

    async def _carry_out(self, decision: Decision, lease: LeaseOutcome | None) -> None:
        new = decision.state
        if "become_replica" in decision.actions:
            self.node.role_state = new
            if "release_lease" in decision.actions:
                await self._release()
            await self.node.become_replica(new.epoch)
            await self.on_transition("demotion", decision)
        elif "become_leader" in decision.actions:
            if lease is not None and lease.kind == "acquired":
                self._lease_term = lease.term
                self._next_lease_call = lease.sent_at + self.config.lease_renew_interval
            await self.node.become_leader(new.epoch)  # writable only once its watcher sees every folder
            self.node.role_state = new
            await self.on_transition("promotion", decision)
        else:
            self.node.role_state = new
            if new.role == "replica" and not self.node.receiver.accepting:
                # An earlier demotion (or a promotion) failed half-way, say on a full disk while keeping
                # divergent writes: this replica still refuses its leader's batches. Finish it now.
                await self.node.become_replica(new.epoch)
            elif new.role == "replica" and new.epoch != self.node.identity.epoch:
                self.node.set_epoch(new.epoch)

    # -- the lease ---------------------------------------------------------------------
    async def _lease_call(self, compete: bool) -> LeaseOutcome | None:
        if self.backend is None or self.clock() < self._next_lease_call:
            return None
        state = self.node.role_state
        node_id = self.node.identity.node_id
        sent = self.clock()
        timeout = self.config.election_timeout
        try:
            if state.role == "leader":
                self._next_lease_call = sent + self.config.lease_renew_interval
                ok = await asyncio.wait_for(
                    self.backend.renew(node_id, self._lease_term, self.config.lease_ttl), timeout
                )
                return LeaseOutcome("renewed" if ok else "lost", term=self._lease_term, sent_at=sent)
            if not compete:
                return None
            self._next_lease_call = sent + max(self.config.control_interval, 0.1)
            term = await asyncio.wait_for(self.backend.try_acquire(node_id, self.config.lease_ttl), timeout)
        except (ElectionError, TimeoutError) as exc:
            self.node.last_error = f"election: {exc}" if str(exc) else "election: timed out"
            if state.role == "leader":
                # Try again at once rather than a renewal interval later: on a lossy path a lost
                # request or a slow reconnection is the usual cause, and the lease still has a
                # few ELECTION_TIMEOUTs left, each a chance to keep it.
                self._next_lease_call = self.clock()
            return LeaseOutcome("error", sent_at=sent)
        if term is None:
            return LeaseOutcome("held_by_other", sent_at=sent)
        return LeaseOutcome("acquired", term=term, sent_at=sent)

    async def _hand_over(self, to_node: str) -> LeaseOutcome:
        """Give our lease to `to_node` under a new term (the decision checked it may take it)."""
        sent = self.clock()
        assert self.backend is not None  # only lease leaders decide to hand over
        try:
            term = await asyncio.wait_for(
                self.backend.handover(
                    self.node.identity.node_id, self._lease_term, to_node, self.config.lease_ttl
                ),
                self.config.election_timeout,
            )
        except (ElectionError, TimeoutError) as exc:
            self.node.last_error = f"election: {exc}" if str(exc) else "election: handover timed out"
            self._next_lease_call = 0.0  # renew on the next tick: that says whether it is still ours
            return LeaseOutcome("handover_unknown", sent_at=sent)
        if term is None:
            return LeaseOutcome("lost", term=self._lease_term, sent_at=sent)
        self._lease_term = 0
        return LeaseOutcome("handed_over", term=term, sent_at=sent, holder=to_node)

    async def _release(self) -> None:
        if self.backend is None or not self._lease_term:
            return
        try:
            await asyncio.wait_for(
                self.backend.release(self.node.identity.node_id, self._lease_term),
                self.config.election_timeout,
            )
        except (ElectionError, TimeoutError) as exc:
            log.warning("lease_release_failed", error=str(exc))
        self._lease_term = 0


async def _ignore(kind: str, decision: Decision) -> None:
    return None
