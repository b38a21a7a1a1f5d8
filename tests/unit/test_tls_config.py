"""TLS and authentication settings: checked at start with errors naming the variable."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from daemon import ctl
from daemon.client import ClientSettings
from daemon.config import Config, ConfigError
from daemon.errors import UsageError
from daemon.exposure import is_loopback, unguarded_warning
from daemon.haproxy_config import HAProxySettings, SettingsError, render
from daemon.tls import TLSFiles, client_context, server_context
from tests.deploy.test_k8s import config_variables, operator_variables
from tests.support.tls import CertificateAuthority, Issued

pytestmark = pytest.mark.timeout(60)
KEY = "k" * 16


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Issued]:
    ca = CertificateAuthority("unit", tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("node")


def env_with(issued: Issued, ca: CertificateAuthority | None = None, **extra: str) -> dict[str, str]:
    return {**issued.env(ca.cert_file if ca else None), "SERVER_KEY": KEY, **extra}


def test_no_tls_by_default() -> None:
    config = Config.from_env({"SERVER_HOST": "127.0.0.1"})
    assert (config.tls_cert_file, config.tls_key_file, config.tls_ca_file) == ("", "", "")
    assert server_context(config.tls) is None
    assert client_context(config.tls).verify_mode == ssl.CERT_REQUIRED  # https peers are still verified


def test_cert_and_key_serve_tls_and_a_ca_makes_it_mutual(pki: tuple[CertificateAuthority, Issued]) -> None:
    ca, node = pki
    config = Config.from_env(env_with(node))
    context = server_context(config.tls)
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    config = Config.from_env(env_with(node, ca))
    assert config.tls.mutual
    context = server_context(config.tls)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    client = client_context(config.tls)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("given", "missing"), [("TLS_CERT_FILE", "TLS_KEY_FILE"), ("TLS_KEY_FILE", "TLS_CERT_FILE")]
)
def test_cert_and_key_go_together(pki: tuple[CertificateAuthority, Issued], given: str, missing: str) -> None:
    env = env_with(pki[1])
    del env[missing]
    with pytest.raises(ConfigError, match=f"{given} is set but {missing} is not"):
        Config.from_env(env)


@pytest.mark.parametrize("variable", ["TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"])
def test_a_missing_file_is_named(
    pki: tuple[CertificateAuthority, Issued], variable: str, tmp_path: Path
) -> None:
    env = env_with(pki[1], pki[0], **{variable: str(tmp_path / "nope.pem")})
    with pytest.raises(ConfigError, match=f"^{variable}=.*nope.pem.* is not a readable file"):
        Config.from_env(env)


def test_a_file_that_is_not_pem_is_named(pki: tuple[CertificateAuthority, Issued], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"TLS_CA_FILE=.*junk\.pem.* does not load"):
        Config.from_env(env_with(pki[1], **{"TLS_CA_FILE": str(junk)}))
    with pytest.raises(ConfigError, match=r"TLS_CERT_FILE=.*TLS_KEY_FILE=.* do not load"):
        Config.from_env(env_with(pki[1], **{"TLS_KEY_FILE": str(junk)}))
    other = pki[0].issue("other")
    with pytest.raises(ConfigError, match="TLS_CERT_FILE"):  # a key that is not the certificate's
        Config.from_env(env_with(pki[1], **{"TLS_KEY_FILE": str(other.key)}))


def test_the_operator_commands_read_the_same_variables(pki: tuple[CertificateAuthority, Issued]) -> None:
    ca, node = pki
    files = ClientSettings.from_env(node.env(ca.cert_file)).tls
    assert files == TLSFiles(str(node.cert), str(node.key), str(ca.cert_file))
    with pytest.raises(UsageError, match="TLS_KEY_FILE is set but TLS_CERT_FILE is not"):
        ClientSettings.from_env({"TLS_KEY_FILE": str(node.key)})


def test_require_auth_refuses_to_start_without_a_key() -> None:
    with pytest.raises(ConfigError, match="REQUIRE_AUTH=true but SERVER_KEY is not set"):
        Config.from_env({"REQUIRE_AUTH": "true", "SERVER_HOST": "127.0.0.1"})
    assert Config.from_env({"REQUIRE_AUTH": "true", "SERVER_KEY": KEY}).require_auth
    assert not Config.from_env({"REQUIRE_AUTH": "no", "SERVER_KEY": KEY}).require_auth
    with pytest.raises(ConfigError, match="REQUIRE_AUTH='maybe' is invalid"):
        Config.from_env({"REQUIRE_AUTH": "maybe"})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("node-a.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_api_opened_beyond_loopback_on_purpose_gets_a_warning() -> None:
    allowed = Config.from_env({"ALLOW_UNAUTHENTICATED": "true"})  # the defaults: 0.0.0.0, no key
    warning = unguarded_warning(allowed)
    assert warning is not None and "SERVER_KEY is not set" in warning and "0.0.0.0:5002" in warning
    assert "ALLOW_UNAUTHENTICATED=true" in warning
    assert unguarded_warning(Config.from_env({"SERVER_HOST": "127.0.0.1"})) is None
    assert unguarded_warning(Config.from_env({"SERVER_KEY": KEY})) is None


@pytest.mark.parametrize("variable", ["REQUEST_HEADER_TIMEOUT", "REQUEST_BODY_TIMEOUT"])
def test_request_timeouts_are_validated(variable: str) -> None:
    assert getattr(Config.from_env({variable: "7.5", "SERVER_KEY": KEY}), variable.lower()) == 7.5
    with pytest.raises(ConfigError, match=variable):
        Config.from_env({variable: "0", "SERVER_KEY": KEY})


def test_haproxy_renders_tls_checks_and_traffic_only_when_asked() -> None:
    plain = [line for line in render(HAProxySettings()).splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in plain if "check-ssl" in line or " ssl " in line]
    api = render(HAProxySettings(tls_ca_file="/etc/hs/ca.pem", tls_crt="/etc/hs/haproxy.pem"))
    assert "check-ssl verify required ca-file /etc/hs/ca.pem crt /etc/hs/haproxy.pem" in api
    assert re.search(r"^\s+server master \S+:5002 ssl check port", api, re.MULTILINE)
    plugin = render(HAProxySettings(mode="plugin-daemon", check_port=5003, tls_ca_file="/etc/hs/ca.pem"))
    assert "check-ssl verify required ca-file /etc/hs/ca.pem\n" in plugin
    assert not re.search(r"^\s+server master \S+ ssl", plugin, re.MULTILINE), "the plugin daemon is plain"
    with pytest.raises(SettingsError, match="tls_crt needs tls_ca_file"):
        HAProxySettings(tls_crt="/etc/hs/haproxy.pem")


def test_the_readme_documents_every_variable_the_tls_ones_included() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    variables = config_variables() | operator_variables()
    assert {
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TLS_CA_FILE",
        "REQUIRE_AUTH",
        "ALLOW_UNAUTHENTICATED",
    } <= variables
    assert sorted(v for v in variables if f"`{v}`" not in readme) == []


def test_the_status_command_repeats_a_nodes_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    open_node = ctl.NodeStatus("http://a:5002", {"role": "master", "warnings": ["UNAUTHENTICATED: ..."]})
    ctl._print_warnings([open_node, ctl.NodeStatus("http://b:5002", error="refused")])
    assert capsys.readouterr().err == "warning: http://a:5002: UNAUTHENTICATED: ...\n"
