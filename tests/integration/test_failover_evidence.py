"""A replica fails over as soon as the leader's death is certain, and never on mere slowness or doubt.

Certain: the leader's replication connection closed and its API refuses connections (nothing
listens on its port). Not certain: silence (a stopped or slow leader), and a peer that refuses
our key (its role is unknown, never "not leading").
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from tests.support.cluster import Pair, http, make_pair, wait_until
from tests.support.ha import FAST, primary

FAILOVER_TIMEOUT = 2.0
AUTO = {**FAST, "FAILOVER": "auto", "FAILOVER_TIMEOUT": str(FAILOVER_TIMEOUT), "HEARTBEAT_INTERVAL": "1"}


def synced_pair(tmp_path: Path) -> Pair:
    pair = make_pair(tmp_path, master_env=dict(FAST), slave_env=AUTO)
    pair.start()
    (pair.master.storage / "a").write_text("a")
    pair.wait_converged(10)
    wait_until(lambda: pair.slave.status()["synced"], 10, message="the slave to be synced")
    wait_until(lambda: "following" in pair.slave.status()["ha"], 5, message="the slave to follow")
    return pair


def test_a_killed_leader_is_replaced_once_the_failover_timeout_has_run_from_its_death(tmp_path: Path) -> None:
    """Without the evidence the replica waits 3 s of silence first (3 heartbeats, at least 3 s)."""
    pair = synced_pair(tmp_path)
    try:
        killed = time.monotonic()
        pair.master.stop(signal.SIGKILL)
        wait_until(lambda: primary(pair.slave), 10, message="automatic promotion")
        took = time.monotonic() - killed
        assert FAILOVER_TIMEOUT <= took < FAILOVER_TIMEOUT + 1.2, f"promoted after {took:.2f}s"
    finally:
        pair.stop()


def test_a_stopped_leader_is_not_replaced_within_the_failover_timeout(tmp_path: Path) -> None:
    pair = synced_pair(tmp_path)
    promoted = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if primary(pair.slave):
                promoted.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        assert pair.master.proc is not None
        watcher.start()
        pair.master.proc.send_signal(signal.SIGSTOP)
        time.sleep(FAILOVER_TIMEOUT + 0.8)
        assert not promoted.is_set(), "a stopped (living) leader was replaced within FAILOVER_TIMEOUT"
        assert "unreachable" in pair.slave.status()["ha"] or "following" in pair.slave.status()["ha"]
    finally:
        done.set()
        if pair.master.proc is not None:
            pair.master.proc.send_signal(signal.SIGCONT)
        watcher.join(5)
        pair.stop()


def test_a_restarted_old_leader_unable_to_verify_the_new_one_does_not_confirm_itself(tmp_path: Path) -> None:
    """The old master comes back with a wrong key: the new leader answers 401, which is not "not leading"."""
    pair = synced_pair(tmp_path)
    try:
        assert pair.master.call("POST", "/internal/drain")[0] == 200
        wait_until(lambda: pair.slave.call("POST", "/internal/promote")[0] == 200, 10, message="promotion")
        pair.master.stop()
        pair.master.extra_env["SERVER_KEY"] = "a-rotated-key-0123456789"
        pair.master.start()
        wait_until(
            lambda: "refuses our key or TLS" in http("GET", f"{pair.master.url}/health")[2].decode(),
            10,
            message="the restarted node to report the peer it cannot verify",
        )
        time.sleep(1.0)
        assert not primary(pair.master), "confirmed itself as leader while the other node leads"
        assert primary(pair.slave)
        assert pair.master.metric("plugin_sync_peer_role_unknown") == 1
        headers = {"Authorization": "Bearer a-rotated-key-0123456789"}
        body = json.loads(http("GET", f"{pair.master.url}/internal/status", headers=headers)[2])
        assert "its role is unknown" in body["ha"]
        assert [p["failure"] for p in body["peers"]] == ["untrusted"]
    finally:
        pair.stop()
