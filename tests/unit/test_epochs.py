"""Epochs from outside are bounded the same way everywhere: a hostile one is refused, never persisted.

A peer's status, a replica's 409 answer, a hello from a would-be leader, the node's own state file,
an event posted to the catalogue: each is checked against daemon/epochs.py, and a cluster pushed to
the highest epoch a peer may announce can still promote with epochs the API accepts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.election.base import ElectionError, checked_term
from daemon.epochs import EPOCH_HEADROOM, MAX_EPOCH, MAX_PEER_EPOCH, EpochError, checked_own, from_outside
from daemon.ha_loop import ControlLoop
from daemon.identity import NodeIdentity
from daemon.node import Node
from daemon.peers import PeerView
from daemon.roles import Observations, Policy, RoleState, decide
from daemon.store.catalogue import split_event_fields
from daemon.store.errors import InvalidEvent

HOSTILE = (MAX_PEER_EPOCH + 1, MAX_EPOCH, MAX_EPOCH + 1, 2**63, 2**80)


def test_the_bound_leaves_headroom_for_promotions_below_the_apis_own() -> None:
    assert MAX_EPOCH == 2**62 and EPOCH_HEADROOM == 2**20
    assert MAX_PEER_EPOCH + EPOCH_HEADROOM == MAX_EPOCH


@pytest.mark.parametrize("value", [0, 1, 12345, MAX_PEER_EPOCH])
def test_epochs_in_range_are_taken(value: int) -> None:
    assert from_outside(value) == value


@pytest.mark.parametrize("value", [*HOSTILE, -1, True, False, "7", 7.0, None, [1]])
def test_anything_else_from_outside_is_refused(value: Any) -> None:
    assert from_outside(value) is None


def test_own_epochs_may_use_the_headroom_but_not_more() -> None:
    assert checked_own(MAX_EPOCH) == MAX_EPOCH
    for value in (MAX_EPOCH + 1, -1, True, "3"):
        with pytest.raises(EpochError):
            checked_own(value)  # type: ignore[arg-type]


def test_a_replica_at_the_highest_peer_epoch_can_still_be_promoted_to_a_valid_epoch() -> None:
    state = RoleState(role="replica", epoch=1)
    obs = Observations(now=10.0, peer_epoch=MAX_PEER_EPOCH, synced=True, request="promote")
    decision = decide(state, obs, Policy())
    assert decision.state.role == "leader"
    assert decision.state.epoch == MAX_PEER_EPOCH + 1 <= MAX_EPOCH


def test_a_promotion_beyond_the_apis_bound_is_refused_not_produced() -> None:
    state = RoleState(role="replica", epoch=MAX_EPOCH)
    decision = decide(state, Observations(now=1.0, synced=True, request="promote"), Policy())
    assert decision.state.role == "replica" and "promotion refused" in decision.reason


def test_a_lease_term_out_of_range_is_an_election_error_naming_the_key() -> None:
    assert checked_term(42, "redis at r:6379", "hotstandby:c:term") == 42
    with pytest.raises(ElectionError, match="hotstandby:c:term"):
        checked_term(MAX_PEER_EPOCH + 1, "redis at r:6379", "hotstandby:c:term")


# -- the node: state file, control loop, peers' announcements ------------------------------------------
def test_a_state_file_with_an_epoch_out_of_range_stops_the_node(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps({"node_id": "n", "epoch": 2**63}))
    with pytest.raises(EpochError, match=r"node\.json"):
        NodeIdentity.load(str(tmp_path))
    identity = NodeIdentity("n", MAX_EPOCH + 1, str(tmp_path / "other.json"))
    with pytest.raises(EpochError):
        identity.save()
    assert not (tmp_path / "other.json").exists()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    env = {"STORAGE_PATH": str(tmp_path / "storage"), "STATE_PATH": str(tmp_path / "state")}
    made = Node(Config.from_env({**env, "ROLE": "slave", "SERVER_HOST": "127.0.0.1"}))
    made.prepare_storage()
    yield made
    await made.stop_leading()


class FakePeer:
    """A peer poller whose last answer is fixed: what the control loop reads each tick."""

    attempts = 1

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def peer_view(self, max_age: float) -> PeerView:
        return PeerView(epoch=self.epoch, writable=True, role="master", answered_at=0.0)


def stored_epoch(node: Node) -> int:
    return int(json.loads(Path(node.identity.path).read_text())["epoch"])


@pytest.mark.parametrize("hostile", [MAX_PEER_EPOCH + 1, MAX_EPOCH])
async def test_a_hostile_epoch_in_a_peers_status_is_refused_counted_and_never_persisted(
    node: Node, hostile: int
) -> None:
    control = ControlLoop(node, backend=None)
    await control.start()
    control.peers = [FakePeer(hostile)]  # type: ignore[list-item]
    before = stored_epoch(node)
    for _ in range(3):
        await control.tick()
    assert node.epoch == node.identity.epoch == stored_epoch(node) == before
    assert node.epochs_refused.labels(source="peer_status")._value.get() == 1, "counted once per value"
    control.peers = [FakePeer(7)]
    await control.tick()
    assert node.epoch == stored_epoch(node) == 7, "a sane epoch from the same peer is still followed"


async def test_a_leader_is_not_demoted_by_a_hostile_epoch(node: Node) -> None:
    control = ControlLoop(node, backend=None)
    await control.start()
    node.role_state = RoleState(role="leader", epoch=3)
    control.peers = [FakePeer(MAX_EPOCH)]  # type: ignore[list-item]
    decision = await control.tick()
    assert decision.state.role == "leader" and decision.state.epoch == 3


def test_a_hello_or_batch_with_a_hostile_epoch_is_not_remembered(node: Node) -> None:
    node.note_peer_epoch(5)
    node.note_peer_epoch(MAX_PEER_EPOCH + 1)
    assert node.peer_epoch_seen == 5
    node.note_peer_epoch(MAX_PEER_EPOCH)
    assert node.peer_epoch_seen == MAX_PEER_EPOCH
    assert node.epochs_refused.labels(source="peer_request")._value.get() == 1


# -- the catalogue ----------------------------------------------------------------------------------------
def test_an_event_epoch_must_fit_the_catalogues_64_bit_column() -> None:
    assert split_event_fields({"epoch": MAX_EPOCH})[0]["epoch"] == MAX_EPOCH
    for value in (2**63, -1, "x", True):
        with pytest.raises(InvalidEvent):
            split_event_fields({"epoch": value})
