"""A network partition between the master and everyone else, with a Redis lease.

Master, standby and Redis each run in their own network namespace; the master's link is taken
down at the bridge. The isolated master must stop answering 200 on /primary (and refuse writes)
before its lease can expire in Redis, the standby takes the lease and leads, and once the link is
back the old master follows the new leader. Samplers inside each namespace watch /primary every
50 ms throughout: at no moment may both nodes say 200.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.cluster import SERVER_KEY, http, tree_diff, wait_until
from tests.support.ha import LEASE
from tests.support.netcluster import NetCluster, describe, net_cluster, overlaps

LEASE_KEY = "hotstandby:hotstandby:leader"


def primary(node_url: str) -> bool:
    try:
        return http("GET", f"{node_url}/primary", timeout=1)[0] == 200
    except OSError:
        return False


def put(node_url: str, path: str, data: bytes) -> int:
    try:
        headers = {"Authorization": f"Bearer {SERVER_KEY}"}
        return http("PUT", f"{node_url}/internal/files/{path}", body=data, headers=headers, timeout=5)[0]
    except OSError:
        return 0


def start_lease_pair(cluster: NetCluster) -> None:
    cluster.start_redis()
    env = {**LEASE, "ELECTION": "redis", "REDIS_URL": cluster.redis_url}
    master = cluster.add_node("master", "master", env)
    slave = cluster.add_node("slave", "slave", env)
    master.extra_env["SYNC_TARGET"] = slave.url
    slave.extra_env["SYNC_SOURCE"] = master.url
    slave.start()
    master.start()
    wait_until(lambda: primary(master.url), 20, message="the master to take the lease")
    wait_until(lambda: bool(master.status()["peer_connected"]), 20, message="the replication link")


@pytest.mark.timeout(120)
def test_partitioned_master_demotes_before_its_lease_ends_and_rejoins_as_replica(tmp_path: Path) -> None:
    ttl = float(LEASE["LEASE_TTL"])
    with net_cluster(tmp_path) as cluster:
        start_lease_pair(cluster)
        master, slave = cluster.master, cluster.slave
        assert master.address.startswith("198.18.") and slave.address.startswith("198.18.")
        (master.storage / "before").mkdir()
        for i in range(20):
            (master.storage / "before" / f"f{i}.txt").write_text(f"file {i}")
        wait_until(lambda: not tree_diff(master.storage, slave.storage), 20, message="the first sync")
        samplers = [cluster.start_sampler("master"), cluster.start_sampler("slave")]
        time.sleep(1)

        cluster.link("master", up=False)
        asked = time.monotonic()
        pttl = int(cluster.redis_command("PTTL", LEASE_KEY).lstrip(b":"))
        assert 0 < pttl <= ttl * 1000, pttl
        lease_end = asked + pttl / 1000  # the earliest moment Redis can forget the master's lease
        assert not primary(master.url), "the test process must not reach the isolated master"

        wait_until(lambda: primary(slave.url), ttl + 10, message="the standby to take over")
        promoted = time.monotonic()
        refused = cluster.local("master", "PUT", "/internal/files/isolated.txt", b"x")
        assert refused[0] == 503, refused
        assert put(slave.url, "after/new-leader.txt", b"written during the partition") == 200
        time.sleep(1)

        cluster.link("master", up=True)
        wait_until(lambda: master.status()["role"] == "slave", 20, message="the old master to follow")
        wait_until(lambda: not tree_diff(slave.storage, master.storage), 30, message="the trees to converge")
        time.sleep(1)
        for sampler in samplers:
            sampler.stop()

        m, s = samplers[0].samples(), samplers[1].samples()
        timelines = f"master: {describe(m, asked)}\nslave: {describe(s, asked)}"
        assert len(m) > 50 and len(s) > 50, timelines
        assert overlaps(m, s) == [], f"both answered 200 on /primary:\n{timelines}"
        last_master_200 = max(x.ended for x in m if x.status == 200)
        first_slave_200 = min(x.started for x in s if x.status == 200)
        assert last_master_200 < lease_end, f"lease ended {lease_end - asked:.2f}s after the cut\n{timelines}"
        assert first_slave_200 > last_master_200 and promoted - asked < ttl + 10
        assert master.status()["epoch"] == slave.status()["epoch"] > 1
        assert (master.storage / "after" / "new-leader.txt").read_bytes() == b"written during the partition"
        print(
            f"partition: master stopped answering 200 {last_master_200 - asked:.2f}s after the cut, "
            f"{lease_end - last_master_200:.2f}s before its lease ended; standby leading after "
            f"{first_slave_200 - asked:.2f}s"
        )


@pytest.mark.timeout(120)
def test_partition_between_master_and_standby_only_changes_no_roles_and_heals(tmp_path: Path) -> None:
    """Both still reach Redis and the clients: the master keeps its lease and its writes, the standby
    neither promotes itself nor claims to be a usable replica, and replication resumes on healing."""
    ttl = float(LEASE["LEASE_TTL"])
    with net_cluster(tmp_path) as cluster:
        start_lease_pair(cluster)
        master, slave = cluster.master, cluster.slave
        (master.storage / "before.txt").write_text("replicated before the cut")
        wait_until(lambda: not tree_diff(master.storage, slave.storage), 20, message="the first sync")
        samplers = [cluster.start_sampler("master"), cluster.start_sampler("slave")]

        cut = time.monotonic()
        cluster.impair("master", cut_from="slave")
        assert primary(master.url) and http("GET", f"{slave.url}/health", timeout=5)[0] == 200
        for i in range(10):
            assert put(master.url, f"during/{i}.txt", f"written during the cut {i}".encode()) == 200
            time.sleep(0.3)
        wait_until(lambda: not master.status()["peer_connected"], 20, message="the master to see the cut")
        noticed = time.monotonic() - cut
        time.sleep(ttl)  # a whole lease period: the standby must not take over
        replica = cluster.local("slave", "GET", "/replica")[0]
        assert replica == 503, "a standby cut from its leader is no usable replica"
        assert not primary(slave.url) and primary(master.url)
        assert not (slave.storage / "during").exists()

        healed = time.monotonic()
        print(cluster.restore("master"))
        # The request cut mid-flight resumes at TCP's next retransmission (backed off: up to ~13 s).
        wait_until(lambda: not tree_diff(master.storage, slave.storage), 60, message="the trees to converge")
        wait_until(lambda: cluster.local("slave", "GET", "/replica")[0] == 200, 15, message="/replica 200")
        for sampler in samplers:
            sampler.stop()

        m, s = samplers[0].samples(), samplers[1].samples()
        timelines = f"master: {describe(m, cut)}\nslave: {describe(s, cut)}"
        assert len(m) > 50 and len(s) > 50, timelines
        assert all(x.status == 200 for x in m), f"the master lost its lease:\n{timelines}"
        assert not any(x.status == 200 for x in s), f"the standby claimed to lead:\n{timelines}"
        assert master.status()["epoch"] == slave.status()["epoch"] == 1
        print(
            f"cut for {healed - cut:.1f}s, the master reported the standby gone after {noticed:.1f}s; "
            f"converged {time.monotonic() - healed:.1f}s after healing"
        )
