"""The load balancer's questions, answered with status codes from cached state."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.cluster import Node, Pair, free_port, http, wait_until
from tests.support.ha import FAST, primary


def test_primary_and_replica_answer_get_head_and_options(static_pair: Pair) -> None:
    master, slave = static_pair.master, static_pair.slave
    for path in ("/primary", "/read-write"):
        status, _h, body = http("GET", master.url + path)
        assert status == 200 and b'"epoch"' in body and b'"lease_seconds_left"' in body
        assert http("HEAD", master.url + path)[0] == 200
        assert http("OPTIONS", master.url + path)[0] == 200
        assert http("GET", slave.url + path)[0] == 503
        assert http("HEAD", slave.url + path)[0] == 503
    wait_until(lambda: http("GET", slave.url + "/replica")[0] == 200, 5, message="the replica check")
    assert http("HEAD", slave.url + "/replica")[0] == 200
    assert http("OPTIONS", slave.url + "/replica")[0] == 200
    assert http("GET", master.url + "/replica")[0] == 503


def test_replica_check_takes_a_lag_bound_per_call(static_pair: Pair) -> None:
    slave = static_pair.slave
    wait_until(lambda: http("GET", slave.url + "/replica")[0] == 200, 5, message="the replica check")
    # The slave's lag is the time since the last heartbeat: never below zero, so lag=-1 cannot pass.
    assert http("GET", slave.url + "/replica?lag=-1")[0] == 503
    assert http("GET", slave.url + "/replica?lag=3600")[0] == 200
    assert http("GET", slave.url + "/replica?lag=soon")[0] == 400
    static_pair.master.stop()
    wait_until(
        lambda: http("GET", slave.url + "/replica")[0] == 503,
        10,
        message="a replica without its leader to fail the check",
    )


def test_liveness_reports_the_control_loop(static_pair: Pair) -> None:
    status, _h, body = http("GET", static_pair.master.url + "/liveness")
    assert status == 200 and b"control_loop_seconds_since_tick" in body


class _PluginDaemon(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        status = 200 if type(self).healthy and self.path == "/health/check" else 503
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"code":0,"message":"ok"}' if status == 200 else b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_primary_requires_the_colocated_plugin_daemon_when_configured(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _PluginDaemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    node = Node("master", "master", tmp_path / "m", extra_env={**FAST, "PLUGIN_DAEMON_URL": url})
    try:
        node.start()
        wait_until(lambda: primary(node), 10, message="the master to lead with a healthy plugin daemon")
        assert node.metric("plugin_daemon_healthy") == 1 and node.metric("plugin_sync_node_healthy") == 1
        _PluginDaemon.healthy = False
        wait_until(lambda: not primary(node), 10, message="/primary to follow the plugin daemon")
        status, _h, body = http("GET", node.url + "/primary")
        assert status == 503 and b'"plugin_daemon_ok": false' in body
        assert node.metric("plugin_daemon_healthy") == 0 and node.metric("plugin_sync_node_healthy") == 1
        _PluginDaemon.healthy = True
        wait_until(lambda: primary(node), 10, message="/primary to come back")
    finally:
        node.stop()
        server.shutdown()


@pytest.mark.parametrize(
    ("env", "variables"),
    [
        (
            {
                "ELECTION": "redis",
                "REDIS_URL": "redis://127.0.0.1:1",
                "LEASE_TTL": "3",
                "LEASE_RENEW_INTERVAL": "2",
                "ELECTION_TIMEOUT": "1",
            },
            ("LEASE_RENEW_INTERVAL", "LEASE_TTL"),
        ),
        ({"ELECTION": "redis"}, ("REDIS_URL",)),
        ({"ELECTION": "postgres"}, ("DATABASE_URL",)),
        ({"ELECTION": "zookeeper"}, ("ELECTION",)),
        ({"FAILOVER": "auto", "ELECTION": "redis", "REDIS_URL": "redis://127.0.0.1:1"}, ("FAILOVER",)),
    ],
)
def test_inconsistent_election_settings_exit_2_naming_the_variables(
    tmp_path: Path, env: dict[str, str], variables: tuple[str, ...]
) -> None:
    full_env = {**os.environ, "STORAGE_PATH": str(tmp_path / "s"), **env}
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "serve"], env=full_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    for variable in variables:
        assert variable in done.stderr
