"""The role/epoch state machine: one table row per branch of decide(), plus invariants over random runs.

Each row: starting state, observations, policy -> expected role, epoch, whether the new state accepts
writes at `now`, the actions, a substring of the one-line reason, and any other state fields that the
branch is about (lease validity, leader_lost_since, hold-off, draining, confirmed).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from daemon.roles import (
    Decision,
    LeaseOutcome,
    Observations,
    Policy,
    RoleState,
    decide,
    initial_state,
    may_compete,
)

STATIC = Policy()
AUTO = Policy(failover_auto=True, failover_timeout=6.0)
REDIS = Policy(election="redis", lease_ttl=6.0, safety_margin=1.0)
POSTGRES = Policy(election="postgres", lease_ttl=6.0, safety_margin=1.0)

NOW = 100.0

LEADER = RoleState(role="leader", epoch=3)
UNCONFIRMED = RoleState(role="leader", epoch=3, confirmed=False)
DRAINING = RoleState(role="leader", epoch=3, draining=True)
REPLICA = RoleState(role="replica", epoch=3)
LOST_AT_100 = RoleState(role="replica", epoch=3, leader_lost_since=NOW)
# A lease holder whose lease (as this node counts it) runs until 105.
HOLDER = RoleState(role="leader", epoch=7, lease_valid_until=105.0)
DRAINING_HOLDER = replace(HOLDER, draining=True)


def obs(now: float = NOW, **kwargs: Any) -> Observations:
    return Observations(now=now, **kwargs)


def lease(kind: str, term: int = 0, sent_at: float = NOW) -> LeaseOutcome:
    return LeaseOutcome(kind=kind, term=term, sent_at=sent_at)  # type: ignore[arg-type]


def row(
    id: str,
    state: RoleState,
    observations: Observations,
    policy: Policy,
    role: str,
    epoch: int,
    writable: bool,
    actions: tuple[str, ...],
    reason: str,
    **fields: Any,
) -> Any:
    return pytest.param(state, observations, policy, role, epoch, writable, actions, reason, fields, id=id)


# fmt: off
TABLE = [
    # ---- leader, ELECTION=static ---------------------------------------------------------------------
    row("leader-static-confirmed-keeps-leading", LEADER, obs(), STATIC,
        "leader", 3, True, (), "leading with epoch 3"),
    row("leader-static-ignores-a-lower-peer-epoch", LEADER, obs(peer_epoch=2, peer_is_leader=True), STATIC,
        "leader", 3, True, (), "leading with epoch 3"),
    row("leader-static-unconfirmed-waits-until-the-peer-was-asked", UNCONFIRMED, obs(peer_checked=False),
        STATIC, "leader", 3, False, (), "checking the peer", confirmed=False),
    row("leader-static-unconfirmed-rejoins-when-peer-leads-at-equal-epoch", UNCONFIRMED,
        obs(peer_epoch=3, peer_is_leader=True), STATIC,
        "replica", 3, False, ("become_replica",), "rejoining as replica: the peer leads with epoch 3",
        hold_off_until=NOW),
    row("leader-static-unconfirmed-demotes-when-peer-leads-at-higher-epoch", UNCONFIRMED,
        obs(peer_epoch=4, peer_is_leader=True), STATIC,
        "replica", 4, False, ("become_replica", "persist_epoch"),
        "the peer has epoch 4, higher than ours (3)"),
    row("leader-static-unconfirmed-confirms-when-peer-unreachable", UNCONFIRMED, obs(), STATIC,
        "leader", 3, True, ("become_leader",), "confirmed as leader", confirmed=True),
    row("leader-static-unconfirmed-confirms-when-peer-is-a-replica", UNCONFIRMED,
        obs(peer_epoch=3, peer_is_leader=False), STATIC,
        "leader", 3, True, ("become_leader",), "no peer leads with an equal or higher epoch"),
    row("leader-static-unconfirmed-confirms-when-peer-leads-at-lower-epoch", UNCONFIRMED,
        obs(peer_epoch=2, peer_is_leader=True), STATIC,
        "leader", 3, True, ("become_leader",), "confirmed as leader"),
    row("leader-static-demoted-by-a-higher-peer-epoch", LEADER, obs(peer_epoch=5), STATIC,
        "replica", 5, False, ("become_replica", "persist_epoch"),
        "the peer has epoch 5, higher than ours (3)", hold_off_until=NOW),
    row("leader-static-higher-peer-epoch-wins-over-a-demote-request", LEADER,
        obs(peer_epoch=5, request="demote"), STATIC,
        "replica", 5, False, ("become_replica", "persist_epoch"), "the peer has epoch 5", hold_off_until=NOW),
    row("leader-static-demote-request-holds-off-two-ttls", LEADER, obs(request="demote"), STATIC,
        "replica", 3, False, ("become_replica",), "demoted on request", hold_off_until=NOW + 12.0),
    row("leader-static-drain-refuses-writes", LEADER, obs(request="drain"), STATIC,
        "leader", 3, False, (), "draining: refusing writes", draining=True),
    row("leader-static-undrain-accepts-writes-again", DRAINING, obs(request="undrain"), STATIC,
        "leader", 3, True, (), "writes accepted again", draining=False),
    row("leader-static-promote-while-leader-is-a-no-op", LEADER, obs(request="promote"), STATIC,
        "leader", 3, True, (), "already the leader"),
    # ---- leader, lease backend -----------------------------------------------------------------------
    row("leader-lease-renewed-counts-validity-from-sent-at", HOLDER,
        obs(102.0, lease=lease("renewed", 7, sent_at=101.5)), REDIS,
        "leader", 7, True, (), "renewed the lease for epoch 7", lease_valid_until=101.5 + 6.0 - 1.0),
    row("leader-lease-renewal-sent-long-ago-is-not-writable", HOLDER,
        obs(104.0, lease=lease("renewed", 7, sent_at=98.0)), REDIS,
        "leader", 7, False, (), "renewed the lease", lease_valid_until=103.0),
    row("leader-lease-lost-demotes-and-releases", HOLDER, obs(102.0, lease=lease("lost", 7)), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "the lease is no longer ours",
        lease_valid_until=None),
    row("leader-lease-held-by-other-demotes-to-its-term", HOLDER, obs(102.0, lease=lease("held_by_other", 9)),
        REDIS, "replica", 9, False, ("become_replica", "release_lease", "persist_epoch"),
        "the lease is no longer ours"),
    row("leader-lease-free-demotes", HOLDER, obs(102.0, lease=lease("free")), POSTGRES,
        "replica", 7, False, ("become_replica", "release_lease"), "the lease is no longer ours"),
    row("leader-lease-no-call-this-tick-within-lease-keeps-leading", HOLDER, obs(104.9), REDIS,
        "leader", 7, True, (), "leading with epoch 7"),
    row("leader-lease-ends-by-the-clock-at-exactly-valid-until", HOLDER, obs(105.0), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"),
        "could not renew the lease before it ended"),
    row("leader-lease-error-within-lease-keeps-leading", HOLDER, obs(103.0, lease=lease("error")), REDIS,
        "leader", 7, True, (), "still within the lease, retrying"),
    row("leader-lease-error-after-lease-ended-demotes-self", HOLDER, obs(106.0, lease=lease("error")), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"),
        "could not renew the lease before it ended"),
    row("leader-lease-demote-request-releases-and-holds-off", HOLDER,
        obs(102.0, request="demote", lease=lease("renewed", 7, sent_at=102.0)), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "demoted on request",
        hold_off_until=102.0 + 12.0),
    row("leader-lease-higher-peer-epoch-demotes-releases-and-persists", HOLDER, obs(102.0, peer_epoch=8),
        REDIS, "replica", 8, False, ("become_replica", "release_lease", "persist_epoch"),
        "the peer has epoch 8"),
    row("leader-lease-drain-within-lease", HOLDER, obs(102.0, request="drain"), REDIS,
        "leader", 7, False, (), "draining", draining=True),
    # The three rows below describe the design's rule ("a leader that cannot renew before the TTL demotes
    # itself"; the lease outcome must never be ignored) on ticks that also carry a drain/undrain request.
    row("leader-lease-undrain-on-the-tick-the-lease-is-lost-still-demotes",
        RoleState(role="leader", epoch=7, lease_valid_until=105.0, draining=True),
        obs(102.0, request="undrain", lease=lease("lost", 7)), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "lease"),
    row("leader-lease-undrain-after-the-lease-ended-demotes-self",
        RoleState(role="leader", epoch=7, lease_valid_until=105.0, draining=True),
        obs(106.0, request="undrain"), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "lease"),
    row("leader-lease-drain-keeps-a-renewal-made-on-the-same-tick", HOLDER,
        obs(104.0, request="drain", lease=lease("renewed", 7, sent_at=104.0)), REDIS,
        "leader", 7, False, (), "draining", draining=True, lease_valid_until=109.0),
    # ---- leader, lease backend: planned hand-over ----------------------------------------------------
    row("leader-lease-handover-to-a-caught-up-replica-while-drained", DRAINING_HOLDER,
        obs(102.0, request="handover", handover_to="node-b", handover_target_ready=True), REDIS,
        "leader", 7, False, ("handover_lease",), "handing the lease to node-b", draining=True),
    row("leader-lease-handover-refused-unless-drained", HOLDER,
        obs(102.0, request="handover", handover_to="node-b", handover_target_ready=True), POSTGRES,
        "leader", 7, True, (), "handover refused: drain the leader first"),
    row("leader-lease-handover-refused-to-a-replica-not-caught-up", DRAINING_HOLDER,
        obs(102.0, request="handover", handover_to="node-b"), REDIS,
        "leader", 7, False, (), "handover refused: node-b is not a connected replica that confirmed"),
    row("leader-lease-handover-refused-without-a-target", DRAINING_HOLDER,
        obs(102.0, request="handover", handover_target_ready=True), REDIS,
        "leader", 7, False, (), "handover refused: no node named"),
    row("leader-lease-handover-refused-once-the-lease-ended", DRAINING_HOLDER,
        obs(105.0, request="handover", handover_to="node-b", handover_target_ready=True), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "could not renew the lease"),
    row("leader-lease-handed-over-follows-at-the-new-term-and-holds-off", DRAINING_HOLDER,
        obs(102.0, lease=LeaseOutcome("handed_over", term=8, sent_at=101.9, holder="node-b")), REDIS,
        "replica", 7, False, ("become_replica",), "handed the lease to node-b with term 8",
        hold_off_until=102.0 + 12.0, lease_valid_until=None),
    row("leader-lease-handover-unknown-accepts-nothing-until-renewed", DRAINING_HOLDER,
        obs(102.0, lease=lease("handover_unknown")), POSTGRES,
        "leader", 7, False, (), "handover failed", lease_valid_until=102.0, draining=True),
    row("leader-lease-handover-unknown-then-renewed-leads-again-once-undrained",
        replace(DRAINING_HOLDER, lease_valid_until=102.0),
        obs(102.3, request="undrain", lease=lease("renewed", 7, sent_at=102.25)), REDIS,
        "leader", 7, True, (), "writes accepted again", lease_valid_until=107.25),
    row("leader-lease-handover-unknown-then-renewal-fails-demotes",
        replace(DRAINING_HOLDER, lease_valid_until=102.0), obs(102.3, lease=lease("error")), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "could not renew the lease"),
    row("leader-lease-handover-that-found-the-lease-gone-demotes", DRAINING_HOLDER,
        obs(102.0, lease=lease("lost", 7)), REDIS,
        "replica", 7, False, ("become_replica", "release_lease"), "the lease is no longer ours"),
    row("leader-static-handover-refused", LEADER, obs(request="handover", handover_to="node-b"), STATIC,
        "leader", 3, True, (), "handover refused: with ELECTION=static there is no lease"),
    row("replica-lease-handover-refused-not-the-leader", REPLICA, obs(request="handover", handover_to="x"),
        REDIS, "replica", 3, False, (), "handover refused: this node is not the leader"),
    row("replica-static-handover-refused-not-the-leader", REPLICA, obs(request="handover", handover_to="x"),
        STATIC, "replica", 3, False, (), "handover refused: this node is not the leader"),
    row("replica-lease-takes-a-handed-lease-at-its-term", REPLICA,
        obs(102.2, synced=True, lease=lease("acquired", 8, sent_at=102.0)), REDIS,
        "leader", 8, True, ("become_leader", "persist_epoch"), "acquired the lease with term 8",
        lease_valid_until=107.0),
    # ---- replica, ELECTION=static --------------------------------------------------------------------
    row("replica-static-promote-refused-when-never-synced", REPLICA, obs(request="promote"), STATIC,
        "replica", 3, False, (), "promotion refused: this replica never completed a full sync"),
    row("replica-static-promote-forced-without-sync", REPLICA, obs(request="promote", force=True), STATIC,
        "leader", 4, True, ("become_leader", "persist_epoch"), "promoted on request"),
    row("replica-static-promote-when-synced-moves-to-next-epoch", REPLICA,
        obs(request="promote", synced=True), STATIC,
        "leader", 4, True, ("become_leader", "persist_epoch"), "promoted on request",
        confirmed=True, draining=False, lease_valid_until=None),
    row("replica-static-promote-goes-above-the-highest-peer-epoch", REPLICA,
        obs(request="promote", synced=True, peer_epoch=5), STATIC,
        "leader", 6, True, ("become_leader", "persist_epoch"), "promoted on request"),
    row("replica-static-refused-promotion-still-follows-a-higher-epoch", REPLICA,
        obs(request="promote", peer_epoch=5), STATIC,
        "replica", 5, False, ("persist_epoch",), "promotion refused"),
    row("replica-static-demote-while-replica-is-a-no-op", REPLICA, obs(request="demote"), STATIC,
        "replica", 3, False, (), "already a replica"),
    row("replica-static-manual-failover-waits-when-leader-gone", REPLICA, obs(200.0, synced=True), STATIC,
        "replica", 3, False, (), "waiting for a leader (epoch 3)", leader_lost_since=None),
    row("replica-static-manual-failover-ignores-a-recorded-loss", LOST_AT_100, obs(200.0, synced=True),
        STATIC, "replica", 3, False, (), "waiting for a leader"),
    row("replica-static-follows-a-connected-leader", REPLICA, obs(link_up=True, peer_epoch=3), STATIC,
        "replica", 3, False, (), "following the leader at epoch 3"),
    row("replica-static-follows-a-higher-peer-epoch", REPLICA, obs(link_up=True, peer_epoch=5), STATIC,
        "replica", 5, False, ("persist_epoch",), "following the leader at epoch 5"),
    row("replica-static-keeps-its-epoch-over-a-lower-peer-epoch", REPLICA, obs(link_up=True, peer_epoch=2),
        STATIC, "replica", 3, False, (), "following the leader at epoch 3"),
    # ---- replica, FAILOVER=auto ----------------------------------------------------------------------
    row("replica-auto-first-sight-of-a-lost-leader-records-the-instant", REPLICA, obs(synced=True), AUTO,
        "replica", 3, False, (), "the leader is unreachable; failing over if it stays so",
        leader_lost_since=NOW),
    row("replica-auto-peer-answering-not-leader-counts-as-lost", REPLICA, obs(peer_is_leader=False), AUTO,
        "replica", 3, False, (), "failing over if it stays so", leader_lost_since=NOW),
    row("replica-auto-waits-below-the-timeout", LOST_AT_100, obs(103.0, synced=True), AUTO,
        "replica", 3, False, (), "the leader has been unreachable for 3.0s", leader_lost_since=NOW),
    row("replica-auto-promotes-at-the-timeout-when-synced", LOST_AT_100, obs(106.0, synced=True), AUTO,
        "leader", 4, True, ("become_leader", "persist_epoch"), "unreachable for 6.0s (FAILOVER=auto)",
        leader_lost_since=None),
    row("replica-auto-promotes-above-a-higher-peer-epoch", LOST_AT_100, obs(110.0, synced=True, peer_epoch=6),
        AUTO, "leader", 7, True, ("become_leader", "persist_epoch"), "promoted: the leader was unreachable"),
    row("replica-auto-never-promotes-when-not-synced", LOST_AT_100, obs(130.0), AUTO,
        "replica", 3, False, (), "never completed a full sync: not promoting", leader_lost_since=NOW),
    row("replica-auto-link-back-clears-the-loss", LOST_AT_100, obs(103.0, link_up=True, synced=True), AUTO,
        "replica", 3, False, (), "following the leader at epoch 3", leader_lost_since=None),
    row("replica-auto-peer-says-leader-counts-as-present-with-link-down", LOST_AT_100,
        obs(130.0, peer_is_leader=True, synced=True), AUTO,
        "replica", 3, False, (), "waiting for a leader (epoch 3)", leader_lost_since=None),
    row("replica-auto-promote-request-when-synced", REPLICA, obs(request="promote", synced=True), AUTO,
        "leader", 4, True, ("become_leader", "persist_epoch"), "promoted on request"),
    # ---- replica, lease backend ----------------------------------------------------------------------
    row("replica-lease-acquired-leads-with-the-term-as-epoch", REPLICA,
        obs(100.2, lease=lease("acquired", 9, sent_at=100.0)), REDIS,
        "leader", 9, True, ("become_leader", "persist_epoch"), "acquired the lease with term 9",
        lease_valid_until=105.0, confirmed=True),
    row("replica-lease-acquired-with-a-lower-term-moves-past-our-epoch", REPLICA,
        obs(100.2, lease=lease("acquired", 2, sent_at=100.0)), REDIS,
        "leader", 4, True, ("become_leader", "persist_epoch"), "acquired the lease with term 2",
        lease_valid_until=105.0),
    row("replica-lease-acquired-with-an-equal-term-moves-past-our-epoch", REPLICA,
        obs(100.2, lease=lease("acquired", 3, sent_at=100.0)), POSTGRES,
        "leader", 4, True, ("become_leader", "persist_epoch"), "acquired the lease with term 3"),
    row("replica-lease-acquired-moves-past-a-higher-peer-epoch", REPLICA,
        obs(100.2, peer_epoch=6, lease=lease("acquired", 5, sent_at=100.0)), REDIS,
        "leader", 7, True, ("become_leader", "persist_epoch"), "acquired the lease with term 5"),
    row("replica-lease-acquired-wins-over-a-promote-request", REPLICA,
        obs(100.2, request="promote", lease=lease("acquired", 9, sent_at=100.0)), REDIS,
        "leader", 9, True, ("become_leader", "persist_epoch"), "acquired the lease"),
    row("replica-lease-promote-request-refused-redis", REPLICA, obs(request="promote", synced=True), REDIS,
        "replica", 3, False, (), "promotion refused: with ELECTION=redis the lease decides (a switchover"),
    row("replica-lease-promote-request-refused-postgres", REPLICA,
        obs(request="promote", synced=True, force=True), POSTGRES,
        "replica", 3, False, (), "with ELECTION=postgres the lease decides"),
    row("replica-lease-error-stays-replica", REPLICA, obs(lease=lease("error")), REDIS,
        "replica", 3, False, (), "the election service is unreachable; staying a replica"),
    row("replica-lease-held-by-other-follows", REPLICA,
        obs(link_up=True, peer_epoch=3, lease=lease("held_by_other")), REDIS,
        "replica", 3, False, (), "following the leader at epoch 3"),
    row("replica-lease-follows-a-higher-peer-epoch", REPLICA, obs(peer_epoch=8), REDIS,
        "replica", 8, False, ("persist_epoch",), "waiting for a leader (epoch 8)"),
    row("replica-lease-never-fails-over-on-its-own-clock", LOST_AT_100, obs(200.0, synced=True),
        Policy(election="redis", failover_auto=True), "replica", 3, False, (), "waiting for a leader"),
]
# fmt: on


@pytest.mark.parametrize(
    ("state", "observations", "policy", "role", "epoch", "writable", "actions", "reason", "fields"), TABLE
)
def test_decide(
    state: RoleState,
    observations: Observations,
    policy: Policy,
    role: str,
    epoch: int,
    writable: bool,
    actions: tuple[str, ...],
    reason: str,
    fields: dict[str, Any],
) -> None:
    decision = decide(state, observations, policy)
    new = decision.state
    assert (new.role, new.epoch, new.accepts_writes(observations.now), decision.actions) == (
        role,
        epoch,
        writable,
        actions,
    ), decision.reason
    assert reason in decision.reason
    assert "\n" not in decision.reason
    for name, value in fields.items():
        assert getattr(new, name) == value, name


# ---- initial_state ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "policy", "expected"),
    [
        pytest.param(
            "leader", STATIC, RoleState("leader", 4, confirmed=False), id="static-master-unconfirmed"
        ),
        pytest.param("replica", STATIC, RoleState("replica", 4), id="static-slave-replica"),
        pytest.param("leader", REDIS, RoleState("replica", 4), id="redis-master-starts-as-replica"),
        pytest.param("replica", REDIS, RoleState("replica", 4), id="redis-slave-replica"),
        pytest.param("leader", POSTGRES, RoleState("replica", 4), id="postgres-master-starts-as-replica"),
        pytest.param("replica", POSTGRES, RoleState("replica", 4), id="postgres-slave-replica"),
    ],
)
def test_initial_state(role: str, policy: Policy, expected: RoleState) -> None:
    state = initial_state(role, 4, policy)  # type: ignore[arg-type]
    assert state == expected
    assert not state.accepts_writes(0.0)


# ---- may_compete -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "now", "synced", "policy", "expected"),
    [
        pytest.param(REPLICA, NOW, True, REDIS, True, id="synced-replica"),
        pytest.param(REPLICA, NOW, False, REDIS, False, id="never-synced-replica"),
        pytest.param(
            REPLICA, NOW, False, Policy(election="redis", initial_leader=True), True, id="initial-leader"
        ),
        pytest.param(HOLDER, NOW, True, REDIS, False, id="leader-never-competes"),
        pytest.param(RoleState("replica", 3, hold_off_until=110.0), 109.9, True, REDIS, False, id="held-off"),
        pytest.param(
            RoleState("replica", 3, hold_off_until=110.0), 110.0, True, REDIS, True, id="hold-off-over"
        ),
        pytest.param(
            RoleState("replica", 3, hold_off_until=110.0),
            109.0,
            False,
            Policy(election="redis", initial_leader=True),
            False,
            id="initial-leader-still-held-off",
        ),
    ],
)
def test_may_compete(state: RoleState, now: float, synced: bool, policy: Policy, expected: bool) -> None:
    assert may_compete(state, Observations(now=now, synced=synced), policy) is expected


def test_an_outranked_replica_leaves_the_lease_to_the_one_ahead() -> None:
    assert not may_compete(REPLICA, Observations(now=NOW, synced=True, outranked=True), REDIS)
    assert may_compete(REPLICA, Observations(now=NOW, synced=True, outranked=False), REDIS)


def test_a_demoted_leader_does_not_compete_during_its_hold_off() -> None:
    demoted = decide(HOLDER, obs(102.0, request="demote"), REDIS).state
    assert not may_compete(demoted, obs(102.0 + 11.9, synced=True), REDIS)
    assert may_compete(demoted, obs(102.0 + 12.0, synced=True), REDIS)


# ---- accepts_writes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "now", "expected"),
    [
        pytest.param(LEADER, NOW, True, id="confirmed-static-leader"),
        pytest.param(REPLICA, NOW, False, id="replica"),
        pytest.param(DRAINING, NOW, False, id="draining"),
        pytest.param(UNCONFIRMED, NOW, False, id="unconfirmed"),
        pytest.param(HOLDER, 104.999, True, id="within-lease"),
        pytest.param(HOLDER, 105.0, False, id="lease-boundary-exactly-now"),
        pytest.param(HOLDER, 105.001, False, id="past-lease"),
        pytest.param(RoleState("replica", 7, lease_valid_until=105.0), 101.0, False, id="replica-with-lease"),
    ],
)
def test_accepts_writes(state: RoleState, now: float, expected: bool) -> None:
    assert state.accepts_writes(now) is expected


# ---- invariants over random runs -------------------------------------------------------------------------

POLICIES = st.sampled_from(
    [
        STATIC,
        AUTO,
        Policy(failover_auto=True, failover_timeout=1.0),
        REDIS,
        POSTGRES,
        Policy(election="redis", lease_ttl=3.0, safety_margin=0.5, initial_leader=True),
    ]
)
# One tick, drawn in a single tuple (cheap to generate and to shrink); replay() turns it into observations
# relative to the node's current state, with only the lease outcomes the control loop can produce for it.
TICK = st.tuples(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 7.0]),  # time since the previous tick
    st.none() | st.integers(-3, 3),  # peer epoch, relative to ours
    st.sampled_from([None, True, False]),  # peer_is_leader
    st.booleans(),  # peer_checked
    st.booleans(),  # link_up
    st.booleans(),  # synced
    st.sampled_from([None, None, None, "promote", "demote", "drain", "undrain", "handover"]),
    st.booleans(),  # force
    st.integers(0, 5),  # which lease outcome (0: no lease call this tick)
    st.integers(-3, 3),  # lease term, relative to our epoch
    st.sampled_from([0.0, 0.1, 1.0, 3.0]),  # how long before now the lease request was sent
    st.booleans(),  # handover: the named replica is caught up
)
ROLES = st.sampled_from(["leader", "replica"])
RUNS = st.tuples(POLICIES, ROLES, st.integers(0, 5), st.lists(TICK, max_size=30))
LEASE_POLICIES = st.sampled_from(
    [REDIS, POSTGRES, Policy(election="redis", lease_ttl=3.0, initial_leader=True)]
)
LEASE_RUNS = st.tuples(LEASE_POLICIES, ROLES, st.integers(0, 5), st.lists(TICK, max_size=30))

LEASE_KINDS = {
    "leader": (None, "renewed", "lost", "error"),
    "draining": (None, "renewed", "lost", "error", "handed_over", "handover_unknown"),
    "competing": (None, "acquired", "held_by_other", "error"),
    "replica": (None, "held_by_other", "free", "error"),
}


def observe(state: RoleState, now: float, policy: Policy, tick: tuple[Any, ...]) -> Observations:
    _, peer, peer_is_leader, checked, link_up, synced, request, force, kind_index, term, delay, ready = tick
    observations = Observations(
        now=now,
        peer_epoch=None if peer is None else max(0, state.epoch + peer),
        peer_is_leader=peer_is_leader,
        peer_checked=checked,
        link_up=link_up,
        synced=synced,
        request=request,
        force=force,
        handover_to="node-b" if request == "handover" else "",
        handover_target_ready=ready,
    )
    if policy.election == "static":
        return observations
    if state.role == "leader" and state.draining and request is None:
        kinds = LEASE_KINDS["draining"]  # with what the control loop feeds back after a hand-over
    elif state.role == "leader":
        kinds = LEASE_KINDS["leader"]
    else:
        kinds = LEASE_KINDS["competing" if may_compete(state, observations, policy) else "replica"]
    kind = kinds[kind_index % len(kinds)]
    if kind is None:
        return observations
    outcome = LeaseOutcome(kind=kind, term=max(0, state.epoch + term), sent_at=now - delay)
    return replace(observations, lease=outcome)


def replay(run: tuple[Any, ...]) -> tuple[Policy, list[tuple[RoleState, Observations, Decision]]]:
    policy, role, epoch, ticks = run
    state = initial_state(role, epoch, policy)
    now = 50.0
    steps = []
    for tick in ticks:
        now += tick[0]
        observations = observe(state, now, policy, tick)
        decision = decide(state, observations, policy)
        steps.append((state, observations, decision))
        state = decision.state
    return policy, steps


@settings(max_examples=300, deadline=None, database=None)
@given(RUNS)
def test_invariants_hold_over_any_sequence_of_observations(run: tuple[Any, ...]) -> None:
    _, steps = replay(run)
    for before, observations, decision in steps:
        after = decision.state
        assert after.epoch >= before.epoch, decision.reason
        if after.accepts_writes(observations.now):
            assert after.role == "leader" and after.confirmed and not after.draining
        if before.role == "replica" and after.role == "leader":
            assert "become_leader" in decision.actions and "persist_epoch" in decision.actions
            outcome = observations.lease
            from_lease_term = (
                outcome is not None
                and outcome.kind == "acquired"
                and after.epoch == outcome.term > before.epoch
            )
            assert after.epoch > before.epoch or from_lease_term
        if before.role == "leader" and after.role == "replica":
            assert "become_replica" in decision.actions
        if "handover_lease" in decision.actions:
            assert before.role == after.role == "leader" and after.draining, decision.reason
            assert observations.handover_target_ready  # a renewal on the same tick may extend the lease
            assert after == replace(before, lease_valid_until=after.lease_valid_until)
        if "release_lease" in decision.actions:
            assert before.lease_valid_until is not None and after.role == "replica"
        assert ("persist_epoch" in decision.actions) == (after.epoch != before.epoch), decision.reason
        assert decision.reason.strip() and "\n" not in decision.reason and "\r" not in decision.reason


ACQUIRE = (0.0, None, None, True, False, True, None, False, 1, 1, 0.0, False)
UNDRAIN_AS_THE_LEASE_IS_LOST = (1.0, None, None, True, False, True, "undrain", False, 2, 0, 0.0, False)
DRAIN = (0.5, None, None, True, True, True, "drain", False, 1, 0, 0.0, False)
HANDOVER = (0.2, None, None, True, True, True, "handover", False, 0, 0, 0.0, True)
HANDED_OVER = (0.0, None, None, True, True, True, None, False, 4, 1, 0.0, True)
UNKNOWN_THEN_UNDRAIN = (0.1, None, None, True, True, True, "undrain", False, 0, 0, 0.0, True)
HANDOVER_UNKNOWN = (0.0, None, None, True, True, True, None, False, 5, 0, 0.0, True)


@settings(max_examples=300, deadline=None, database=None)
@given(LEASE_RUNS)
@example((REDIS, "replica", 0, [ACQUIRE, UNDRAIN_AS_THE_LEASE_IS_LOST]))
@example((REDIS, "replica", 0, [ACQUIRE, DRAIN, HANDOVER, HANDED_OVER]))
@example((POSTGRES, "replica", 0, [ACQUIRE, DRAIN, HANDOVER, HANDOVER_UNKNOWN, UNKNOWN_THEN_UNDRAIN]))
def test_a_lease_leader_never_writes_without_its_lease(run: tuple[Any, ...]) -> None:
    _, steps = replay(run)
    for _, observations, decision in steps:
        after = decision.state
        if not after.accepts_writes(observations.now):
            continue
        assert after.lease_valid_until is not None and observations.now < after.lease_valid_until
        outcome = observations.lease
        assert outcome is None or outcome.kind not in (
            "lost",
            "held_by_other",
            "free",
            "handed_over",
            "handover_unknown",
        ), f"writable right after the lease was {outcome.kind}: {decision.reason}"


# -- a peer that refuses our key or TLS: its role is unknown ---------------------------------------
def test_an_unconfirmed_leader_does_not_confirm_while_a_peer_refuses_our_key() -> None:
    decision = decide(UNCONFIRMED, obs(peer_checked=True, peer_untrusted=True), STATIC)
    assert decision.state.role == "leader" and not decision.state.confirmed
    assert not decision.state.accepts_writes(NOW) and "its role is unknown" in decision.reason


def test_a_replica_does_not_fail_over_while_a_peer_refuses_our_key() -> None:
    for start in (REPLICA, LOST_AT_100):
        decision = decide(start, obs(now=NOW + 60, synced=True, peer_untrusted=True), AUTO)
        assert decision.state.role == "replica" and decision.state.leader_lost_since is None
        assert "not failing over" in decision.reason


def test_a_promotion_request_is_refused_while_a_peer_refuses_our_key_unless_forced() -> None:
    refused = decide(REPLICA, obs(synced=True, peer_untrusted=True, request="promote"), STATIC)
    assert refused.state.role == "replica" and "its role is unknown" in refused.reason
    forced = decide(REPLICA, obs(synced=True, peer_untrusted=True, request="promote", force=True), STATIC)
    assert forced.state.role == "leader"
