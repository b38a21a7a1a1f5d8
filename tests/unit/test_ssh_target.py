"""ssh:// targets: URL parsing, their configuration rules, the quick check and the journal's settled()."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import Config, ConfigError
from replication.exclude import ReadyMarkers
from replication.journal import Journal
from replication.manifest import Entry
from replication.metrics import ReplicationMetrics
from replication.sftp_link import SftpSender, SftpSettings, quick_check, segments
from replication.source import SourceTree
from replication.ssh_target import SshTarget, is_ssh_url

NS = 1_000_000_000

LOOPBACK = {"SERVER_HOST": "127.0.0.1"}  # without SERVER_KEY, a node must listen on loopback


def test_an_ssh_url_gives_user_host_port_and_a_normalised_absolute_path() -> None:
    target = SshTarget.parse("ssh://backup@dr.example:2222/srv/dr//copy/")
    assert target == SshTarget(user="backup", host="dr.example", port=2222, path="/srv/dr/copy")
    assert str(target) == "ssh://backup@dr.example:2222/srv/dr/copy"


def test_the_port_defaults_to_22_and_ipv6_hosts_are_accepted() -> None:
    assert SshTarget.parse("ssh://u@[::1]/data").port == 22
    assert SshTarget.parse("ssh://u@[::1]/data").host == "::1"
    assert str(SshTarget.parse("ssh://u@[::1]/data")) == "ssh://u@[::1]:22/data"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ssh://host/path", "user is missing"),
        ("ssh://u@host", "remote path is missing"),
        ("ssh://u@host/", "remote root"),
        ("ssh://u@host/a/../..", "'..'"),
        ("ssh://u:pw@host/path", "passwords"),
        ("ssh://u@host:notaport/path", "port"),
        ("ssh://u@/path", "host is missing"),
        ("ssh://u@host/path?x=1", "query"),
    ],
)
def test_a_bad_ssh_url_is_refused_with_the_reason(url: str, words: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        SshTarget.parse(url)
    assert words in str(excinfo.value)


def test_only_ssh_scheme_urls_are_ssh_targets() -> None:
    assert is_ssh_url("ssh://u@h/p") and is_ssh_url("SSH://u@h/p")
    assert not is_ssh_url("http://h:5002")


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, str]:
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("key")
    known.write_text("[h]:22 ssh-ed25519 AAAA")
    return {"SSH_KEY_FILE": str(key), "SSH_KNOWN_HOSTS": str(known)}


def test_a_master_accepts_an_ssh_target_with_a_key_and_known_hosts(key_files: dict[str, str]) -> None:
    config = Config.from_env({**LOOPBACK, "SYNC_TARGET": "ssh://backup@dr:2222/srv/dr", **key_files})
    assert config.sync_target == "ssh://backup@dr:2222/srv/dr"
    assert config.ssh_key_file == key_files["SSH_KEY_FILE"]
    assert config.ssh_known_hosts == key_files["SSH_KNOWN_HOSTS"]


@pytest.mark.parametrize("missing", ["SSH_KEY_FILE", "SSH_KNOWN_HOSTS"])
def test_an_ssh_target_needs_a_key_file_and_known_hosts(missing: str, key_files: dict[str, str]) -> None:
    env = {"SYNC_TARGET": "ssh://backup@dr/srv/dr", **key_files}
    del env[missing]
    with pytest.raises(ConfigError, match=f"{missing} is required"):
        Config.from_env({**LOOPBACK, **env})


def test_an_unreadable_known_hosts_file_is_refused(tmp_path: Path, key_files: dict[str, str]) -> None:
    env = {"SYNC_TARGET": "ssh://backup@dr/srv/dr", **key_files, "SSH_KNOWN_HOSTS": str(tmp_path / "nope")}
    with pytest.raises(ConfigError, match=r"SSH_KNOWN_HOSTS=.* is not a readable file"):
        Config.from_env({**LOOPBACK, **env})


@pytest.mark.parametrize("url", ["ssh://dr/srv/dr", "ssh://backup@dr", "ssh://backup@dr/"])
def test_an_ssh_target_without_user_or_path_names_sync_target(url: str, key_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SYNC_TARGET"):
        Config.from_env({**LOOPBACK, "SYNC_TARGET": url, **key_files})


def test_an_ssh_target_error_does_not_echo_a_password(key_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({**LOOPBACK, "SYNC_TARGET": "ssh://u:sekrit@dr/srv", **key_files})
    assert "sekrit" not in str(excinfo.value)


def test_quick_check_sends_files_whose_size_or_whole_second_mtime_differ() -> None:
    local = {
        "same": Entry("same", "file", 0o644, 5 * NS + 123, 10),
        "newer": Entry("newer", "file", 0o644, 7 * NS, 10),
        "bigger": Entry("bigger", "file", 0o644, 5 * NS, 11),
        "chmod": Entry("chmod", "file", 0o600, 5 * NS + 9, 10),
        "d": Entry("d", "dir", 0o750, 1),
    }
    remote = {
        "same": Entry("same", "file", 0o644, 5 * NS, 10),
        "newer": Entry("newer", "file", 0o644, 6 * NS, 10),
        "bigger": Entry("bigger", "file", 0o644, 5 * NS, 10),
        "chmod": Entry("chmod", "file", 0o644, 5 * NS, 10),
        "d": Entry("d", "dir", 0o755, 1),
        "stray": Entry("stray", "dir", 0o755, 1),
        "stray/x": Entry("stray/x", "file", 0o644, 1, 1),
    }
    plan = quick_check(local, remote)
    assert sorted(e.path for e in plan.send) == ["bigger", "newer"]
    assert sorted(e.path for e in plan.attrs_only) == ["chmod", "d"]
    assert [e.mtime_ns for e in plan.attrs_only if e.path == "chmod"] == [5 * NS + 9], "local mtimes kept"
    assert plan.delete == ["stray"]
    assert plan.to_hash == []


def test_a_change_dropped_after_refusals_no_longer_holds_back_waiting_writers() -> None:
    journal = Journal("j", ReadyMarkers(()))
    for name in ("a", "b", "c"):
        journal.record_sync(name)
    journal.take_batch(10, 1 << 20, lambda _c: 0)
    assert journal.confirmed < 2
    journal.discard(1)
    journal.discard(2)
    assert journal.confirmed >= 2 and journal.confirmed < 3
    journal.acknowledge(3)
    assert journal.confirmed >= 3


def test_parallel_runs_stop_at_folders_deletes_renames_and_ready_markers(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).write_text(name)
    journal = Journal("j", ReadyMarkers(("**/.venv/dify/plugin.json",)))
    journal.record_sync("a")
    journal.record_sync("b")
    journal.record_sync("dir")
    journal.record_sync("c")
    journal.record_sync("p/.venv/dify/plugin.json")
    journal.record_delete("gone")
    journal.record_sync("d")
    batch = journal.take_batch(100, 1 << 20, lambda _c: 0)
    found = segments(batch, SourceTree(str(tmp_path)), journal.is_ready_marker)
    assert [[c.path for c in run] for run in found] == [
        ["a", "b"],
        ["dir"],
        ["c"],
        ["p/.venv/dify/plugin.json"],
        ["gone"],
        ["d"],
    ]


async def test_an_unloadable_key_file_is_reported_as_such(tmp_path: Path) -> None:
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not a key\n")
    known.write_text("")
    settings = SftpSettings(
        target=SshTarget.parse("ssh://u@127.0.0.1:9/srv/dr"),
        key_file=str(key),
        known_hosts=str(known),
        connect_timeout=2.0,
    )
    metrics = ReplicationMetrics(CollectorRegistry())
    journal = Journal("j", ReadyMarkers(()))
    sender = SftpSender(settings, str(tmp_path), journal, metrics, lambda _p: False, lambda: 1, lambda _p: 0)
    task = asyncio.create_task(sender.run())
    try:
        for _ in range(100):
            if sender.last_error:
                break
            await asyncio.sleep(0.05)
        assert sender.last_error is not None and "SSH_KEY_FILE" in sender.last_error, sender.last_error
        assert not sender.connected and sender.fenced_by is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_slave_with_an_ssh_target_is_told_that_sync_target_is_for_masters() -> None:
    with pytest.raises(ConfigError, match="SYNC_TARGET is for ROLE=master"):
        Config.from_env({**LOOPBACK, "ROLE": "slave", "SYNC_TARGET": "ssh://backup@dr/srv/dr"})


def test_an_ssh_item_in_a_fan_out_list_needs_the_key_files_too(key_files: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SSH_KEY_FILE is required"):
        Config.from_env({**LOOPBACK, "SYNC_TARGET": "http://replica:5002,ssh://backup@dr/srv/dr"})
    config = Config.from_env(
        {**LOOPBACK, "SYNC_TARGET": "http://replica:5002,ssh://backup@dr/srv/dr", **key_files}
    )
    assert config.peer_urls == ("http://replica:5002", "ssh://backup@dr:22/srv/dr")
