"""The receiving side: applying operation streams to STORAGE_PATH atomically and contained."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from replication import protocol
from replication import receiver as receiver_module
from replication.applier import sweep_temp_files
from replication.errors import (
    ContainmentError,
    FencedError,
    IntegrityError,
    ProtocolError,
    ReplicationError,
)
from replication.metrics import ReplicationMetrics
from replication.paths import TEMP_PREFIX
from replication.protocol import FLAG_COMPLETE, FLAG_DISCARD, XXH128, Operation, encode_trailer
from replication.receiver import BatchResult, Receiver

JOURNAL = "journal-a"
MTIME = 1_700_000_000_123_456_789
MTIME2 = 1_600_000_000_987_654_321

# --- helpers ------------------------------------------------------------------------------


class Stream:
    """An async readexactly over a buffer, short reads raising like aiohttp's StreamReader."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    async def __call__(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        if len(chunk) < n:
            raise asyncio.IncompleteReadError(chunk, n)
        return chunk

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def put(
    seq: int,
    path: str,
    content: bytes,
    *,
    mode: int = 0o644,
    mtime_ns: int = MTIME,
    flag: int = FLAG_COMPLETE,
    digest: bytes | None = None,
) -> bytes:
    op = Operation(seq, "put", path, mode=mode, mtime_ns=mtime_ns, size=len(content))
    return op.header() + content + encode_trailer(flag, digest or hashlib.sha256(content).digest())


def mkdir(seq: int, path: str, *, mode: int = 0o755, mtime_ns: int = MTIME) -> bytes:
    return Operation(seq, "mkdir", path, mode=mode, mtime_ns=mtime_ns).header()


def symlink(seq: int, path: str, target: str, *, mtime_ns: int = MTIME) -> bytes:
    return Operation(seq, "symlink", path, target=target, mtime_ns=mtime_ns).header()


def delete(seq: int, path: str) -> bytes:
    return Operation(seq, "delete", path).header()


def rename(seq: int, path: str, dest: str) -> bytes:
    return Operation(seq, "rename", path, dest=dest).header()


def attr(seq: int, path: str, *, mode: int = 0o600, mtime_ns: int = MTIME) -> bytes:
    return Operation(seq, "attr", path, mode=mode, mtime_ns=mtime_ns).header()


def end(seq: int) -> bytes:
    return Operation(seq, "end").header()


def raw_frame(fields: dict[str, Any]) -> bytes:
    raw = json.dumps(fields).encode()
    return struct.pack(">I", len(raw)) + raw


def snapshot(root: Path) -> dict[str, tuple[str, Any]]:
    """Every entry below root (links not followed): type and content/target/mode."""
    out: dict[str, tuple[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                out[rel] = ("file", Path(full).read_bytes(), stat.S_IMODE(st_.st_mode), st_.st_mtime_ns)
    return out


def temp_files(root: Path) -> list[str]:
    return [rel for rel in snapshot(root) if os.path.basename(rel).startswith(TEMP_PREFIX)]


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.storage = base / "storage"
        self.state = base / "state"
        self.outside = base / "outside"
        for d in (self.storage, self.state, self.outside):
            d.mkdir(exist_ok=True)
        self.registry = CollectorRegistry()
        self.receiver = self.new_receiver(self.registry)

    def new_receiver(self, registry: CollectorRegistry | None = None) -> Receiver:
        """A receiver on the same storage and state (a restart); metrics on their own registry."""
        metrics = ReplicationMetrics(registry or CollectorRegistry())
        return Receiver(str(self.storage), str(self.state), metrics, skip=lambda p: False)

    async def apply(
        self, data: bytes, *, epoch: int = 1, journal_id: str = JOURNAL, receiver: Receiver | None = None
    ) -> BatchResult:
        stream = Stream(data)
        result = await (receiver or self.receiver).apply_batch(
            journal_id=journal_id, epoch=epoch, read=stream
        )
        assert stream.remaining == 0, "the receiver must consume exactly one batch"
        return result

    def refused(self, reason: str) -> float:
        return self.registry.get_sample_value("plugin_sync_refused_requests_total", {"reason": reason}) or 0.0


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def write(path: Path, content: bytes = b"old", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


# --- put ----------------------------------------------------------------------------------


async def test_put_creates_the_file_with_exact_bytes_mode_and_mtime(env: Env):
    content = bytes(range(256)) * 7 + b"\x00\r\n"
    result = await env.apply(put(1, "cwd/p/.venv/bin/python", content, mode=0o755, mtime_ns=MTIME) + end(1))
    target = env.storage / "cwd/p/.venv/bin/python"
    assert target.read_bytes() == content
    st_ = target.lstat()
    assert stat.S_ISREG(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o755
    assert st_.st_mtime_ns == MTIME
    assert result.applied_seq == 1
    assert result.operations == 1
    assert result.bytes == len(content)
    assert result.resend == []
    assert temp_files(env.storage) == []


async def test_put_of_content_larger_than_one_chunk_and_of_an_empty_file(env: Env):
    big = os.urandom(1024 * 1024 + 12345)
    await env.apply(put(1, "plugin_packages/big.difypkg", big) + put(2, "empty", b"", mode=0o600) + end(2))
    assert (env.storage / "plugin_packages/big.difypkg").read_bytes() == big
    assert (env.storage / "empty").read_bytes() == b""
    assert stat.S_IMODE((env.storage / "empty").stat().st_mode) == 0o600


async def test_put_replaces_an_existing_file(env: Env):
    write(env.storage / "a", b"old content", 0o600)
    await env.apply(put(1, "a", b"new", mode=0o640, mtime_ns=MTIME2) + end(1))
    st_ = (env.storage / "a").stat()
    assert (env.storage / "a").read_bytes() == b"new"
    assert stat.S_IMODE(st_.st_mode) == 0o640
    assert st_.st_mtime_ns == MTIME2


def mode_bits_stripped(env: Env) -> float:
    sample = env.registry.get_sample_value("plugin_sync_mode_bits_stripped_total", {"side": "received"})
    return sample or 0.0


async def test_setuid_setgid_and_sticky_bits_never_land_on_the_replica(env: Env):
    # A setuid file of an unprivileged user on the master must not become a root-owned setuid
    # file here: the bits are stripped again on the receiver, whatever the sender says.
    await env.apply(
        put(1, "tool", b"#!/bin/sh\n", mode=0o4750)
        + put(2, "group-tool", b"x", mode=0o2755)
        + mkdir(3, "shared", mode=0o3775)
        + mkdir(4, "tmp", mode=0o1777)
        + end(4)
    )
    assert stat.S_IMODE((env.storage / "tool").stat().st_mode) == 0o750
    assert stat.S_IMODE((env.storage / "group-tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((env.storage / "shared").stat().st_mode) == 0o775
    assert stat.S_IMODE((env.storage / "tmp").stat().st_mode) == 0o777
    assert mode_bits_stripped(env) == 4


async def test_an_attr_change_cannot_add_a_setuid_bit(env: Env):
    write(env.storage / "tool", b"#!/bin/sh\n", 0o755)
    await env.apply(attr(1, "tool", mode=0o6755) + end(1))
    assert stat.S_IMODE((env.storage / "tool").stat().st_mode) == 0o755
    assert mode_bits_stripped(env) == 1


async def test_put_of_a_name_with_colons_and_at_sign(env: Env):
    name = "plugin_packages/langgenius/openai:0.0.1@" + "0123456789abcdef" * 4
    await env.apply(put(1, name, b"zip") + end(1))
    assert (env.storage / name).read_bytes() == b"zip"


async def test_put_of_a_long_multibyte_name_within_the_kernel_limit(env: Env):
    # 127 x 'é' is 254 bytes: a legal Linux file name, accepted by validate_relpath.
    name = "é" * 127
    assert len(name.encode()) <= 255
    await env.apply(put(1, f"persistence/{name}", b"v") + end(1))
    assert (env.storage / "persistence" / name).read_bytes() == b"v"
    assert temp_files(env.storage) == []


async def test_hash_mismatch_raises_integrity_error_and_keeps_the_old_content(env: Env):
    write(env.storage / "a", b"old content", 0o600)
    before = snapshot(env.storage)
    bad = put(1, "a", b"new content", digest=hashlib.sha256(b"something else").digest())
    with pytest.raises(IntegrityError) as info:
        await env.apply(bad + end(1))
    assert snapshot(env.storage) == before
    assert temp_files(env.storage) == []
    assert info.value.applied_seq == 0
    assert env.receiver.applied_seq == 0
    assert env.refused("IntegrityError") == 1


async def test_a_batch_checked_with_xxh128_applies_and_refuses_a_wrong_or_sha256_trailer(env: Env):
    """Protocol 5: the batch names XXH3-128 and every trailer carries 16 bytes; a mismatch is an
    IntegrityError as with SHA-256, and so is a SHA-256 trailer (its first 16 bytes read as XXH3-128)."""
    good = put(1, "a", b"new content", digest=XXH128.of(b"new content"))
    await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(good + end(1)), check=XXH128)
    assert (env.storage / "a").read_bytes() == b"new content"
    op = Operation(2, "put", "b", mode=0o644, mtime_ns=MTIME, size=3)
    wrong = op.header() + b"abc" + encode_trailer(FLAG_COMPLETE, XXH128.of(b"abd"))
    with pytest.raises(IntegrityError, match="xxh128"):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(wrong + end(2)), check=XXH128)
    sha = op.header() + b"abc" + encode_trailer(FLAG_COMPLETE, hashlib.sha256(b"abc").digest())
    with pytest.raises(IntegrityError, match="xxh128"):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(sha + end(2)), check=XXH128)
    assert not (env.storage / "b").exists()
    assert temp_files(env.storage) == []
    assert env.receiver.applied_seq == 1


async def test_error_mid_batch_keeps_and_persists_the_applied_prefix(env: Env):
    stream = put(1, "a", b"one") + put(2, "b", b"two", digest=b"\x00" * 32) + put(3, "c", b"three") + end(3)
    with pytest.raises(IntegrityError) as info:
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(stream))
    assert info.value.applied_seq == 1
    assert env.receiver.applied_seq == 1
    assert json.loads((env.state / "receiver.json").read_text())["applied_seq"] == 1
    assert (env.storage / "a").read_bytes() == b"one"
    assert not (env.storage / "b").exists()
    assert not (env.storage / "c").exists()
    assert temp_files(env.storage) == []


def _cut_points(frame: bytes, content_len: int) -> list[int]:
    header_len = len(frame) - content_len - protocol.SHA256.trailer_bytes
    return [
        2,  # inside the length prefix
        header_len - 3,  # inside the header
        header_len + content_len // 2,  # inside the content
        header_len + content_len,  # before the trailer
        len(frame) - 5,  # inside the trailer
    ]


@pytest.mark.parametrize("cut_index", range(5))
async def test_truncated_stream_raises_protocol_error_and_changes_nothing_visible(env: Env, cut_index: int):
    write(env.storage / "a", b"old content", 0o600)
    (env.storage / "dir").mkdir()
    before = snapshot(env.storage)
    content = os.urandom(5000)
    frame = put(1, "a", content)
    cut = _cut_points(frame, len(content))[cut_index]
    with pytest.raises(ProtocolError):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(frame[:cut]))
    assert snapshot(env.storage) == before
    assert temp_files(env.storage) == []
    assert env.receiver.applied_seq == 0


async def test_stream_without_end_raises_protocol_error(env: Env):
    with pytest.raises(ProtocolError):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(put(1, "a", b"x")))
    # the complete put before the cut was applied and is remembered
    assert (env.storage / "a").read_bytes() == b"x"
    assert env.receiver.applied_seq == 1


async def test_malformed_trailer_flag_is_a_protocol_error(env: Env):
    write(env.storage / "a", b"old")
    before = snapshot(env.storage)
    with pytest.raises(ProtocolError):
        await env.apply(put(1, "a", b"new", flag=7) + end(1))
    assert snapshot(env.storage) == before
    assert temp_files(env.storage) == []


async def test_discard_flag_discards_the_content_and_asks_for_a_resend(env: Env):
    write(env.storage / "a", b"old", 0o600)
    before = snapshot(env.storage)
    result = await env.apply(
        put(1, "a", b"torn", flag=FLAG_DISCARD) + put(2, "new/b", b"torn", flag=FLAG_DISCARD) + end(2)
    )
    assert (env.storage / "a").read_bytes() == b"old"
    assert not (env.storage / "new/b").exists()
    assert {k: v for k, v in snapshot(env.storage).items() if k != "new"} == before
    assert temp_files(env.storage) == []
    assert result.resend == ["a", "new/b"]
    assert result.applied_seq == 2


# --- mkdir, symlink -------------------------------------------------------------------------


async def test_mkdir_creates_nested_directories_with_mode_and_mtime(env: Env):
    await env.apply(mkdir(1, "cwd/a/b", mode=0o750, mtime_ns=MTIME) + end(1))
    st_ = (env.storage / "cwd/a/b").lstat()
    assert stat.S_ISDIR(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o750
    assert st_.st_mtime_ns == MTIME


async def test_mkdir_of_an_existing_directory_updates_mode_and_mtime_and_keeps_contents(env: Env):
    write(env.storage / "d/keep", b"k")
    await env.apply(mkdir(1, "d", mode=0o711, mtime_ns=MTIME2) + end(1))
    st_ = (env.storage / "d").lstat()
    assert stat.S_IMODE(st_.st_mode) == 0o711
    assert st_.st_mtime_ns == MTIME2
    assert (env.storage / "d/keep").read_bytes() == b"k"


@pytest.mark.parametrize(
    "target", ["/etc/passwd", "../../../../etc/shadow", "python3.12", "/usr/bin/python3", "dangling/ok"]
)
async def test_symlink_target_is_stored_verbatim_and_never_followed(env: Env, target: str):
    await env.apply(symlink(1, "cwd/p/.venv/bin/python", target, mtime_ns=MTIME) + end(1))
    link = env.storage / "cwd/p/.venv/bin/python"
    st_ = link.lstat()
    assert stat.S_ISLNK(st_.st_mode)
    assert os.readlink(link) == target
    assert st_.st_mtime_ns == MTIME


async def test_symlink_to_an_absolute_outside_file_does_not_touch_it(env: Env):
    secret = write(env.outside / "secret", b"secret", 0o600)
    secret_stat = secret.stat()
    await env.apply(symlink(1, "link", str(secret), mtime_ns=MTIME2) + end(1))
    assert os.readlink(env.storage / "link") == str(secret)
    assert secret.stat().st_mtime_ns == secret_stat.st_mtime_ns
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


async def test_symlink_replaces_an_existing_link_with_another_target(env: Env):
    os.symlink("old-target", env.storage / "link")
    await env.apply(symlink(1, "link", "new-target") + end(1))
    assert os.readlink(env.storage / "link") == "new-target"
    assert temp_files(env.storage) == []


async def test_put_over_a_symlink_replaces_the_link_and_never_writes_through_it(env: Env):
    secret = write(env.outside / "secret", b"secret", 0o600)
    os.symlink(secret, env.storage / "link")
    await env.apply(put(1, "link", b"replaced", mode=0o644) + end(1))
    assert secret.read_bytes() == b"secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not (env.storage / "link").is_symlink()
    assert (env.storage / "link").read_bytes() == b"replaced"


async def test_attr_on_a_symlink_to_an_outside_file_does_not_change_the_target(env: Env):
    secret = write(env.outside / "secret", b"secret", 0o600)
    before = secret.stat()
    os.symlink(secret, env.storage / "link")
    await env.apply(attr(1, "link", mode=0o777, mtime_ns=MTIME) + end(1))
    after = secret.stat()
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert after.st_mtime_ns == before.st_mtime_ns
    assert (env.storage / "link").lstat().st_mtime_ns == MTIME


async def test_attr_updates_mode_and_mtime_and_asks_for_a_missing_path(env: Env):
    write(env.storage / "f", b"x", 0o644)
    result = await env.apply(attr(1, "f", mode=0o600, mtime_ns=MTIME) + attr(2, "missing/g") + end(2))
    st_ = (env.storage / "f").stat()
    assert stat.S_IMODE(st_.st_mode) == 0o600
    assert st_.st_mtime_ns == MTIME
    assert result.resend == ["missing/g"]


# --- delete -------------------------------------------------------------------------------


async def test_delete_of_a_file(env: Env):
    write(env.storage / "d/f")
    write(env.storage / "d/keep")
    await env.apply(delete(1, "d/f") + end(1))
    assert not (env.storage / "d/f").exists()
    assert (env.storage / "d/keep").exists()


async def test_delete_of_a_non_empty_directory_does_not_follow_links_inside_it(env: Env):
    write(env.outside / "keep/me", b"precious")
    write(env.storage / "d/sub/deeper/f")
    write(env.storage / "d/g")
    os.symlink(env.outside / "keep", env.storage / "d/sub/escape")
    await env.apply(delete(1, "d") + end(1))
    assert not (env.storage / "d").exists()
    assert not (env.storage / "d").is_symlink()
    assert (env.outside / "keep/me").read_bytes() == b"precious"


async def test_delete_of_a_symlink_removes_only_the_link(env: Env):
    write(env.outside / "keep/me", b"precious")
    os.symlink(env.outside / "keep", env.storage / "link")
    await env.apply(delete(1, "link") + end(1))
    assert not (env.storage / "link").is_symlink()
    assert (env.outside / "keep/me").read_bytes() == b"precious"


async def test_delete_of_a_missing_path_is_not_an_error(env: Env):
    write(env.storage / "file")
    result = await env.apply(delete(1, "absent") + delete(2, "absent/deeper") + delete(3, "file/x") + end(3))
    assert result.applied_seq == 3
    assert (env.storage / "file").exists()


# --- rename -------------------------------------------------------------------------------


async def test_rename_of_a_file_over_an_existing_file(env: Env):
    write(env.storage / "a", b"from a", 0o640)
    write(env.storage / "b", b"from b")
    result = await env.apply(rename(1, "a", "b") + end(1))
    assert not (env.storage / "a").exists()
    assert (env.storage / "b").read_bytes() == b"from a"
    assert result.resend == []


async def test_rename_of_a_file_into_a_new_directory(env: Env):
    write(env.storage / "a", b"x")
    await env.apply(rename(1, "a", "new/dir/a") + end(1))
    assert (env.storage / "new/dir/a").read_bytes() == b"x"
    assert not (env.storage / "a").exists()


async def test_rename_of_a_directory_over_an_existing_directory(env: Env):
    write(env.storage / "src/x", b"x")
    write(env.storage / "src/sub/y", b"y")
    write(env.storage / "dst/old", b"old")
    write(env.storage / "dst/sub/z", b"z")
    await env.apply(rename(1, "src", "dst") + end(1))
    assert not (env.storage / "src").exists()
    assert snapshot(env.storage / "dst").keys() == {"x", "sub", "sub/y"}
    assert (env.storage / "dst/sub/y").read_bytes() == b"y"


async def test_rename_of_a_file_over_a_directory(env: Env):
    write(env.storage / "f", b"file")
    write(env.storage / "d/inner", b"inner")
    await env.apply(rename(1, "f", "d") + end(1))
    assert (env.storage / "d").read_bytes() == b"file"


async def test_rename_whose_source_is_missing_reports_the_destination(env: Env):
    result = await env.apply(rename(1, "missing", "dest") + rename(2, "nodir/missing", "dir/dest2") + end(2))
    assert result.resend == ["dest", "dir/dest2"]
    assert result.applied_seq == 2
    assert not (env.storage / "dest").exists()


async def test_a_rename_before_a_broken_stream_is_remembered(env: Env):
    write(env.storage / "a")
    # the batch dies after the rename: the rename must not be replayed on a resend
    with pytest.raises(ProtocolError):
        await env.receiver.apply_batch(
            journal_id=JOURNAL, epoch=1, read=Stream(rename(4, "a", "b") + b"\x00\x00")
        )
    assert json.loads((env.state / "receiver.json").read_text())["applied_seq"] == 4


async def test_rename_of_a_directory_onto_itself_keeps_it(env: Env):
    # rename(2) of a path onto itself does nothing; a replica must not lose the tree over it
    write(env.storage / "d/f", b"precious")
    with contextlib.suppress(ReplicationError):
        await env.apply(rename(1, "d", "d") + end(1))
    assert (env.storage / "d/f").read_bytes() == b"precious"


async def test_rename_of_a_directory_into_itself_is_refused_without_deleting_anything(env: Env):
    # the kernel refuses this (EINVAL); the receiver must refuse it as a named error, intact
    write(env.storage / "a/b/keep", b"precious")
    before = snapshot(env.storage)
    with pytest.raises(ReplicationError):
        await env.apply(rename(1, "a", "a/b") + end(1))
    assert snapshot(env.storage) == before


# --- type changes ---------------------------------------------------------------------------


async def test_put_where_a_directory_was(env: Env):
    write(env.storage / "x/inner/deep", b"gone")
    await env.apply(put(1, "x", b"now a file", mode=0o600) + end(1))
    assert (env.storage / "x").is_file()
    assert (env.storage / "x").read_bytes() == b"now a file"


async def test_put_where_an_empty_directory_was(env: Env):
    (env.storage / "x").mkdir()
    await env.apply(put(1, "x", b"now a file") + end(1))
    assert (env.storage / "x").read_bytes() == b"now a file"


async def test_mkdir_where_a_file_was(env: Env):
    write(env.storage / "x", b"was a file")
    await env.apply(mkdir(1, "x", mode=0o755) + end(1))
    assert (env.storage / "x").is_dir()


async def test_put_below_a_path_that_is_a_file(env: Env):
    write(env.storage / "x", b"was a file")
    await env.apply(put(1, "x/y", b"below") + end(1))
    assert (env.storage / "x/y").read_bytes() == b"below"


async def test_symlink_where_a_directory_was(env: Env):
    write(env.storage / "x/inner", b"gone")
    await env.apply(symlink(1, "x", "elsewhere") + end(1))
    assert os.readlink(env.storage / "x") == "elsewhere"


async def test_mkdir_where_a_symlink_to_a_directory_was(env: Env):
    (env.outside / "d").mkdir()
    os.symlink(env.outside / "d", env.storage / "x")
    await env.apply(mkdir(1, "x", mode=0o700) + end(1))
    assert not (env.storage / "x").is_symlink()
    assert (env.storage / "x").is_dir()
    assert list((env.outside / "d").iterdir()) == []


# --- sequence, journal, epoch -----------------------------------------------------------------


async def test_applied_seq_is_persisted_and_survives_a_new_receiver(env: Env):
    result = await env.apply(put(5, "a", b"x") + end(7))
    assert result.applied_seq == 7
    state = json.loads((env.state / "receiver.json").read_text())
    assert state["applied_seq"] == 7
    assert state["journal_id"] == JOURNAL
    again = env.new_receiver()
    assert again.applied_seq == 7
    assert again.journal_id == JOURNAL
    assert again.hello(journal_id=JOURNAL, epoch=1, node_id="m")["applied_seq"] == 7


async def test_op_with_seq_at_or_below_applied_seq_is_skipped_and_its_content_consumed(env: Env):
    await env.apply(put(1, "a", b"one") + put(2, "b", b"two") + end(2))
    result = await env.apply(
        put(1, "a", b"replayed") + delete(2, "b") + put(3, "c", b"three") + end(3),
        receiver=env.new_receiver(),
    )
    assert (env.storage / "a").read_bytes() == b"one"
    assert (env.storage / "b").read_bytes() == b"two"
    assert (env.storage / "c").read_bytes() == b"three"
    assert result.operations == 1
    assert result.applied_seq == 3


async def test_skipped_put_content_is_not_checked_but_is_consumed(env: Env):
    await env.apply(end(10))
    big = os.urandom(2 * 1024 * 1024 + 1)
    result = await env.apply(put(3, "a", big, digest=b"\x11" * 32) + put(11, "b", b"b") + end(11))
    assert not (env.storage / "a").exists()
    assert (env.storage / "b").read_bytes() == b"b"
    assert result.applied_seq == 11


async def test_a_new_journal_id_starts_again_from_zero(env: Env):
    await env.apply(end(50))
    assert env.receiver.applied_seq == 50
    result = await env.apply(put(1, "a", b"x") + end(1), journal_id="journal-b")
    assert (env.storage / "a").read_bytes() == b"x"
    assert result.applied_seq == 1
    assert env.new_receiver().journal_id == "journal-b"


async def test_lower_epoch_raises_fenced_error_and_applies_nothing(env: Env):
    env.receiver.hello(journal_id=JOURNAL, epoch=5, node_id="master-2")
    stream = Stream(put(1, "a", b"x") + end(1))
    with pytest.raises(FencedError) as info:
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=4, read=stream)
    assert info.value.peer_epoch == 5
    assert not (env.storage / "a").exists()
    assert env.receiver.applied_seq == 0
    assert env.refused("fenced") == 1
    # the epoch is durable
    with pytest.raises(FencedError):
        await env.new_receiver().apply_batch(journal_id=JOURNAL, epoch=4, read=Stream(end(1)))
    # the same or a higher epoch is accepted
    await env.apply(put(1, "a", b"x") + end(1), epoch=5)
    assert (env.storage / "a").read_bytes() == b"x"


@pytest.mark.parametrize("epoch", [protocol.MAX_PEER_EPOCH + 1, protocol.MAX_EPOCH, 2**63])
async def test_an_epoch_beyond_the_peer_bound_is_refused_and_never_persisted(env: Env, epoch: int):
    with pytest.raises(ProtocolError):
        env.receiver.hello(journal_id=JOURNAL, epoch=epoch, node_id="evil")
    with pytest.raises(ProtocolError):
        await env.receiver.apply_batch(
            journal_id=JOURNAL, epoch=epoch, read=Stream(put(1, "a", b"x") + end(1))
        )
    assert env.receiver.epoch == 0 and env.new_receiver().epoch == 0
    assert not (env.storage / "a").exists()
    assert env.refused("epoch") == 2


# --- containment ------------------------------------------------------------------------------


@pytest.fixture
def escape(env: Env) -> Env:
    """storage/link and storage/real/link point at the outside directory, which holds a file."""
    write(env.outside / "existing", b"outside", 0o600)
    (env.outside / "sub").mkdir()
    os.symlink(env.outside, env.storage / "link")
    (env.storage / "real").mkdir()
    os.symlink(env.outside, env.storage / "real/link")
    write(env.storage / "inside", b"inside")
    return env


ESCAPING = [
    pytest.param(lambda p: put(1, f"{p}/new", b"pwned"), id="put"),
    pytest.param(lambda p: put(1, f"{p}/existing", b"pwned"), id="put-over-existing"),
    pytest.param(lambda p: put(1, f"{p}/sub/deep/new", b"pwned"), id="put-deep"),
    pytest.param(lambda p: mkdir(1, f"{p}/newdir"), id="mkdir"),
    pytest.param(lambda p: mkdir(1, f"{p}/sub", mode=0o777), id="mkdir-existing"),
    pytest.param(lambda p: symlink(1, f"{p}/s", "/etc/passwd"), id="symlink"),
    pytest.param(lambda p: delete(1, f"{p}/existing"), id="delete"),
    pytest.param(lambda p: delete(1, f"{p}/sub"), id="delete-dir"),
    pytest.param(lambda p: attr(1, f"{p}/existing", mode=0o777), id="attr"),
    pytest.param(lambda p: rename(1, f"{p}/existing", "stolen"), id="rename-from"),
    pytest.param(lambda p: rename(1, "inside", f"{p}/existing"), id="rename-to"),
    pytest.param(lambda p: rename(1, "inside", f"{p}/new"), id="rename-to-new"),
]


@pytest.mark.parametrize("prefix", ["link", "real/link"])
@pytest.mark.parametrize("make_op", ESCAPING)
async def test_path_through_a_symlinked_directory_is_refused(
    escape: Env, prefix: str, make_op: Callable[[str], bytes]
):
    env = escape
    outside_before = snapshot(env.outside)
    outside_stat = {rel: os.lstat(env.outside / rel) for rel in outside_before}
    storage_before = snapshot(env.storage)
    with pytest.raises(ContainmentError) as info:
        await env.apply(make_op(prefix) + end(1))
    assert isinstance(info.value, ReplicationError)
    assert snapshot(env.outside) == outside_before
    for rel, st_ in outside_stat.items():
        now = os.lstat(env.outside / rel)
        assert (now.st_mode, now.st_mtime_ns) == (st_.st_mode, st_.st_mtime_ns), rel
    assert snapshot(env.storage) == storage_before
    assert env.receiver.applied_seq == 0
    assert env.refused("ContainmentError") == 1


HOSTILE_PATHS = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp/x",
    "a/../../x",
    "a/../b",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "",
    "a\x00b",
    "..",
    ".",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("op", ["put", "mkdir", "symlink", "delete", "attr", "rename-src", "rename-dest"])
async def test_dot_dot_and_absolute_paths_are_refused_at_decode_time(env: Env, op: str, path: str):
    fields: dict[str, Any] = {"seq": 1, "mode": 0o644, "mtime_ns": MTIME, "size": 3, "target": "t"}
    if op == "rename-src":
        fields.update(op="rename", path=path, dest="ok")
    elif op == "rename-dest":
        fields.update(op="rename", path="inside", dest=path)
    else:
        fields.update(op=op, path=path)
    write(env.storage / "inside")
    base_before = sorted(os.listdir(env.base))
    storage_before = snapshot(env.storage)
    read = Stream(raw_frame(fields) + b"abc" + encode_trailer(0, hashlib.sha256(b"abc").digest()) + end(1))
    with pytest.raises((ProtocolError, ContainmentError)):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=read)
    assert sorted(os.listdir(env.base)) == base_before
    assert snapshot(env.storage) == storage_before
    assert snapshot(env.outside) == {}


# --- sweeping temp files ------------------------------------------------------------------------


def test_sweep_temp_files_removes_only_the_receivers_temp_files(tmp_path: Path):
    storage = tmp_path / "storage"
    write(storage / f"{TEMP_PREFIX}a.0123abcd", b"partial")
    write(storage / f"deep/er/{TEMP_PREFIX}b.deadbeef", b"partial")
    (storage / "dir").mkdir()
    os.symlink(storage / "dir", storage / f"{TEMP_PREFIX}link.cafef00d")  # a temp symlink to a directory
    os.symlink("dangling", storage / f"deep/{TEMP_PREFIX}l2.00000000")
    write(storage / "keep.txt", b"keep")
    write(storage / "deep/.hs", b"keep")
    write(storage / "deep/x.hs~", b"keep")
    assert sweep_temp_files(str(storage)) == 4
    assert sorted(snapshot(storage)) == sorted(
        ["keep.txt", "deep", "deep/er", "deep/.hs", "deep/x.hs~", "dir"]
    )


async def test_receiver_sweep_removes_what_an_interrupted_put_would_leave(env: Env):
    write(env.storage / f"a/{TEMP_PREFIX}f.12345678", b"partial")
    receiver = env.new_receiver()  # a restart: the file is older than this receiver
    assert receiver.sweep() == 1
    assert receiver.sweep() == 0
    assert temp_files(env.storage) == []


def test_the_sweep_keeps_temp_files_made_since_the_receiver_started(env: Env) -> None:
    """The plugin store stages its files under the same prefix, and on a leader nothing waits for the
    sweep: a temp file made after this process started is its own, in flight."""
    write(env.storage / f"a/{TEMP_PREFIX}old.12345678", b"left by a killed predecessor")
    time.sleep(0.02)  # past the file system's coarse clock tick
    receiver = env.new_receiver()
    time.sleep(0.02)
    write(env.storage / f"a/{TEMP_PREFIX}pkg.abcdef01", b"the store, writing now")
    assert receiver.sweep() == 1
    assert temp_files(env.storage) == [f"a/{TEMP_PREFIX}pkg.abcdef01"]


async def test_a_batch_waits_for_the_start_up_sweep_which_never_takes_its_temp_files(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    """The sweep runs in a thread while the node serves; a batch arriving meanwhile waits for it."""
    write(env.storage / f"a/{TEMP_PREFIX}f.12345678", b"left by a killed predecessor")
    release = threading.Event()
    real_sweep = receiver_module.sweep_temp_files

    def held_sweep(root: str, before_ns: int | None = None) -> int:
        release.wait(10)
        return real_sweep(root, before_ns)

    monkeypatch.setattr(receiver_module, "sweep_temp_files", held_sweep)
    receiver = env.new_receiver()  # a restart: the file is older than this receiver
    receiver.start_sweep()
    batch = asyncio.ensure_future(env.apply(put(1, "a/new", b"content") + end(1), receiver=receiver))
    await asyncio.sleep(0.2)
    assert not batch.done(), "a batch must not be applied while the sweep may still run"
    release.set()
    result = await batch
    assert result.applied_seq == 1
    assert (env.storage / "a/new").read_bytes() == b"content"
    assert temp_files(env.storage) == []


async def test_a_first_batch_starts_the_sweep_no_one_started(env: Env):
    """A leader's sweep waits for its replicas (Node._sweep_once_seeded); demoted before, its first
    batch as a replica sweeps first."""
    write(env.storage / f"a/{TEMP_PREFIX}f.12345678", b"left by a killed predecessor")
    receiver = env.new_receiver()
    assert not receiver.sweep_started
    result = await env.apply(put(1, "a/new", b"content") + end(1), receiver=receiver)
    assert result.applied_seq == 1 and receiver.sweep_started
    assert temp_files(env.storage) == []


async def test_a_failed_start_up_sweep_fails_the_batches_not_the_start(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    def failing_sweep(_root: str, before_ns: int | None = None) -> int:
        raise PermissionError(13, "Permission denied", "a")

    monkeypatch.setattr(receiver_module, "sweep_temp_files", failing_sweep)
    env.receiver.start_sweep()
    with pytest.raises(PermissionError):
        await env.apply(put(1, "a/new", b"content") + end(1))
    assert not (env.storage / "a/new").exists()


# --- property: arbitrary bytes never escape and fail only with named errors -------------------------

RECEIVER_TEMP = re.compile(re.escape(TEMP_PREFIX) + r".*\.[0-9a-f]{9,}\Z", re.DOTALL)
SAFE_PATHS = st.sampled_from(["a", "a/b", "link", "link/x", "real/link/y", "d/e/f", "a b", "a/b/c"])


def _valid_header() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(
            lambda seq, path, size: Operation(
                seq, "put", path, mode=0o644, mtime_ns=MTIME, size=size
            ).header(),
            st.integers(1, 5),
            SAFE_PATHS,
            st.integers(0, 64),
        ),
        st.builds(lambda path: mkdir(1, path), SAFE_PATHS),
        st.builds(lambda path, target: symlink(1, path, target), SAFE_PATHS, st.sampled_from(["/etc", ".."])),
        st.builds(lambda path: delete(1, path), SAFE_PATHS),
        st.builds(lambda src, dst: rename(1, src, dst), SAFE_PATHS, SAFE_PATHS),
    )


STREAMS = st.one_of(
    st.binary(max_size=256),
    st.builds(lambda n, tail: struct.pack(">I", n) + tail, st.integers(0, 300), st.binary(max_size=300)),
    st.builds(lambda header, tail: header + tail, _valid_header(), st.binary(max_size=200)),
)


async def _apply_arbitrary(base: Path, data: bytes) -> None:
    env = Env(base)
    write(env.outside / "existing", b"outside", 0o600)
    os.symlink(env.outside, env.storage / "link")
    (env.storage / "real").mkdir()
    os.symlink(env.outside, env.storage / "real/link")
    with contextlib.suppress(ReplicationError):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(data))
    assert sorted(os.listdir(base)) == ["outside", "state", "storage"]
    assert set(os.listdir(env.state)) <= {"receiver.json"}
    assert sorted(os.listdir(env.outside)) == ["existing"]
    assert (env.outside / "existing").read_bytes() == b"outside"
    assert stat.S_IMODE((env.outside / "existing").stat().st_mode) == 0o600
    # no temp file of the receiver's own naming is left behind (a sender may name a path .hs~x itself)
    assert [rel for rel in temp_files(env.storage) if RECEIVER_TEMP.match(os.path.basename(rel))] == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=STREAMS)
def test_arbitrary_bytes_fail_only_with_replication_errors_and_never_write_outside(data: bytes):
    with tempfile.TemporaryDirectory() as base:
        asyncio.run(_apply_arbitrary(Path(base), data))
