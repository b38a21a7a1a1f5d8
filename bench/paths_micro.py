"""Micro-benchmark of StorageRoot's no-follow path resolution (not part of the test suite).

    python bench/paths_micro.py [--depth 9] [--count 20000] [--repeat 5]

The leader resolves a path for every change it handles (the watcher's lstat, the batch's size,
the sender's lstat and open). A plugin venv's files sit 8-12 folders deep
(cwd/<author>/<name>@<checksum>/.venv/lib/python3.12/site-packages/<package>/...). This times
StorageRoot.lstat and open_regular at that depth with the openat2 fast path (replication/beneath.py)
and with the component-by-component walk, best of --repeat, in microseconds per call.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replication.beneath import OPEN_BENEATH
from replication.paths import StorageRoot


def best_of(repeat: int, count: int, call: Callable[[], object]) -> float:
    """Microseconds per call, best of `repeat` rounds of `count` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=9)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rel_dir = "/".join(f"d{i}" for i in range(args.depth))
        (Path(folder) / rel_dir).mkdir(parents=True)
        rel = f"{rel_dir}/file.py"
        (Path(folder) / rel).write_bytes(b"x" * 100)

        def opened(storage: StorageRoot) -> None:
            fd, _st = storage.open_regular(rel)
            os.close(fd)

        print(f"openat2 available: {OPEN_BENEATH is not None}; path depth {args.depth + 1}")
        print(f"{'call':<14}{'walk us':>10}{'openat2 us':>12}{'speed-up':>10}")
        for name, call in (("lstat", lambda s: s.lstat(rel)), ("open_regular", opened)):
            walk = best_of(args.repeat, args.count, lambda c=call: c(StorageRoot(folder, open_beneath=None)))
            fast = best_of(args.repeat, args.count, lambda c=call: c(StorageRoot(folder)))
            print(f"{name:<14}{walk:>10.1f}{fast:>12.1f}{walk / fast:>9.1f}x")


if __name__ == "__main__":
    main()
