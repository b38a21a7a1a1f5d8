"""A behavioural model of the Dify plugin daemon in local mode, for hotstandby's tests.

Why: the real daemon (langgenius/dify-plugin-daemon, a Go binary that needs PostgreSQL and
Redis) cannot run here, yet what hotstandby must get right is what that daemon does to the
storage it replicates: it scans `plugin/`, unpacks packages into `cwd/`, builds each
plugin's `.venv` with uv and writes the "venv ready" marker last, trusts a venv that has the
marker and deletes one that has not, takes a Redis lock around all that, and runs plugins
that write `__pycache__` into their folders. This model does those things for real (real uv,
real venvs, real plugin processes, real Redis) and records every observable action as a
JSON line in --events, so tests can assert "no uv_venv after failover" instead of sleeping.

Modelled on tag 0.5.3 (the pinned image). Every behaviour cites the file and function it
follows; `--compat VERSION` switches on the later behaviours named where they differ.
Not modelled (see also "Known differences" at the end of this docstring): the database
(installations, declarations), clustering and request redirection between nodes, endpoints,
backwards invocations, signature verification, the SDK patches, debugging runtimes.

Run:
    python -m tests.support.plugin_daemon_model --storage ROOT --port N [--host 127.0.0.1]
        [--redis-url redis://...] [--scan-interval 30] [--lock-expire 900] [--lock-wait 120]
        [--events FILE] [--server-key K] [--uv PATH] [--uv-cache none|per-plugin|shared]
        [--compat 0.5.3] [--venv-python PATH] [--pip-extra-args ARGS]
        [--launch-concurrency 2] [--schedule-interval 5] [--heartbeat-timeout 120]
        [--max-execution-timeout 600] [--env-init-timeout 600]

HTTP: GET /health/check; POST /plugin/{tenant_id}/dispatch/tool/invoke (X-Api-Key,
X-Plugin-ID; answers server-sent events like the real one); GET /model/status (model only).
Tests drive it with tests/support/plugin_daemon_driver.py (running_model, ModelProcess) and
build plugins with tests/support/plugin_package.py.

Events (one JSON object a line: {"t", "event", "plugin", ...}): listening, scan, lock_acquired,
lock_released, unpacked, venv_invalid_deleted, uv_venv, uv_pip_install, compileall,
marker_written, launched, launch_failed, instance_exited, instance_restarted, call, stopped,
shutdown.

Known differences from the real daemon:
- Wait times are scaled: the real 30 s scan interval and the retry back-off (0/30/60 s) are
  multiples of --scan-interval here; the 5 s schedule loop is --schedule-interval.
- `uv venv --python 3.12` uses --venv-python (default: this interpreter) because 3.12 may be
  absent and uv cannot download one offline. --pip-extra-args defaults to "--offline" (real
  PIP_EXTRA_ARGS default: empty) so that no test can reach a package index.
- X-Plugin-ID: the real daemon looks the tenant's installation up in its database; here the
  header may be the plugin_id (`author/name`: the one installed identifier with that id) or a
  full unique identifier.
- Without --redis-url no lock is taken; the real daemon refuses to start without Redis.
- Instances are not killed for missed heartbeats (local_runtime/instance.go Monitor) and
  only one instance per plugin runs (the real default too).
- A first instance that never sends a heartbeat fails the launch here and is gone; the real
  runtime's schedule loop is left running in the background (launcher_local.go never stops it).
- While a launched plugin's process is down (before the schedule loop restarts it), calls get
  the "no available node" 404 here; the real runtime stays registered and the call fails
  inside the event stream instead.
- SIGTERM: the real daemon runs its finalizers (ReleaseAllLocks) and exits, leaving plugin
  processes to the container's end; the model stops them first (stdin closed, then SIGKILL).
  A launch cut short by SIGTERM releases its lock with reason "init_done" (a deferred Unlock).
- From 0.6.2 the scan also skips plugins without a row in the database's plugins table
  (server_local.go handleNewLocalPlugins, db.GetOne[models.Plugin]); there is no database here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from aiohttp import web

from daemon.store.checksum import package_checksum
from daemon.store.errors import InvalidIdentifier
from daemon.store.identifier import parse

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_VERSION = "0.5.3"
DEFAULT_SERVER_KEY = "lYkiYYT6owG+71oLerGzA7GXCgOT++6ovaezWAjpCjf+Sjc3ZtU+qUEi"
"""The example SERVER_KEY of the real .env.example (and Dify's docker-compose)."""

# internal/core/local_runtime/setup_python_environment.go: envPath, envPythonPath, envValidFlagFile
VENV = ".venv"
VENV_PYTHON = ".venv/bin/python"
VENV_MARKER = ".venv/dify/plugin.json"
# pkg/utils/cache/redis.go serialKey: every key is prefixed "plugin_daemon:";
# internal/core/control_panel/launcher_local.go LaunchLocalPlugin: "env_init_lock:%s".
LOCK_PREFIX = "plugin_daemon:env_init_lock:"
# pkg/utils/cache/redis.go Lock: LOCK_DURATION, the SET NX poll period.
LOCK_POLL = 0.02
# internal/core/control_panel/server_local.go: MAX_RETRY_COUNT, RETRY_WAIT_INTERVAL_MAP (seconds).
MAX_RETRY_COUNT = 15
RETRY_WAIT = {0: 0.0, 3: 30.0, 8: 60.0, MAX_RETRY_COUNT: 240.0}
REAL_SCAN_INTERVAL = 30.0
# 0.5.9+ setup_python_environment.go preCompile: defaultExcludePattern.
COMPILEALL_EXCLUDE = r"\.venv|\.uv-cache"
# internal/core/local_runtime/instance.go MAX_ERR_MSG_LEN: the stderr tail kept per instance.
MAX_ERR_MSG_LEN = 1024
STDOUT_MAX_LINE = 5 * 1024 * 1024

UvCache = Literal["none", "per-plugin", "shared"]


class LaunchError(Exception):
    """A launch step failed; the message says which, as the real daemon's log would."""


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    """Every knob of the model, with the real daemon's value as default where it has one."""

    storage: Path
    port: int
    host: str = "127.0.0.1"
    redis_url: str | None = None
    scan_interval: float = REAL_SCAN_INTERVAL
    lock_expire: float = 15 * 60.0
    lock_wait: float = 2 * 60.0
    events: Path | None = None
    server_key: str = DEFAULT_SERVER_KEY
    uv: str | None = None
    uv_cache: UvCache = "shared"
    compat: str = MODEL_VERSION
    venv_python: str = sys.executable
    pip_extra_args: str = "--offline"
    launch_concurrency: int = 2
    schedule_interval: float = 5.0
    heartbeat_timeout: float = 120.0
    max_execution_timeout: float = 600.0
    env_init_timeout: float = 600.0

    @property
    def installed_path(self) -> Path:
        # internal/types/app/default.go: PLUGIN_INSTALLED_PATH "plugin", under the local OSS root
        return self.storage / "plugin"

    @property
    def package_path(self) -> Path:
        # internal/types/app/default.go: PLUGIN_PACKAGE_CACHE_PATH "plugin_packages"
        return self.storage / "plugin_packages"

    @property
    def working_path(self) -> Path:
        # PLUGIN_WORKING_PATH: /app/storage/cwd in the docker image (.env.example: "cwd")
        return self.storage / "cwd"

    def at_least(self, version: str) -> bool:
        """True when the modelled daemon version (--compat) is `version` or later."""
        return _version_tuple(self.compat) >= _version_tuple(version)

    def __repr__(self) -> str:
        return f"Options(storage={self.storage}, port={self.port}, compat={self.compat}, server_key=***)"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.support.plugin_daemon_model", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--storage", type=Path, required=True, help="PLUGIN_STORAGE_LOCAL_ROOT")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--scan-interval", type=float, default=REAL_SCAN_INTERVAL)
    parser.add_argument("--lock-expire", type=float, default=15 * 60.0)
    parser.add_argument("--lock-wait", type=float, default=2 * 60.0)
    parser.add_argument("--events", type=Path, default=None)
    parser.add_argument("--server-key", default=DEFAULT_SERVER_KEY)
    parser.add_argument("--uv", default=None, help="UV_PATH; default: uv._find_uv.find_uv_bin()")
    parser.add_argument("--uv-cache", choices=["none", "per-plugin", "shared"], default="shared")
    parser.add_argument("--compat", default=MODEL_VERSION, help="the daemon version to behave as")
    parser.add_argument("--venv-python", default=sys.executable)
    parser.add_argument("--pip-extra-args", default="--offline")
    parser.add_argument("--launch-concurrency", type=int, default=2)
    parser.add_argument("--schedule-interval", type=float, default=5.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=120.0)
    parser.add_argument("--max-execution-timeout", type=float, default=600.0)
    parser.add_argument("--env-init-timeout", type=float, default=600.0)
    ns = parser.parse_args(argv)
    return Options(
        storage=ns.storage.resolve(),
        port=ns.port,
        host=ns.host,
        redis_url=ns.redis_url,
        scan_interval=ns.scan_interval,
        lock_expire=ns.lock_expire,
        lock_wait=ns.lock_wait,
        events=ns.events,
        server_key=ns.server_key,
        uv=ns.uv,
        uv_cache=ns.uv_cache,
        compat=ns.compat,
        venv_python=ns.venv_python,
        pip_extra_args=ns.pip_extra_args,
        launch_concurrency=max(1, ns.launch_concurrency),
        schedule_interval=ns.schedule_interval,
        heartbeat_timeout=ns.heartbeat_timeout,
        max_execution_timeout=ns.max_execution_timeout,
        env_init_timeout=ns.env_init_timeout,
    )


# ---------------------------------------------------------------------------------------------
# Events


class EventLog:
    """Appends one JSON line per observable action to --events, flushed at once (tests tail it)."""

    def __init__(self, path: Path | None) -> None:
        self._file = path.open("a", encoding="utf-8") if path else None
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def emit(self, event: str, plugin: str | None = None, **fields: Any) -> None:
        record = {"t": time.time(), "event": event, "plugin": plugin, **fields}
        line = json.dumps(record, default=str)
        with self._lock:
            self.counts[event] += 1
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# ---------------------------------------------------------------------------------------------
# Child processes


DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]
"""Prefixed to every child's command: SIGKILL it when the model dies, even by SIGKILL.

The real daemon (Go exec.Command) does not do this; it relies on the container going away.
Here tests run on a shared machine, where an orphaned plugin would keep writing into a
storage that the test thinks is quiet. setpriv (util-linux) sets PR_SET_PDEATHSIG and execs
the command in the same process, so pids and exit codes are the command's own. It replaces a
preexec_fn: Python code run between fork and exec in a process with threads (this one has
its to_thread workers and child watchers) may deadlock, and the model, blocked in fork_exec,
would stop answering with no event to say why.
"""


class Children:
    """Every process the model started, so that shutdown can end them all."""

    def __init__(self) -> None:
        self.running: set[asyncio.subprocess.Process] = set()

    async def spawn(
        self, args: list[str], cwd: Path, env: dict[str, str] | None, *, stdin: int, stdout: int
    ) -> asyncio.subprocess.Process:
        if shutil.which(args[0]) is None:  # cmd.Start's error, not setpriv's exit code 127
            raise LaunchError(f"failed to start {args[0]}: executable file not found")
        try:
            proc = await asyncio.create_subprocess_exec(
                *DIE_WITH_PARENT,
                *args,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                limit=STDOUT_MAX_LINE,
            )
        except OSError as exc:  # Go's cmd.Start error: the step fails, the daemon goes on
            raise LaunchError(f"failed to start {args[0]}: {exc}") from None
        self.running.add(proc)
        return proc

    async def run(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600.0
    ) -> tuple[int, str]:
        """Run to completion: (exit code, the tail of stdout+stderr). Killed if cancelled."""
        proc = await self.spawn(args, cwd, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except BaseException as exc:
            _signal(proc, signal.SIGKILL)
            await proc.wait()
            if isinstance(exc, TimeoutError):  # exec.CommandContext with a 10-minute context
                raise LaunchError(f"{args[0]} killed after {timeout}s") from None
            raise
        finally:
            self.running.discard(proc)
        text = (out + err).decode(errors="replace")
        return int(proc.returncode or 0), text[-2000:]

    def forget(self, proc: asyncio.subprocess.Process) -> None:
        """Stop tracking a process that has been reaped."""
        self.running.discard(proc)

    async def kill_all(self) -> None:
        for proc in list(self.running):
            _signal(proc, signal.SIGKILL)
        for proc in list(self.running):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        self.running.clear()


# ---------------------------------------------------------------------------------------------
# The Redis env-init lock


class EnvInitLock:
    """pkg/utils/cache/redis.go Lock / Unlock / ReleaseAllLocks, as LaunchLocalPlugin uses them."""

    def __init__(self, url: str, expire: float, wait: float, events: EventLog) -> None:
        import redis.asyncio as redis_asyncio

        self._redis = redis_asyncio.from_url(url)
        self._expire = expire
        self._wait = wait
        self._events = events
        self.held: set[str] = set()

    async def ping(self) -> None:
        # internal/core/plugin_manager/manager.go Launch: InitRedisClient pings; a failure panics.
        await self._redis.ping()

    async def acquire(self, identifier: str) -> None:
        """SET key "1" NX PX expire, tried every 20 ms (the first try after one tick) until `wait`.

        redis.go Lock: `for range ticker.C { SetNX(...); tryLockTimeout -= LOCK_DURATION }`.
        """
        key = LOCK_PREFIX + identifier
        started = time.monotonic()
        remaining = self._wait
        while True:
            await asyncio.sleep(LOCK_POLL)
            if await self._redis.set(key, "1", nx=True, px=max(1, int(self._expire * 1000))):
                self.held.add(key)
                waited = round(time.monotonic() - started, 3)
                self._events.emit("lock_acquired", identifier, key=key, waited=waited, expire=self._expire)
                return
            remaining -= LOCK_POLL
            if remaining <= 0:
                raise LaunchError(f"lock timeout: {key} held by someone else for {self._wait}s")

    async def release(self, identifier: str, reason: str) -> None:
        """redis.go Unlock: a plain DEL, whoever holds the key (no owner check)."""
        key = LOCK_PREFIX + identifier
        await self._redis.delete(key)
        self.held.discard(key)
        self._events.emit("lock_released", identifier, key=key, reason=reason)

    async def release_all(self) -> None:
        """redis.go ReleaseAllLocks, registered as a finalizer in internal/server/server.go Run."""
        for key in list(self.held):
            with contextlib.suppress(Exception):
                await self.release(key.removeprefix(LOCK_PREFIX), reason="shutdown")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()


# ---------------------------------------------------------------------------------------------
# Packages


@dataclass(frozen=True)
class DecodedPackage:
    """What control_panel/builder.go buildPluginDecoder gets from the package bucket."""

    identifier: str
    data: bytes
    manifest: dict[str, Any]
    checksum: str

    @property
    def identity(self) -> str:
        # pkg/entities/plugin_entities/plugin_declaration.go Identity: author/name:version
        return f"{self.manifest['author']}/{self.manifest['name']}:{self.manifest['version']}"

    @property
    def language(self) -> str:
        return str(((self.manifest.get("meta") or {}).get("runner") or {}).get("language", ""))

    @property
    def entrypoint(self) -> str:
        return str(((self.manifest.get("meta") or {}).get("runner") or {}).get("entrypoint", "main"))

    def working_path(self, root: Path) -> Path:
        """local_runtime/constructor.go buildPluginWorkingPath: Identity() with ':' -> '-', '@' checksum.

        The checksum is the decoder's own (recomputed from the zip), not the identifier's.
        """
        return root / f"{self.identity.replace(':', '-')}@{self.checksum}"


def decode_package(package_path: Path, identifier: str) -> DecodedPackage:
    """Read `plugin_packages/<identifier>` and its manifest (builder.go buildPluginDecoder).

    packageBucket.Get reads the package bucket, not the installed copy under plugin/;
    decoder/zip.go newZipPluginDecoder opens the zip and parses manifest.yaml
    (decoder/helper.go Manifest, which also reads every tool provider file it lists).
    """
    try:
        data = (package_path / identifier).read_bytes()
    except OSError as exc:
        raise LaunchError(f"get plugin package error: {exc}") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest = yaml.safe_load(archive.read("manifest.yaml"))
            if not isinstance(manifest, dict):
                raise LaunchError("create plugin decoder error: manifest.yaml is not a mapping")
            for tool in (manifest.get("plugins") or {}).get("tools") or []:
                archive.getinfo(str(tool))
        checksum = package_checksum(io.BytesIO(data))
    except LaunchError:
        raise
    except (zipfile.BadZipFile, KeyError, yaml.YAMLError, ValueError, OSError) as exc:
        raise LaunchError(f"create plugin decoder error: {exc}") from None
    except Exception as exc:  # InvalidPackage and friends from daemon.store.checksum
        raise LaunchError(f"calculate checksum error: {exc}") from None
    return DecodedPackage(identifier=identifier, data=data, manifest=manifest, checksum=checksum)


def extract_to_working_path(package: DecodedPackage, workdir: Path) -> int | None:
    """local_runtime/environment.go extractPluginToWorkingPath: unpack when missing or empty.

    Returns the number of files written, or None when the folder was already populated.
    decoder/zip.go ExtractTo: MkdirAll(dir, 0755) and os.WriteFile(file, 0644) per entry (no
    executable bits, no timestamps kept); on any error the whole folder is removed.
    """
    try:
        populated = any(workdir.iterdir())
    except FileNotFoundError:
        workdir.mkdir(mode=0o755, parents=True)
        populated = False
    except OSError as exc:
        raise LaunchError(f"check working directory error: {exc}") from None
    if populated:
        return None
    count = 0
    try:
        with zipfile.ZipFile(io.BytesIO(package.data)) as archive:
            for info in archive.infolist():
                name = posixpath.normpath(info.filename)
                if name.startswith(("/", "../")) or name == "..":
                    raise LaunchError(f"entry {info.filename!r} escapes the working directory")
                target = workdir / name
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                target.write_bytes(archive.read(info))
                target.chmod(0o644)
                count += 1
    except (OSError, zipfile.BadZipFile, LaunchError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise LaunchError(f"extract plugin to working directory error: {exc}") from None
    return count


# ---------------------------------------------------------------------------------------------
# The Python environment


class PythonEnvironment:
    """local_runtime/environment_python.go InitPythonEnvironment and the helpers it calls."""

    def __init__(self, options: Options, events: EventLog, children: Children) -> None:
        self.options = options
        self.events = events
        self.children = children

    async def init(self, package: DecodedPackage, workdir: Path) -> Path:
        """environment.go InitEnvironment: unpack, then the Python environment. Returns the venv's python."""
        ident = package.identifier
        files = await asyncio.to_thread(extract_to_working_path, package, workdir)
        if files is not None:
            self.events.emit("unpacked", ident, workdir=str(workdir), files=files)
        if package.language != "python":
            raise LaunchError(f"unsupported language: {package.language}")
        uv = await self.prepare_uv(workdir)
        state, detail = self.check_venv(workdir)
        if state == "valid":
            # The SDK patch (local_runtime/patch.go patchPluginSdk) only touches dify_plugin < 0.0.1b70.
            return workdir / VENV_PYTHON
        if state == "invalid":
            await self.delete_venv(ident, workdir, detail)
        python = await self.create_venv(ident, uv, workdir)
        await self.install_dependencies(ident, uv, workdir)
        await self.precompile(ident, python, workdir)
        self.mark_valid(ident, workdir)
        return python

    async def prepare_uv(self, workdir: Path) -> str:
        """setup_python_environment.go prepareUV: UV_PATH (docker/local.dockerfile sets
        /usr/local/bin/uv), else ask the interpreter: `from uv._find_uv import find_uv_bin`."""
        if self.options.uv:
            return self.options.uv
        code = "from uv._find_uv import find_uv_bin; print(find_uv_bin())"
        rc, out = await self.children.run([sys.executable, "-c", code], workdir, timeout=60)
        if rc != 0:
            raise LaunchError(f"failed to find uv path: {out}")
        return out.strip().splitlines()[-1]

    def check_venv(self, workdir: Path) -> tuple[Literal["valid", "not_found", "invalid"], str]:
        """setup_python_environment.go checkPythonVirtualEnvironment.

        No `.venv` -> not found. `.venv/bin/python` missing (os.Stat follows the symlink, so a
        venv whose base interpreter is gone counts too) -> in 0.5.3 an error that fails the
        launch and leaves the venv alone; from 0.5.4 on, invalid. No marker -> invalid.
        """
        if not (workdir / VENV).exists():  # os.Stat: a dangling .venv symlink is "not found" too
            return "not_found", ""
        if not (workdir / VENV_PYTHON).exists():
            if self.options.at_least("0.5.4"):
                return "invalid", "no python"
            raise LaunchError(f"failed to check virtual environment: failed to find python: {VENV_PYTHON}")
        if not (workdir / VENV_MARKER).exists():
            return "invalid", "no marker"
        return "valid", ""

    async def delete_venv(self, ident: str, workdir: Path, reason: str) -> None:
        """deleteVirtualEnvironment: os.RemoveAll of the WHOLE .venv (errors ignored in 0.5.3)."""
        venv = workdir / VENV
        try:
            await asyncio.to_thread(_remove_all, venv)
        except OSError as exc:
            if self.options.at_least("0.5.4"):  # environment_python.go returns the error from 0.5.4
                raise LaunchError(f"failed to delete virtual environment: {exc}") from None
        self.events.emit("venv_invalid_deleted", ident, venv=str(venv), reason=reason)

    async def create_venv(self, ident: str, uv: str, workdir: Path) -> Path:
        """createVirtualEnvironment: `uv venv .venv --python 3.12` (here --venv-python), inherited env."""
        args = [uv, "venv", VENV, "--python", self.options.venv_python]
        started = time.monotonic()
        rc, out = await self.children.run(args, workdir, timeout=self.options.env_init_timeout)
        self.events.emit("uv_venv", ident, rc=rc, args=args[1:], seconds=_since(started))
        if rc != 0:
            raise LaunchError(f"failed to create virtual environment: exit {rc}, output: {out}")
        python = workdir / VENV_PYTHON
        if not python.exists():
            raise LaunchError(f"failed to find python: {python}")
        self.dependency_file(workdir)
        return python

    def dependency_file(self, workdir: Path) -> str:
        """detectDependencyFileType: pyproject.toml first, then requirements.txt."""
        for name in ("pyproject.toml", "requirements.txt"):
            if (workdir / name).exists():
                return name
        raise LaunchError("neither pyproject.toml nor requirements.txt found in plugin directory")

    def uv_cache_dir(self, workdir: Path) -> str | None:
        """installDependencies' UV_CACHE_DIR: none in 0.5.3; the plugin's folder in 0.5.4-0.5.8;
        PLUGIN_WORKING_PATH/.uv-cache from 0.5.9 (the default here: --uv-cache shared)."""
        if self.options.uv_cache == "per-plugin":
            return str(workdir / ".uv-cache")
        if self.options.uv_cache == "shared":
            return str(self.options.working_path / ".uv-cache")
        return None

    async def install_dependencies(self, ident: str, uv: str, workdir: Path) -> None:
        """installDependencies: `uv pip install -r requirements.txt` (or `uv sync --no-dev`) + PIP_EXTRA_ARGS.

        The environment is ONLY VIRTUAL_ENV and PATH (cmd.Env is built from scratch), plus
        UV_CACHE_DIR where the version sets it.
        """
        extra = shlex.split(self.options.pip_extra_args)
        if self.dependency_file(workdir) == "pyproject.toml":
            args = [uv, "sync", "--no-dev", *extra]  # prepareSyncArgs
        else:
            args = [uv, "pip", "install", "-r", "requirements.txt", *extra]  # preparePipArgs
        env = {"VIRTUAL_ENV": str(workdir / VENV), "PATH": os.environ.get("PATH", "")}
        cache = self.uv_cache_dir(workdir)
        if cache is not None:
            env["UV_CACHE_DIR"] = cache
        started = time.monotonic()
        rc, out = await self.children.run(args, workdir, env, timeout=self.options.env_init_timeout)
        self.events.emit(
            "uv_pip_install", ident, rc=rc, args=args[1:], uv_cache_dir=cache, seconds=_since(started)
        )
        if rc != 0:
            raise LaunchError(f"failed to install dependencies: exit {rc}, output: {out}")

    async def precompile(self, ident: str, python: Path, workdir: Path) -> None:
        """preCompile: `python -m compileall .` in the plugin folder; failures only logged.

        In 0.5.3 that walks into .venv too; from 0.5.9 `-x '\\.venv|\\.uv-cache'` skips both.
        Then `python -c "import dify_plugin"` to warm the import (output ignored).
        """
        args = [str(python), "-m", "compileall"]
        if self.options.at_least("0.5.9"):
            args += ["-x", COMPILEALL_EXCLUDE]
        args.append(".")
        started = time.monotonic()
        rc, _ = await self.children.run(args, workdir, timeout=self.options.env_init_timeout)
        warm_rc, _ = await self.children.run([str(python), "-c", "import dify_plugin"], workdir, timeout=60)
        self.events.emit(
            "compileall", ident, rc=rc, args=args[1:], import_dify_plugin_rc=warm_rc, seconds=_since(started)
        )

    def mark_valid(self, ident: str, workdir: Path) -> None:
        """markVirtualEnvironmentAsValid: MkdirAll(.venv/dify, 0755) then os.WriteFile of
        `{"timestamp":<unix seconds>}` (0644), the very last step; a failure is only logged."""
        marker = workdir / VENV_MARKER
        try:
            marker.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            marker.write_bytes(b'{"timestamp":' + str(int(time.time())).encode() + b"}")
        except OSError as exc:
            self.events.emit("marker_written", ident, path=str(marker), error=str(exc))
            return
        self.events.emit("marker_written", ident, path=str(marker))


def _signal(proc: asyncio.subprocess.Process, signum: int) -> None:
    """os.kill, not Process.kill: Popen.send_signal polls (waitpid) first, racing asyncio's child
    watcher, which then reports a made-up exit code 255."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)


def _remove_all(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


# ---------------------------------------------------------------------------------------------
# Plugin instances and runtimes


class PluginInstance:
    """local_runtime/instance.go PluginInstance: one plugin process spoken to over stdio.

    Started by local_runtime/subprocess.go startNewInstance / getInstanceCmd:
    `<plugin dir>/.venv/bin/python -m <entrypoint>` in the plugin folder, with the daemon's
    environment plus INSTALL_METHOD=local. Nothing stops Python writing __pycache__: the image
    (docker/local.dockerfile) sets no PYTHONDONTWRITEBYTECODE, so the model drops it too.
    Ready at the first heartbeat (instance.go handleStdout); when stdout closes the process is
    killed and reaped (StartStdout).
    """

    def __init__(self, identifier: str, proc: asyncio.subprocess.Process) -> None:
        self.identifier = identifier
        self.proc = proc
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.exited = asyncio.Event()
        self.err_tail = ""
        self.listeners: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    @classmethod
    async def start(
        cls, identifier: str, workdir: Path, entrypoint: str, children: Children
    ) -> PluginInstance:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["INSTALL_METHOD"] = "local"
        proc = await children.spawn(
            [str(workdir / VENV_PYTHON), "-m", entrypoint],
            workdir,
            env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return cls(identifier, proc)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                try:
                    line = await self.proc.stdout.readline()
                except ValueError:  # a line longer than the buffer: bufio.Scanner fails the same way
                    break
                if not line:
                    break
                if line.strip():
                    self._handle(line)
        finally:
            _signal(self.proc, signal.SIGKILL)  # StartStdout: stdout closed = kill and reap
            await self.proc.wait()
            self.exited.set()
            if not self.ready.done():
                self.ready.set_result(False)
            for queue in self.listeners.values():
                queue.put_nowait(None)

    def _handle(self, line: bytes) -> None:
        """pkg/entities/plugin_entities/event.go ParsePluginUniversalEvent."""
        try:
            event = json.loads(line)
        except ValueError:
            self._write_error(line.decode(errors="replace"))
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "heartbeat" and not self.ready.done():
            self.ready.set_result(True)
        elif kind == "session":
            queue = self.listeners.get(str(event.get("session_id", "")))
            if queue is not None and isinstance(event.get("data"), dict):
                queue.put_nowait(event["data"])
        elif kind == "error":
            self._write_error(str(event.get("data")))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(1024):
            self._write_error(chunk.decode(errors="replace"))

    def _write_error(self, text: str) -> None:
        """instance.go WriteError: keeps the last MAX_ERR_MSG_LEN bytes."""
        self.err_tail = (self.err_tail + text)[-MAX_ERR_MSG_LEN:]

    async def send(self, message: dict[str, Any]) -> None:
        """local_runtime/io.go Write: one JSON line on the plugin's stdin."""
        if self.proc.stdin is None or self.exited.is_set():
            raise LaunchError("plugin instance is not running")
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self, grace: float = 1.0) -> int:
        """Close stdin (the plugin's cue to leave), then SIGKILL after `grace`.

        instance.go Stop closes the pipes, and StartStdout kills the process once stdout ends.
        """
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.exited.wait(), grace)
        except TimeoutError:
            _signal(self.proc, signal.SIGKILL)
            await self.exited.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return int(self.proc.returncode if self.proc.returncode is not None else -1)


@dataclass
class LocalRuntime:
    """local_runtime/type.go LocalPluginRuntime with one instance and its schedule loop."""

    identifier: str
    workdir: Path
    entrypoint: str
    options: Options
    events: EventLog
    children: Children
    instance: PluginInstance | None = None
    launched_at: float = 0.0
    restarts: int = 0
    _schedule: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start_instance(self) -> PluginInstance:
        """subprocess.go startNewInstance: start, then wait for the first heartbeat
        (MAX_HEARTBEAT_INTERVAL, 120 s: --heartbeat-timeout)."""
        instance = await PluginInstance.start(self.identifier, self.workdir, self.entrypoint, self.children)
        try:
            ready = await asyncio.wait_for(asyncio.shield(instance.ready), self.options.heartbeat_timeout)
        except TimeoutError:
            ready = False
        if not ready:
            await instance.stop(grace=0.5)
            self.children.forget(instance.proc)
            raise LaunchError(
                f"plugin failed to start: {instance.err_tail.strip() or 'no heartbeat received'}"
            )
        self.instance = instance
        return instance

    def start_schedule(self) -> None:
        self._schedule = asyncio.create_task(self._schedule_loop())

    async def _schedule_loop(self) -> None:
        """local_runtime/control.go scheduleLoop: every 5 s, start an instance when fewer than wanted run."""
        while True:
            await asyncio.sleep(self.options.schedule_interval)
            current = self.instance
            if current is not None and not current.exited.is_set():
                continue
            if current is not None:
                self.children.forget(current.proc)
                self.events.emit(
                    "instance_exited",
                    self.identifier,
                    pid=current.pid,
                    rc=current.proc.returncode,
                    stderr=current.err_tail[-300:],
                )
                self.instance = None
            try:
                instance = await self.start_instance()
            except LaunchError as exc:
                self.events.emit("launch_failed", self.identifier, stage="instance", error=str(exc))
                continue
            self.restarts += 1
            self.events.emit("instance_restarted", self.identifier, pid=instance.pid, restarts=self.restarts)

    async def stop(self, reason: str) -> None:
        if self._schedule is not None:
            self._schedule.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._schedule
        instance, self.instance = self.instance, None
        if instance is None:
            return
        rc = await instance.stop()
        self.children.forget(instance.proc)
        self.events.emit("stopped", self.identifier, pid=instance.pid, rc=rc, reason=reason)


# ---------------------------------------------------------------------------------------------
# The control panel: scanning, launching, removing


@dataclass
class FailRecord:
    """control_panel/server_local.go LocalPluginFailsRecord."""

    retries: int
    last_tried_at: float


class ControlPanel:
    """internal/core/control_panel: the local monitor and the launcher."""

    def __init__(
        self, options: Options, events: EventLog, lock: EnvInitLock | None, children: Children
    ) -> None:
        self.options = options
        self.events = events
        self.lock = lock
        self.children = children
        self.environment = PythonEnvironment(options, events, children)
        self.runtimes: dict[str, LocalRuntime] = {}
        self.launching: set[str] = set()
        self.failures: dict[str, FailRecord] = {}
        self.scans = 0
        # control_panel/daemon.go: localPluginLaunchingSemaphore, PLUGIN_LOCAL_LAUNCHING_CONCURRENT (2)
        self._semaphore = asyncio.Semaphore(options.launch_concurrency)

    # -- listing --------------------------------------------------------------------------

    def list_installed(self) -> tuple[list[str], list[str]]:
        """media_transport/installed_bucket.go List over dify-cloud-kit oss/local LocalStorage.List.

        filepath.WalkDir of plugin/ (no symlinked folders followed), paths relative to it;
        folders skipped; paths starting with "." skipped (only a top-level dot-name can);
        anything else must parse as a unique identifier or is logged and skipped.
        Returns (identifiers, rejected paths). A walk error fails the whole listing.
        """
        root = self.options.installed_path
        found: list[str] = []
        rejected: list[str] = []
        if not root.exists():
            return found, rejected

        def fail(exc: OSError) -> None:
            raise exc

        for folder, dirs, files in os.walk(root, onerror=fail):
            dirs.sort()
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                if rel.startswith("."):
                    continue
                try:
                    found.append(str(parse(rel)))
                except InvalidIdentifier:
                    rejected.append(rel)
        return found, rejected

    # -- the monitor ----------------------------------------------------------------------

    async def monitor(self) -> None:
        """server_local.go startLocalMonitor: handleNewLocalPlugins at once, then on a 30 s ticker.

        A Go ticker keeps at most one pending tick: a scan that overruns is followed by one
        immediate scan, then the ticker's rhythm again.
        """
        interval = self.options.scan_interval
        await self.handle_new_local_plugins()
        next_tick = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if now < next_tick:
                await asyncio.sleep(next_tick - now)
                next_tick += interval
            else:
                missed = int((now - next_tick) // interval) + 1
                next_tick += missed * interval
            await self.handle_new_local_plugins()

    async def remove_unused(self) -> None:
        """server_local.go removeUnusedLocalPlugins: every 30 s, stop runtimes whose plugin/ file is gone."""
        while True:
            await asyncio.sleep(self.options.scan_interval)
            for identifier, runtime in list(self.runtimes.items()):
                if not (self.options.installed_path / identifier).exists():
                    del self.runtimes[identifier]
                    await runtime.stop(reason="uninstalled")

    async def handle_new_local_plugins(self) -> None:
        """server_local.go handleNewLocalPlugins: launch every installed plugin not yet launched.

        Skips what runs or is failing too often (retry back-off: calculateWaitTime), launches
        the rest concurrently (bounded by the launching semaphore) and waits for all of them
        (wg.Wait) before the next tick. Only a first instance that fails to start counts as a
        failure; an error before that (decode, lock, environment) is retried at the next scan.
        """
        self.scans += 1
        try:
            installed, rejected = await asyncio.to_thread(self.list_installed)
        except OSError as exc:
            self.events.emit("scan", None, error=f"list installed plugins failed: {exc}")
            return
        due = [ident for ident in installed if self._due(ident)]
        self.events.emit("scan", None, installed=len(installed), launching=due, rejected=rejected)
        if due:
            await asyncio.gather(*(self.launch(ident) for ident in due))

    def _due(self, identifier: str) -> bool:
        if identifier in self.runtimes or identifier in self.launching:
            return False
        record = self.failures.get(identifier)
        if record is None:
            return True
        if record.retries >= MAX_RETRY_COUNT:
            return False
        wait = calculate_wait_time(record.retries) * self.options.scan_interval / REAL_SCAN_INTERVAL
        return not (wait > 0 and time.monotonic() - record.last_tried_at < wait)

    # -- launching ------------------------------------------------------------------------

    async def launch(self, identifier: str) -> None:
        """launcher_local.go LaunchLocalPlugin, plus the failure record kept by handleNewLocalPlugins."""
        self.launching.add(identifier)
        try:
            async with self._semaphore:
                outcome = await self._launch(identifier)
        finally:
            self.launching.discard(identifier)
        if outcome == "launched":
            self.failures.pop(identifier, None)
        elif outcome == "instance_failed":
            previous = self.failures.get(identifier, FailRecord(0, time.monotonic()))
            self.failures[identifier] = FailRecord(previous.retries + 1, time.monotonic())

    async def _launch(self, identifier: str) -> Literal["launched", "failed", "instance_failed"]:
        try:
            package = await asyncio.to_thread(decode_package, self.options.package_path, identifier)
        except LaunchError as exc:
            self.events.emit("launch_failed", identifier, stage="build", error=str(exc))
            return "failed"
        workdir = package.working_path(self.options.working_path)
        if self.lock is not None:
            try:
                await self.lock.acquire(identifier)
            except Exception as exc:
                self.events.emit("launch_failed", identifier, stage="lock", error=str(exc))
                return "failed"
        try:
            await self.environment.init(package, workdir)
        except LaunchError as exc:
            self.events.emit("launch_failed", identifier, stage="init", error=str(exc))
            return "failed"
        finally:
            # The Unlock is deferred to LaunchLocalPlugin's return, which comes right after
            # ScaleUp and the (asynchronous) Schedule: before the first instance is up.
            if self.lock is not None:
                with contextlib.suppress(Exception):
                    await self.lock.release(identifier, reason="init_done")
        runtime = LocalRuntime(
            identifier, workdir, package.entrypoint, self.options, self.events, self.children
        )
        try:
            instance = await runtime.start_instance()
        except LaunchError as exc:
            self.events.emit("launch_failed", identifier, stage="instance", error=str(exc))
            return "instance_failed"
        # OnInstanceReadyImpl: only now is the runtime stored and requests routed to it.
        runtime.launched_at = time.time()
        self.runtimes[identifier] = runtime
        runtime.start_schedule()
        self.events.emit("launched", identifier, pid=instance.pid, workdir=str(workdir))
        return "launched"

    async def shutdown(self) -> None:
        for identifier in list(self.runtimes):
            runtime = self.runtimes.pop(identifier)
            await runtime.stop(reason="shutdown")


def calculate_wait_time(retries: int) -> float:
    """server_local.go calculateWaitTime: the largest wait whose threshold `retries` has reached."""
    return max((wait for threshold, wait in RETRY_WAIT.items() if retries >= threshold), default=0.0)


# ---------------------------------------------------------------------------------------------
# HTTP


def daemon_error(code: int, message: str, error_type: str) -> dict[str, Any]:
    """internal/types/exception generic.go ToResponse: the error's JSON, itself as a string, in `message`."""
    inner = json.dumps({"message": message, "error_type": error_type, "args": None}, separators=(",", ":"))
    return {"code": code, "message": inner, "data": None}


PANEL: web.AppKey[ControlPanel] = web.AppKey("panel", ControlPanel)
OPTIONS: web.AppKey[Options] = web.AppKey("options", Options)
EVENTS: web.AppKey[EventLog] = web.AppKey("events", EventLog)
COUNTERS: web.AppKey[Counter[str]] = web.AppKey("counters", Counter)


def build_app(options: Options, panel: ControlPanel, events: EventLog) -> web.Application:
    """internal/server/http_server.go server: the routes tests use, and gin's NoRoute answer."""
    app = web.Application()
    app[PANEL] = panel
    app[OPTIONS] = options
    app[EVENTS] = events
    app[COUNTERS] = Counter()
    app.router.add_get("/health/check", health_check)
    app.router.add_post("/plugin/{tenant_id}/dispatch/tool/invoke", invoke_tool)
    app.router.add_get("/model/status", model_status)
    app.router.add_route("*", "/{tail:.*}", no_route)
    return app


async def health_check(request: web.Request) -> web.Response:
    """controllers/health_check.go HealthCheck: always 200 while the server is up."""
    counters = request.app[COUNTERS]
    return web.json_response(
        {
            "status": "ok",
            "pool_status": {
                "free": 10000 - counters["dispatch"],
                "busy": counters["dispatch"],
                "total": 10000,
            },
            "version": request.app[OPTIONS].compat,
            "build_time": "hotstandby behavioural model",
            "platform": "local",
            "active_requests": counters["requests"],
            "active_dispatch_requests": counters["dispatch"],
        }
    )


async def no_route(request: web.Request) -> web.Response:
    return web.json_response({"code": "not_found", "message": "route not found"}, status=404)


async def model_status(request: web.Request) -> web.Response:
    """MODEL ONLY (the real daemon has no such route): what runs, for tests to wait on."""
    panel = request.app[PANEL]
    launched = {
        ident: {
            "pid": runtime.instance.pid if runtime.instance else None,
            "workdir": str(runtime.workdir),
            "launched_at": runtime.launched_at,
            "restarts": runtime.restarts,
        }
        for ident, runtime in panel.runtimes.items()
    }
    failures = {ident: {"retries": r.retries} for ident, r in panel.failures.items()}
    return web.json_response(
        {
            "model": f"dify-plugin-daemon {panel.options.compat} behavioural model (tests only)",
            "pid": os.getpid(),
            "compat": panel.options.compat,
            "redis": panel.lock is not None,
            "scans": panel.scans,
            "launched": launched,
            "launching": sorted(panel.launching),
            "failures": failures,
            "events": dict(request.app[EVENTS].counts),
        }
    )


def resolve_plugin(panel: ControlPanel, plugin_id: str) -> str | None:
    """The tenant's installation (middleware.go FetchPluginInstallation reads it from the DB).

    Model: a full unique identifier that is installed, or the one installed identifier whose
    plugin_id (`author/name`) matches.
    """
    installed, _ = panel.list_installed()
    if plugin_id in installed:
        return plugin_id
    matches = [ident for ident in installed if parse(ident).plugin_id == plugin_id]
    if len(matches) == 1:
        return matches[0]
    launched = [ident for ident in matches if ident in panel.runtimes]
    return launched[0] if len(launched) == 1 else None


async def invoke_tool(request: web.Request) -> web.StreamResponse:
    """POST /plugin/:tenant_id/dispatch/tool/invoke: internal/server/http_server.gen.go,
    controllers/tool.gen.go InvokeTool, service/tool.gen.go InvokeTool."""
    app = request.app
    counters = app[COUNTERS]
    counters["requests"] += 1
    counters["dispatch"] += 1
    try:
        return await _invoke_tool(request)
    finally:
        counters["requests"] -= 1
        counters["dispatch"] -= 1


async def _invoke_tool(request: web.Request) -> web.StreamResponse:
    app = request.app
    panel, events = app[PANEL], app[EVENTS]
    tenant_id = request.match_info["tenant_id"]
    # internal/server/middleware.go CheckingKey: header X-Api-Key must equal SERVER_KEY.
    if request.headers.get("X-Api-Key") != app[OPTIONS].server_key:
        return web.json_response(
            daemon_error(-401, "unauthorized", "PluginDaemonUnauthorizedError"), status=401
        )
    # middleware.go FetchPluginInstallation: X-Plugin-ID required, then the installation.
    plugin_id = request.headers.get("X-Plugin-ID", "")
    if not plugin_id:
        problem = daemon_error(-400, "plugin_id is required", "PluginDaemonBadRequestError")
        return web.json_response(problem, status=400)
    identifier = await asyncio.to_thread(resolve_plugin, panel, plugin_id)
    if identifier is None:
        events.emit("call", plugin_id, tenant_id=tenant_id, status=404, error="plugin not found")
        return web.json_response(daemon_error(-404, "plugin not found", "PluginNotFoundError"), status=404)
    # middleware.go RedirectPluginInvoke: not running here -> another node; with none, 404.
    runtime = panel.runtimes.get(identifier)
    instance = runtime.instance if runtime else None
    if instance is None or instance.exited.is_set():
        message = "no available node, plugin runtime not found"
        events.emit("call", identifier, tenant_id=tenant_id, status=404, error=message)
        return web.json_response(daemon_error(-500, message, "PluginDaemonInternalServerError"), status=404)
    # controllers/base.go BindRequest: validation failures are 400.
    body: Any = None
    with contextlib.suppress(ValueError):
        body = await request.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not data.get("provider") or not data.get("tool"):
        message = (
            "Key: 'InvokePluginRequest.Data' Error:Field validation for 'Data' failed on the 'required' tag"
        )
        return web.json_response(daemon_error(-400, message, "PluginDaemonBadRequestError"), status=400)
    return await _stream_session(request, identifier, instance, tenant_id, body, data)


async def _stream_session(
    request: web.Request,
    identifier: str,
    instance: PluginInstance,
    tenant_id: str,
    body: dict[str, Any],
    data: dict[str, Any],
) -> web.StreamResponse:
    """service/base_sse.go baseSSEService: `data: <Response JSON>\\n\\n` per chunk, 200 first."""
    events, options = request.app[EVENTS], request.app[OPTIONS]
    session_id = str(uuid.uuid4())
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    instance.listeners[session_id] = queue  # local_runtime/io.go Listen
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    chunks = 0
    error: str | None = None
    try:
        # session_manager/session.go Message + io_tunnel/mapping.go GetInvokePluginMap
        payload = {"user_id": body.get("user_id", ""), "type": "tool", "action": "invoke_tool", **data}
        await instance.send(
            {
                "session_id": session_id,
                "conversation_id": body.get("conversation_id"),
                "message_id": body.get("message_id"),
                "app_id": body.get("app_id"),
                "endpoint_id": body.get("endpoint_id"),
                "context": body.get("context"),
                "event": "request",
                "data": payload,
            }
        )
        deadline = time.monotonic() + options.max_execution_timeout
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                error = "killed by timeout"
                await _sse(response, daemon_error(-500, error, "PluginDaemonInternalServerError"))
                break
            if message is None:  # the instance went away mid-session
                error = "plugin instance exited"
                await _sse(response, daemon_error(-500, error, "PluginInvokeError"))
                break
            kind = message.get("type")
            if kind == "stream":  # io_tunnel/generic.go GenericInvokePlugin
                await _sse(response, {"code": 0, "message": "success", "data": message.get("data")})
                chunks += 1
            elif kind == "end":
                break
            else:
                error = json.dumps(message.get("data"), separators=(",", ":"))
                await _sse(response, daemon_error(-500, error, "PluginInvokeError"))
                break
    except (LaunchError, ConnectionError) as exc:
        error = str(exc)
        with contextlib.suppress(ConnectionError):
            await _sse(response, daemon_error(-500, error, "PluginDaemonInternalServerError"))
    finally:
        instance.listeners.pop(session_id, None)
    events.emit(
        "call", identifier, tenant_id=tenant_id, status=200, chunks=chunks, error=error, pid=instance.pid
    )
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _sse(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n")


# ---------------------------------------------------------------------------------------------
# Lifecycle


async def serve(options: Options) -> int:
    """internal/server/server.go Run: Redis first (the daemon panics without it), then the
    watchdog (scans start at once, in the background), the signal handler, the HTTP server.

    SIGTERM/SIGINT (internal/tasks/signals.go SetupSignalHandler) run the finalizers, among
    them cache.ReleaseAllLocks, then exit 0. The real daemon leaves its plugin processes to
    the container's end (their stdin closes with it); the model stops them itself.
    """
    events = EventLog(options.events)
    children = Children()
    lock = None
    if options.redis_url:
        lock = EnvInitLock(options.redis_url, options.lock_expire, options.lock_wait, events)
        try:
            await lock.ping()
        except Exception as exc:
            print(f"init redis client failed: {exc}", file=sys.stderr)
            events.close()
            return 1
    options.working_path.mkdir(parents=True, exist_ok=True)
    panel = ControlPanel(options, events, lock, children)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(panel.monitor()), asyncio.create_task(panel.remove_unused())]
    runner = web.AppRunner(build_app(options, panel, events), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, options.host, options.port).start()
    events.emit("listening", None, pid=os.getpid(), url=f"http://{options.host}:{options.port}")
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
    crashed = [task for task in done if task in tasks and task.exception() is not None]
    for task in [*tasks, stopping]:
        task.cancel()
    await asyncio.gather(*tasks, stopping, return_exceptions=True)
    await panel.shutdown()
    await children.kill_all()
    if lock is not None:
        await lock.release_all()
        await lock.close()
    await runner.cleanup()
    for task in crashed:
        print(f"model task failed: {task.exception()!r}", file=sys.stderr)
    events.emit("shutdown", None, pid=os.getpid(), crashed=len(crashed))
    events.close()
    return 1 if crashed else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
