"""Who sees what of the status page, on real nodes: without a key only the login form and /health-level
facts; with STATUS_KEY the page's data and nothing that acts; the keys never reach a log; it works
over mutual TLS as the API does."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import Config, ConfigError
from tests.integration.test_route_fuzz import app_routes
from tests.support.cluster import SERVER_KEY, Node, Pair, http, wait_until
from tests.support.tls import CertificateAuthority, TLSNode, https

pytestmark = pytest.mark.timeout(90)

STATUS_KEY = "look-but-do-not-touch-42"
UI_DATA = ("/ui/api/cluster", "/ui/api/details", "/ui/api/drills/20260101T000000Z-abcdef")
IDENTIFIER = "langgenius/openai:0.0.1@" + "0123456789abcdef" * 4


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    started = Node(
        "leader", "master", tmp_path / "leader", extra_env={"STATUS_KEY": STATUS_KEY, "MARKETPLACE_URL": ""}
    )
    started.start()
    try:
        yield started
    finally:
        started.stop()


def get(node: Node, path: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http("GET", f"{node.url}{path}", headers=headers)


def test_without_a_key_only_the_login_form_and_health_facts_are_served(node: Node) -> None:
    status = node.status()
    secrets_of_the_node = (status["node_id"], str(node.storage), str(node.state))
    code, headers, page = get(node, "/ui/")
    assert code == 200 and b'id="login-form"' in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    for name in ("app.js", "common.js", "app.css", "drill.js"):
        code, _h, body = get(node, f"/ui/static/{name}")
        assert code == 200 and body, name
    for path in ("/ui/static/../api.py", "/ui/static/nope.js", "/ui/static/%2e%2e%2fapi.py"):
        assert get(node, path)[0] == 404, path
    code, _h, raw = get(node, "/ui/api/login")
    assert code == 200
    info = json.loads(raw)
    assert set(info) == {"key_required", "health"} and info["key_required"] is True
    assert set(info["health"]) == {"status", "version", "role", "reason"}
    served = page + raw
    for key in (None, "wrong-key-123", SERVER_KEY[:-1]):
        for path in UI_DATA:
            code, headers, body = get(node, path, key)
            assert code == 401, (path, key)
            assert headers.get("WWW-Authenticate") == "Bearer"
            served += body
    assert not any(secret.encode() in served for secret in secrets_of_the_node)
    code, headers, _body = http("GET", f"{node.url}/", headers={})  # urllib follows the redirect
    assert code == 200 and "Content-Security-Policy" in headers


def test_root_redirects_to_the_page(node: Node) -> None:
    import http.client

    connection = http.client.HTTPConnection(node.host, node.port, timeout=5)
    connection.request("GET", "/")
    answer = connection.getresponse()
    assert (answer.status, answer.getheader("Location")) == (302, "/ui/")
    connection.close()


def test_status_key_shows_the_page_and_opens_no_action(node: Node) -> None:
    code, _h, raw = get(node, "/ui/api/cluster", STATUS_KEY)
    assert code == 200 and json.loads(raw)["access"] == "read-only"
    code, _h, raw = get(node, "/ui/api/cluster", SERVER_KEY)
    assert code == 200 and json.loads(raw)["access"] == "operator"
    assert get(node, "/ui/api/details", STATUS_KEY)[0] == 200

    before = node.status()
    tried = []
    for route in app_routes(node.base.parent):
        if not route.canonical.startswith("/internal") or route.method == "HEAD":
            continue
        path = route.canonical.replace("{path:.+}", "ui-test/x.txt")
        path = path.replace("{identifier}", urllib.parse.quote(IDENTIFIER, safe="/"))
        body = b'{"plugin_identifier": "' + IDENTIFIER.encode() + b'", "kind": "drill"}'
        headers = {"Authorization": f"Bearer {STATUS_KEY}", "Content-Type": "application/json"}
        code, _h, answer = http(route.method, f"{node.url}{path}", body=body, headers=headers)
        tried.append(f"{route.method} {path}")
        assert code == 401, f"{route.method} {path} answered {code} to STATUS_KEY: {answer[:200]!r}"
    writes = [t for t in tried if not t.startswith("GET")]
    assert len(writes) >= 15, writes  # every POST, PUT and DELETE route under /internal
    assert any(t.startswith("PUT /internal/files/") for t in tried)
    after = node.status()
    assert (after["role"], after["epoch"], after["writable"]) == (before["role"], before["epoch"], True)
    assert not (node.storage / "ui-test").exists()
    assert not [e for e in node.call("GET", "/internal/events")[1]["events"] if e["kind"] == "drill"]
    log = node.log_path.read_text()
    assert STATUS_KEY not in log and SERVER_KEY not in log


def test_status_key_needs_a_server_key_and_must_differ_from_it(tmp_path: Path) -> None:
    base = {
        "STORAGE_PATH": str(tmp_path / "s"),
        "STATE_PATH": str(tmp_path / "st"),
        "SERVER_HOST": "127.0.0.1",
    }
    with pytest.raises(ConfigError, match="STATUS_KEY is set but SERVER_KEY is not"):
        Config.from_env({**base, "STATUS_KEY": STATUS_KEY})
    with pytest.raises(ConfigError, match="must differ from SERVER_KEY"):
        Config.from_env({**base, "STATUS_KEY": SERVER_KEY, "SERVER_KEY": SERVER_KEY})
    with pytest.raises(ConfigError, match="at least 8"):
        Config.from_env({**base, "STATUS_KEY": "short", "SERVER_KEY": SERVER_KEY})
    config = Config.from_env({**base, "STATUS_KEY": STATUS_KEY, "SERVER_KEY": SERVER_KEY})
    assert STATUS_KEY not in repr(config) and "status_key='***'" in repr(config)


def test_the_page_works_over_mutual_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority("hotstandby-ui-test", tmp_path / "pki")
    operator = ca.client_context(ca.issue("operator"))
    slave = TLSNode(
        "slave", "slave", tmp_path / "slave", extra_env=ca.issue("slave").env(ca.cert_file), context=operator
    )
    master = TLSNode(
        "master",
        "master",
        tmp_path / "master",
        extra_env=ca.issue("master").env(ca.cert_file),
        context=operator,
    )
    master.extra_env["SYNC_TARGET"] = slave.url
    slave.extra_env["SYNC_SOURCE"] = master.url
    pair = Pair(master, slave)
    try:
        pair.start()
        auth = {"Authorization": f"Bearer {SERVER_KEY}"}

        def both_seen() -> bool:
            code, _h, raw = https("GET", f"{slave.url}/ui/api/cluster", operator, headers=auth)
            nodes = json.loads(raw)["nodes"] if code == 200 else []
            return [n.get("role") for n in nodes] == ["slave", "master"] and json.loads(raw)["verdict"][
                "healthy"
            ]

        wait_until(both_seen, 15, message="the page's view of the pair over mutual TLS")
        code, _h, page = https("GET", f"{slave.url}/ui/", operator)
        assert code == 200 and b"login-form" in page
        code, _h, raw = https("GET", f"{slave.url}/ui/api/details", operator, headers=auth)
        history = json.loads(raw)["history"]
        assert code == 200 and not history["notes"], history  # the peer's events came over mutual TLS
        assert any(e["kind"] == "promotion" for e in history["failovers"])
        without_certificate = ca.client_context()
        with pytest.raises(OSError):
            https("GET", f"{slave.url}/ui/", without_certificate)
    finally:
        pair.stop()
