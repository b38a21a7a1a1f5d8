"""The operator commands' settings read a variable with the daemon's own parser: one message per variable
(daemon/client.py ClientSettings, daemon/config.py EnvReader)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.client import Client, ClientSettings, Refused, Unreachable, auth_headers, base_url, local_url
from daemon.config import Config
from daemon.errors import ConfigError, UsageError


@pytest.mark.parametrize("value", ["soon", "0", "-3", "1e9"])
def test_a_bad_replica_max_lag_reads_the_same_for_the_daemon_and_the_commands(value: str) -> None:
    with pytest.raises(ConfigError) as daemon:
        Config.from_env({"REPLICA_MAX_LAG": value, "SERVER_HOST": "127.0.0.1"})
    with pytest.raises(UsageError) as command:
        ClientSettings.from_env({"REPLICA_MAX_LAG": value})
    assert str(command.value) == str(daemon.value) and "REPLICA_MAX_LAG" in str(command.value)


def test_the_flag_wins_over_the_variable_which_is_then_not_read() -> None:
    assert ClientSettings.from_env({"REPLICA_MAX_LAG": "soon"}, max_lag=3.0).max_lag == 3.0
    assert ClientSettings.from_env({"REPLICA_MAX_LAG": "4"}).max_lag == 4.0
    assert ClientSettings.from_env({}).max_lag == 10.0
    with pytest.raises(UsageError, match="--max-lag"):
        ClientSettings.from_env({}, max_lag=0.0)


def test_the_key_comes_from_the_file_else_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-the-file-key\n")
    settings = ClientSettings.from_env({"SERVER_KEY": "from-the-env-key"}, key_file=str(key_file))
    assert settings.server_key == "from-the-file-key"
    assert ClientSettings.from_env({"SERVER_KEY": "from-the-env-key"}).server_key == "from-the-env-key"
    assert "from-the-file-key" not in repr(settings) and "from-the-file-key" not in repr(settings.client())
    with pytest.raises(UsageError, match="--key-file: cannot read"):
        ClientSettings.from_env({}, key_file=str(tmp_path / "missing"))


def test_this_nodes_port_reads_the_same_for_the_daemon_and_the_commands() -> None:
    assert (
        local_url({}) == "http://127.0.0.1:5002"
        and local_url({"SERVER_PORT": "5003"}) == "http://127.0.0.1:5003"
    )
    with pytest.raises(ConfigError) as daemon:
        Config.from_env({"SERVER_PORT": "http", "SERVER_HOST": "127.0.0.1"})
    with pytest.raises(UsageError) as command:
        local_url({"SERVER_PORT": "http"})
    assert str(command.value) == str(daemon.value) and "SERVER_PORT" in str(command.value)


def test_headers_and_urls() -> None:
    assert auth_headers("") == {} and auth_headers("k" * 8) == {"Authorization": f"Bearer {'k' * 8}"}
    assert base_url(" http://a:5002/ ", "--to") == "http://a:5002"
    for bad in ("ftp://a:1", "http://a:99999", "http://a:1/path", "a:1"):
        with pytest.raises(UsageError, match="--to"):
            base_url(bad, "--to")


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.dumps({"type": "about:blank", "title": "promote refused", "status": 409, "detail": "no"})
        status = 200 if self.path == "/ok" else 409
        raw = b'{"epoch": 3}' if status == 200 else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_a_problem_document_becomes_one_refused_error_and_a_dead_node_unreachable() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = Client("k" * 8, timeout=5)
    try:
        assert client.expect("POST", url, "/ok") == {"epoch": 3}
        with pytest.raises(Refused) as refused:
            client.expect("POST", url, "/internal/promote")
        assert (refused.value.status, refused.value.title, refused.value.detail) == (
            409,
            "promote refused",
            "no",
        )
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(Unreachable, match="connection refused"):
        client.expect("POST", url, "/ok")
