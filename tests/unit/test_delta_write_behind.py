"""A delta's rebuilt file and a big put go to disk while written; an early flush's error is never lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from replication import applier, write_behind
from replication.write_behind import WriteBehind
from tests.unit.test_applier import Env, end, put, write
from tests.unit.test_applier_delta import delta_batch


def _recording(monkeypatch: pytest.MonkeyPatch, error: OSError | None = None) -> list[int]:
    calls: list[int] = []

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        if error is not None:
            raise error

    monkeypatch.setattr(write_behind.os, "fdatasync", fdatasync)
    return calls


async def test_small_writes_start_no_flush_and_big_ones_do(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording(monkeypatch)
    behind = WriteBehind(7)
    behind.wrote(write_behind.WRITE_BEHIND_BYTES - 1)
    await behind.settle()
    assert calls == []
    behind.wrote(1)
    await behind.settle()
    assert calls == [7]


async def test_an_early_flush_error_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    _recording(monkeypatch, OSError(errno.EIO, "writeback failed"))
    behind = WriteBehind(7)
    behind.wrote(write_behind.WRITE_BEHIND_BYTES)
    with pytest.raises(OSError, match="writeback failed"):
        await behind.settle()


def _flushing_every_256_kib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], Env]:
    """A replica whose write-behind flushes every 256 KiB; the fds it flushed, recorded as it goes."""
    monkeypatch.setattr(write_behind, "WRITE_BEHIND_BYTES", 256 * 1024)
    monkeypatch.setattr(applier, "WRITE_BEHIND_BYTES", 256 * 1024)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(write_behind.os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    (tmp_path / "replica").mkdir()
    return synced, Env(tmp_path / "replica")


async def test_a_delta_flushes_early_and_still_rebuilds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced, env = _flushing_every_256_kib(tmp_path, monkeypatch)
    old = os.urandom(3 * 1024 * 1024)
    basis = write(env.storage / "big.bin", old)
    new = old[:1000] + b"X" + old[1001:]
    result = await env.apply(delta_batch(1, "big.bin", basis, new, tmp_path))
    assert result.applied_seq == 1 and result.resend == []
    assert (env.storage / "big.bin").read_bytes() == new
    assert synced  # the rebuilt file was flushed while written, before its commit's fsync


async def test_a_big_put_flushes_early_and_a_small_one_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain put at least WRITE_BEHIND_BYTES long goes to disk while it arrives (its commit's fsync
    then has little left); a smaller one waits for the commit, as before."""
    synced, env = _flushing_every_256_kib(tmp_path, monkeypatch)
    small, big = os.urandom(256 * 1024 - 1), os.urandom(3 * 1024 * 1024)
    result = await env.apply(put(1, "small.bin", small) + end(1))
    assert result.applied_seq == 1 and synced == []
    result = await env.apply(put(2, "big.bin", big) + end(2))
    assert result.applied_seq == 2
    assert synced  # flushed while written, before its commit
    assert (env.storage / "big.bin").read_bytes() == big
    assert (env.storage / "small.bin").read_bytes() == small


async def test_a_failed_early_flush_of_a_put_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applier, "WRITE_BEHIND_BYTES", 256 * 1024)
    monkeypatch.setattr(write_behind, "WRITE_BEHIND_BYTES", 256 * 1024)
    _recording(monkeypatch, OSError(errno.EIO, "writeback failed"))
    (tmp_path / "replica").mkdir()
    env = Env(tmp_path / "replica")
    with pytest.raises(OSError, match="writeback failed"):
        await env.apply(put(1, "big.bin", os.urandom(1024 * 1024)) + end(1))
    assert list(env.storage.iterdir()) == []  # neither the file nor its temp file
