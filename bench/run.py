"""hotstandby against lsyncd and rsync, side by side: `make bench`, or

    .venv/bin/python bench/run.py [--scenarios lag,full,small,start,delta,scale,burst,switchover] [--quick]
                                  [--runs N] [--lag-rates 20,200,1000] [--tools hotstandby,rsync,...]
                                  [--switchover-baseline] [--out bench/results]

Scenarios (each on the same seeded data for every tool, everything on 127.0.0.1):
  lag    2,000 files of 1-64 KiB written at 20/s and 200/s; per file, close() on the master to the complete
         file visible on the slave (inotify observer): p50/p95/p99/max
  full   initial copy of a 1 GiB mixed tree to an empty slave, caches dropped first: wall time and MiB/s
  small  the same for 10,000 small files (0.5-48 KiB, 200 per folder: plugin venvs)
  start  node start to healthy (first 200 on /health), both roles, 5 runs
  delta  a 1-byte change and a 1 MiB insertion in a 256 MiB file: bytes on the wire and time
  scale  100,000 files in 10,000 folders: watcher ready, peak RSS, no-change pass; against rsync -an
  burst  20,000 files created as fast as possible: time until the slave is identical
  plugins  30 plugins on a gated pair beside the plugin daemon model: kill -9 of the leader's tree to the
         first plugin call through HAProxy and to every plugin answering; against a daemon that must
         rebuild every venv with uv (bench/plugins.py)
  switchover  kill -9 of the leader to the first write acknowledged again through HAProxy (shipped
         template), writes every 20 ms: static+FAILOVER=auto, Redis lease, PostgreSQL lease, 5 runs each
         (hotstandby alone: lsyncd and rsync have no failover); --switchover-baseline adds the settings
         shipped before (HAProxy downinter 2s rise 2, LEASE_TTL 6)

--quick shrinks everything for a smoke run (200 files, 100 MiB, 64 MiB, 10k files, 2k files) and says so
in the output and the file name. The short scenarios run 3 times (median reported); lag runs once per tool
unless --runs is given (the 20/s run takes 100 s per tool). Prints issue 15's bulk table (hotstandby,
rsync -a, rsync --fsync, lsyncd, ratios), the table of every measure and the targets, and writes
bench/results/<date>[-quick].json and .txt. Temporary trees live under /tmp and are removed at the end.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.scenarios import GRAVEYARD, RSYNC_TRANSPORT, SCENARIOS, Context  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, default: all")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (labelled quick)")
    parser.add_argument("--runs", type=int, default=None, help="runs per tool (default 3; lag: 1)")
    parser.add_argument(
        "--lag-rates",
        default="20,200,1000",
        help="files per second for the lag scenario (1000/s: 30 s worth)",
    )
    parser.add_argument(
        "--tools",
        default="",
        help="only these tools (comma-separated: hotstandby, rsync, rsync-fsync, lsyncd-...)",
    )
    parser.add_argument(
        "--switchover-baseline", action="store_true", help="switchover: also the settings shipped before"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"), help="where the temporary trees go")
    args = parser.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenario_list if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    args.rates = tuple(int(r) for r in args.lag_rates.split(",") if r.strip())
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every finally block stops its processes and removes its trees."""
    raise KeyboardInterrupt(f"signal {signum}")


BYTECODE = "compiled ahead (compileall of daemon/ and replication/), as pip and the image install it"
PACKAGES = ("daemon", "replication")


def compile_bytecode() -> bool:
    """Write the daemon's bytecode, as an installed hotstandby has it (pip compiles on install; the image
    runs compileall). Run from a checkout under PYTHONDONTWRITEBYTECODE=1 (set on this machine kind),
    every daemon start compiled its ~65 modules from source: 0.1-0.2 s of each start to healthy and of
    each seed, a cost no installation pays (issue 15, session 13)."""
    return all(compileall.compile_dir(REPO / name, quiet=1) for name in PACKAGES)


def header(document: dict[str, Any]) -> str:
    m = document["machine"]
    kind = "QUICK run (smoke sizes, not the targets' conditions)" if document["quick"] else "FULL run"
    return "\n".join(
        [
            f"hotstandby benchmark: {kind}, {m['date']}",
            f"cores: {m['cores']} ({m['cores_usable']} usable), {m['cpu']}, {m['memory']}",
            f"kernel: {m['kernel']}; python {m['python']}; disk: {m['workspace_filesystem']}",
            f"creating a file in the workspace: {m.get('file_create_us_at_start', '?')} us at start, "
            f"{m.get('file_create_us_at_end', '?')} us at end (bench/report.py file_create_us)",
            f"hotstandby {m['hotstandby']}; {m['lsyncd']}; {m['rsync']}",
            f"rsync transport: {RSYNC_TRANSPORT}",
            f"caches: {document['caches']}",
            f"bytecode: {document['bytecode']}",
            f"runs per tool: {document['runs']} (lag: {document['lag_runs']}), median reported; "
            f"load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end', '?')}",
        ]
    )


def failures(results: dict[str, Any]) -> list[str]:
    """Every failed run, so a FAIL cell in the table can be traced to its reason."""
    found: list[str] = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "error" in node and isinstance(node["error"], str):
                found.append(f"{where}: {node['error'][:400]}")
            for key, value in node.items():
                visit(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                visit(value, f"{where}[{i}]")

    visit(results, "")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workspace = Path(tempfile.mkdtemp(prefix="hsbench-", dir=args.tmp))
    (workspace / GRAVEYARD).mkdir()
    ctx = Context(
        workspace=workspace,
        quick=args.quick,
        runs=args.runs or 3,
        lag_runs=args.runs or 1,
        lag_rates=args.rates,
        switchover_baseline=args.switchover_baseline,
        tools=frozenset(t.strip() for t in args.tools.split(",") if t.strip()) or None,
    )
    results: dict[str, Any] = {}
    document: dict[str, Any] = {
        "quick": args.quick,
        "scenarios_run": args.scenario_list,
        "runs": ctx.runs,
        "lag_runs": ctx.lag_runs,
        "caches": ctx.caches.describe(),
        "bytecode": BYTECODE if compile_bytecode() else "compileall failed: modules compiled at each start",
        "results": results,
    }
    try:
        document["machine"] = report.machine_info(workspace)
        ctx.log(f"{document['machine']['cores']} cores; workspace {workspace}; caches: {ctx.caches.mode}")
        for name in args.scenario_list:
            began = time.monotonic()
            try:
                results[name] = SCENARIOS[name](ctx)
            except Exception as exc:
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["elapsed_seconds"] = round(time.monotonic() - began, 1)
            ctx.log(f"{name} done in {results[name]['elapsed_seconds']} s")
        document["machine"]["file_create_us_at_end"] = report.file_create_us(workspace)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workspace, ignore_errors=True)
    document["machine"]["loadavg_at_end"] = report.loadavg()
    found = report.targets(results)
    document["targets"] = [t.to_json() for t in found]
    failed = failures(results)
    text = "\n\n".join(
        part
        for part in (
            header(document),
            report.table(results),
            report.targets_text(found, args.quick),
            ("failed runs:\n" + "\n".join(f"  {f}" for f in failed)) if failed else "",
        )
        if part
    )
    document["table"] = text
    json_path, text_path = report.write(args.out, document, text)
    print(text)
    print(f"\nwritten: {json_path} and {text_path}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
