"""The replica's side of a delta: rebuild from its own copy, verify, or fall back to a whole file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from replication.delta import compute_delta, encode_instructions, signature_of_path
from replication.protocol import FLAG_COMPLETE, Operation, encode_trailer
from tests.unit.test_applier import MTIME, Env, end, temp_files, write

BLOCK_FILE = 3 * 1024 * 1024


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "replica").mkdir()
    return Env(tmp_path / "replica")


def delta_batch(
    seq: int, path: str, basis: Path, new: bytes, tmp: Path, *, trailer_hash: bytes | None = None
) -> bytes:
    """A batch with one delta op turning `basis` (the replica's copy) into `new`."""
    sig = signature_of_path(basis)
    source = tmp / "new-version"
    source.write_bytes(new)
    fd = os.open(source, os.O_RDONLY)
    try:
        stream = b"".join(encode_instructions(compute_delta(sig, fd)))
    finally:
        os.close(fd)
    op = Operation(
        seq,
        "delta",
        path,
        mode=0o644,
        mtime_ns=MTIME,
        size=len(new),
        block_size=sig.block_size,
        basis_size=sig.file_size,
    )
    digest = trailer_hash or hashlib.sha256(new).digest()
    return op.header() + stream + encode_trailer(FLAG_COMPLETE, digest) + end(seq)


async def test_a_delta_rebuilds_the_file_from_the_replicas_copy(env: Env, tmp_path: Path) -> None:
    old = os.urandom(BLOCK_FILE)
    basis = write(env.storage / "big.bin", old)
    new = old[:1000] + b"X" + old[1001:] + b"tail"
    result = await env.apply(delta_batch(1, "big.bin", basis, new, tmp_path))
    assert result.applied_seq == 1 and result.resend == []
    assert (env.storage / "big.bin").read_bytes() == new
    assert (env.storage / "big.bin").stat().st_mtime_ns == MTIME
    assert temp_files(env.storage) == []


async def test_a_delta_that_does_not_rebuild_the_announced_file_falls_back_to_a_whole_transfer(
    env: Env, tmp_path: Path
) -> None:
    old = os.urandom(BLOCK_FILE)
    basis = write(env.storage / "big.bin", old)
    new = old[:-5] + b"12345"
    batch = delta_batch(1, "big.bin", basis, new, tmp_path, trailer_hash=hashlib.sha256(b"other").digest())
    result = await env.apply(batch)
    assert result.resend == ["big.bin"]
    assert (env.storage / "big.bin").read_bytes() == old, "the replica's copy is untouched"
    assert env.registry.get_sample_value("plugin_sync_delta_fallbacks_total") == 1
    assert temp_files(env.storage) == []


async def test_a_delta_against_a_copy_that_changed_meanwhile_falls_back(env: Env, tmp_path: Path) -> None:
    old = os.urandom(BLOCK_FILE)
    basis = write(env.storage / "big.bin", old)
    batch = delta_batch(1, "big.bin", basis, old + b"more", tmp_path)
    write(env.storage / "big.bin", os.urandom(BLOCK_FILE))  # the copy the signature described is gone
    result = await env.apply(batch)
    assert result.resend == ["big.bin"]
    assert env.registry.get_sample_value("plugin_sync_delta_fallbacks_total") == 1


async def test_a_delta_for_a_file_the_replica_lacks_falls_back(env: Env, tmp_path: Path) -> None:
    old = os.urandom(BLOCK_FILE)
    basis = write(tmp_path / "elsewhere.bin", old)
    result = await env.apply(delta_batch(1, "missing.bin", basis, old + b"x", tmp_path))
    assert result.resend == ["missing.bin"]
    assert not (env.storage / "missing.bin").exists()
