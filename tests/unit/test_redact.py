"""Secrets in URLs and settings are masked wherever they would be shown (daemon/redact.py)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from daemon import logs
from daemon.api import build_app
from daemon.config import Config
from daemon.ha_loop import ControlLoop
from daemon.node import Node
from daemon.redact import Redactor, hide_password, url_secrets
from daemon.roles import RoleState

KEY = "the-server-key-0042"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:sekrit@host:5002", "http://u:***@host:5002"),
        ("https://ghp_t0ken@mirror.example/api", "https://***@mirror.example/api"),
        ("redis://:sekrit@r:6379/0", "redis://:***@r:6379/0"),
        ("redis://r:6379/0?password=sekrit&db=1", "redis://r:6379/0?password=***&db=1"),
        (
            "postgresql://hs@db/hs?sslmode=require&password=sekrit",
            "postgresql://hs@db/hs?sslmode=require&password=***",
        ),
        ("https://m.example/x?Token=sekrit", "https://m.example/x?Token=***"),
        ("postgresql://hs@db:5432/hs", "postgresql://hs@db:5432/hs"),
        ("ssh://backup@dr:22/srv/dr", "ssh://backup@dr:22/srv/dr"),
        ("http://h:1/?q=plain", "http://h:1/?q=plain"),
        ("http://u:sek@ret@[::1", "<not a URL>"),
        ("", ""),
    ],
)
def test_hide_password_masks_every_credential_a_url_can_carry(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def test_the_secrets_of_a_url_include_their_percent_decoded_form() -> None:
    assert url_secrets("http://u:p%40ss@h/?token=t%2Fk") >= {"p%40ss", "p@ss", "t/k", "t%2Fk"}
    assert url_secrets("postgresql://hs@db/hs") == set(), "a database user is not a secret"


def test_the_redactor_masks_text_json_values_and_bodies_longest_first() -> None:
    redactor = Redactor.of(["abcdef", "abcdefghij", 'x"y\\z€1', "short"])
    assert redactor.secrets[0] == "abcdefghij" and "short" not in redactor.secrets, "too short to search for"
    assert redactor.text("key abcdefghij, part abcdef") == "key ***, part ***"
    assert redactor.value({"abcdef": ["abcdefghij", 3, None]}) == {"***": ["***", 3, None]}
    assert redactor.value(ValueError("abcdef")) == "ValueError('***')", "other objects: their repr"
    body = json.dumps({"detail": 'failed with x"y\\z€1'}).encode()
    assert b"***" in redactor.body(body) and 'x"y\\z€1' not in json.loads(redactor.body(body))["detail"]


def test_a_configs_redactor_knows_the_key_the_urls_the_proxies_and_pgpassword() -> None:
    env = {
        "SERVER_KEY": KEY,
        "SYNC_TARGET": "http://r1:5002,http://r2:5002",  # node URLs take no credentials at all
        "ELECTION": "redis",
        "REDIS_URL": "redis://:pw-redis@r:6379/0?password=pw-redis-query",
        "DATABASE_URL": "postgresql://hs@db/hs?password=pw-database",
        "MARKETPLACE_URL": "https://tok-bare-user@m.example/?token=pw-market-token",
        "PLUGIN_DAEMON_URL": "http://d:pw-daemon@127.0.0.1:5003",
    }
    proxies = {"HTTPS_PROXY": "http://p:pw-proxy@proxy:3128", "http_proxy": "http://p:pw-lower@proxy:3128"}
    config = Config.from_env(env)
    redactor = config.redactor({**proxies, "PGPASSWORD": "pw-pgpassword"})
    everything = " ".join([*env.values(), *proxies.values(), "pw-pgpassword"])
    shown = redactor.text(everything)
    for secret in ("tok-bare-user", "pw-redis", "pw-redis-query", "pw-database", "pw-market-token"):
        assert secret not in shown
    for secret in ("pw-daemon", "pw-proxy", "pw-lower", "pw-pgpassword", KEY):
        assert secret not in shown
    assert "r1:5002" in shown and "m.example" in shown, "only the secrets go"
    text = repr(config)
    assert "pw-" not in text and "tok-bare-user" not in text and KEY not in text


def test_log_lines_are_redacted_also_those_of_other_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    config = Config.from_env({"SERVER_KEY": KEY, "MARKETPLACE_URL": "http://a:pw-in-target@r1:5002"})
    try:
        logs.configure(config)
        structlog.get_logger("t").warning("ours", url="http://a:pw-in-target@r1:5002", nested={"k": [KEY]})
        try:
            raise ValueError(f"library error quoting {KEY}")
        except ValueError:
            logging.getLogger("some.library").exception("theirs")
        text = stream.getvalue()
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
    assert "pw-in-target" not in text and KEY not in text
    assert '"event": "ours"' in text and "library error quoting ***" in text


async def test_answers_are_masked_but_the_storages_own_paths_are_not(tmp_path: Path) -> None:
    env = {"STORAGE_PATH": str(tmp_path / "s"), "STATE_PATH": str(tmp_path / "st"), "SERVER_KEY": KEY}
    node = Node(Config.from_env({**env, "PLUGIN_DAEMON_URL": "http://pd:pw-in-a-status@127.0.0.1:9"}))
    node.prepare_storage()
    control = ControlLoop(node, backend=None)
    await control.start()
    auth = {"Authorization": f"Bearer {KEY}"}
    async with TestClient(TestServer(build_app(node, control))) as client:
        node.last_error = "the plugin daemon at http://pd:pw-in-a-status@127.0.0.1:9 is down"
        status = await (await client.get("/internal/status", headers=auth)).text()
        assert "pw-in-a-status" not in status and "pd:***@127.0.0.1:9 is down" in status
        refused = await (await client.get("/internal/status", headers={"Authorization": KEY})).text()
        assert KEY not in refused
        node.role_state = RoleState(role="leader", epoch=1)
        await node.become_leader(1)
        try:
            written = await client.put(f"/internal/files/dir-{KEY}/a.txt", data=b"x", headers=auth)
            assert written.status == 200 and (await written.json())["path"] == f"dir-{KEY}/a.txt"
        finally:
            await node.stop_leading()
