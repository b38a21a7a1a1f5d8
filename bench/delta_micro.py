"""Micro-benchmark of replication.delta on a large file (not part of the test suite).

    python bench/delta_micro.py [--size-mib 256] [--repeat 3]

Writes a random old file of --size-mib MiB to a temporary directory, then times
compute_delta (best of --repeat runs, file in the page cache) against new versions of it:

  1-byte change     one byte flipped in the middle: the lazy search hashes one block per
                    block and runs the rolling search only around the change
  1 MiB insertion   1 MiB of random bytes inserted in the middle: everything after it is
                    found at shifted offsets
  unrelated file    same size, no common block: the vectorised rolling search runs over
                    every offset, so this is its raw throughput (the worst case)

and prints MiB/s (of the new file), literal bytes and encoded delta size for each, plus the
throughput of signature_of_fd and apply_delta. Each reconstruction is checked byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replication.delta import (
    Instruction,
    Literal,
    Signature,
    apply_delta,
    compute_delta,
    encode_instructions,
    signature_of_fd,
)

MIB = 1 << 20
CHUNK = 16 * MIB


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("wb") as f:
        left = size
        while left:
            step = min(CHUNK, left)
            f.write(rng.randbytes(step))
            left -= step


def write_variant(old: Path, new: Path, edit: Callable[[bytes, int], bytes]) -> None:
    """Copy `old` to `new` chunk by chunk, letting `edit(chunk, offset)` change each chunk."""
    with old.open("rb") as src, new.open("wb") as dst:
        offset = 0
        while chunk := src.read(CHUNK):
            dst.write(edit(chunk, offset))
            offset += len(chunk)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_delta(sig: Signature, path: Path) -> list[Instruction]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(compute_delta(sig, fd))
    finally:
        os.close(fd)


def sha256_of(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.digest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB
    middle = size // 2 + 12345

    with tempfile.TemporaryDirectory(prefix="delta-bench-") as tmp:
        root = Path(tmp)
        old = root / "old"
        write_random(old, size, seed=1)
        fd = os.open(old, os.O_RDONLY)
        try:
            sig: Signature = signature_of_fd(fd)
            t_sig = best_of(args.repeat, lambda: signature_of_fd(fd))
        finally:
            os.close(fd)
        print(
            f"file {args.size_mib} MiB, block {sig.block_size} B, {sig.block_count} blocks, "
            f"signature {len(sig.to_bytes())} B, signature_of_fd {size / MIB / t_sig:.0f} MiB/s"
        )

        def flip(chunk: bytes, offset: int) -> bytes:
            if offset <= middle < offset + len(chunk):
                b = bytearray(chunk)
                b[middle - offset] ^= 0xFF
                return bytes(b)
            return chunk

        insertion = random.Random(2).randbytes(MIB)

        def insert(chunk: bytes, offset: int) -> bytes:
            if offset <= middle < offset + len(chunk):
                at = middle - offset
                return chunk[:at] + insertion + chunk[at:]
            return chunk

        cases: list[tuple[str, Path]] = []
        for name, edit in (("1-byte change", flip), ("1 MiB insertion", insert)):
            path = root / name.replace(" ", "_")
            write_variant(old, path, edit)
            cases.append((name, path))
        unrelated = root / "unrelated"
        write_random(unrelated, size, seed=3)
        cases.append(("unrelated file", unrelated))

        print(
            f"{'case':<18}{'compute_delta':>15}{'literal bytes':>16}{'delta stream':>15}{'apply_delta':>14}"
        )
        for name, path in cases:
            new_size = path.stat().st_size
            instructions = run_delta(sig, path)
            t_delta = best_of(args.repeat, lambda: run_delta(sig, path))  # noqa: B023 (called right here)
            literal = sum(len(i.data) for i in instructions if isinstance(i, Literal))
            stream = sum(len(chunk) for chunk in encode_instructions(instructions))
            out = root / "out"
            old_fd = os.open(old, os.O_RDONLY)
            try:

                def apply(
                    old_fd: int = old_fd, instructions: list[Instruction] = instructions, out: Path = out
                ) -> None:
                    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    try:
                        apply_delta(old_fd, instructions, out_fd, sig.block_size)
                    finally:
                        os.close(out_fd)

                t_apply = best_of(args.repeat, apply)
            finally:
                os.close(old_fd)
            if sha256_of(out) != sha256_of(path):
                raise SystemExit(f"{name}: reconstruction differs from the new file")
            print(
                f"{name:<18}{new_size / MIB / t_delta:>10.0f} MiB/s{literal:>16,}{stream:>15,}"
                f"{new_size / MIB / t_apply:>9.0f} MiB/s"
            )
            path.unlink()


if __name__ == "__main__":
    main()
