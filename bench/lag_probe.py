"""Streaming lag probe: one pair, RATE files/s for SECONDS_ s; not part of the suite nor of `make bench`.

    BASE=/dev/shm RATE=500 SECONDS_=8 python bench/lag_probe.py

Prints lag percentiles (bench.scenarios.drive_lag), the CPU each daemon spent per file, and the
leader's plugin_sync_batch_seconds and the replica's plugin_sync_commit_seconds histograms. BASE=/dev/shm
puts both storages on tmpfs: no disk, only the code's cost (how bench/results/2026-12-07-streaming-lag.txt
was taken). The daemons run the code of the current directory, so an old commit's worktree runs its own.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())

from bench import data
from bench.scenarios import drive_lag
from bench.tools import Hotstandby
from tests.support.cluster import Node

BUCKETS = ("0.002", "0.005", "0.01", "0.02", "0.05", "0.1")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def histogram(node: Node, name: str) -> str:
    count = node.metric(f"{name}_count")
    mean = 1000 * node.metric(f"{name}_sum") / max(count, 1)
    shares = " ".join(
        f"<={le}:{node.metric(f'{name}_bucket', {'le': le}) / max(count, 1):.2f}" for le in BUCKETS
    )
    return f"{name}: n={count:.0f} mean={mean:.1f} ms {shares}"


def main() -> None:
    rate = int(os.environ.get("RATE", "1000"))
    seconds = int(os.environ.get("SECONDS_", "8"))
    root = Path(os.environ.get("BASE", "/tmp")) / f"lag-probe-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    files = data.lag_files(rate * seconds, 1)
    try:
        with Hotstandby(root) as hs:
            for folder in data.lag_folders():
                (hs.master_storage / folder).mkdir(parents=True, exist_ok=True)
            hs.start_slave()
            hs.start_master()
            hs.wait_synced(60)
            os.sync()
            before = (cpu_seconds(hs.master_pid), cpu_seconds(hs.slave_pid))
            out = drive_lag(hs.master_storage, hs.slave_storage, files, rate, settle=60)
            after = (cpu_seconds(hs.master_pid), cpu_seconds(hs.slave_pid))
            per_file = [(b - a) * 1000 / len(files) for a, b in zip(before, after, strict=True)]
            print(
                f"{os.getcwd()} cpu_ms_per_file master {per_file[0]:.3f} slave {per_file[1]:.3f} "
                f"p50 {out.get('p50_ms')} p95 {out.get('p95_ms')} p99 {out.get('p99_ms')} "
                f"max {out.get('max_ms')} missing {out['missing']}"
            )
            print(" ", histogram(hs.pair.master, "plugin_sync_batch_seconds"))
            print(" ", histogram(hs.pair.slave, "plugin_sync_commit_seconds"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
