"""Store settings in the one Config: the plugin root, its folders, downloads; errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Config, ConfigError
from daemon.store.layout import Layout

pytestmark = pytest.mark.timeout(10)

LOOPBACK = {"SERVER_HOST": "127.0.0.1"}  # without SERVER_KEY, a node must listen on loopback


def test_defaults_follow_the_plugin_daemons_layout() -> None:
    config = Config.from_env(LOOPBACK)
    assert config.plugin_storage_root == "/app/storage"
    assert config.package_dir == "/app/storage/plugin_packages"
    assert config.plugin_dir == "/app/storage/plugin"
    assert config.working_path == "/app/storage/cwd"
    assert config.quarantine_dir == "/app/storage/plugin_quarantine"
    assert config.marketplace_url == "https://marketplace.dify.ai"
    assert (config.download_retries, config.max_plugin_package_size) == (3, 52_428_800)


def test_the_root_is_storage_path_itself_unless_it_is_the_working_folder(tmp_path: Path) -> None:
    whole = Config.from_env({**LOOPBACK, "STORAGE_PATH": str(tmp_path / "storage")})
    assert whole.plugin_storage_root == str(tmp_path / "storage")
    layout = Layout.from_config(whole)
    assert layout.is_replicated(layout.packages) and layout.is_replicated(layout.quarantine)
    only_cwd = Layout.from_config(
        Config.from_env({**LOOPBACK, "STORAGE_PATH": str(tmp_path / "storage" / "cwd")})
    )
    assert only_cwd.root == str(tmp_path / "storage")
    assert not only_cwd.is_replicated(only_cwd.packages)
    assert only_cwd.is_replicated(only_cwd.working)
    assert only_cwd.replicated("cwd/a/b-1.0@x/.plugin.sha256") == "a/b-1.0@x/.plugin.sha256"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PACKAGE_DIR": "/etc"}, "PACKAGE_DIR"),
        ({"QUARANTINE_DIR": "/app/storage/plugin_packages/q"}, "QUARANTINE_DIR"),
        ({"QUARANTINE_DIR": "/app/storage"}, "QUARANTINE_DIR"),
        ({"WORKING_PATH": "/app/storage/plugin"}, "WORKING_PATH"),
        ({"STATE_PATH": "/app/storage/plugin/.state"}, "STATE_PATH"),
        ({"MARKETPLACE_URL": "ftp://market"}, "MARKETPLACE_URL"),
        ({"DOWNLOAD_RETRIES": "many"}, "DOWNLOAD_RETRIES"),
        ({"DOWNLOAD_RETRIES": "99"}, "DOWNLOAD_RETRIES"),
        ({"DOWNLOAD_CONNECT_TIMEOUT": "0"}, "DOWNLOAD_CONNECT_TIMEOUT"),
        ({"DOWNLOAD_READ_TIMEOUT": "soon"}, "DOWNLOAD_READ_TIMEOUT"),
        ({"MAX_PLUGIN_PACKAGE_SIZE": "10"}, "MAX_PLUGIN_PACKAGE_SIZE"),
        ({"VERIFY_INTERVAL": "0.5"}, "VERIFY_INTERVAL"),
        ({"WORKDIR_SCAN_INTERVAL": "-1"}, "WORKDIR_SCAN_INTERVAL"),
    ],
)
def test_bad_store_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Config.from_env({**LOOPBACK, **env})


def test_an_empty_marketplace_url_turns_preloading_off_and_urls_hide_passwords() -> None:
    assert Config.from_env({**LOOPBACK, "MARKETPLACE_URL": ""}).marketplace_url == ""
    shown = repr(Config.from_env({**LOOPBACK, "MARKETPLACE_URL": "https://user:secret@mirror.example:8443"}))
    assert "secret" not in shown and "mirror.example" in shown
