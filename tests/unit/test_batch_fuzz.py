"""Fuzzing what the wire-decoder tests leave out: a whole, valid batch with every kind of operation
(a delta and an attr included), truncated anywhere, with bytes flipped or junk spliced in.

test_protocol_fuzz.py covers headers, lengths and trailers one by one, test_delta.py the instruction
and signature decoders, test_applier.py arbitrary bytes and one valid header followed by junk. Here the
receiver must, whatever the damage, fail only with a ReplicationError, leave no temp file of its own,
and write nothing outside STORAGE_PATH (a symlink in the tree points outside, as a trap).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication.delta import compute_delta, encode_instructions, signature_of_path
from replication.errors import ReplicationError
from replication.protocol import FLAG_COMPLETE, Operation, encode_trailer
from tests.unit.test_applier import (
    JOURNAL,
    MTIME,
    RECEIVER_TEMP,
    Env,
    Stream,
    attr,
    delete,
    end,
    mkdir,
    put,
    rename,
    symlink,
    temp_files,
    write,
)

pytestmark = pytest.mark.timeout(180)

_rng = random.Random(20261123)
BASIS = _rng.randbytes(96 * 1024)
NEW = BASIS[:5000] + b"changed in the middle" + BASIS[5000:60000] + _rng.randbytes(3000)
CONTENT = _rng.randbytes(5000)


def _delta_op(seq: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        basis, new = Path(tmp) / "basis", Path(tmp) / "new"
        basis.write_bytes(BASIS)
        new.write_bytes(NEW)
        signature = signature_of_path(basis)
        fd = os.open(new, os.O_RDONLY)
        try:
            stream = b"".join(encode_instructions(compute_delta(signature, fd)))
        finally:
            os.close(fd)
    op = Operation(
        seq,
        "delta",
        "base.bin",
        mode=0o644,
        mtime_ns=MTIME,
        size=len(NEW),
        block_size=signature.block_size,
        basis_size=signature.file_size,
    )
    return op.header() + stream + encode_trailer(FLAG_COMPLETE, hashlib.sha256(NEW).digest())


BATCH = b"".join(
    [
        mkdir(1, "d"),
        put(2, "d/a.txt", CONTENT),
        attr(3, "d/a.txt", mode=0o600),
        symlink(4, "d/to-outside", "../../outside"),  # a trap that resolves to the outside folder
        put(5, "d/b.txt", b"second"),
        rename(6, "d/b.txt", "d/c.txt"),
        delete(7, "d/to-outside"),
        _delta_op(8),
        put(9, "link-inside/ignored", b"x"),  # refused: its parent is a symlink (the trap)
    ]
)
INTACT = BATCH[: BATCH.rindex(put(9, "link-inside/ignored", b"x"))] + end(8)


def _prepare(base: Path) -> Env:
    env = Env(base)
    write(env.outside / "existing", b"outside", 0o600)
    write(env.storage / "base.bin", BASIS)
    os.symlink(env.outside, env.storage / "link-inside")
    return env


def _assert_nothing_outside(env: Env) -> None:
    assert sorted(os.listdir(env.base)) == ["outside", "state", "storage"]
    assert set(os.listdir(env.state)) <= {"receiver.json"}
    assert sorted(os.listdir(env.outside)) == ["existing"]
    assert (env.outside / "existing").read_bytes() == b"outside"
    assert [r for r in temp_files(env.storage) if RECEIVER_TEMP.match(os.path.basename(r))] == []


def test_the_intact_batch_applies_every_operation(tmp_path: Path) -> None:
    """Positive control: the batch being damaged below is valid and does everything."""
    env = _prepare(tmp_path)
    result = asyncio.run(env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(INTACT)))
    assert result.applied_seq == 8 and result.resend == []
    assert (env.storage / "d/a.txt").read_bytes() == CONTENT
    assert (env.storage / "d/a.txt").stat().st_mode & 0o777 == 0o600
    assert (env.storage / "d/c.txt").read_bytes() == b"second"
    assert not (env.storage / "d/to-outside").is_symlink() and not (env.storage / "d/b.txt").exists()
    assert (env.storage / "base.bin").read_bytes() == NEW
    _assert_nothing_outside(env)


def _damaged() -> st.SearchStrategy[bytes]:
    size = len(BATCH)
    cut = st.integers(0, size).map(lambda n: BATCH[:n])
    flip = st.builds(
        lambda at, mask: BATCH[:at] + bytes([BATCH[at] ^ mask]) + BATCH[at + 1 :],
        st.integers(0, size - 1),
        st.integers(1, 255),
    )
    splice = st.builds(
        lambda at, junk: BATCH[:at] + junk + BATCH[at:],
        st.integers(0, size),
        st.binary(min_size=1, max_size=16),
    )
    cut_after_flip = st.builds(lambda damaged, keep: damaged[: max(1, keep)], flip, st.integers(0, size))
    return st.one_of(cut, flip, splice, cut_after_flip)


async def _apply(base: Path, data: bytes) -> None:
    env = _prepare(base)
    with contextlib.suppress(ReplicationError):
        await env.receiver.apply_batch(journal_id=JOURNAL, epoch=1, read=Stream(data))
    _assert_nothing_outside(env)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damaged())
def test_a_damaged_batch_fails_only_with_replication_errors_and_never_writes_outside(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as base:
        asyncio.run(_apply(Path(base), data))
