"""A slow, lossy link between master and standby: 50 ms delay and 5 % loss each way.

The kernel here has no sch_netem, so tests/support/linkem.py relays the master's frames with that
delay and loss (what `tc qdisc add dev eth0 root netem delay 50ms loss 5%` would do). Under a
steady workload replication must still converge, the lag the master reports must stay bounded,
be non-zero while changes are in flight, and match the age of the oldest change not yet
acknowledged: a file written at a known moment and still absent on the standby must be reported
as exactly that old.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.support.cluster import http, tree_diff, wait_until
from tests.support.ha import FAST
from tests.support.netcluster import NetCluster, NsNode, net_cluster

DELAY, LOSS = 0.05, 0.05
LAG_BOUND = 10.0  # REPLICA_MAX_LAG's default: what /replica holds a standby to
MARKER_SIZE = 512 << 10


def start_pair(cluster: NetCluster) -> tuple[NsNode, NsNode]:
    master = cluster.add_node("master", "master", dict(FAST))
    slave = cluster.add_node("slave", "slave", dict(FAST))
    master.extra_env["SYNC_TARGET"] = slave.url
    slave.extra_env["SYNC_SOURCE"] = master.url
    slave.start()
    master.start()
    wait_until(lambda: bool(master.status()["peer_connected"]), 20, message="the replication link")
    return master, slave


def local_get(cluster: NetCluster, host: str, path: str) -> tuple[float, float, str]:
    """GET on the node's loopback from inside its namespace (not over the slow link), timed."""
    started = time.monotonic()
    status, raw = cluster.local(host, "GET", path)
    assert status == 200, (status, raw[:300])
    return started, time.monotonic(), raw.decode()


def lag_metric(text: str) -> float:
    match = re.search(r"^plugin_sync_lag_seconds (\S+)$", text, re.M)
    assert match, text[:500]
    return float(match.group(1))


@pytest.mark.timeout(150)
def test_replication_converges_over_a_slow_lossy_link_and_reports_its_lag(tmp_path: Path) -> None:
    with net_cluster(tmp_path, hosts=("master", "slave")) as cluster:
        master, slave = start_pair(cluster)
        cluster.impair("master", DELAY, LOSS)
        started = time.monotonic()
        http("GET", f"{master.url}/health", timeout=10)
        assert time.monotonic() - started >= 4 * DELAY, "the link is not slowed down"

        # A steady workload: 20 files a second for 5 s, some rewritten, one folder renamed.
        lags: list[float] = []
        work = master.storage / "work"
        work.mkdir()
        for i in range(100):
            (work / f"f{i % 70}.txt").write_text(f"version {i}\n" * (1 + i * 10))
            if i == 60:
                (work / "sub").mkdir()
                (work / "f1.txt").rename(work / "sub" / "moved.txt")
            if i % 10 == 0:
                lags.append(lag_metric(local_get(cluster, "master", "/metrics")[2]))
            time.sleep(0.05)
        wait_until(lambda: not tree_diff(master.storage, slave.storage), 60, message="convergence")
        converged = time.monotonic() - started
        assert max(lags) < LAG_BOUND, lags

        wait_until(lambda: master.status()["pending_changes"] == 0, 20, message="every change acked")

        # One change in flight: its reported lag is its age, bracketed by the sample's own timing.
        written = time.monotonic()
        (master.storage / "marker.bin").write_bytes(b"m" * MARKER_SIZE)
        in_flight = []
        while not (slave.storage / "marker.bin").exists() or tree_diff(master.storage, slave.storage):
            before, after, raw = local_get(cluster, "master", "/internal/status")
            status = json.loads(raw)
            if status["pending_changes"]:
                in_flight.append((before - written, status["lag_seconds"], after - written))
            assert time.monotonic() - written < 60, "the marker never arrived"
        wait_until(lambda: master.status()["pending_changes"] == 0, 20, message="the marker's ack")
        assert in_flight, "the marker crossed before any sample: the link is not slow"
        for low, lag, high in in_flight:
            assert low - 0.3 <= lag <= high + 0.05, (low, lag, high)
        assert max(lag for _low, lag, _high in in_flight) > 2 * DELAY
        settled = lag_metric(local_get(cluster, "master", "/metrics")[2])
        assert settled == 0.0
        assert cluster.local("slave", "GET", "/replica")[0] == 200
        counts = cluster.restore("master")
        print(
            f"netem-like link: converged {converged:.1f}s after the workload began; lag samples "
            f"max {max(lags):.2f}s; marker in flight {len(in_flight)} samples, lag up to "
            f"{max(lag for _l, lag, _h in in_flight):.2f}s; {counts}"
        )
