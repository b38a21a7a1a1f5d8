"""The status page's cost, measured on a real pair holding 100,000 files (not part of `make test`).

1. Poll latency: /ui/api/cluster (what each open page asks every 2 s) and /ui/api/details (every
   10 s; built at most every few seconds and shared) on the leader and on the replica, sequential
   requests, client-side wall time including HTTP.
2. Replication lag with and without three open pages: files written at a steady rate on the
   leader, each timed from close() to its complete arrival on the replica (bench/measure.py's
   inotify observer), first with no page, then with three pages polling the leader exactly as the
   page's script does (a cluster request every 2 s and a details request every 10 s each, one at a
   time), then with three pages polling ten times faster (headroom).

The pages are simulated by HTTP clients: the browser's own CPU would belong to the operator's machine,
not to the node. Usage: .venv/bin/python -m bench.ui_load [--files 100000] [--lag-files 300] [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.scenarios import drive_lag
from tests.support.cluster import SERVER_KEY, make_pair, wait_until

AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}


def make_tree(roots: list[Path], count: int) -> None:
    """`count` small files (100 per folder), identical (bytes and mtimes) under every root."""
    stamp = time.time() - 3600
    for number in range(count):
        rel = f"plugin-data/d{number // 100:04d}/f{number % 100:02d}.json"
        content = f'{{"n": {number}, "pad": "{"x" * 64}"}}\n'.encode()
        for root in roots:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            os.utime(path, (stamp, stamp))
    for root in roots:
        for dirpath, _dirs, _files in os.walk(root):
            os.utime(dirpath, (stamp, stamp))


def get(url: str) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(url, headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()
        assert resp.status == 200
    return (time.perf_counter() - started) * 1000


def latency(url: str, count: int) -> dict[str, float]:
    get(url)  # warm: the first details build reads everything once
    times = sorted(get(url) for _ in range(count))
    return {
        "requests": count,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
        "max_ms": round(times[-1], 2),
    }


class Pages:
    """`count` simulated status pages polling `base` like app.js does, `speed` times faster."""

    def __init__(self, base: str, count: int, speed: float = 1.0) -> None:
        self.base, self.count, self.speed = base, count, speed
        self.stop = threading.Event()
        self.requests = 0
        self.threads = [threading.Thread(target=self._page, args=(i,), daemon=True) for i in range(count)]

    def _page(self, number: int) -> None:
        next_details = 0.0
        time.sleep(number * 0.3)  # pages opened at different moments
        while not self.stop.is_set():
            get(f"{self.base}/ui/api/cluster")
            self.requests += 1
            if time.monotonic() >= next_details:
                get(f"{self.base}/ui/api/details")
                self.requests += 1
                next_details = time.monotonic() + 10.0 / self.speed
            self.stop.wait(2.0 / self.speed)

    def __enter__(self) -> Pages:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def lag_run(master: Path, slave: Path, label: str, files: int, rate: int) -> dict[str, Any]:
    folder = f"lag-{label}"
    (master / folder).mkdir()
    wait_until(lambda: (slave / folder).is_dir(), 10, message=f"{folder} on the replica")
    batch = [(f"{folder}/f{i:05d}.bin", os.urandom(1024 + (i * 37) % 8192)) for i in range(files)]
    outcome = drive_lag(master, slave, batch, rate, settle=60.0)
    outcome.pop("series_ms", None)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--lag-files", type=int, default=300)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--polls", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hs-ui-bench-"))
    result: dict[str, Any] = {"files": args.files, "date": time.strftime("%Y-%m-%d")}
    try:
        pair = make_pair(workdir, master_env={"LOG_LEVEL": "WARNING"}, slave_env={"LOG_LEVEL": "WARNING"})
        started = time.monotonic()
        make_tree([pair.master.storage, pair.slave.storage], args.files)
        print(f"{args.files} files on both nodes in {time.monotonic() - started:.1f}s", flush=True)
        started = time.monotonic()
        pair.start()
        wait_until(lambda: pair.slave.status()["synced"], 300, interval=0.5, message="the first comparison")
        print(f"pair up and compared in {time.monotonic() - started:.1f}s", flush=True)
        try:
            result["poll"] = {
                f"{role} {path}": latency(f"{node.url}{path}", args.polls)
                for role, node in (("leader", pair.master), ("replica", pair.slave))
                for path in ("/ui/api/cluster", "/ui/api/details")
            }
            for role, node in (("leader", pair.master), ("replica", pair.slave)):
                times = []
                for _ in range(5):  # after the shared result expired: each one a full build
                    time.sleep(4.2)
                    times.append(get(f"{node.url}/ui/api/details"))
                result["poll"][f"{role} /ui/api/details, each built anew"] = {
                    "requests": len(times),
                    "p50_ms": round(statistics.median(times), 2),
                    "max_ms": round(max(times), 2),
                }
            for name, shown in result["poll"].items():
                print(f"  {name}: {shown}", flush=True)
            result["lag"] = {}
            for label, pages, speed in (("no page", 0, 1.0), ("3 pages", 3, 1.0), ("3 pages x10", 3, 10.0)):
                with Pages(pair.master.url, pages, speed) as polling:
                    outcome = lag_run(
                        pair.master.storage,
                        pair.slave.storage,
                        label.replace(" ", "-"),
                        args.lag_files,
                        args.rate,
                    )
                outcome["page_requests"] = polling.requests
                result["lag"][label] = outcome
                print(f"  lag, {label}: {outcome}", flush=True)
        finally:
            pair.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(__file__).parent / "results" / f"ui-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
