"""No secret reaches a log line, a status answer, a problem document or a catalogue event.

Two real nodes are configured with a unique secret in every place a URL (or a variable) can carry
one: SERVER_KEY, the plugin daemon's and the marketplace's URLs, an HTTP proxy (a real forwarding
proxy here, so the downloads go through it), PGPASSWORD, and REDIS_URL and DATABASE_URL with a
password both in the userinfo and as `?password=`. Everything then fails in the ways that quote a
URL (unreachable replicas, plugin daemon, Redis, PostgreSQL; a marketplace answering 404 and 500),
every kind of answer is fetched, the nodes are stopped, and their whole logs and every answer are
searched for each secret. Node URLs (SYNC_TARGET, SYNC_SOURCE) may carry no credentials at all:
a node given some refuses to start, and its one line does not show them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import SERVER_KEY, Node, free_port, http, wait_until
from tests.support.marketplace import RecordingProxy, ThreadedMarketplace, make_plugin, running_marketplace

pytestmark = pytest.mark.timeout(90)

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def secret(name: str) -> str:
    return f"{name}Sx{secrets.token_hex(6)}"


SECRETS = {
    name: secret(name)
    for name in (
        "daemonpw",
        "marketpw",
        "proxypw",
        "pgpassword",
        "redispw",
        "redisquery",
        "dbpw",
        "dbquery",
        "difyredispw",
        "difyredispassword",
    )
}


@pytest.fixture
def market_and_proxy() -> Iterator[tuple[ThreadedMarketplace, RecordingProxy]]:
    with running_marketplace() as market:
        proxy = RecordingProxy()
        asyncio.run_coroutine_threadsafe(proxy.__aenter__(), market.loop).result(10)
        try:
            yield market, proxy
        finally:
            asyncio.run_coroutine_threadsafe(proxy.__aexit__(), market.loop).result(10)


def clean_env() -> dict[str, str]:
    """Proxies from the test's own environment out of the way (both cases), ours set explicitly."""
    return {name: "" for base in PROXY_VARIABLES for name in (base, base.lower())}


def leader_node(tmp_path: Path, market: ThreadedMarketplace, proxy: RecordingProxy) -> Node:
    s = SECRETS
    env = {
        **clean_env(),
        "SYNC_TARGET": f"http://127.0.0.1:{free_port()},http://127.0.0.1:{free_port()}",
        "PLUGIN_DAEMON_URL": f"http://pd:{s['daemonpw']}@127.0.0.1:{free_port()}",
        # localhost, not 127.0.0.1: the proxy is used for it (NO_PROXY is empty)
        "MARKETPLACE_URL": f"http://mkt:{s['marketpw']}@localhost:{market.port}",
        "HTTP_PROXY": f"http://px:{s['proxypw']}@127.0.0.1:{proxy.port}",
        "http_proxy": f"http://px:{s['proxypw']}@127.0.0.1:{proxy.port}",  # an empty one would win
        "PGPASSWORD": s["pgpassword"],
        # Dify's Redis (stale plugin init locks), unreachable: clearing fails when the gate asks
        "DIFY_REDIS_URL": f"redis://:{s['difyredispw']}@127.0.0.1:{free_port()}/0",
        "DIFY_REDIS_PASSWORD": s["difyredispassword"],
        "DOWNLOAD_RETRIES": "0",
        "DOWNLOAD_CONNECT_TIMEOUT": "2",
        "DOWNLOAD_READ_TIMEOUT": "5",
        "CONTROL_INTERVAL": "0.1",
    }
    return Node("leader", "master", tmp_path / "leader", extra_env=env)


def lease_node(tmp_path: Path) -> Node:
    s = SECRETS
    env = {
        **clean_env(),
        "ELECTION": "redis",
        "REDIS_URL": f"redis://:{s['redispw']}@127.0.0.1:{free_port()}/0?password={s['redisquery']}",
        "DATABASE_URL": f"postgresql://hs:{s['dbpw']}@127.0.0.1:{free_port()}/hs?password={s['dbquery']}",
        "SYNC_TARGET": f"http://127.0.0.1:{free_port()}",
        "PGPASSWORD": s["pgpassword"],
        "MARKETPLACE_URL": "",
        "CONTROL_INTERVAL": "0.1",
    }
    return Node("lease", "master", tmp_path / "lease", extra_env=env)


def fetch(node: Node, method: str, path: str, payload: Any = None, *, auth: bool = True) -> tuple[int, str]:
    status, body = node.call(method, path, payload, auth=auth)
    return status, body if isinstance(body, str) else json.dumps(body)


def exercise_leader(node: Node, market: ThreadedMarketplace) -> list[tuple[int, str]]:
    """Every kind of answer, after the errors that quote URLs have happened."""
    plugin = market.call(market.market.publish, make_plugin(name="flaky"))
    market.call(market.market.fail_always, plugin.identifier, "error500")

    def replicas_failed() -> bool:
        replicas = node.status()["replicas"]
        return len(replicas) == 2 and all(r["last_error"] for r in replicas)

    wait_until(replicas_failed, 20, message="every replica link to fail")
    answers = [
        fetch(node, "POST", "/internal/preload", {"plugin_identifier": "langgenius/ghost"}),
        fetch(node, "POST", "/internal/preload", {"plugin_identifier": plugin.identifier}),
        fetch(node, "PUT", "/internal/files/x.txt"),
        fetch(node, "GET", "/internal/files/missing.txt"),
        fetch(node, "GET", "/internal/status", auth=False),
        fetch(node, "POST", "/internal/promote"),
        fetch(node, "POST", "/internal/plugin-daemon/gate", {"running": False, "stop_bound_seconds": 5}),
        fetch(node, "GET", "/internal/conflicts"),
        fetch(node, "GET", "/internal/plugins"),
        fetch(node, "GET", "/internal/workdirs"),
        fetch(node, "GET", "/internal/events?limit=1000"),
        fetch(node, "GET", "/internal/status"),
    ]
    assert answers[0][0] == 404 and "answered HTTP 404" in answers[0][1], answers[0]
    assert answers[1][0] >= 500 and "answered HTTP 500" in answers[1][1], answers[1]
    assert "mkt:***@localhost" in answers[0][1], "the URL is shown, its password masked"
    events = answers[-2][1]
    assert "answered HTTP 404" in events and "answered HTTP 500" in events, "failures reached the catalogue"
    return answers


def exercise_lease_node(node: Node) -> list[tuple[int, str]]:
    wait_until(lambda: "election" in str(node.status()["last_error"]), 20, message="the lease calls to fail")
    answers = [
        fetch(node, "POST", "/internal/promote"),
        fetch(node, "GET", "/internal/events"),
        fetch(node, "POST", "/internal/preload", {"plugin_identifier": "langgenius/ghost"}),
        fetch(node, "GET", "/internal/status"),
    ]
    assert "redis at 127.0.0.1" in answers[-1][1], answers[-1]
    return answers


def public_answers(node: Node) -> list[tuple[int, str]]:
    paths = ("/health", "/liveness", "/primary", "/replica", "/metrics")
    return [
        (status, body.decode(errors="replace"))
        for status, _h, body in (http("GET", node.url + p) for p in paths)
    ]


def test_no_secret_in_any_log_line_answer_or_event(
    tmp_path: Path, market_and_proxy: tuple[ThreadedMarketplace, RecordingProxy]
) -> None:
    market, proxy = market_and_proxy
    leader, lease = leader_node(tmp_path, market, proxy), lease_node(tmp_path)
    answers: list[tuple[int, str]] = []
    try:
        leader.start()
        lease.start()
        answers += exercise_leader(leader, market)
        answers += exercise_lease_node(lease)
        answers += public_answers(leader) + public_answers(lease)
    finally:
        for node in (leader, lease):
            node.stop()
    assert any("localhost" in url for url in proxy.seen), "the downloads went through the proxy"
    logs = {node.name: node.log_path.read_text(errors="replace") for node in (leader, lease)}
    assert '"event": "stopped"' in logs["leader"] and '"event": "stopped"' in logs["lease"]
    everything = {**logs, **{f"answer {i}": body for i, (_status, body) in enumerate(answers)}}
    for name, value in {**SECRETS, "SERVER_KEY": SERVER_KEY}.items():
        leaked = [where for where, text in everything.items() if value in text]
        assert not leaked, f"the {name} secret appears in: {leaked}"


@pytest.mark.parametrize(
    "env",
    [
        {"SYNC_TARGET": "http://127.0.0.1:9,http://repl:{secret}@127.0.0.1:10"},
        {"SYNC_TARGET": "http://{secret}@127.0.0.1:10"},
        {"SYNC_TARGET": "http://127.0.0.1:10/?token={secret}"},
        {"ROLE": "slave", "SYNC_SOURCE": "https://src:{secret}@127.0.0.1:10"},
    ],
)
def test_credentials_in_a_node_url_stop_the_node_without_being_shown(
    tmp_path: Path, env: dict[str, str]
) -> None:
    value = secret("nodeurl")
    node = Node("refused", env.get("ROLE", "master"), tmp_path / "refused")
    full = {**node.env(), **{k: v.format(secret=value) for k, v in env.items()}}
    full.pop("SYNC_SOURCE" if "SYNC_TARGET" in env else "SYNC_TARGET", None)
    node.storage.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "serve"], env=full, capture_output=True, timeout=30
    )
    assert done.returncode == 2, done.stderr.decode()
    assert len(done.stderr.splitlines()) == 1 and b"SYNC_" in done.stderr
    assert value.encode() not in done.stderr + done.stdout
