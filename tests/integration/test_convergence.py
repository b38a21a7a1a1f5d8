"""Promise 1: whatever the master does to its tree, the slave's tree becomes identical."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from tests.support.cluster import Pair, tree_diff
from tests.support.workload import scripted_workload


def test_scripted_workload_converges(pair: Pair) -> None:
    root = pair.master.storage
    started = time.monotonic()
    scripted_workload(root)
    written = time.monotonic() - started
    pair.wait_converged(timeout=120)
    converged = time.monotonic() - started
    print(f"workload written in {written:.1f}s, converged {converged - written:.1f}s later")
    assert not any(p.name.startswith(".hs~") for p in pair.slave.storage.rglob("*"))
    assert tree_diff(pair.master.storage, pair.slave.storage) == []


@pytest.mark.timeout(60)
def test_a_file_still_being_written_in_a_new_folder_never_reaches_the_slave_half_written(pair: Pair) -> None:
    """The folder's scan finds each file between its creation and its writer's close: it must wait."""
    seen: list[int] = []
    stop = threading.Event()
    names = [f"fresh{i}/payload.bin" for i in range(10)]

    def sample() -> None:
        while not stop.is_set():
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    seen.append((pair.slave.storage / name).stat().st_size)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for name in names:
            folder = pair.master.storage / name.split("/")[0]
            folder.mkdir()
            with open(folder / "payload.bin", "wb") as writer:  # created now, written after the scan
                writer.write(b"a" * 1000)
                writer.flush()
                time.sleep(0.15)
                writer.write(b"b" * 1000)
        pair.wait_converged(15)
    finally:
        stop.set()
        sampler.join(5)
    assert seen, "the sampler never saw the files"
    assert set(seen) == {2000}, f"the slave showed a file mid-write: sizes {sorted(set(seen))}"
