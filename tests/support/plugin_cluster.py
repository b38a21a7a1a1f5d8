"""A gated pair beside the plugin daemon model, for the failover tests and the benchmark.

Each node runs hotstandby, and beside it the model of the Dify plugin daemon
(tests/support/plugin_daemon_model.py) under its gate (daemon/plugin_gate.py), on the node's
own loopback address, as docker-compose.dify.yml runs the real daemon. Dify's Redis is shared.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.cluster import Node, Pair, free_port, make_pair, tree_diff
from tests.support.gated import Gate
from tests.support.ha import FAST
from tests.support.plugin_daemon_driver import parse_sse
from tests.support.plugin_daemon_model import DEFAULT_SERVER_KEY, REPO_ROOT

MASTER_HOST, STANDBY_HOST = "127.0.0.2", "127.0.0.3"
UV_CACHES = "cwd/.uv-cache,cwd/*/.uv-cache,cwd/*/*/.uv-cache"
MODEL_FAST = ["--scan-interval", "0.5", "--schedule-interval", "0.5", "--launch-concurrency", "8"]
BUILD_EVENTS = {
    "unpacked",
    "venv_invalid_deleted",
    "uv_venv",
    "uv_pip_install",
    "compileall",
    "marker_written",
}


def model_args(node: Node, port: int, redis_url: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "--storage", str(node.storage), "--host", node.host, "--port", str(port),
        "--redis-url", redis_url, "--events", str(events_path(node)), *MODEL_FAST, *extra,
    ]  # fmt: skip


def events_path(node: Node) -> Path:
    return node.base / "daemon-events.jsonl"


def events(node: Node, since: float = 0.0) -> list[dict[str, Any]]:
    path = events_path(node)
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in found if e["t"] >= since]


def launched(node: Node, since: float = 0.0) -> set[str]:
    return {e["plugin"] for e in events(node, since) if e["event"] == "launched"}


def same_trees(pair: Pair) -> list[str]:
    return [d for d in tree_diff(pair.master.storage, pair.slave.storage) if ".uv-cache" not in d]


TOOL_CALL_PATH = "/plugin/tenant-1/dispatch/tool/invoke"
TOOL_CALL = json.dumps(
    {
        "user_id": "user-1",
        "data": {"provider": "hsplug", "tool": "echo", "tool_parameters": {"text": "hi"}, "credentials": {}},
    }
).encode()
"""A tool call as Dify's API sends it to the plugin daemon (the test plugins' echo tool)."""


def tool_call_headers(identifier: str, key: str = DEFAULT_SERVER_KEY) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Api-Key": key, "X-Plugin-ID": identifier}


def call_through(url: str, identifier: str) -> tuple[int, list[dict[str, Any]]]:
    request = urllib.request.Request(
        f"{url}{TOOL_CALL_PATH}", data=TOOL_CALL, headers=tool_call_headers(identifier), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, parse_sse(answer.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, []
    except OSError:
        return 0, []


@contextlib.contextmanager
def gated_pair(
    tmp_path: Path,
    redis_url: str,
    model_extra: tuple[str, ...] = (),
    *,
    shipped_timings: bool = False,
    node_env: dict[str, str] | None = None,
) -> Iterator[tuple[Pair, dict[str, Gate], int]]:
    """A started pair (FAILOVER=auto on the standby), each node's daemon model under its gate,
    started with `model_extra` (e.g. the bench's online package index settings) after MODEL_FAST;
    `node_env` is added to both nodes' environment.

    Fast timings by default (tests); `shipped_timings` keeps the daemon's and the gate's defaults
    and FAILOVER_TIMEOUT 3, as the benchmark measures what a deployment gets (and a loaded
    machine does not make a 2 s gate fail closed in the middle of the installs)."""
    daemon_port = free_port()
    env = {"EXCLUDE": UV_CACHES, "PLUGIN_DAEMON_GATE": "true", "DIFY_REDIS_URL": redis_url}
    if not shipped_timings:
        env.update({**FAST, "HEARTBEAT_INTERVAL": "0.5"})
    env.update(node_env or {})
    failover_timeout = "3" if shipped_timings else "2"
    pair = make_pair(
        tmp_path,
        master_env=env,
        slave_env={**env, "FAILOVER": "auto", "FAILOVER_TIMEOUT": failover_timeout},
        hosts=(MASTER_HOST, STANDBY_HOST),
        port=free_port(),
    )
    for node in (pair.master, pair.slave):
        node.extra_env["PLUGIN_DAEMON_URL"] = f"http://{node.host}:{daemon_port}"
    gates = {
        node.name: Gate(
            node,
            [
                sys.executable,
                "-m",
                "tests.support.plugin_daemon_model",
                *model_args(node, daemon_port, redis_url, model_extra),
            ],
            env={"PYTHONPATH": str(REPO_ROOT)},
            interval=0.5 if shipped_timings else 0.2,
            orphan_timeout=5.0 if shipped_timings else 2.0,
            stop_grace=10.0 if shipped_timings else 5.0,
        )
        for node in (pair.master, pair.slave)
    }
    try:
        for gate in gates.values():
            gate.start()
        pair.start()
        yield pair, gates, daemon_port
    finally:
        for gate in gates.values():
            gate.stop()
        pair.stop()


def seconds_until_answered(url: str, identifiers: list[str], since: float, timeout: float) -> float | None:
    """Seconds from `since` (wall clock) until every plugin answered a call at `url`; None at the timeout."""
    waiting = list(identifiers)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        waiting = [identifier for identifier in waiting if call_through(url, identifier)[0] != 200]
        if waiting:
            time.sleep(0.05)
    return None if waiting else time.time() - since
