"""The smallest end-to-end promises: a pair starts, replicates, reports and stops."""

from __future__ import annotations

import os
import signal
import time

from tests.support.cluster import Pair, wait_until


def test_files_dirs_symlinks_renames_and_deletes_reach_the_slave(pair: Pair) -> None:
    root = pair.master.storage
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "f.txt").write_text("hello")
    (root / "top.bin").write_bytes(os.urandom(4096))
    os.symlink("top.bin", root / "link")
    (root / "d").mkdir()
    (root / "d" / "z").write_text("z")
    pair.wait_converged(10)
    os.rename(root / "d", root / "e")
    os.unlink(root / "top.bin")
    os.chmod(root / "a" / "b" / "c" / "f.txt", 0o600)
    pair.wait_converged(10)
    assert (pair.slave.storage / "e" / "z").read_text() == "z"
    assert not (pair.slave.storage / "top.bin").exists()
    assert os.readlink(pair.slave.storage / "link") == "top.bin"


def test_status_reports_sequences_and_lag(pair: Pair) -> None:
    (pair.master.storage / "x").write_text("x")
    pair.wait_converged(10)
    master, slave = pair.master.status(), pair.slave.status()
    assert master["role"] == "master" and slave["role"] == "slave"
    assert master["peer_connected"] and slave["peer_connected"]
    assert master["produced_sequence"] >= 1
    time.sleep(0.5)
    master = pair.master.status()
    assert master["acknowledged_sequence"] == master["produced_sequence"]
    assert master["pending_changes"] == 0 and master["lag_seconds"] == 0
    assert slave["applied_sequence"] >= 1
    assert slave["lag_seconds"] < 5


def test_health_and_metrics_are_served(pair: Pair) -> None:
    code, body = pair.master.call("GET", "/health", auth=False)
    assert code == 200
    assert body["status"] == "healthy" and body["role"] == "master" and body["timestamp"].endswith("Z")
    (pair.master.storage / "m").write_bytes(b"m" * 1000)
    pair.wait_converged(10)
    assert pair.master.metric("plugin_sync_bytes_total", {"direction": "sent"}) >= 1000
    assert pair.slave.metric("plugin_sync_bytes_total", {"direction": "received"}) >= 1000
    assert pair.master.metric("plugin_sync_peer_connected") == 1
    assert pair.master.metric("plugin_sync_operations_total", {"op": "put"}) >= 1
    # every batch with changes is timed on both sides (the replica's commit; the round trip, once answered)
    timed = ("plugin_sync_commit_seconds_count", "plugin_sync_batch_seconds_count")
    wait_until(
        lambda: pair.slave.metric(timed[0]) >= 1 and pair.master.metric(timed[1]) >= 1, 10, message="timing"
    )
    code, metrics = pair.master.call("GET", "/metrics", auth=False)
    assert code == 200
    for name in ("plugin_sync_lag_seconds", "plugin_sync_pending_changes", "plugin_sync_node_healthy"):
        assert name in metrics
    assert "plugin_daemon_healthy" not in metrics  # no PLUGIN_DAEMON_URL: no plugin daemon measured


def test_sigterm_stops_both_nodes_within_bounds(pair: Pair) -> None:
    started = time.monotonic()
    assert pair.master.stop(signal.SIGTERM, timeout=10) == 0
    assert pair.slave.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 10


def test_health_is_503_when_storage_is_gone(pair: Pair) -> None:
    import shutil

    shutil.rmtree(pair.slave.storage)
    code, body = pair.slave.call("GET", "/health", auth=False)
    assert code == 503
    assert body["status"] == "unhealthy" and "STORAGE_PATH" in body["reason"]
    assert pair.slave.metric("plugin_sync_node_healthy") == 0
    pair.slave.storage.mkdir()
    assert pair.slave.call("GET", "/health", auth=False)[0] == 200


def test_logs_are_json_events_without_secrets(pair: Pair) -> None:
    import json

    from tests.support.cluster import SERVER_KEY

    (pair.master.storage / "f").write_text("x")
    pair.wait_converged(10)
    pair.master.stop()
    lines = pair.master.log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert {"starting", "started", "stopping", "stopped"} <= {e["event"] for e in events}
    assert SERVER_KEY not in pair.master.log_path.read_text()


def test_a_second_signal_forces_exit_while_draining(pair: Pair) -> None:
    pair.slave.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        for i in range(20):
            (pair.master.storage / f"pending-{i}").write_bytes(b"x" * 1000)
        time.sleep(0.5)
        master = pair.master.proc
        assert master is not None
        master.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert master.poll() is None, "the first signal drains for a bounded time"
        forced = time.monotonic()
        master.send_signal(signal.SIGTERM)
        code = master.wait(5)
        assert time.monotonic() - forced < 2
        assert code != 0
    finally:
        pair.slave.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
