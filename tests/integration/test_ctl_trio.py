"""`hotstandby switchover` and `status` on one leader and two replicas (static election, every node
listing the other two): the hand-over goes to the most caught-up replica or to `--to`, and every other
node ends up following the new leader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon.ctl import NodeStatus, choose_replica
from tests.integration.test_ctl import ctl, primary, put
from tests.integration.test_fanout import converged, replicas_connected, running, trio
from tests.support.cluster import Node, wait_until
from tests.support.ha import FAST


def follows(node: Node, leader: Node, epoch: int) -> bool:
    status = node.status()
    return bool(
        status["role"] == "slave"
        and status["epoch"] == epoch
        and status["master_node"] == leader.status()["node_id"]
    )


@pytest.mark.timeout(90)
def test_switchover_on_three_nodes_hands_over_and_every_other_node_follows(tmp_path: Path) -> None:
    with running(trio(tmp_path, FAST, everyone_lists_the_others=True)) as (leader, first, second):
        nodes = ",".join(n.url for n in (leader, first, second))
        wait_until(lambda: primary(leader), 15, message="node 0 to lead")
        wait_until(lambda: replicas_connected(leader) == [True, True], 15, message="both links")
        wait_until(lambda: first.status()["synced"] and second.status()["synced"], 15, message="synced")
        for i in range(10):
            assert put(leader, f"before/{i}", f"epoch 1 write {i}".encode()) == 200

        shown = ctl("status", "--nodes", nodes)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert all(n.url in shown.stdout for n in (leader, first, second)), shown.stdout
        assert "2 replica(s) in step" in shown.stdout

        # Without --to: the most caught-up replica (their sequences may differ by a heartbeat or two).
        done = ctl("switchover", "--nodes", nodes, "--timeout", "20")
        assert done.returncode == 0, done.stdout + done.stderr
        chosen = re.search(r"handing over to (\S+), the most caught-up", done.stdout)
        assert chosen and chosen.group(1) in (first.url, second.url), done.stdout
        new, other = (first, second) if chosen.group(1) == first.url else (second, first)
        assert primary(new) and not primary(leader) and not primary(other)
        assert new.status()["epoch"] == 2
        wait_until(lambda: follows(leader, new, 2) and follows(other, new, 2), 10, message="followers")
        for i in range(10):
            assert put(new, f"middle/{i}", f"epoch 2 write {i}".encode()) == 200
        converged(new, leader, other)

        # --to chooses: the replica not chosen above.
        done = ctl("switchover", "--nodes", nodes, "--to", other.url, "--timeout", "20")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"handing over to {other.url} (--to)" in done.stdout, done.stdout
        assert primary(other) and not primary(new) and not primary(leader)
        wait_until(lambda: follows(leader, other, 3) and follows(new, other, 3), 10, message="followers")
        for i in range(10):
            assert put(other, f"after/{i}", f"epoch 3 write {i}".encode()) == 200
        converged(other, leader, new)
        for i in range(10):
            assert (leader.storage / "middle" / str(i)).read_bytes() == f"epoch 2 write {i}".encode()

        as_json = json.loads(ctl("status", "--nodes", nodes, "--json").stdout)
        roles = {n["url"]: n["status"]["role"] for n in as_json["nodes"]}
        assert as_json["healthy"] and roles == {leader.url: "slave", new.url: "slave", other.url: "master"}
        refused = ctl("switchover", "--nodes", nodes, "--to", other.url)
        assert refused.returncode == 1 and "is the leader, not a replica" in refused.stderr


def replica(url: str, applied: int, *, synced: bool = True, peers: int = 3) -> NodeStatus:
    body = {
        "role": "slave",
        "synced": synced,
        "peer_connected": True,
        "applied_sequence": applied,
        "peer_urls": [f"http://peer{i}:5002" for i in range(peers)],
    }
    return NodeStatus(url, body)


LEADER = NodeStatus("http://a:5002", {"role": "master", "writable": True})


def test_the_most_caught_up_synced_replica_is_chosen_unless_told_otherwise() -> None:
    behind, ahead, unsynced = (
        replica("http://b:1", 40),
        replica("http://c:1", 41),
        replica("http://d:1", 99, synced=False),
    )
    chosen, why = choose_replica(LEADER, [behind, ahead, unsynced], None)
    assert chosen is ahead and "most caught-up (sequence 41)" in why
    chosen, why = choose_replica(LEADER, [behind, ahead, unsynced], "http://b:1")
    assert chosen is behind and "(--to)" in why
    chosen, why = choose_replica(LEADER, [behind, unsynced], "http://d:1")
    assert chosen is None and "never completed a full sync" in why


def test_a_replica_that_would_not_replicate_to_every_other_node_is_refused() -> None:
    narrow = replica("http://b:1", 50, peers=1)  # SYNC_SOURCE names only the current leader
    chosen, why = choose_replica(LEADER, [narrow, replica("http://c:1", 10)], None)
    assert chosen is None and "lists 1 other node(s) in SYNC_SOURCE, but 2 would follow it" in why
    pair_replica = replica("http://b:1", 5, peers=1)
    assert choose_replica(LEADER, [pair_replica], None)[0] is pair_replica
