"""The leader's own storage, read as untrusted as the replica's answers: no symlink followed, no
special file opened, no setuid bit shipped (replication/source.py, replication/manifest.py)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from replication import manifest
from replication.journal import Change
from replication.metrics import ReplicationMetrics
from replication.paths import StorageRoot
from replication.source import SourceTree, SpecialFiles

MARKER = b"SOURCE-TREE-OUTSIDE-MARKER"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A storage with a file, a setuid tool, a sticky folder, a FIFO, a socket and a symlink to outside."""
    root, outside = tmp_path / "storage", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(MARKER)
    (root / "data" / "a.txt").write_bytes(b"alpha")
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "tool").chmod(0o4755)
    (root / "shared").mkdir()
    (root / "shared").chmod(0o3777)
    os.mkfifo(root / "data" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    folder = os.open(root / "data", os.O_RDONLY | os.O_DIRECTORY)
    sock.bind(f"/proc/self/fd/{folder}/sock")
    os.close(folder)
    sock.close()  # the socket file stays
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


def counter() -> tuple[CollectorRegistry, SpecialFiles]:
    registry = CollectorRegistry()
    return registry, SpecialFiles(ReplicationMetrics(registry).special_files_skipped)


def skipped(registry: CollectorRegistry, kind: str) -> float:
    return registry.get_sample_value("plugin_sync_special_files_skipped_total", {"type": kind}) or 0.0


def test_a_scan_lists_what_is_replicated_and_reports_special_files(tree: Path) -> None:
    specials: list[tuple[str, int]] = []
    found = manifest.scan(str(tree), on_special=lambda path, mode: specials.append((path, mode)))
    assert sorted(found) == ["data", "data/a.txt", "escape", "shared", "tool"]
    assert found["escape"].type == "symlink" and found["escape"].target == str(tree.parent / "outside")
    assert sorted((path, stat.S_IFMT(mode)) for path, mode in specials) == [
        ("data/pipe", stat.S_IFIFO),
        ("data/sock", stat.S_IFSOCK),
    ]


def test_a_replica_should_have_our_modes_without_the_special_bits(tree: Path) -> None:
    ours = manifest.scan(str(tree))
    assert (ours["tool"].mode, ours["shared"].mode) == (0o4755, 0o3777)
    stripped = {
        path: entry._replace(mode=entry.mode & 0o777) if entry.type != "symlink" else entry
        for path, entry in ours.items()
    }
    plan = manifest.compare(ours, stripped)
    assert (plan.send, plan.attrs_only, plan.to_hash, plan.delete) == ([], [], [], [])
    # A replica that still has the bits (copied before they were stripped) gets attributes again.
    plan = manifest.compare(ours, ours)
    assert sorted(entry.path for entry in plan.attrs_only) == ["shared", "tool"]


def test_a_walk_from_below_a_symlinked_folder_finds_nothing(tree: Path) -> None:
    assert list(manifest.walk(str(tree), "escape/secret")) == []
    assert [e.path for e in manifest.walk(str(tree), "escape")] == ["escape"]


def test_hashing_never_reads_through_a_symlink_or_a_fifo(tree: Path) -> None:
    storage = StorageRoot(str(tree))
    assert manifest.storage_sha256(storage, "escape/secret") is None
    assert manifest.storage_sha256(storage, "data/pipe") is None
    assert manifest.storage_sha256(storage, "data/a.txt") is not None


def test_special_files_are_never_opened_counted_each_time_and_logged_once(tree: Path) -> None:
    registry, special = counter()
    source = SourceTree(str(tree), special)
    with capture_logs() as logs:
        assert source.open_file("data/pipe") is None
        assert source.open_file("data/pipe") is None
        assert source.open_file("data/sock") is None
    assert skipped(registry, "fifo") == 2 and skipped(registry, "socket") == 1
    assert [entry["path"] for entry in logs if entry["event"] == "special_file_skipped"] == [
        "data/pipe",
        "data/sock",
    ]


def test_the_source_tree_never_looks_past_a_symlinked_folder(tree: Path) -> None:
    source = SourceTree(str(tree))
    assert source.current("escape/secret") is None
    assert source.open_file("escape/secret") is None
    assert not source.exists("escape/secret")
    assert not source.is_real_folder("escape")
    assert source.size_of(Change(1, "sync", "escape/secret")) == 0
    assert source.readlink("escape") == str(tree.parent / "outside")
    opened = source.open_file("data/a.txt")
    assert opened is not None
    fd, st = opened
    try:
        assert os.read(fd, 10) == b"alpha" and st.st_size == 5
    finally:
        os.close(fd)


def test_a_planned_change_is_sized_from_the_plan_without_touching_the_disk(tmp_path: Path) -> None:
    """A seed's batches are cut by the sizes the manifest already knew: no lstat per change on the loop."""
    (tmp_path / "f").write_bytes(b"x" * 10)
    source = SourceTree(str(tmp_path))
    source.storage.lstat = None  # type: ignore[assignment]  # any lstat would fail now
    assert source.size_of(Change(1, "sync", "gone-since", size_hint=4096)) == 4096
    assert source.size_of(Change(2, "delete", "f")) == 0


def test_a_change_without_a_plan_is_sized_by_its_lstat(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert SourceTree(str(tmp_path)).size_of(Change(1, "sync", "f")) == 10
