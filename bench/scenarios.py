"""The five scenarios. Each one runs every tool on the same generated data, from the same starting state,
in an order rotated from run to run (so no tool always goes first on a cold machine), and returns the
raw runs plus their medians.

Tools (keys used in the results):
  hotstandby            master + slave daemons on 127.0.0.1 (the test harness)
  lsyncd-default        lsyncd, default.rsync to an rsync daemon on 127.0.0.1, default settings (delay 15 s)
  lsyncd-delay0         the same tuned for latency: delay = 0
  lsyncd-delay0-local   delay = 0 to a local folder (no daemon, no TCP): lag scenario only, for reference
  rsync                 plain rsync -a to the same rsync daemon (where a one-shot copy applies)
  rsync-fsync           rsync -a --fsync (full sync, delta: hotstandby fsyncs every file, rsync -a does not)
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import data
from bench.measure import (
    Caches,
    CountingRelay,
    VisibilityObserver,
    compare_trees,
    cpu_seconds,
    latency_summary,
    median,
    paths_added,
    peak_rss_mib,
    tree_state,
    wait_all_visible,
    wait_watch_count,
)
from bench.tools import Hotstandby, Lsyncd, RsyncDaemon, ToolError, rsync_push

HS = "hotstandby"
LS_DEFAULT = "lsyncd-default"
LS_FAST = "lsyncd-delay0"
LS_LOCAL = "lsyncd-delay0-local"
RSYNC = "rsync"
RSYNC_FSYNC = "rsync-fsync"
LSYNCD_TOOLS = (LS_DEFAULT, LS_FAST, LS_LOCAL)

SEED = 20240601
RSYNC_TRANSPORT = "rsync daemon on 127.0.0.1 (rsync://127.0.0.1:PORT/bench/), no ssh, no compression"


@dataclass
class Context:
    workspace: Path
    quick: bool
    runs: int
    lag_runs: int
    lag_rates: tuple[int, ...]
    caches: Caches = field(default_factory=Caches)
    switchover_baseline: bool = False
    """switchover: also measure the settings shipped before issue 16."""
    tools: frozenset[str] | None = None
    """Only these tools (None: every tool of each scenario), to spend a run on the comparisons that matter."""

    def wants(self, tool: str) -> bool:
        return self.tools is None or tool in self.tools

    def order(self, tools: tuple[str, ...], run: int) -> list[str]:
        """The tools of run `run` that this run measures, rotated (see `rotated`)."""
        return [tool for tool in rotated(tools, run) if self.wants(tool)]

    def log(self, message: str) -> None:
        """Progress on stderr, so stdout carries only the final table."""
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rotated(tools: tuple[str, ...], run: int) -> list[str]:
    """The tool order of run `run`: rotated so each tool takes each position in turn."""
    shift = run % len(tools)
    return list(tools[shift:] + tools[:shift])


GRAVEYARD = ".graveyard"
"""Where `fresh` and `set_aside` move old trees inside the workspace, deleted when the benchmark ends.

Deleting a tree just before the next tool's run made that run's file creation slow: this VM's ext4
checks every recently deleted inode of a block group for each new one (`recently_deleted`, 61 % of a
create loop's samples in perf), so creating a file took 700 us instead of 20 us for minutes after
10,000 files were removed nearby. Each run then paid for its predecessor's cleanup, the lag run most."""
KEEP_FREE = 8 << 30
"""Below this much free space old trees are deleted at once after all (the numbers get noisier)."""


def fresh(path: Path, *, keep_old: bool = True) -> Path:
    """An empty folder at `path`; what was there is set aside (`set_aside`), or deleted at once when
    `keep_old` is false: a tree of a few big files, whose blocks the next run had better reuse (kept
    256 MiB copies made every tool's delta run 2x slower after a few runs, as if the VM's disk slowed
    down writing to blocks never written before)."""
    if keep_old:
        set_aside(path)
    else:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def set_aside(path: Path) -> None:
    """Move `path` into the workspace's GRAVEYARD rather than delete it now (why: GRAVEYARD)."""
    if not path.exists():
        return
    graveyard = next((parent / GRAVEYARD for parent in path.parents if (parent / GRAVEYARD).is_dir()), None)
    if graveyard is None or shutil.disk_usage(graveyard).free < KEEP_FREE:
        shutil.rmtree(path, ignore_errors=True)
        return
    path.rename(graveyard / f"{len(list(graveyard.iterdir()))}-{path.name}")


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the runs that have it."""
    keys = {
        k for run in runs for k, v in run.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return {k: median(run.get(k) for run in runs) for k in sorted(keys)}


def load1() -> float:
    """The 1-minute load average: this machine is shared, so every run records how busy it was."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def attempt(ctx: Context, label: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measured run: logged, stamped with the load around it; a failure is recorded with its
    reason and never becomes a number."""
    ctx.log(label)
    before = load1()
    try:
        outcome = run()
    except (ToolError, AssertionError, OSError) as exc:
        outcome = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
    outcome["load_before"], outcome["load_after"] = before, load1()
    ctx.log(f"  -> {summary_line(outcome)}")
    return outcome


# ---------------------------------------------------------------- running a continuous replicator


@dataclass
class Running:
    tool: str
    startup_seconds: float
    """From spawning the watching process to its first full sync done."""
    pid: int
    """The watching process (hotstandby master, or lsyncd)."""
    hs: Hotstandby | None = None
    relay: CountingRelay | None = None


@contextlib.contextmanager
def replicator(
    ctx: Context, tool: str, root: Path, *, relay: bool = False, startup_timeout: float = 600
) -> Iterator[Running]:
    """Start `tool` replicating <root>/master/storage to <root>/slave/storage; stop it on exit.

    Yields once its initial sync is done, so the clock of a measurement never includes startup.
    With `relay`, the replication traffic crosses a CountingRelay.
    """
    master, slave = root / "master" / "storage", root / "slave" / "storage"
    with contextlib.ExitStack() as stack:
        counting: CountingRelay | None = None
        if tool == HS:
            hs = stack.enter_context(Hotstandby(root))
            hs.clear_state()
            hs.start_slave()
            if relay:
                counting = stack.enter_context(contextlib.closing(CountingRelay(hs.pair.slave.port)))
                hs.route_link_through(counting.port)
            started = hs.start_master()
            synced = hs.wait_synced(startup_timeout)
            yield Running(tool, synced - started, hs.master_pid, hs=hs, relay=counting)
            return
        if tool not in LSYNCD_TOOLS:
            raise ValueError(f"{tool} is not a continuous replicator")
        if tool == LS_LOCAL:
            target = str(slave)
        else:
            daemon = stack.enter_context(RsyncDaemon(root / "rsyncd", slave))
            port = daemon.port
            if relay:
                counting = stack.enter_context(contextlib.closing(CountingRelay(daemon.port)))
                port = counting.port
            target = daemon.url(port)
        lsyncd = stack.enter_context(
            Lsyncd(root / "lsyncd", master, target, None if tool == LS_DEFAULT else 0)
        )
        done = lsyncd.wait_startup(startup_timeout)
        yield Running(tool, done - lsyncd.started, lsyncd.pid, relay=counting)


# ---------------------------------------------------------------- 1. lag


LAG_TOOLS = (HS, LS_FAST, LS_DEFAULT, LS_LOCAL)


def lag(ctx: Context) -> dict[str, Any]:
    """Per file: from close() on the master to the complete file visible on the slave."""
    count = 200 if ctx.quick else 2000
    result: dict[str, Any] = {
        "params": {
            "files": count,
            "files_at_1000_per_s_or_more": "30 s worth (issue 15: p99 at 1,000 files/s for 30 s)",
            "sizes": "1-64 KiB",
            "rates_per_s": list(ctx.lag_rates),
            "runs": ctx.lag_runs,
        },
        "rates": {},
    }
    for rate in ctx.lag_rates:
        files = data.lag_files(count if ctx.quick or rate < 1000 else 30 * rate, SEED)
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in LAG_TOOLS if ctx.wants(tool)}
        for run in range(ctx.lag_runs):
            for tool in ctx.order(LAG_TOOLS, run):
                label = f"lag {rate}/s run {run + 1}/{ctx.lag_runs}: {tool}"
                runs[tool].append(attempt(ctx, label, partial(lag_once, ctx, tool, files, rate)))
        result["rates"][str(rate)] = {tool: {"runs": r, "median": medians(r)} for tool, r in runs.items()}
    return result


def summary_line(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED {run['error'][:300]}"
    shown = {k: v for k, v in run.items() if k not in ("verify", "series_ms")}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def lag_once(ctx: Context, tool: str, files: list[tuple[str, bytes]], rate: int) -> dict[str, Any]:
    root = fresh(ctx.workspace / "lag")
    master, slave = root / "master" / "storage", root / "slave" / "storage"
    for folder in data.lag_folders():
        (master / folder).mkdir(parents=True)
    slave.mkdir(parents=True)
    with replicator(ctx, tool, root) as running:
        for folder in data.lag_folders():
            if not (slave / folder).is_dir():
                raise ToolError(f"{tool}: {folder} not on the slave after the initial sync")
        os.sync()  # no writeback of the previous run's files during this one
        outcome = drive_lag(master, slave, files, rate, settle=120.0)
        outcome["startup_seconds"] = round(running.startup_seconds, 3)
    outcome["verify"] = compare_trees(master, slave)
    return outcome


def drive_lag(
    master: Path, slave: Path, files: list[tuple[str, bytes]], rate: int, settle: float
) -> dict[str, Any]:
    """Write the files at a steady rate; time each from its close() to its complete arrival."""
    expected = {rel: len(content) for rel, content in files}
    closed: dict[str, float] = {}
    with VisibilityObserver(slave, expected) as observer:
        start = time.monotonic() + 0.1
        for i, (rel, content) in enumerate(files):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with open(master / rel, "wb") as fh:
                fh.write(content)
            closed[rel] = time.monotonic()
        writing = time.monotonic() - start
        observer.wait(settle)
        seen = dict(observer.seen)
        overflows = observer.overflows
    lags = [seen[rel] - closed[rel] for rel in closed if rel in seen]
    outcome: dict[str, Any] = latency_summary(lags)
    outcome.update(
        {
            "missing": len(files) - len(lags),
            "achieved_rate": round(len(files) / writing, 1),
            "overflows": overflows,
        }
    )
    # Per file in write order (None: never seen), so stalls can be told from a uniformly slow tool.
    outcome["series_ms"] = [
        round((seen[rel] - closed[rel]) * 1000, 1) if rel in seen else None for rel, _content in files
    ]
    return outcome


# ---------------------------------------------------------------- 2. full sync


FULL_TOOLS = (HS, RSYNC, LS_DEFAULT, LS_FAST, RSYNC_FSYNC)


def full_sync(ctx: Context) -> dict[str, Any]:
    """Initial copy of a mixed tree to an empty slave: wall time from spawn to a complete copy."""
    total = 100 * data.MIB if ctx.quick else data.GIB
    ctx.log(f"full: generating a {total // data.MIB} MiB tree")
    return initial_sync(ctx, "full", lambda master: data.mixed_tree(master, total, SEED))


def small_files(ctx: Context) -> dict[str, Any]:
    """Initial copy of 10,000 small files (0.5-48 KiB, 200 per folder): the plugin venvs' kind (issue 15)."""
    count = 2_000 if ctx.quick else 10_000
    ctx.log(f"small: generating {count} small files")
    return initial_sync(ctx, "small", lambda master: data.small_tree(master, count, SEED))


def initial_sync(ctx: Context, name: str, build: Callable[[Path], data.TreeSummary]) -> dict[str, Any]:
    """Every tool copies the tree `build` makes to an empty slave, caches reset before each run."""
    root = fresh(ctx.workspace / name)
    master, slave = root / "master" / "storage", root / "slave" / "storage"
    summary = build(master)
    source_state = tree_state(master)
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in FULL_TOOLS if ctx.wants(tool)}
    for run in range(ctx.runs):
        for tool in ctx.order(FULL_TOOLS, run):
            fresh(slave)

            def once(tool: str = tool) -> dict[str, Any]:
                outcome = full_sync_once(ctx, tool, root, master, slave)
                outcome["mib_per_s"] = round(summary.bytes / data.MIB / outcome["seconds"], 1)
                written = restore_source(master, source_state)
                outcome["verify"] = compare_trees(master, slave, source_state, ignore=frozenset(written))
                outcome["verify"]["written_into_source"] = written[:5]
                outcome["files_written_into_source"] = len(written)
                return outcome

            runs[tool].append(attempt(ctx, f"{name} run {run + 1}/{ctx.runs}: {tool}", once))
    set_aside(root)
    return {
        "params": {"tree": summary.to_json(), "transport": RSYNC_TRANSPORT, "caches": ctx.caches.describe()},
        "tools": {tool: {"runs": r, "median": medians(r)} for tool, r in runs.items()},
    }


def restore_source(master: Path, source_state: dict[str, Any]) -> list[str]:
    """Remove what a tool wrote into the source tree, so the next tool copies the same data set.

    hotstandby's leader writes a `.plugin.sha256` manifest into every complete plugin folder of the
    working path (its plugin store feature), and this tree has the plugin daemon's layout. Those files
    are part of what hotstandby replicated in its run (so its copy is checked with them left out), and
    they are removed before the next tool starts.
    """
    written = paths_added(master, source_state)
    for rel in sorted(written, key=lambda p: -p.count("/")):
        path = master / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return written


def full_sync_once(ctx: Context, tool: str, root: Path, master: Path, slave: Path) -> dict[str, Any]:
    """One tool, empty slave, caches reset just before the clock starts.

    `then_sync_seconds` is a sync(1) right after the copy is complete: what it would still take to make
    the copy durable (hotstandby fsyncs every file as part of its copy; rsync -a does not).
    """
    outcome: dict[str, Any]
    if tool == HS:
        with Hotstandby(root) as hs:
            hs.clear_state()
            hs.start_slave()
            ctx.caches.reset(master)
            started = hs.start_master()
            seconds = hs.wait_synced(3600) - started
            outcome = {"seconds": round(seconds, 3), "then_sync_seconds": flush_seconds()}
            outcome["daemon_start_seconds"] = hs.first_answer_seconds(started)
            outcome["master_peak_rss_mib"] = peak_rss_mib(hs.master_pid)
            outcome["master_cpu_seconds"] = cpu_seconds(hs.master_pid)
            outcome["slave_cpu_seconds"] = cpu_seconds(hs.slave_pid)
        return outcome
    with RsyncDaemon(root / "rsyncd", slave) as daemon:
        ctx.caches.reset(master)
        if tool in (RSYNC, RSYNC_FSYNC):
            pushed = rsync_push(master, daemon.url(), ["-a", "--fsync"] if tool == RSYNC_FSYNC else ["-a"])
            return {"seconds": round(pushed.seconds, 3), "then_sync_seconds": flush_seconds()}
        with Lsyncd(root / "lsyncd", master, daemon.url(), None if tool == LS_DEFAULT else 0) as lsyncd:
            seconds = lsyncd.wait_startup(3600) - lsyncd.started
            return {"seconds": round(seconds, 3), "then_sync_seconds": flush_seconds()}


def flush_seconds() -> float:
    began = time.monotonic()
    os.sync()
    return round(time.monotonic() - began, 3)


# ---------------------------------------------------------------- 3. delta


DELTA_TOOLS = (HS, RSYNC, RSYNC_FSYNC, LS_FAST, LS_DEFAULT)
"""rsync-fsync: the replica makes the rebuilt file durable before it counts; `rsync -a` leaves it dirty."""
PRISTINE_MTIME = 1_600_000_000


def delta(ctx: Context) -> dict[str, Any]:
    """A big file already on both sides changes a little: bytes on the wire (counting relay) and time."""
    size = 64 * data.MIB if ctx.quick else 256 * data.MIB
    root = fresh(ctx.workspace / "delta")
    pristine = root / "pristine.bin"
    ctx.log(f"delta: generating a {size // data.MIB} MiB file")
    data.write_random_file(pristine, size, SEED)
    middle = size // 2 + 12345
    insertion = random.Random(SEED + 1).randbytes(data.MIB)
    edits: dict[str, Callable[[Path], None]] = {
        "1-byte change": lambda path: data.flip_byte(path, middle),
        "1 MiB insertion": lambda path: data.insert_bytes(path, middle, insertion),
    }
    result: dict[str, Any] = {
        "params": {
            "file_mib": size // data.MIB,
            "edit_offset": middle,
            "transport": RSYNC_TRANSPORT,
            "wire": "payload bytes through a counting TCP relay, both directions",
        },
        "edits": {},
    }
    for name, edit in edits.items():
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in DELTA_TOOLS}
        for run in range(ctx.runs):
            for tool in ctx.order(DELTA_TOOLS, run):
                label = f"delta {name} run {run + 1}/{ctx.runs}: {tool}"
                runs[tool].append(attempt(ctx, label, partial(delta_once, ctx, tool, root, pristine, edit)))
        result["edits"][name] = {tool: {"runs": r, "median": medians(r)} for tool, r in runs.items()}
    set_aside(root)
    return result


def _reset_copy(pristine: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pristine, target)
    os.chmod(target, 0o644)
    os.utime(target, (PRISTINE_MTIME, PRISTINE_MTIME))


def delta_once(
    ctx: Context, tool: str, root: Path, pristine: Path, edit: Callable[[Path], None]
) -> dict[str, Any]:
    """Both sides start with the same file (same mtime): synced. Then the master's copy is edited."""
    master = fresh(root / "master" / "storage", keep_old=False)
    slave = fresh(root / "slave" / "storage", keep_old=False)
    for side in (master, slave):
        _reset_copy(pristine, side / "blob.bin")
    os.sync()
    if tool in (RSYNC, RSYNC_FSYNC):
        with (
            RsyncDaemon(root / "rsyncd", slave) as daemon,
            contextlib.closing(CountingRelay(daemon.port)) as relay,
        ):
            edit(master / "blob.bin")
            options = ["-a", "--no-whole-file"] + (["--fsync"] if tool == RSYNC_FSYNC else [])
            pushed = rsync_push(master, daemon.url(relay.port), options)
            outcome: dict[str, Any] = {
                "seconds": round(pushed.seconds, 3),
                "wire_bytes": relay.total(),
                "rsync_bytes_sent": pushed.stats.get("bytes_sent"),
                "rsync_bytes_received": pushed.stats.get("bytes_received"),
                "rsync_literal": pushed.stats.get("literal"),
            }
    else:
        with replicator(ctx, tool, root, relay=True) as running:
            outcome = delta_continuous(running, master / "blob.bin", slave / "blob.bin", edit)
    same = compare_trees(master, slave)
    if not same["identical_content"]:
        raise ToolError(f"{tool}: slave differs after the delta: {same}")
    return outcome


def delta_continuous(
    running: Running, master_file: Path, slave_file: Path, edit: Callable[[Path], None]
) -> dict[str, Any]:
    """Time from the edit's close() to the new version complete on the slave; bytes in that window."""
    assert running.relay is not None
    hs = running.hs
    time.sleep(0.5)
    wire_before = running.relay.total()
    sent_before = hs.metric("plugin_sync_bytes_total", {"direction": "sent"}) if hs else 0.0
    sigs_before = hs.metric("plugin_sync_bytes_total", {"direction": "signatures"}) if hs else 0.0
    edit(master_file)
    closed = time.monotonic()
    st = os.stat(master_file)
    want = (st.st_size, int(st.st_mtime))
    deadline = closed + 300
    while True:
        try:
            got = os.stat(slave_file)
            if (got.st_size, int(got.st_mtime)) == want:
                break
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise ToolError(f"{running.tool}: new version not on the slave after 300 s")
        time.sleep(0.005)
    seconds = time.monotonic() - closed
    if hs is not None:
        hs.wait_synced(60)
    else:
        _wait_quiet(running.relay, quiet=1.0, timeout=60)
    outcome: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "wire_bytes": running.relay.total() - wire_before,
    }
    if hs is not None:
        outcome["hs_sent_bytes"] = int(
            hs.metric("plugin_sync_bytes_total", {"direction": "sent"}) - sent_before
        )
        outcome["hs_signature_bytes"] = int(
            hs.metric("plugin_sync_bytes_total", {"direction": "signatures"}) - sigs_before
        )
    return outcome


def _wait_quiet(relay: CountingRelay, quiet: float, timeout: float) -> None:
    """Until the relay has carried nothing for `quiet` seconds (lsyncd's rsync run is over)."""
    deadline = time.monotonic() + timeout
    last, since = relay.total(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_total = relay.total()
        if now_total != last:
            last, since = now_total, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


# ---------------------------------------------------------------- 4. scale


def scale(ctx: Context) -> dict[str, Any]:
    """A big tree: watcher-ready time, peak RSS, no-change pass; against rsync -an and lsyncd's startup."""
    files, folders = (10_000, 1_000) if ctx.quick else (100_000, 10_000)
    root = fresh(ctx.workspace / "scale")
    master, slave = root / "master" / "storage", root / "slave" / "storage"
    ctx.log(f"scale: generating {files} files in {folders} folders")
    summary = data.scale_tree(master, files, folders, SEED)
    slave.mkdir(parents=True)
    watches = summary.dirs + 1
    result: dict[str, Any] = {
        "params": {
            "tree": summary.to_json(),
            "watches_expected": watches,
            "transport": RSYNC_TRANSPORT,
            "caches": ctx.caches.describe() + " for 'cold'; both trees walked (lstat) just before 'warm'",
        }
    }
    result["hotstandby_fixed_start"] = hotstandby_fixed_start(ctx, root / "empty")
    if ctx.wants(RSYNC):
        result["rsync_seed"] = scale_rsync_seed(ctx, root, master)
    with RsyncDaemon(root / "rsyncd", slave) as daemon, Hotstandby(root) as hs:
        result["initial"] = scale_initial(ctx, hs, master, watches)
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in (HS, RSYNC) if ctx.wants(tool)}
        for run in range(ctx.runs):
            for tool in ctx.order((HS, RSYNC), run):
                for cache in ("cold", "warm"):
                    if tool == HS:
                        once = partial(scale_restart, ctx, hs, master, slave, watches, cache)
                    else:
                        once = partial(scale_rsync, ctx, daemon, master, slave, cache)
                    outcome = attempt(ctx, f"scale run {run + 1}/{ctx.runs}: {tool} ({cache})", once)
                    runs[tool].append({"cache": cache, **outcome})
        hs.stop()
        result["verify"] = compare_trees(master, slave)
        for tool in (LS_FAST, LS_DEFAULT):
            if not ctx.wants(tool):
                continue
            runs[tool] = []
            for run in range(ctx.runs):
                for cache in ("cold", "warm"):
                    once = partial(scale_lsyncd, ctx, tool, root, daemon, master, slave, watches, cache)
                    outcome = attempt(ctx, f"scale run {run + 1}/{ctx.runs}: {tool} ({cache})", once)
                    runs[tool].append({"cache": cache, **outcome})
    result["tools"] = {
        tool: {
            "runs": r,
            "median": {
                cache: medians([x for x in r if x.get("cache") == cache]) for cache in ("cold", "warm")
            },
        }
        for tool, r in runs.items()
    }
    set_aside(root)
    return result


def _warm(*roots: Path) -> None:
    """Bring both trees' metadata into the cache the same way before every 'warm' measurement."""
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                with contextlib.suppress(OSError):
                    os.lstat(os.path.join(dirpath, name))


def _prepare(ctx: Context, cache: str, master: Path, slave: Path) -> None:
    if cache == "cold":
        ctx.caches.reset(master, slave)
    else:
        _warm(master, slave)


def hotstandby_fixed_start(ctx: Context, root: Path) -> dict[str, Any]:
    """Watcher ready on an empty tree (warm): the interpreter, imports and setup every start pays."""
    seconds = []
    with Hotstandby(root) as hs:
        hs.start_slave()
        for _ in range(ctx.runs):
            started = hs.start_master()
            ready, _count = wait_watch_count(hs.master_pid, 1, started, timeout=60)
            seconds.append(ready)
            hs.wait_synced(60)
            hs.stop_master()
    return {
        "watcher_ready_seconds": [None if s is None else round(s, 3) for s in seconds],
        "median": median(seconds),
    }


def scale_initial(ctx: Context, hs: Hotstandby, master: Path, watches: int) -> dict[str, Any]:
    """First start on an empty slave: watcher ready, initial sync of every file, no-change passes."""
    ctx.log("scale: hotstandby initial sync")
    hs.clear_state()
    hs.start_slave()
    ctx.caches.reset(master)
    started = hs.start_master()
    ready, count = wait_watch_count(hs.master_pid, watches, started, timeout=600)
    synced = hs.wait_synced(3600) - started
    passes = []
    for i in range(ctx.runs):
        ctx.log(f"scale: no-change anti-entropy pass {i + 1}/{ctx.runs}")
        _warm(master, hs.slave_storage)
        passes.append(_timed_sync(hs))
    return {
        "watcher_ready_seconds": None if ready is None else round(ready, 3),
        "watches_seen": count,
        "initial_sync_seconds": round(synced, 3),
        "master_peak_rss_mib": peak_rss_mib(hs.master_pid),
        "slave_peak_rss_mib": peak_rss_mib(hs.slave_pid),
        "no_change_passes": passes,
        "no_change_pass_median_seconds": median(p["wall_seconds"] for p in passes),
    }


def scale_restart(
    ctx: Context, hs: Hotstandby, master: Path, slave: Path, watches: int, cache: str
) -> dict[str, Any]:
    """Restart the master on the synced tree: watcher ready (inotify watches held), then a no-change pass.

    The daemons' status cannot say when a restarted master's own startup reconciliation is over (the
    slave still reports `synced` from before), so a first POST /internal/sync serves as the barrier
    (reconciliations are serialised) and the second one is the timed no-change pass (caches warm by then).
    """
    hs.stop_master()
    _prepare(ctx, cache, master, slave)
    started = hs.start_master()
    ready, count = wait_watch_count(hs.master_pid, watches, started, timeout=600)
    if ready is None:
        raise ToolError(f"hotstandby held {count} of {watches} watches after 600 s")
    leading = hs.wait_leading(600) - started
    barrier = _timed_sync(hs)
    passed = _timed_sync(hs)
    return {
        "watcher_ready_seconds": round(ready, 3),
        "leading_seconds": round(leading, 3),
        "barrier_pass_seconds": barrier["wall_seconds"],
        "no_change_pass_seconds": passed["wall_seconds"],
        "no_change_pass_files": passed.get("files_compared"),
        "no_change_pass_sent": passed.get("sent"),
        "master_peak_rss_mib": peak_rss_mib(hs.master_pid),
        "slave_peak_rss_mib": peak_rss_mib(hs.slave_pid),
    }


def _timed_sync(hs: Hotstandby) -> dict[str, Any]:
    """POST /internal/sync on the master: a full manifest comparison, answered once the slave has it."""
    began = time.monotonic()
    code, body = hs.call("POST", "/internal/sync", timeout=3600)
    wall = time.monotonic() - began
    if code != 200 or not isinstance(body, dict):
        raise ToolError(f"POST /internal/sync answered {code}: {body}")
    return {"wall_seconds": round(wall, 3), **body}


def scale_rsync_seed(ctx: Context, root: Path, master: Path) -> dict[str, Any]:
    """rsync -a of the whole tree to an empty folder, cold caches: the seed hotstandby is compared with."""
    target = fresh(root / "rsync-seed")
    ctx.log("scale: rsync -a seed")
    with RsyncDaemon(root / "rsyncd-seed", target) as daemon:
        ctx.caches.reset(master)
        pushed = rsync_push(master, daemon.url(), ["-a"])
    set_aside(target)
    return {"seconds": round(pushed.seconds, 3), "files_transferred": pushed.stats.get("files_transferred")}


def scale_rsync(ctx: Context, daemon: RsyncDaemon, master: Path, slave: Path, cache: str) -> dict[str, Any]:
    _prepare(ctx, cache, master, slave)
    pushed = rsync_push(master, daemon.url(), ["-an"])
    return {
        "dry_run_seconds": round(pushed.seconds, 3),
        "would_transfer": pushed.stats.get("files_transferred"),
    }


def scale_lsyncd(
    ctx: Context,
    tool: str,
    root: Path,
    daemon: RsyncDaemon,
    master: Path,
    slave: Path,
    watches: int,
    cache: str,
) -> dict[str, Any]:
    """lsyncd on the synced tree: its watches, then its startup rsync (its only full comparison)."""
    _prepare(ctx, cache, master, slave)
    with Lsyncd(root / "lsyncd", master, daemon.url(), None if tool == LS_DEFAULT else 0) as lsyncd:
        ready, count = wait_watch_count(lsyncd.pid, watches, lsyncd.started, timeout=600)
        done = lsyncd.wait_startup(3600) - lsyncd.started
        rss = peak_rss_mib(lsyncd.pid)
    if ready is None:
        raise ToolError(f"lsyncd held {count} of {watches} watches after 600 s")
    return {"watcher_ready_seconds": round(ready, 3), "startup_seconds": round(done, 3), "peak_rss_mib": rss}


# ---------------------------------------------------------------- 5. burst


BURST_TOOLS = (HS, LS_FAST, LS_DEFAULT, RSYNC)


def burst(ctx: Context) -> dict[str, Any]:
    """Many files created as fast as possible: from the first create to an identical slave."""
    count = 2000 if ctx.quick else 20_000
    files = data.burst_files(count, SEED)
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in BURST_TOOLS}
    for run in range(ctx.runs):
        for tool in ctx.order(BURST_TOOLS, run):
            label = f"burst run {run + 1}/{ctx.runs}: {tool}"
            runs[tool].append(attempt(ctx, label, partial(burst_once, ctx, tool, files)))
    return {
        "params": {
            "files": count,
            "sizes": "512 B-8 KiB",
            "folders": (count + 199) // 200,
            "rsync": "one rsync -a started right after the last file was written (not continuous)",
            "detection": "slave polled every 50 ms (stat of the files still missing)",
        },
        "tools": {tool: {"runs": r, "median": medians(r)} for tool, r in runs.items()},
    }


def create_all(master: Path, files: list[tuple[str, bytes]]) -> None:
    made: set[str] = set()
    for rel, content in files:
        folder = rel.rsplit("/", 1)[0]
        if folder not in made:
            (master / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        with open(master / rel, "wb") as fh:
            fh.write(content)


def burst_once(ctx: Context, tool: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
    root = fresh(ctx.workspace / "burst")
    master, slave = root / "master" / "storage", root / "slave" / "storage"
    master.mkdir(parents=True)
    slave.mkdir(parents=True)
    expected = {rel: len(content) for rel, content in files}
    outcome: dict[str, Any]
    if tool == RSYNC:
        with RsyncDaemon(root / "rsyncd", slave) as daemon:
            os.sync()
            started = time.monotonic()
            create_all(master, files)
            created = time.monotonic() - started
            pushed = rsync_push(master, daemon.url(), ["-a"])
            outcome = {"seconds": round(time.monotonic() - started, 3), "create_seconds": round(created, 3)}
            outcome["rsync_seconds"] = round(pushed.seconds, 3)
    else:
        with replicator(ctx, tool, root):
            os.sync()  # no writeback of the previous run's trees during this one
            started = time.monotonic()
            create_all(master, files)
            created = time.monotonic() - started
            done, seen = wait_all_visible(slave, expected, timeout=900)
            if done is None:
                raise ToolError(f"{tool}: {seen} of {len(files)} files on the slave after 900 s")
            outcome = {"seconds": round(done - started, 3), "create_seconds": round(created, 3)}
            time.sleep(0.5)
    outcome["verify"] = compare_trees(master, slave)
    if not outcome["verify"]["identical_content"]:
        raise ToolError(f"{tool}: slave differs after the burst: {outcome['verify']}")
    return outcome


def switchover(ctx: Context) -> dict[str, Any]:
    """kill -9 of the leader to writes acknowledged again through HAProxy (bench/switchover.py)."""
    from bench.switchover import switchover as measure_switchover

    return measure_switchover(ctx, baseline=ctx.switchover_baseline)


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "lag": lag,
    "full": full_sync,
    "small": small_files,
    "start": lambda ctx: _start(ctx),
    "delta": delta,
    "scale": scale,
    "burst": burst,
    "plugins": lambda ctx: _plugins(ctx),
    "switchover": switchover,
}


def _start(ctx: Context) -> dict[str, Any]:
    from bench.startup import start_to_healthy

    return start_to_healthy(fresh(ctx.workspace / "start"), max(ctx.runs, 5))


def _plugins(ctx: Context) -> dict[str, Any]:
    from bench.plugins import plugins  # imports this module: only once it is loaded

    return plugins(ctx)
