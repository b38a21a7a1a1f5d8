"""Config.from_env: defaults, one ConfigError per bad value naming its variable, no secrets in repr."""

from __future__ import annotations

import dataclasses

import pytest

from daemon.config import DEFAULT_READY_MARKERS, Config, ConfigError

KEY = "s3cr3t-server-key-value"
LOOPBACK = {"SERVER_HOST": "127.0.0.1"}
"""Without SERVER_KEY a node must listen on loopback (or say ALLOW_UNAUTHENTICATED=true)."""


def test_defaults_with_an_empty_environment():
    config = Config.from_env(LOOPBACK)
    assert config.role == "master"
    assert config.storage_path == "/app/storage/cwd"
    assert config.state_path == "/app/storage/.hotstandby"
    assert config.server_port == 5002
    assert config.log_format == "json"
    assert config.log_level == "INFO"
    assert config.sync_target == ""
    assert config.sync_source == ""
    assert config.server_key == ""
    assert config.exclude == ()
    assert config.ready_markers == DEFAULT_READY_MARKERS


# -- closed by default ------------------------------------------------------------------------------
def test_the_defaults_listen_on_every_address_so_they_need_a_key():
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({})
    message = str(excinfo.value)
    assert "\n" not in message, "one line"
    for words in (
        "SERVER_KEY is not set",
        "SERVER_HOST=0.0.0.0",
        "SERVER_KEY_FILE",
        "ALLOW_UNAUTHENTICATED=true",
    ):
        assert words in message
    assert Config.from_env({"SERVER_KEY": KEY}).server_host == "0.0.0.0"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "node-a.example", "10.0.0.1"])
def test_any_address_beyond_loopback_needs_a_key_or_an_explicit_opt_out(host):
    with pytest.raises(ConfigError, match="SERVER_KEY is not set"):
        Config.from_env({"SERVER_HOST": host})
    config = Config.from_env({"SERVER_HOST": host, "ALLOW_UNAUTHENTICATED": "true"})
    assert config.allow_unauthenticated and not config.server_key


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_key(host):
    assert Config.from_env({"SERVER_HOST": host}).server_key == ""


def test_require_auth_still_refuses_a_missing_key_even_on_loopback_and_contradicts_the_opt_out():
    with pytest.raises(ConfigError, match="REQUIRE_AUTH=true but SERVER_KEY is not set"):
        Config.from_env({**LOOPBACK, "REQUIRE_AUTH": "true"})
    with pytest.raises(ConfigError, match="contradict"):
        Config.from_env({"REQUIRE_AUTH": "true", "ALLOW_UNAUTHENTICATED": "true"})
    with pytest.raises(ConfigError, match="ALLOW_UNAUTHENTICATED='perhaps' is invalid"):
        Config.from_env({"ALLOW_UNAUTHENTICATED": "perhaps"})


def test_state_path_defaults_to_a_sibling_of_storage_path(tmp_path):
    config = Config.from_env({**LOOPBACK, "STORAGE_PATH": str(tmp_path / "data" / "cwd")})
    assert config.state_path == str(tmp_path / "data" / ".hotstandby")


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config.from_env({**LOOPBACK, "STORAGE_PATH": "store/cwd", "STATE_PATH": "state"})
    assert config.storage_path == str(tmp_path / "store" / "cwd")
    assert config.state_path == str(tmp_path / "state")


def test_config_is_frozen():
    config = Config.from_env(LOOPBACK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.role = "slave"  # type: ignore[misc]


def test_reads_os_environ_when_no_mapping_is_given(monkeypatch):
    for name in ("ROLE", "SYNC_TARGET", "SYNC_SOURCE", "STORAGE_PATH", "STATE_PATH", "SERVER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVER_PORT", "6123")
    monkeypatch.setenv("SERVER_HOST", "127.0.0.1")
    assert Config.from_env().server_port == 6123


def test_a_valid_slave_configuration_is_accepted():
    config = Config.from_env(
        {
            "ROLE": "slave",
            "SYNC_SOURCE": "http://master:5002/",
            "SERVER_KEY": KEY,
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "console",
        }
    )
    assert config.role == "slave"
    assert config.sync_source == "http://master:5002"
    assert config.server_key == KEY
    assert config.log_level == "DEBUG"
    assert config.log_format == "console"


def test_values_are_case_insensitive_and_trimmed():
    config = Config.from_env({**LOOPBACK, "ROLE": " Master ", "LOG_FORMAT": "JSON", "SERVER_PORT": " 8080 "})
    assert config.role == "master"
    assert config.log_format == "json"
    assert config.server_port == 8080


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ROLE": "boss"}, "ROLE"),
        ({"SERVER_PORT": "abc"}, "SERVER_PORT"),
        ({"SERVER_PORT": "70000"}, "SERVER_PORT"),
        ({"SERVER_PORT": "-1"}, "SERVER_PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"SYNC_TARGET": "ftp://x"}, "SYNC_TARGET"),
        ({"SYNC_TARGET": "http://"}, "SYNC_TARGET"),
        ({"SYNC_TARGET": "http://host:notaport"}, "SYNC_TARGET"),
        ({"ROLE": "slave", "SYNC_SOURCE": "ftp://x"}, "SYNC_SOURCE"),
        ({"ROLE": "slave", "SYNC_TARGET": "http://other:5002"}, "SYNC_TARGET"),
        ({"ROLE": "master", "SYNC_SOURCE": "http://other:5002"}, "SYNC_SOURCE"),
        ({"SERVER_KEY": "short"}, "SERVER_KEY"),
        ({"SERVER_KEY": "long enough\nbut two lines"}, "SERVER_KEY"),
        ({"HEARTBEAT_INTERVAL": "often"}, "HEARTBEAT_INTERVAL"),
        ({"HEARTBEAT_INTERVAL": "0"}, "HEARTBEAT_INTERVAL"),
        ({"SHUTDOWN_TIMEOUT": "9999"}, "SHUTDOWN_TIMEOUT"),
        ({"BATCH_MAX_OPS": "0"}, "BATCH_MAX_OPS"),
        ({"BATCH_MAX_BYTES": "1"}, "BATCH_MAX_BYTES"),
        ({"JOURNAL_MAX_ENTRIES": "many"}, "JOURNAL_MAX_ENTRIES"),
        ({"STORAGE_PATH": ""}, "STORAGE_PATH"),
        ({"STATE_PATH": "/tmp/a\x00b"}, "STATE_PATH"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({**LOOPBACK, **env})
    assert variable in str(excinfo.value)


def test_sync_target_may_list_several_replicas():
    config = Config.from_env({**LOOPBACK, "SYNC_TARGET": " http://a:5002/ , http://b:5002,"})
    assert config.peer_urls == ("http://a:5002", "http://b:5002")
    assert config.peer_url == "http://a:5002"
    assert Config.from_env(LOOPBACK).peer_urls == ()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SYNC_TARGET": "http://a:5002,http://a:5002/"}, "same node twice"),
        ({"SYNC_TARGET": "http://a:5002,ftp://b"}, "SYNC_TARGET"),
        ({"ROLE": "slave", "SYNC_SOURCE": "http://a:1,http://b:1", "FAILOVER": "auto"}, "FAILOVER=auto"),
    ],
)
def test_bad_target_lists_are_refused(env, words):
    with pytest.raises(ConfigError, match=words):
        Config.from_env({**LOOPBACK, **env})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_state_path_inside_storage_path_is_refused(tmp_path):
    storage = tmp_path / "cwd"
    with pytest.raises(ConfigError, match="STATE_PATH"):
        Config.from_env(
            {**LOOPBACK, "STORAGE_PATH": str(storage), "STATE_PATH": str(storage / ".hotstandby")}
        )


def test_state_path_equal_to_storage_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="STATE_PATH"):
        Config.from_env({**LOOPBACK, "STORAGE_PATH": str(tmp_path), "STATE_PATH": str(tmp_path)})


def test_state_path_sneaking_inside_storage_path_with_dotdot_is_refused(tmp_path):
    storage = tmp_path / "cwd"
    sneaky = f"{tmp_path}/other/../cwd/state"
    with pytest.raises(ConfigError, match="STATE_PATH"):
        Config.from_env({**LOOPBACK, "STORAGE_PATH": str(storage), "STATE_PATH": sneaky})


def test_state_path_sharing_only_a_name_prefix_with_storage_path_is_accepted(tmp_path):
    config = Config.from_env(
        {**LOOPBACK, "STORAGE_PATH": str(tmp_path / "cwd"), "STATE_PATH": str(tmp_path / "cwd2")}
    )
    assert config.state_path == str(tmp_path / "cwd2")


def test_server_key_of_exactly_eight_characters_is_accepted():
    assert Config.from_env({**LOOPBACK, "SERVER_KEY": "12345678"}).server_key == "12345678"


def test_server_key_error_does_not_echo_the_key():
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({**LOOPBACK, "SERVER_KEY": "tiny7ch"})
    assert "tiny7ch" not in str(excinfo.value)


def test_exclude_is_parsed_into_a_tuple_of_trimmed_globs():
    config = Config.from_env({**LOOPBACK, "EXCLUDE": " cwd/.uv-cache , *.log,,  ,**/tmp/** "})
    assert config.exclude == ("cwd/.uv-cache", "*.log", "**/tmp/**")


def test_empty_exclude_is_an_empty_tuple():
    assert Config.from_env({**LOOPBACK, "EXCLUDE": ""}).exclude == ()


def test_ready_markers_can_be_overridden_or_emptied():
    assert Config.from_env({**LOOPBACK, "READY_MARKERS": "a/READY, b/DONE"}).ready_markers == (
        "a/READY",
        "b/DONE",
    )
    assert Config.from_env({**LOOPBACK, "READY_MARKERS": ""}).ready_markers == ()


def test_repr_never_contains_the_server_key():
    config = Config.from_env({**LOOPBACK, "SERVER_KEY": KEY})
    assert KEY not in repr(config)
    assert KEY not in str(config)
    assert "server_key='***'" in repr(config)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SYNC_TARGET": "http://u:sekrit@host:5002"}, "carries credentials"),
        ({"SYNC_TARGET": "http://a:5002,http://sekrit-token@b:5002"}, "carries credentials"),
        ({"ROLE": "slave", "SYNC_SOURCE": "https://admin:sekrit@master:5002"}, "carries credentials"),
        ({"SYNC_TARGET": "http://host:5002/?token=sekrit"}, "query or fragment"),
        ({"SYNC_TARGET": "http://host:5002/#sekrit"}, "query or fragment"),
    ],
)
def test_a_node_url_with_credentials_is_refused_without_echoing_them(env, words):
    """The link authenticates with SERVER_KEY; credentials in a node URL would only be shown somewhere."""
    with pytest.raises(ConfigError, match=words) as excinfo:
        Config.from_env({**LOOPBACK, **env})
    assert "sekrit" not in str(excinfo.value) and "SYNC_" in str(excinfo.value)


def test_a_node_url_may_have_a_path_prefix():
    assert (
        Config.from_env({**LOOPBACK, "SYNC_TARGET": "https://proxy:443/hs/"}).peer_url
        == "https://proxy:443/hs"
    )


def test_repr_hides_every_password_a_url_can_carry():
    env = {
        "ELECTION": "redis",
        "REDIS_URL": "redis://:sekrit1@r:6379/0?password=sekrit2",
        "DATABASE_URL": "postgresql://hs@db/hs?password=sekrit3",
        "MARKETPLACE_URL": "https://sekrit4@m.example",
    }
    shown = repr(Config.from_env({**LOOPBACK, **env}))
    assert "sekrit" not in shown and "r:6379" in shown and "db/hs" in shown and "m.example" in shown


def test_invalid_url_error_does_not_echo_its_password():
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({**LOOPBACK, "SYNC_TARGET": "ftp://u:sekrit@host:21"})
    assert "SYNC_TARGET" in str(excinfo.value)
    assert "sekrit" not in str(excinfo.value)


def test_invalid_port_error_does_not_echo_the_url_password():
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({**LOOPBACK, "SYNC_TARGET": "http://u:sekrit@host:99999"})
    assert "SYNC_TARGET" in str(excinfo.value)
    assert "sekrit" not in str(excinfo.value)
