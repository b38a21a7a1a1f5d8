"""The role/epoch state machine: a pure function, no I/O, no clock of its own.

`decide(state, observations, policy)` returns the next state, the actions the
control loop must carry out, and one sentence saying why, which is logged
and asserted on in tests. Everything the decision needs is in the
observations; the control loop gathers them (lease calls, the peer's
status, operator requests) before calling it.

Roles: a *leader* accepts writes and replicates them; a *replica* applies
what its leader sends. The epoch is the fencing term: a promotion always
moves to a higher one, and a node that sees a higher epoch than its own
stops acting as leader at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from daemon.epochs import MAX_EPOCH

Role = Literal["leader", "replica"]
Election = Literal["static", "redis", "postgres"]
Request = Literal["promote", "demote", "drain", "undrain", "handover"]
Action = Literal["become_leader", "become_replica", "persist_epoch", "release_lease", "handover_lease"]

SHOWN_AS: dict[Role, str] = {"leader": "master", "replica": "slave"}
"""The seeds' words for the roles: ROLE=master|slave and the API's `role`. Inside the code the
roles are leader and replica; these words are read and written only through this table and the two
functions below (and ROLE in daemon/config.py), so the edge is one place."""


def shown_as_leader(role: object) -> bool:
    """A `role` from an API answer (or ROLE) that names the leader."""
    return role == SHOWN_AS["leader"]


def shown_as_replica(role: object) -> bool:
    """A `role` from an API answer (or ROLE) that names a replica."""
    return role == SHOWN_AS["replica"]


@dataclass(frozen=True)
class RoleState:
    role: Role
    epoch: int
    confirmed: bool = True
    """A restarted ROLE=master leader answers 503 on /primary until it has checked its peer."""
    draining: bool = False
    """Switchover in progress: the leader refuses new writes so the replica can catch up."""
    lease_valid_until: float | None = None
    """Monotonic instant until which a lease-holding leader may act (None without a lease)."""
    leader_lost_since: float | None = None
    """Replica with FAILOVER=auto: when the leader was first seen unreachable."""
    hold_off_until: float = 0.0
    """After a planned demotion, do not compete for the lease before this instant."""

    def accepts_writes(self, now: float) -> bool:
        if self.role != "leader" or not self.confirmed or self.draining:
            return False
        return self.lease_valid_until is None or now < self.lease_valid_until


@dataclass(frozen=True)
class LeaseOutcome:
    """What this tick's lease call returned (lease backends only)."""

    kind: Literal[
        "acquired", "renewed", "lost", "held_by_other", "free", "error", "handed_over", "handover_unknown"
    ]
    """handed_over: our hand-over to `holder` went through, under the new `term`. handover_unknown:
    the hand-over call failed, so whether the lease is still ours is unknown until a renewal says."""
    term: int = 0
    sent_at: float = 0.0
    """Monotonic instant the request was sent: validity counts from here, not from the answer."""
    holder: str = ""


@dataclass(frozen=True)
class Observations:
    now: float
    peer_epoch: int | None = None
    """Highest epoch seen from the peer (its status, its hello, or a 409 it answered)."""
    peer_is_leader: bool | None = None
    """The peer says it is a writable leader; None when it could not be asked."""
    peer_checked: bool = True
    """At least one attempt to ask the peer has finished (answered or failed)."""
    peer_untrusted: bool = False
    """A peer refused our key or failed TLS: its role is unknown, which is never "not leading"."""
    link_up: bool = False
    """Replica: the leader's batches or heartbeats arrive within bound."""
    synced: bool = False
    """Replica: it completed a full synchronisation with a leader and may be promoted."""
    lease: LeaseOutcome | None = None
    outranked: bool = False
    """Replica: another replica of the same leader has applied more of its history (it should lead)."""
    request: Request | None = None
    force: bool = False
    handover_to: str = ""
    """A handover request: the node id the lease is to go to."""
    handover_target_ready: bool = False
    """That node is one of our replicas, connected, and has confirmed every change we produced."""


@dataclass(frozen=True)
class Policy:
    election: Election = "static"
    failover_auto: bool = False
    failover_timeout: float = 6.0
    lease_ttl: float = 6.0
    safety_margin: float = 1.0
    initial_leader: bool = False
    """ROLE=master: may take the lease before it was ever synchronised (bootstrapping a new pair)."""


@dataclass(frozen=True)
class Decision:
    state: RoleState
    actions: tuple[Action, ...]
    reason: str


def initial_state(role: Role, epoch: int, policy: Policy) -> RoleState:
    """A static master starts unconfirmed; with a lease backend everyone starts as a replica."""
    if policy.election != "static":
        return RoleState(role="replica", epoch=epoch)
    return RoleState(role=role, epoch=epoch, confirmed=role != "leader")


def decide(state: RoleState, obs: Observations, policy: Policy) -> Decision:
    if state.role == "leader":
        return _as_leader(state, obs, policy)
    return _as_replica(state, obs, policy)


def _as_leader(state: RoleState, obs: Observations, policy: Policy) -> Decision:
    if obs.peer_epoch is not None and obs.peer_epoch > state.epoch:
        return _demote(
            state,
            obs,
            f"demoted: the peer has epoch {obs.peer_epoch}, higher than ours ({state.epoch})",
            epoch=obs.peer_epoch,
        )
    if obs.request == "demote":
        return _demote(state, obs, "demoted on request", hold_off=policy.lease_ttl * 2)
    if policy.election != "static":
        # The lease outcome of this tick is never skipped, whatever else was asked.
        decision = _leader_lease(state, obs, policy)
        if decision.state.role != "leader":
            return decision
        return _drain_request(decision.state, obs) or _handover(decision.state, obs) or decision
    if not state.confirmed:
        return _confirm(state, obs)
    if obs.request == "promote":
        return Decision(state, (), "already the leader")
    if obs.request == "handover":
        return Decision(
            state, (), "handover refused: with ELECTION=static there is no lease; promote the replica"
        )
    return _drain_request(state, obs) or Decision(state, (), f"leading with epoch {state.epoch}")


def _drain_request(state: RoleState, obs: Observations) -> Decision | None:
    if obs.request not in ("drain", "undrain"):
        return None
    draining = obs.request == "drain"
    reason = "draining: refusing writes until the replica caught up" if draining else "writes accepted again"
    return Decision(replace(state, draining=draining), (), reason)


def _handover(state: RoleState, obs: Observations) -> Decision | None:
    """Planned switchover with a lease: hand it to a caught-up replica, only while drained.

    Draining first means no write is accepted between the replica's last confirmation and the
    hand-over; the backend gives the lease a new term the old holder cannot renew."""
    if obs.request != "handover":
        return None
    target = obs.handover_to
    if not target:
        return Decision(state, (), "handover refused: no node named to take the lease")
    if not state.draining:
        return Decision(state, (), "handover refused: drain the leader first (switchover does)")
    if not obs.handover_target_ready:
        return Decision(
            state,
            (),
            f"handover refused: {target} is not a connected replica that confirmed every change",
        )
    return Decision(state, ("handover_lease",), f"handing the lease to {target}")


def _handover_outcome(state: RoleState, obs: Observations, policy: Policy) -> Decision | None:
    lease = obs.lease
    if lease is None or lease.kind not in ("handed_over", "handover_unknown"):
        return None
    if lease.kind == "handed_over":
        # Our epoch stays: the new term becomes an epoch when the new holder takes the lease and leads
        # with it (a replica that learned it from us first would move one past it).
        new_state = RoleState(
            role="replica", epoch=state.epoch, hold_off_until=obs.now + policy.lease_ttl * 2
        )
        return Decision(
            new_state,
            ("become_replica",),
            f"handed the lease to {lease.holder} with term {lease.term}; following it",
        )
    # The call failed: maybe the lease moved, maybe not. Accept no write until a renewal says it is ours.
    return Decision(
        replace(state, lease_valid_until=min(obs.now, state.lease_valid_until or obs.now)),
        (),
        "handover failed (the election service did not answer); not leading until the lease is renewed",
    )


def _confirm(state: RoleState, obs: Observations) -> Decision:
    """A restarted static leader: lead only once the peer is known not to lead at our epoch or above."""
    if not obs.peer_checked:
        return Decision(state, (), "checking the peer before accepting writes")
    if obs.peer_untrusted:
        return Decision(state, (), "a peer refuses our key or TLS: its role is unknown; not accepting writes")
    if obs.peer_is_leader and obs.peer_epoch is None:
        return Decision(state, (), "the peer says it leads but gave no epoch; waiting")
    if obs.peer_is_leader and obs.peer_epoch is not None and obs.peer_epoch >= state.epoch:
        return _demote(
            state,
            obs,
            f"rejoining as replica: the peer leads with epoch {obs.peer_epoch}",
            epoch=obs.peer_epoch,
        )
    return Decision(
        replace(state, confirmed=True),
        ("become_leader",),
        "confirmed as leader: no peer leads with an equal or higher epoch",
    )


def _leader_lease(state: RoleState, obs: Observations, policy: Policy) -> Decision:
    handed = _handover_outcome(state, obs, policy)
    if handed is not None:
        return handed
    lease = obs.lease
    if lease is not None and lease.kind == "renewed":
        until = lease.sent_at + policy.lease_ttl - policy.safety_margin
        return Decision(
            replace(state, lease_valid_until=until), (), f"renewed the lease for epoch {state.epoch}"
        )
    if lease is not None and lease.kind in ("lost", "held_by_other", "free"):
        return _demote(state, obs, "demoted: the lease is no longer ours", epoch=max(state.epoch, lease.term))
    if state.lease_valid_until is not None and obs.now >= state.lease_valid_until:
        return _demote(state, obs, "demoted self: could not renew the lease before it ended")
    if lease is not None and lease.kind == "error":
        return Decision(state, (), "lease renewal failed; still within the lease, retrying")
    return Decision(state, (), f"leading with epoch {state.epoch}")


def _demote(
    state: RoleState, obs: Observations, reason: str, *, epoch: int | None = None, hold_off: float = 0.0
) -> Decision:
    actions: list[Action] = ["become_replica"]
    if state.lease_valid_until is not None:
        actions.append("release_lease")
    new_epoch = max(state.epoch, epoch or 0)
    if new_epoch != state.epoch:
        actions.append("persist_epoch")
    new_state = RoleState(role="replica", epoch=new_epoch, hold_off_until=obs.now + hold_off)
    return Decision(new_state, tuple(actions), reason)


def _as_replica(state: RoleState, obs: Observations, policy: Policy) -> Decision:
    followed = max(state.epoch, obs.peer_epoch or 0)
    if followed != state.epoch:
        state = replace(state, epoch=followed)
        persist: tuple[Action, ...] = ("persist_epoch",)
    else:
        persist = ()
    if policy.election != "static":
        return _replica_lease(state, obs, policy, persist)
    if obs.request is not None:
        answered = _static_replica_request(state, obs, persist)
        if answered is not None:
            return answered
    if not policy.failover_auto:
        return Decision(state, persist, _following(state, obs))
    return _static_failover(state, obs, policy, persist)


def _static_replica_request(
    state: RoleState, obs: Observations, persist: tuple[Action, ...]
) -> Decision | None:
    """An operator's request to a replica without a lease backend; None: nothing to answer here."""
    if obs.request == "promote":
        if obs.peer_untrusted and not obs.force:
            return Decision(
                state,
                persist,
                "promotion refused: a peer refuses our key or TLS, its role is unknown (use force)",
            )
        if obs.peer_is_leader and not obs.force:
            return Decision(
                state,
                persist,
                "promotion refused: the leader still accepts writes "
                "(drain it first, i.e. switchover, or use force)",
            )
        if not obs.synced and not obs.force:
            return Decision(
                state,
                persist,
                "promotion refused: this replica never completed a full sync (use force to promote anyway)",
            )
        return _promote(state, obs, state.epoch + 1, "promoted on request", lease_until=None)
    if obs.request == "demote":
        return Decision(state, persist, "already a replica")
    if obs.request == "handover":
        return Decision(state, persist, "handover refused: this node is not the leader")
    return None


def _static_failover(
    state: RoleState, obs: Observations, policy: Policy, persist: tuple[Action, ...]
) -> Decision:
    """FAILOVER=auto without a lease: promote once the leader stayed unreachable for FAILOVER_TIMEOUT."""
    leader_gone = not obs.link_up and obs.peer_is_leader is not True
    if leader_gone and obs.peer_untrusted:
        return Decision(
            replace(state, leader_lost_since=None),
            persist,
            "the link is down but a peer refuses our key or TLS: its role is unknown; not failing over",
        )
    if not leader_gone:
        return Decision(replace(state, leader_lost_since=None), persist, _following(state, obs))
    if state.leader_lost_since is None:
        return Decision(
            replace(state, leader_lost_since=obs.now),
            persist,
            "the leader is unreachable; failing over if it stays so",
        )
    waited = obs.now - state.leader_lost_since
    if waited < policy.failover_timeout:
        return Decision(state, persist, f"the leader has been unreachable for {waited:.1f}s")
    if not obs.synced:
        return Decision(
            state,
            persist,
            "the leader is unreachable but this replica never completed a full sync: not promoting",
        )
    return _promote(
        state,
        obs,
        state.epoch + 1,
        f"promoted: the leader was unreachable for {waited:.1f}s (FAILOVER=auto)",
        lease_until=None,
    )


def _replica_lease(
    state: RoleState, obs: Observations, policy: Policy, persist: tuple[Action, ...]
) -> Decision:
    lease = obs.lease
    if lease is not None and lease.kind == "acquired":
        until = lease.sent_at + policy.lease_ttl - policy.safety_margin
        return _promote(
            state,
            obs,
            max(lease.term, state.epoch + 1) if lease.term <= state.epoch else lease.term,
            f"acquired the lease with term {lease.term}",
            lease_until=until,
        )
    if obs.request == "promote":
        return Decision(
            state,
            persist,
            f"promotion refused: with ELECTION={policy.election} the lease decides"
            " (a switchover hands it over)",
        )
    if obs.request == "handover":
        return Decision(state, persist, "handover refused: this node is not the leader")
    if lease is not None and lease.kind == "error":
        return Decision(state, persist, "the election service is unreachable; staying a replica")
    return Decision(state, persist, _following(state, obs))


def may_compete(state: RoleState, obs: Observations, policy: Policy) -> bool:
    """Whether the control loop should try to acquire a free lease on this tick."""
    return (
        state.role == "replica"
        and obs.now >= state.hold_off_until
        and (obs.synced or policy.initial_leader)
        and not obs.outranked
    )


def _promote(
    state: RoleState, obs: Observations, epoch: int, reason: str, *, lease_until: float | None
) -> Decision:
    if epoch > MAX_EPOCH:  # unreachable unless the bounds on outside epochs (daemon/epochs.py) were bypassed
        return Decision(state, (), f"promotion refused: epoch {epoch} would be above {MAX_EPOCH}")
    new_state = RoleState(role="leader", epoch=epoch, lease_valid_until=lease_until)
    return Decision(new_state, ("become_leader", "persist_epoch"), reason)


def _following(state: RoleState, obs: Observations) -> str:
    if obs.link_up:
        return f"following the leader at epoch {state.epoch}"
    return f"waiting for a leader (epoch {state.epoch})"
