"""rsync-style deltas: a changed big file costs the bytes that changed, not the file."""

from __future__ import annotations

import os
import time

from tests.support.cluster import Pair

MIB = 1024 * 1024


def sent(pair: Pair) -> float:
    return pair.master.metric("plugin_sync_bytes_total", {"direction": "sent"})


def write_random(path: os.PathLike[str] | str, size: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(size // (16 * MIB)):
            fh.write(os.urandom(16 * MIB))


def test_one_byte_change_in_the_middle_of_a_256_mib_file_sends_less_than_1_mib(pair: Pair) -> None:
    big = pair.master.storage / "model.bin"
    write_random(big, 256 * MIB)
    pair.wait_converged(120)
    before = sent(pair)
    with open(big, "r+b") as fh:
        fh.seek(128 * MIB)
        old = fh.read(1)
        fh.seek(128 * MIB)
        fh.write(bytes([old[0] ^ 0xFF]))
    started = time.monotonic()
    pair.wait_converged(60)
    delta_bytes = sent(pair) - before
    print(f"1-byte change in 256 MiB: {delta_bytes:.0f} bytes sent, {time.monotonic() - started:.2f}s")
    assert delta_bytes < MIB
    assert pair.master.metric("plugin_sync_operations_total", {"op": "delta"}) >= 1
    assert pair.slave.metric("plugin_sync_delta_fallbacks_total") == 0


def test_an_insertion_and_an_append_travel_as_deltas(pair: Pair) -> None:
    path = pair.master.storage / "archive.bin"
    write_random(path, 32 * MIB)
    pair.wait_converged(60)
    data = path.read_bytes()
    before = sent(pair)
    path.write_bytes(data[: 10 * MIB] + os.urandom(MIB) + data[10 * MIB :] + b"appended")
    pair.wait_converged(60)
    assert sent(pair) - before < 2 * MIB
    assert (pair.slave.storage / "archive.bin").read_bytes() == path.read_bytes()


def test_small_files_travel_whole(pair: Pair) -> None:
    path = pair.master.storage / "small.json"
    path.write_bytes(os.urandom(100_000))
    pair.wait_converged(10)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    pair.wait_converged(10)
    assert pair.master.metric("plugin_sync_operations_total", {"op": "delta"}) == 0
