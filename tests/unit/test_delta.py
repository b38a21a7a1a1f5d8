"""Delta transfer: every reconstruction is byte-exact, small changes cost small literals,
and the two wire decoders refuse malformed input with ProtocolError (a ValueError) only."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication import delta
from replication.delta import (
    COPY_RUN_BYTES,
    DIGEST_BYTES,
    MAX_BLOCK_SIZE,
    MAX_BLOCKS,
    MAX_LITERAL,
    MIN_BLOCK_SIZE,
    Copy,
    Instruction,
    Literal,
    Signature,
    apply_delta,
    block_size_for,
    compute_delta,
    decode_instructions,
    encode_instructions,
    signature_of_fd,
    signature_of_path,
    strong_digest,
    weak_checksum,
)
from replication.errors import ProtocolError

MIB = 1 << 20
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def fd_with(data: bytes) -> int:
    """An anonymous temporary file holding `data` (closed by the caller)."""
    fd, name = tempfile.mkstemp(prefix="delta-test-")
    os.unlink(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def delta_of(sig: Signature, new: bytes) -> list[Instruction]:
    fd = fd_with(new)
    try:
        return list(compute_delta(sig, fd))
    finally:
        os.close(fd)


def rebuild(old_fd: int, instructions: list[Instruction], block_size: int) -> bytes:
    out_fd = fd_with(b"")
    try:
        written = apply_delta(old_fd, instructions, out_fd, block_size)
        size = os.fstat(out_fd).st_size
        data = os.pread(out_fd, size, 0)
    finally:
        os.close(out_fd)
    assert written == size == len(data)
    return data


def literal_bytes(instructions: list[Instruction]) -> int:
    return sum(len(i.data) for i in instructions if isinstance(i, Literal))


def roundtrip(
    old: bytes,
    new: bytes,
    block_size: int | None = None,
    digest_bytes: int = delta.DIGEST_BYTES,
    block_hash: str = "sha256",
) -> list[Instruction]:
    """Signature of old -> wire -> delta of new -> wire -> apply; asserts the result is new."""
    old_fd = fd_with(old)
    try:
        sig = signature_of_fd(old_fd, block_size, digest_bytes, block_hash)
        assert Signature.from_bytes(sig.to_bytes()) == sig
        sig = Signature.from_bytes(sig.to_bytes())
        instructions = delta_of(sig, new)
        stream = b"".join(encode_instructions(instructions))
        decoded = list(decode_instructions(stream, block_count=sig.block_count))
        assert decoded == instructions
        assert rebuild(old_fd, decoded, sig.block_size) == new
        return instructions
    finally:
        os.close(old_fd)


# --- block size and checksums ---------------------------------------------------------------------------


def test_block_size_grows_with_the_file_like_sqrt() -> None:
    sizes = [0, 1, 1000, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB, 1 << 32, 1 << 34, 1 << 40]
    blocks = [block_size_for(s) for s in sizes]
    assert blocks == sorted(blocks)
    assert blocks[0] == 2047 and blocks[-1] == MAX_BLOCK_SIZE - 1
    assert block_size_for(64 * MIB) > block_size_for(16 * MIB) > block_size_for(4 * MIB)
    for size, block in zip(sizes, blocks, strict=True):
        assert block % 2 == 1  # odd: runs of different bytes never share a weak sum
        assert MIN_BLOCK_SIZE <= block < MAX_BLOCK_SIZE
        if 2047 < block < MAX_BLOCK_SIZE - 1:
            assert abs(block - math.sqrt(size)) <= 8
    with pytest.raises(ValueError):
        block_size_for(-1)


def reference_weak(block: bytes) -> int:
    a = sum(block) % 65536
    b = sum((len(block) - j) * x for j, x in enumerate(block)) % 65536
    return a | b << 16


def test_weak_checksum_is_rsyncs_and_the_signature_uses_it() -> None:
    data = rand(5 * 2048 + 777, seed=1)
    assert weak_checksum(data[:2048]) == reference_weak(data[:2048])
    assert weak_checksum(b"\xff" * 70000) == reference_weak(b"\xff" * 70000)
    sig = roundtrip_signature(data, 2048)
    assert sig.block_count == 6 and sig.file_size == len(data)
    for i in range(sig.block_count):
        block = data[i * 2048 : (i + 1) * 2048]
        assert int(sig.weak[i]) == reference_weak(block)
        assert sig.digest(i) == strong_digest(block) == hashlib.sha256(block).digest()[:DIGEST_BYTES]


def roundtrip_signature(data: bytes, block_size: int | None = None) -> Signature:
    fd = fd_with(data)
    try:
        os.lseek(fd, 123, os.SEEK_SET)
        sig = signature_of_fd(fd, block_size)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123  # pread: the caller's offset is untouched
    finally:
        os.close(fd)
    assert Signature.from_bytes(sig.to_bytes()) == sig
    return sig


def test_signature_of_path_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    sig = signature_of_path(path)
    assert (sig.block_size, sig.file_size, sig.block_count, sig.strong) == (2047, 0, 0, b"")
    assert len(sig.to_bytes()) == 20
    path.write_bytes(rand(3 * MIB + 5, seed=2))
    assert signature_of_path(path).block_size == block_size_for(3 * MIB + 5)


def test_signature_is_immutable_and_validated() -> None:
    sig = roundtrip_signature(rand(10000, seed=3))
    with pytest.raises(ValueError):
        sig.weak[0] = 1
    with pytest.raises(ValueError):
        Signature(2048, 10000, np.zeros(4, np.uint32), bytes(5 * DIGEST_BYTES))
    with pytest.raises(ValueError):
        Signature(2048, 10000, np.zeros(5, np.uint32), bytes(4 * DIGEST_BYTES))
    with pytest.raises(ValueError):
        Signature(100, 0, np.zeros(0, np.uint32), b"")
    with pytest.raises(ValueError):
        Signature(2048, 2048 * (MAX_BLOCKS + 1), np.zeros(0, np.uint32), b"")
    fd = fd_with(b"x")
    try:
        with pytest.raises(ValueError):
            signature_of_fd(fd, MAX_BLOCK_SIZE + 1)
    finally:
        os.close(fd)


# --- round trips -----------------------------------------------------------------------------------------

BASE = rand(3 * MIB + 1234, seed=10)  # block 2047 (clamped), with a short last block
BLOCK = block_size_for(len(BASE))


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x5A
    return bytes(out)


CASES: dict[str, tuple[bytes, bytes]] = {
    "identical": (BASE, BASE),
    "empty old": (b"", BASE[:100000]),
    "empty new": (BASE, b""),
    "both empty": (b"", b""),
    "new shorter than a block": (BASE, BASE[: BLOCK - 1]),
    "old shorter than a block": (BASE[:1000], BASE[:1000] + b"more"),
    "old exactly one block": (BASE[:BLOCK], BASE[:BLOCK] * 3),
    "one byte changed in the middle": (BASE, flip(BASE, len(BASE) // 2)),
    "first and last byte changed": (BASE, flip(flip(BASE, 0), len(BASE) - 1)),
    "1 MiB inserted in the middle": (BASE, BASE[: MIB + 7] + rand(MIB, 11) + BASE[MIB + 7 :]),
    "inserted at the start": (BASE, b"shifted by seven" + BASE),
    "deleted at the start": (BASE, BASE[3:]),
    "appended": (BASE, BASE + b"appended"),
    "truncated": (BASE, BASE[:-100]),
    "truncated to whole blocks": (BASE, BASE[: 100 * BLOCK]),
    "halves swapped": (BASE, BASE[len(BASE) // 2 :] + BASE[: len(BASE) // 2]),
    "block duplicated": (BASE, BASE[:BLOCK] * 2 + BASE),
    "unrelated": (BASE, rand(len(BASE), seed=12)),
    "zeros with a change": (bytes(MIB), bytes(MIB // 2) + b"\x01" + bytes(MIB // 2)),
    "repetitive text": (b"abc" * 300000, b"abc" * 100000 + b"X" + b"abc" * 200000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_roundtrip(name: str) -> None:
    old, new = CASES[name]
    instructions = roundtrip(old, new)
    assert literal_bytes(instructions) <= len(new)
    for ins in instructions:
        assert not isinstance(ins, Literal) or 1 <= len(ins.data) <= MAX_LITERAL


@pytest.mark.parametrize(
    "name", ["one byte changed in the middle", "1 MiB inserted in the middle", "halves swapped"]
)
def test_short_digests_rebuild_the_file_with_the_same_instructions(name: str) -> None:
    """Protocol 2's short strong digests: a smaller signature, the same delta."""
    old, new = CASES[name]
    assert roundtrip(old, new, digest_bytes=delta.SHORT_DIGEST_BYTES) == roundtrip(old, new)
    old_fd = fd_with(old)
    try:
        short = signature_of_fd(old_fd, digest_bytes=delta.SHORT_DIGEST_BYTES)
        full = signature_of_fd(old_fd)
    finally:
        os.close(old_fd)
    saved = delta.DIGEST_BYTES - delta.SHORT_DIGEST_BYTES
    assert len(short.to_bytes()) == len(full.to_bytes()) - saved * full.block_count
    assert short.strong[: delta.SHORT_DIGEST_BYTES] == full.strong[: delta.SHORT_DIGEST_BYTES]


@pytest.mark.parametrize("name", sorted(CASES))
def test_crc32_digests_rebuild_the_file_with_the_same_instructions(name: str) -> None:
    """Protocol 3's CRC-32 block digests: signature format 2, 4 bytes a block, the same delta."""
    old, new = CASES[name]
    crc = roundtrip(old, new, digest_bytes=delta.CRC_DIGEST_BYTES, block_hash="crc32")
    assert crc == roundtrip(old, new)
    old_fd = fd_with(old)
    try:
        sig = signature_of_fd(old_fd, digest_bytes=delta.CRC_DIGEST_BYTES, block_hash="crc32")
    finally:
        os.close(old_fd)
    assert sig.to_bytes()[4] == 2  # the format version names the block hash
    blocks = [old[i : i + sig.block_size] for i in range(0, len(old), sig.block_size)]
    assert sig.strong == b"".join(zlib.crc32(block).to_bytes(4, "big") for block in blocks)


def test_a_crc32_block_match_that_is_false_is_caught_by_the_whole_file_check() -> None:
    """Two different blocks with the same weak sum and CRC-32 (forged here): the search takes the
    replica's block, and the rebuilt file differs from the new one, which the whole-file SHA-256
    then refuses (the applier sends the file whole): CRC-32 may only cost a transfer, never a file."""
    old_fd = fd_with(BASE)
    try:
        sig = signature_of_fd(old_fd, digest_bytes=delta.CRC_DIGEST_BYTES, block_hash="crc32")
        new = bytearray(BASE)
        new[100] ^= 0xFF
        forged = Signature(
            sig.block_size,
            sig.file_size,
            sig.weak.copy(),
            _crc_of(bytes(new), sig.block_size),
            delta.CRC_DIGEST_BYTES,
            "crc32",
        )
        instructions = delta_of(forged, bytes(new))
        assert literal_bytes(instructions) == 0  # every block "matched"
        rebuilt = rebuild(old_fd, instructions, sig.block_size)
    finally:
        os.close(old_fd)
    assert hashlib.sha256(rebuilt).digest() != hashlib.sha256(bytes(new)).digest()


def _crc_of(data: bytes, n: int) -> bytes:
    return b"".join(zlib.crc32(data[i : i + n]).to_bytes(4, "big") for i in range(0, len(data), n))


@pytest.mark.parametrize(("version", "width"), [(1, 4), (2, 6), (2, 16), (3, 4), (0, 16)])
def test_a_signature_whose_block_hash_and_width_disagree_is_refused(version: int, width: int) -> None:
    sig = signature_of_fd(fd := fd_with(BASE[:10000]))
    os.close(fd)
    blob = bytearray(sig.to_bytes())
    blob[4], blob[5] = version, width
    with pytest.raises(ProtocolError):
        Signature.from_bytes(bytes(blob))


@pytest.mark.parametrize("width", [0, 5, 17, 255])
def test_a_signature_of_an_unknown_digest_width_is_refused(width: int) -> None:
    sig = signature_of_fd(fd := fd_with(BASE[:10000]))
    os.close(fd)
    blob = bytearray(sig.to_bytes())
    blob[5] = width
    with pytest.raises(ProtocolError):
        Signature.from_bytes(bytes(blob))


def test_identical_with_short_tail_is_one_copy_run() -> None:
    instructions = roundtrip(BASE, BASE)
    assert instructions == [Copy(0, -(-len(BASE) // BLOCK))]
    assert len(BASE) % BLOCK  # the short last block was matched too


@pytest.mark.parametrize(
    ("name", "most"),
    [
        ("one byte changed in the middle", BLOCK),
        ("first and last byte changed", BLOCK + len(BASE) % BLOCK),
        ("1 MiB inserted in the middle", MIB + BLOCK),
        ("inserted at the start", 16),
        ("deleted at the start", BLOCK),
        ("appended", 8),
        ("halves swapped", 2 * BLOCK),
        ("block duplicated", 0),
        ("old exactly one block", 0),
        ("old shorter than a block", 4),
        ("zeros with a change", BLOCK),
        ("new shorter than a block", BLOCK - 1),
        ("empty old", 100000),
        ("unrelated", len(BASE)),
    ],
)
def test_literal_cost_matches_the_change(name: str, most: int) -> None:
    old, new = CASES[name]
    assert literal_bytes(roundtrip(old, new)) <= most


def test_shifted_data_is_found_at_shifted_offsets() -> None:
    old, new = CASES["inserted at the start"]
    instructions = roundtrip(old, new)
    assert instructions == [Literal(b"shifted by seven"), Copy(0, -(-len(BASE) // BLOCK))]


def test_small_block_size_override_and_many_runs() -> None:
    old = rand(200 * 2048 + 100, seed=13)
    new = bytearray(old)
    for at in range(1000, len(new), 20000):
        new[at] ^= 1
    instructions = roundtrip(old, bytes(new), block_size=2048)
    assert literal_bytes(instructions) <= 21 * 2048
    assert sum(isinstance(i, Copy) for i in instructions) >= 20


@st.composite
def edited(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An old file of up to ~12 blocks of 2 KiB and a new file made of its pieces and new bytes."""
    seed = draw(st.integers(0, 2**32))
    low_entropy = draw(st.booleans())
    size = draw(st.integers(0, 12 * 2048 + 300))
    old = bytes(random.Random(seed).choice(b"ab") for _ in range(size)) if low_entropy else rand(size, seed)
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()) and old:
            start = draw(st.integers(0, len(old) - 1))
            pieces.append(old[start : start + draw(st.integers(1, 6000))])
        else:
            pieces.append(rand(draw(st.integers(1, 3000)), seed + len(pieces)))
    return old, b"".join(pieces)


@FUZZ
@given(edited())
def test_roundtrip_property(case: tuple[bytes, bytes]) -> None:
    old, new = case
    roundtrip(old, new, block_size=2048)


@pytest.mark.parametrize(("window", "chunk"), [(1000, 700), (8192, 3000), (50000, 10007)])
@pytest.mark.parametrize(
    "name", ["one byte changed in the middle", "1 MiB inserted in the middle", "halves swapped"]
)
def test_roundtrip_with_tiny_windows(name: str, window: int, chunk: int) -> None:
    """Matches and literals that straddle window refills and rolling-chunk edges (a window may even be
    smaller than a block)."""
    old, new = CASES[name]
    old, new = old[: 300 * 1024], new[: 300 * 1024]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delta, "WINDOW_BYTES", window)
        mp.setattr(delta, "ROLL_CHUNK", chunk)
        expected = 2048 if name == "one byte changed in the middle" else len(new)
        assert literal_bytes(roundtrip(old, new, block_size=2048)) <= expected


@FUZZ
@given(edited(), st.integers(500, 9000), st.integers(1, 5000))
def test_roundtrip_property_tiny_windows(case: tuple[bytes, bytes], window: int, chunk: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delta, "WINDOW_BYTES", window)
        mp.setattr(delta, "ROLL_CHUNK", chunk)
        roundtrip(*case, block_size=2048)


def instructions_block_by_block(sig: Signature, new: bytes) -> list[Instruction]:
    """compute_delta without the run fast path: every block through next_match, as before it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delta._Search, "run_at", lambda self, p, expected: 0)
        return delta_of(sig, new)


@FUZZ
@given(edited(), st.integers(500, 40000), st.integers(1, 20000), st.sampled_from(["sha256", "crc32"]))
def test_the_run_fast_path_emits_exactly_what_the_block_by_block_search_does(
    case: tuple[bytes, bytes], window: int, chunk: int, block_hash: str
) -> None:
    old, new = case
    width = delta.CRC_DIGEST_BYTES if block_hash == "crc32" else delta.DIGEST_BYTES
    old_fd = fd_with(old)
    try:
        sig = signature_of_fd(old_fd, 2048, width, block_hash)
    finally:
        os.close(old_fd)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delta, "WINDOW_BYTES", window)
        mp.setattr(delta, "ROLL_CHUNK", chunk)
        mp.setattr(delta, "COPY_RUN_BYTES", 3 * 2048)  # runs split often: copy_run must split alike
        assert delta_of(sig, new) == instructions_block_by_block(sig, new)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("copy"), st.integers(0, 40), st.integers(1, 9)),
            st.tuples(st.just("literal"), st.integers(1, 5), st.just(0)),
        ),
        max_size=30,
    ),
    st.integers(1, 6),
)
def test_an_emitted_copy_run_is_what_copying_each_block_emits(
    steps: list[tuple[str, int, int]], max_run: int
) -> None:
    one_by_one, in_runs = delta._Emitter(max_run), delta._Emitter(max_run)
    for kind, first, count in steps:
        if kind == "copy":
            for index in range(first, first + count):
                one_by_one.copy(index)
            in_runs.copy_run(first, count)
        else:
            one_by_one.literal(memoryview(b"x" * first))
            in_runs.literal(memoryview(b"x" * first))
    one_by_one.flush_copy()
    in_runs.flush_copy()
    assert in_runs.out == one_by_one.out


def test_an_unchanged_stretch_costs_no_call_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1-byte change: next_match runs around the change (as far as the rolling search reached),
    not once per unchanged block (400 here)."""
    old = rand(400 * 2048, seed=21)
    new = bytearray(old)
    new[200 * 2048 + 5] ^= 1
    calls = 0
    next_match = delta._Search.next_match

    def counted(self: delta._Search, p: int, last: int) -> delta.Match | None:
        nonlocal calls
        calls += 1
        return next_match(self, p, last)

    monkeypatch.setattr(delta._Search, "next_match", counted)
    monkeypatch.setattr(delta, "ROLL_CHUNK", 16 * 2048)  # the rolling search's reach past the change
    instructions = roundtrip(old, bytes(new), block_size=2048)
    assert literal_bytes(instructions) == 2048
    assert calls < 16 + 10


def test_weak_sum_collisions_cost_linear_work() -> None:
    """With an even block size, a run of 0x40 bytes has the all-zero block's weak sum at every
    offset (2048 * 64 = 0 and 64 * 2048 * 2049 / 2 = 0 mod 2**16): without the rate limit each of
    those 4 Mi offsets would cost a strong hash of 2 KiB, i.e. minutes."""
    assert weak_checksum(b"\x40" * 2048) == weak_checksum(bytes(2048)) == 0
    assert weak_checksum(b"\x40" * 2047) != weak_checksum(bytes(2047))  # what block_size_for's odd sizes buy
    old = bytes(2048) + rand(20 * 2048, seed=14)
    new = b"\x40" * (4 * MIB) + bytes(4096) + old
    start = time.process_time()  # CPU, not wall: a loaded test machine stretched 3 s to 5.6
    instructions = roundtrip(old, new, block_size=2048)
    assert time.process_time() - start < 10
    assert literal_bytes(instructions) <= 4 * MIB + 2048


def test_tee_sees_every_byte_once() -> None:
    new = CASES["1 MiB inserted in the middle"][1]
    old_fd, new_fd = fd_with(BASE), fd_with(new)
    try:
        h = hashlib.sha256()
        for _ in compute_delta(signature_of_fd(old_fd), new_fd, tee=h.update):
            pass
    finally:
        os.close(old_fd)
        os.close(new_fd)
    assert h.digest() == hashlib.sha256(new).digest()


# --- 64 MiB files ----------------------------------------------------------------------------------------

BIG = 64 * MIB


@pytest.fixture(scope="module")
def big_old(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Signature]]:
    path = tmp_path_factory.mktemp("delta") / "old"
    path.write_bytes(rand(BIG, seed=20))
    sig = signature_of_path(path)
    yield path, sig
    path.unlink()


def big_roundtrip(old: Path, sig: Signature, new: Path) -> tuple[list[Instruction], int]:
    fd = os.open(new, os.O_RDONLY)
    try:
        instructions = list(compute_delta(sig, fd))
    finally:
        os.close(fd)
    stream = sum(len(chunk) for chunk in encode_instructions(instructions))
    out = old.with_name("out")
    old_fd = os.open(old, os.O_RDONLY)
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert apply_delta(old_fd, instructions, out_fd, sig.block_size) == new.stat().st_size
    finally:
        os.close(old_fd)
        os.close(out_fd)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(new.read_bytes()).digest()
    out.unlink()
    return instructions, stream


def test_64mib_one_byte_change_costs_one_block(big_old: tuple[Path, Signature], tmp_path: Path) -> None:
    old, sig = big_old
    assert sig.block_size == block_size_for(BIG) == 8191
    data = bytearray(old.read_bytes())
    data[BIG // 2 + 4321] ^= 0xFF
    new = tmp_path / "new"
    new.write_bytes(data)
    del data
    instructions, stream = big_roundtrip(old, sig, new)
    assert literal_bytes(instructions) < MIB
    assert literal_bytes(instructions) == sig.block_size
    assert stream < MIB


def test_64mib_identical_is_all_copies(big_old: tuple[Path, Signature]) -> None:
    old, sig = big_old
    instructions, stream = big_roundtrip(old, sig, old)
    assert literal_bytes(instructions) == 0
    run = -(-COPY_RUN_BYTES // sig.block_size)  # long runs go in pieces the replica can start on
    assert instructions == [Copy(i, min(run, sig.block_count - i)) for i in range(0, sig.block_count, run)]
    assert stream == 9 * len(instructions) + 1


# --- wire formats ----------------------------------------------------------------------------------------


def test_signature_from_bytes_refuses_malformed_headers() -> None:
    good = roundtrip_signature(rand(10000, seed=30), 2048).to_bytes()
    header = struct.Struct(">4sBBHIQ")
    bad = [
        b"",
        good[:19],
        good[:-1],
        good + b"\0",
        b"XSig" + good[4:],
        good[:4] + b"\x02" + good[5:],
        good[:5] + b"\x20" + good[6:],
        good[:6] + b"\0\1" + good[8:],
        header.pack(b"HSig", 1, 16, 0, 1000, 10000) + good[20:],
        header.pack(b"HSig", 1, 16, 0, MAX_BLOCK_SIZE * 2, 10000) + good[20:],
        header.pack(b"HSig", 1, 16, 0, 2048, 1 << 63),  # would be 2**52 blocks: refused, not allocated
        header.pack(b"HSig", 1, 16, 0, 2048, 2048 * MAX_BLOCKS),  # plausible count, blob far too short
        header.pack(b"HSig", 1, 16, 0, 2048, 5 * 2048 + 1) + good[20:],  # one block more than the blob holds
    ]
    for blob in bad:
        with pytest.raises(ProtocolError):
            Signature.from_bytes(blob)


@FUZZ
@given(st.binary(max_size=400))
def test_signature_decoder_fuzz_arbitrary(blob: bytes) -> None:
    with contextlib.suppress(ValueError):
        Signature.from_bytes(blob)


GOOD_SIG = Signature(2048, 5000, np.array([1, 2, 3], np.uint32), rand(3 * DIGEST_BYTES, seed=31)).to_bytes()


@FUZZ
@given(st.data())
def test_signature_decoder_fuzz_mutated(data: st.DataObject) -> None:
    blob = bytearray(GOOD_SIG)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    blob = blob[: data.draw(st.integers(0, len(blob) + 1))]
    try:
        sig = Signature.from_bytes(bytes(blob))
    except ValueError:
        return
    assert sig.to_bytes() == bytes(blob)


def test_encode_splits_long_literals_and_batches_copies() -> None:
    big = rand(2 * MAX_LITERAL + 5, seed=40)
    instructions: list[Instruction] = [Copy(0, 1), Literal(big), Copy(1, 2), Literal(b""), Literal(b"x")]
    stream = b"".join(encode_instructions(instructions))
    decoded = list(decode_instructions(stream, block_count=3))
    assert decoded == [
        Copy(0, 1),
        Literal(big[:MAX_LITERAL]),
        Literal(big[MAX_LITERAL : 2 * MAX_LITERAL]),
        Literal(big[2 * MAX_LITERAL :]),
        Copy(1, 2),
        Literal(b"x"),
    ]
    for bad in (Copy(-1, 1), Copy(0, 0), Copy(2**32 - 1, 2)):
        with pytest.raises(ValueError):
            list(encode_instructions([bad]))


def test_decode_from_a_read_exactly_callable() -> None:
    stream = b"".join(encode_instructions([Literal(b"hello"), Copy(3, 4)]))
    pos = 0

    def read_exactly(n: int) -> bytes:
        nonlocal pos
        chunk = stream[pos : pos + n]
        pos += n
        return chunk

    assert list(decode_instructions(read_exactly, block_count=7)) == [Literal(b"hello"), Copy(3, 4)]
    assert pos == len(stream)
    pos = 0
    with pytest.raises(ProtocolError):
        list(decode_instructions(read_exactly, block_count=6))  # copy of block 6 of 6
    pos = 0
    truncated = stream[:-1]

    def short_read(n: int) -> bytes:
        nonlocal pos
        chunk = truncated[pos : pos + n]
        pos += n
        return chunk

    with pytest.raises(ProtocolError):
        list(decode_instructions(short_read, block_count=7))


def test_decode_refuses_malformed_streams() -> None:
    bad = [
        b"",
        b"C",
        b"C" + struct.pack(">II", 0, 1),  # no end record
        b"C" + struct.pack(">II", 0, 0) + b"E",
        b"C" + struct.pack(">II", 9, 2) + b"E",
        b"C" + struct.pack(">II", 2**32 - 1, 2**32 - 1) + b"E",
        b"L" + struct.pack(">I", 0) + b"E",
        b"L" + struct.pack(">I", MAX_LITERAL + 1) + bytes(MAX_LITERAL + 1) + b"E",
        b"L" + struct.pack(">I", 5) + b"abc",
        b"L" + struct.pack(">I", 0xFFFFFFFF),
        b"X",
        b"EE",
        b"E" + b"trailing",
    ]
    for stream in bad:
        with pytest.raises(ProtocolError):
            list(decode_instructions(stream, block_count=10))


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 50))
def test_instruction_decoder_fuzz_arbitrary(stream: bytes, blocks: int) -> None:
    with contextlib.suppress(ValueError):
        for ins in decode_instructions(stream, block_count=blocks):
            if isinstance(ins, Copy):
                assert ins.index >= 0 and ins.count >= 1 and ins.index + ins.count <= blocks
            else:
                assert 1 <= len(ins.data) <= MAX_LITERAL


GOOD_STREAM = b"".join(encode_instructions([Copy(0, 3), Literal(b"abcdefgh"), Copy(5, 2), Literal(b"z")]))


@FUZZ
@given(st.data())
def test_instruction_decoder_fuzz_mutated(data: st.DataObject) -> None:
    stream = bytearray(GOOD_STREAM)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] = data.draw(st.integers(0, 255))
    stream = stream[: data.draw(st.integers(0, len(stream) + 1))]
    try:
        decoded = list(decode_instructions(bytes(stream), block_count=8))
    except ValueError:
        return
    assert b"".join(encode_instructions(decoded)) == bytes(stream)


def test_apply_refuses_copies_outside_the_old_file() -> None:
    old_fd = fd_with(rand(5000, seed=50))  # blocks 0, 1 (full) and 2 (904 bytes)
    try:
        assert len(rebuild(old_fd, [Copy(1, 2)], 2048)) == 2048 + 904
        for bad in (Copy(3, 1), Copy(2, 2), Copy(0, 4)):
            with pytest.raises(ValueError):
                rebuild(old_fd, [bad], 2048)
        with pytest.raises(ValueError):
            rebuild(old_fd, [Copy(0, 1)], 100)
    finally:
        os.close(old_fd)


def test_signature_matches_the_reference_across_read_chunks() -> None:
    """Several read chunks (hashed on the worker thread in turn) and a short last block."""
    data = rand(9 * MIB + 333, seed=40)
    sig = roundtrip_signature(data, 1024)
    blocks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
    assert sig.weak.tolist() == [weak_checksum(b) for b in blocks]
    assert sig.strong == b"".join(strong_digest(b) for b in blocks)


def test_tee_sees_every_window_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tee runs on a worker thread: with 64 KiB windows it is handed ~50 of them, in order."""
    monkeypatch.setattr(delta, "WINDOW_BYTES", 64 * 1024)
    new = CASES["1 MiB inserted in the middle"][1]
    old_fd, new_fd = fd_with(BASE), fd_with(new)
    try:
        seen: list[bytes] = []
        instructions = list(
            compute_delta(signature_of_fd(old_fd), new_fd, tee=lambda b: seen.append(bytes(b)))
        )
    finally:
        os.close(old_fd)
        os.close(new_fd)
    assert len(seen) > 10
    assert b"".join(seen) == new
    assert literal_bytes(instructions) < 2 * MIB


def test_a_failing_tee_fails_the_delta() -> None:
    def tee(_data: memoryview) -> None:
        raise OSError("digest broke")

    old_fd, new_fd = fd_with(BASE), fd_with(BASE)
    try:
        sig = signature_of_fd(old_fd)
        with pytest.raises(OSError, match="digest broke"):
            list(compute_delta(sig, new_fd, tee=tee))
    finally:
        os.close(old_fd)
        os.close(new_fd)


def test_long_copy_runs_go_in_pieces_the_encoder_hands_on_at_once() -> None:
    """A run of unchanged blocks is cut at COPY_RUN_BYTES and, given the block size, each piece
    leaves the encoder on its own (the replica starts rebuilding while the search goes on)."""
    n = 2047
    per_run = -(-COPY_RUN_BYTES // n)
    instructions: list[Instruction] = [Copy(i, per_run) for i in range(0, 3 * per_run, per_run)]
    chunks = list(encode_instructions(instructions, block_size=n))
    assert [len(c) for c in chunks] == [9, 9, 9, 1]
    assert len(list(encode_instructions(instructions))) == 1  # without it: one batch
    assert list(decode_instructions(b"".join(chunks), block_count=3 * per_run)) == instructions


def test_preload_imports_numpy_in_the_background() -> None:
    code = (
        "import sys, time\n"
        "from replication import delta\n"
        "assert 'numpy' not in sys.modules\n"
        "delta.preload(); delta.preload()\n"
        "deadline = time.monotonic() + 20\n"
        "while delta._NUMPY._module is None and time.monotonic() < deadline: time.sleep(0.01)\n"
        "assert 'numpy' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


NUMPY_THREADS = """
import os
from replication import delta
delta._NUMPY.zeros  # the first use imports NumPy
print(os.environ.get("OPENBLAS_NUM_THREADS"), len(os.listdir("/proc/self/task")))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "1 1"), ("2", "2 2")])
def test_numpy_starts_no_blas_threads_unless_the_operator_asks(given: str | None, expected: str) -> None:
    """OpenBLAS's thread pool spun ~0.1 s of CPU in each node at import, and no BLAS routine is used;
    an OPENBLAS_NUM_THREADS the operator set is kept (2 -> one more thread than the main one)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    done = subprocess.run(
        [sys.executable, "-c", NUMPY_THREADS], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == expected.split()
