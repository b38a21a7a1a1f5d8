"""A delta's rebuilt file goes to disk while it is written; an early flush's error is never lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from replication import write_behind
from replication.write_behind import WriteBehind
from tests.unit.test_applier import Env, write
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


async def test_a_delta_flushes_early_and_still_rebuilds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_behind, "WRITE_BEHIND_BYTES", 256 * 1024)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(write_behind.os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    (tmp_path / "replica").mkdir()
    env = Env(tmp_path / "replica")
    old = os.urandom(3 * 1024 * 1024)
    basis = write(env.storage / "big.bin", old)
    new = old[:1000] + b"X" + old[1001:]
    result = await env.apply(delta_batch(1, "big.bin", basis, new, tmp_path))
    assert result.applied_seq == 1 and result.resend == []
    assert (env.storage / "big.bin").read_bytes() == new
    assert synced  # the rebuilt file was flushed while written, before its commit's fsync
