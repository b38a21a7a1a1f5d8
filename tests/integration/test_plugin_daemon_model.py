"""The plugin daemon model (tests/support/plugin_daemon_model.py) does what the real daemon does.

Real processes throughout: the model, real uv building real venvs offline, real plugin
processes, a real redis-server. Every wait is on the model's events file, never a bare sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
import redis

from tests.support.plugin_daemon_driver import ModelProcess, running_model
from tests.support.plugin_daemon_model import LOCK_PREFIX, VENV_MARKER
from tests.support.plugin_package import PluginPackage, build_package, install_package
from tests.support.services import RedisService, free_port, running_redis

pytestmark = pytest.mark.timeout(60)

FAST = ["--scan-interval", "0.5", "--schedule-interval", "0.5"]
UV_EVENTS = {"uv_venv", "uv_pip_install", "compileall", "marker_written", "venv_invalid_deleted"}


@pytest.fixture(scope="module")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisService]:
    with running_redis(tmp_path_factory.mktemp("redis")) as service:
        yield service


@pytest.fixture(scope="module")
def launched(
    tmp_path_factory: pytest.TempPathFactory, redis_service: RedisService
) -> Iterator[tuple[ModelProcess, PluginPackage]]:
    """One model with one plugin installed after it started, launched and called once."""
    folder = tmp_path_factory.mktemp("launched")
    package = build_package(marker="launched")
    args = [*FAST, "--redis-url", redis_service.url]
    with running_model(folder / "storage", free_port(), folder / "events.jsonl", args) as model:
        model.wait_for_event("scan")
        install_package(model.storage, package)
        model.wait_for_event("launched", package.identifier, timeout=30)
        status, _ = model.call_tool(package.identifier)
        assert status == 200
        yield model, package


def names(model: ModelProcess, plugin: str | None = None) -> list[str]:
    return [e["event"] for e in model.events() if plugin is None or e["plugin"] == plugin]


def workdir(model: ModelProcess, package: PluginPackage) -> Path:
    return model.storage / "cwd" / package.workdir


def unpack(storage: Path, package: PluginPackage) -> Path:
    """The plugin folder as a previous launch (or a replica) left it, without its venv."""
    folder = storage / "cwd" / package.workdir
    with zipfile.ZipFile(BytesIO(package.data)) as archive:
        archive.extractall(folder)
    return folder


def test_health_check_answers_at_once_and_errors_have_the_daemon_shape(tmp_path: Path) -> None:
    started = time.monotonic()
    with running_model(tmp_path / "storage", free_port(), tmp_path / "events.jsonl") as model:
        assert time.monotonic() - started < 10
        status, body = model.get("/health/check")
        assert status == 200
        assert body["status"] == "ok"
        assert set(body) >= {"pool_status", "version", "platform", "active_requests"}
        assert model.get("/no/such/route") == (404, {"code": "not_found", "message": "route not found"})

        status, error = model.call_tool("hstest/echo", server_key="wrong")
        assert status == 401
        assert isinstance(error, dict)
        assert error["code"] == -401
        assert '"error_type":"PluginDaemonUnauthorizedError"' in error["message"]

        status, error = model.call_tool("hstest/echo")
        assert status == 404
        assert isinstance(error, dict)
        assert '"plugin not found"' in error["message"]


def test_an_event_that_never_comes_says_what_the_model_is_doing(tmp_path: Path) -> None:
    """The timeout names each process of the model's group with its state and kernel wait channel."""
    with running_model(tmp_path / "storage", free_port(), tmp_path / "events.jsonl") as model:
        assert model.proc is not None
        with pytest.raises(TimeoutError) as raised:
            model.wait_for_event("no_such_event", timeout=0.2)
        listing = str(raised.value)
        assert "timed out after 0.2s waiting for event no_such_event" in listing
        assert f"  {model.proc.pid} " in listing
        assert "tests.support.plugin_daemon_model" in listing
        assert '"event": "listening"' in listing  # the log's tail follows


def test_an_installed_plugin_is_launched_and_answers_tool_calls(
    launched: tuple[ModelProcess, PluginPackage],
) -> None:
    model, package = launched
    for plugin_id in (package.identifier, package.parsed.plugin_id):
        status, chunks = model.call_tool(plugin_id, "failover")
        assert status == 200
        assert isinstance(chunks, list)
        assert [c["code"] for c in chunks] == [0, 0]
        assert chunks[0]["data"]["message"]["text"] == "echo: FAILOVER!"
        facts = chunks[1]["data"]["message"]["json_object"]
        assert facts["cwd"] == str(workdir(model, package))
        assert facts["dep_version"] == "0.1.0"
    assert model.status()["launched"][package.identifier]["workdir"] == str(workdir(model, package))


def test_launch_runs_the_real_daemon_steps_in_order(launched: tuple[ModelProcess, PluginPackage]) -> None:
    model, package = launched
    steps = [n for n in names(model, package.identifier) if n != "call"]
    assert steps == [
        "lock_acquired",
        "unpacked",
        "uv_venv",
        "uv_pip_install",
        "compileall",
        "marker_written",
        "lock_released",
        "launched",
    ]
    install = next(e for e in model.events() if e["event"] == "uv_pip_install")
    assert install["uv_cache_dir"] == str(model.storage / "cwd" / ".uv-cache")
    assert (model.storage / "cwd" / ".uv-cache").is_dir()


def test_the_ready_marker_is_the_last_file_written_in_the_venv(
    launched: tuple[ModelProcess, PluginPackage],
) -> None:
    model, package = launched
    venv = workdir(model, package) / ".venv"
    marker = workdir(model, package) / VENV_MARKER
    assert marker.read_text().startswith('{"timestamp":')
    newest_other = max(
        os.lstat(os.path.join(folder, name)).st_mtime_ns
        for folder, _, files in os.walk(venv)
        for name in files
        if os.path.join(folder, name) != str(marker)
    )
    assert marker.stat().st_mtime_ns >= newest_other
    assert (venv / "lib").is_dir() and (venv / "bin" / "python").is_symlink()


def test_the_running_plugin_writes_pycache_into_its_folder(
    launched: tuple[ModelProcess, PluginPackage],
) -> None:
    model, package = launched
    cached = {p.name.split(".")[0] for p in (workdir(model, package) / "__pycache__").glob("*.pyc")}
    assert {"main", "echo_tool"} <= cached


def test_the_env_init_lock_is_taken_and_released_around_the_build(
    launched: tuple[ModelProcess, PluginPackage], redis_service: RedisService
) -> None:
    model, package = launched
    acquired = model.wait_for_event("lock_acquired", package.identifier)
    released = model.wait_for_event("lock_released", package.identifier)
    assert acquired["key"] == released["key"] == LOCK_PREFIX + package.identifier
    assert acquired["expire"] == 900.0
    assert redis.Redis.from_url(redis_service.url).exists(acquired["key"]) == 0


def test_a_venv_without_marker_is_deleted_whole_and_rebuilt(
    tmp_path: Path, redis_service: RedisService
) -> None:
    package = build_package(marker="half-copied")
    storage = tmp_path / "storage"
    install_package(storage, package)
    folder = unpack(storage, package)
    venv = [_uv(), "venv", "-q", str(folder / ".venv"), "--python", sys.executable]
    subprocess.run(venv, check=True, timeout=30)
    leftover = folder / ".venv" / "lib" / "half-copied.txt"
    leftover.write_text("a file only a previous venv had")
    args = [*FAST, "--redis-url", redis_service.url]
    with running_model(storage, free_port(), tmp_path / "events.jsonl", args) as model:
        model.wait_for_event("launched", package.identifier, timeout=30)
        deleted = model.wait_for_event("venv_invalid_deleted", package.identifier)
        assert deleted["reason"] == "no marker"
        steps = names(model, package.identifier)
        assert "unpacked" not in steps  # the folder was not empty: left as it is
        assert steps.index("venv_invalid_deleted") < steps.index("uv_venv") < steps.index("marker_written")
        assert not leftover.exists()
        assert (folder / VENV_MARKER).exists()


def test_a_venv_with_marker_is_used_as_is(tmp_path: Path, redis_service: RedisService) -> None:
    package = build_package(marker="ready")
    storage = tmp_path / "storage"
    install_package(storage, package)
    args = [*FAST, "--redis-url", redis_service.url]
    with running_model(storage, free_port(), tmp_path / "first.jsonl", args) as first:
        first.wait_for_event("launched", package.identifier, timeout=30)
        assert first.terminate() == 0
    marker = storage / "cwd" / package.workdir / VENV_MARKER
    written = marker.stat().st_mtime_ns
    with running_model(storage, free_port(), tmp_path / "second.jsonl", args) as second:
        second.wait_for_event("launched", package.identifier, timeout=30)
        steps = names(second, package.identifier)
        assert not UV_EVENTS & set(steps), steps
        assert "unpacked" not in steps
        assert steps[:2] == ["lock_acquired", "lock_released"]  # the lock is taken all the same
        assert second.call_tool(package.parsed.plugin_id)[0] == 200
    assert marker.stat().st_mtime_ns == written


def test_an_existing_lock_delays_the_launch_until_it_expires(
    tmp_path: Path, redis_service: RedisService
) -> None:
    package = build_package(marker="locked-expiring")
    storage = tmp_path / "storage"
    install_package(storage, package)
    client = redis.Redis.from_url(redis_service.url)
    key = LOCK_PREFIX + package.identifier
    assert client.set(key, "1", nx=True, px=3000)
    set_at = time.time()
    args = [*FAST, "--redis-url", redis_service.url, "--lock-wait", "20"]
    with running_model(storage, free_port(), tmp_path / "events.jsonl", args) as model:
        acquired = model.wait_for_event("lock_acquired", package.identifier, timeout=25)
        assert acquired["t"] >= set_at + 2.9
        assert acquired["waited"] >= 0.2  # it polled, rather than finding the key gone
        assert names(model, package.identifier)[0] == "lock_acquired"  # nothing happened before it
        model.wait_for_event("launched", package.identifier, timeout=30)
        assert client.exists(key) == 0


def test_an_existing_lock_fails_launches_until_it_is_deleted(
    tmp_path: Path, redis_service: RedisService
) -> None:
    package = build_package(marker="locked-forever")
    storage = tmp_path / "storage"
    install_package(storage, package)
    client = redis.Redis.from_url(redis_service.url)
    key = LOCK_PREFIX + package.identifier
    client.set(key, "1")
    args = [*FAST, "--redis-url", redis_service.url, "--lock-wait", "0.3"]
    with running_model(storage, free_port(), tmp_path / "events.jsonl", args) as model:
        failed = model.wait_for_event("launch_failed", package.identifier, timeout=10)
        assert failed["stage"] == "lock"
        status, error = model.call_tool(package.parsed.plugin_id)
        assert status == 404
        assert isinstance(error, dict)
        assert "no available node" in error["message"]
        assert not (storage / "cwd" / package.workdir).exists()  # nothing unpacked without the lock
        client.delete(key)
        model.wait_for_event("launched", package.identifier, timeout=30)
        assert model.status()["failures"] == {}  # lock failures are retried, not counted


def test_sigterm_stops_every_plugin_and_leaves_no_process(tmp_path: Path) -> None:
    package = build_package(marker="sigterm")
    storage = tmp_path / "storage"
    install_package(storage, package)
    with running_model(storage, free_port(), tmp_path / "events.jsonl", FAST) as model:
        plugin_pid = model.wait_for_event("launched", package.identifier, timeout=30)["pid"]
        started = time.monotonic()
        assert model.terminate(timeout=10) == 0
        assert time.monotonic() - started < 5
        stopped = model.wait_for_event("stopped", package.identifier)
        assert (stopped["pid"], stopped["reason"]) == (plugin_pid, "shutdown")
        assert names(model)[-1] == "shutdown"
        assert not model.group_alive()
        assert not Path(f"/proc/{plugin_pid}").exists()


SPAWN_A_SLEEPER = """
import asyncio, subprocess, sys
from pathlib import Path
from tests.support.plugin_daemon_model import Children

async def main():
    quiet = subprocess.DEVNULL
    proc = await Children().spawn(["sleep", "60"], Path("."), None, stdin=quiet, stdout=quiet)
    print(proc.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_child_that_ignores_its_pipes_dies_with_the_model_killed_alone(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG (setpriv before the exec), not pipe EOF: a plugin or a uv that never reads
    its stdin must not outlive the model and keep writing into a storage the test thinks quiet."""
    model = subprocess.Popen(
        [sys.executable, "-c", SPAWN_A_SLEEPER], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert model.stdout is not None
        sleeper = int(model.stdout.readline())
        # The pid is setpriv's until it has set the death signal and exec'd sleep: killing the
        # model before that would orphan setpriv with no signal armed (CI, stop 28).
        ModelProcess.wait_until(lambda: _command(sleeper) == "sleep", 10, "setpriv to exec sleep")
        model.kill()  # the model only, not its group
        model.wait(10)
        ModelProcess.wait_until(lambda: _gone(sleeper), 10, "the child to die with the model")
    finally:
        model.kill()
        model.wait(10)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie counts as ended: its parent is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_sigterm_during_a_launch_exits_at_once_and_releases_nothing_it_does_not_hold(
    tmp_path: Path, redis_service: RedisService
) -> None:
    package = build_package(marker="sigterm-waiting")
    storage = tmp_path / "storage"
    install_package(storage, package)
    client = redis.Redis.from_url(redis_service.url)
    key = LOCK_PREFIX + package.identifier
    client.set(key, "someone else")
    args = [*FAST, "--redis-url", redis_service.url, "--lock-wait", "60"]
    try:
        with running_model(storage, free_port(), tmp_path / "events.jsonl", args) as model:
            model.wait_until(lambda: model.status()["launching"] == [package.identifier], 10, "the launch")
            assert model.terminate(timeout=10) == 0
            assert not model.group_alive()
        assert client.get(key) == b"someone else"
        assert "lock_released" not in names(model)
    finally:
        client.delete(key)


def test_compat_059_keeps_the_venv_out_of_compileall_so_the_plugin_writes_into_it_later(
    tmp_path: Path,
) -> None:
    package = build_package(marker="compat-0.5.9")
    storage = tmp_path / "storage"
    install_package(storage, package)
    args = [*FAST, "--compat", "0.5.9"]
    with running_model(storage, free_port(), tmp_path / "events.jsonl", args) as model:
        model.wait_for_event("launched", package.identifier, timeout=30)
        compiled = model.wait_for_event("compileall", package.identifier)
        assert compiled["args"] == ["-m", "compileall", "-x", r"\.venv|\.uv-cache", "."]
        assert model.call_tool(package.identifier)[0] == 200
        folder = storage / "cwd" / package.workdir
        marker = (folder / VENV_MARKER).stat().st_mtime_ns
        dep_cache = list((folder / ".venv").glob("lib/python*/site-packages/hsplug_dep/__pycache__/*.pyc"))
        assert dep_cache, "the running plugin compiled its dependency into the venv"
        assert all(p.stat().st_mtime_ns >= marker for p in dep_cache)


def test_a_venv_without_python_fails_in_053_and_is_rebuilt_from_054(tmp_path: Path) -> None:
    package = build_package(marker="no-python")
    storage = tmp_path / "storage"
    install_package(storage, package)
    folder = unpack(storage, package)
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / ".venv" / "bin" / "python").symlink_to("/nonexistent/python3.12")
    with running_model(storage, free_port(), tmp_path / "053.jsonl", FAST) as old:
        failed = old.wait_for_event("launch_failed", package.identifier, timeout=15)
        assert failed["stage"] == "init" and "failed to find python" in failed["error"]
        assert (folder / ".venv" / "bin" / "python").is_symlink()  # left alone
    with running_model(storage, free_port(), tmp_path / "054.jsonl", [*FAST, "--compat", "0.5.4"]) as new:
        new.wait_for_event("launched", package.identifier, timeout=30)
        assert new.wait_for_event("venv_invalid_deleted", package.identifier)["reason"] == "no python"


def _uv() -> str:
    import uv

    return str(uv.find_uv_bin())


def test_a_plugin_process_that_dies_is_restarted_without_rebuilding_its_venv(tmp_path: Path) -> None:
    package = build_package(marker="crash")
    storage = tmp_path / "storage"
    install_package(storage, package)
    with running_model(storage, free_port(), tmp_path / "events.jsonl", FAST) as model:
        first = model.wait_for_event("launched", package.identifier, timeout=30)["pid"]
        before = len(model.events())
        os.kill(first, signal.SIGKILL)
        exited = model.wait_for_event("instance_exited", package.identifier, after=before, timeout=10)
        restarted = model.wait_for_event("instance_restarted", package.identifier, after=before, timeout=10)
        assert exited["pid"] == first and restarted["pid"] != first
        assert not UV_EVENTS & set(names(model, package.identifier)[before:])
        status, chunks = model.call_tool(package.identifier)
        assert status == 200
        assert isinstance(chunks, list)
        assert chunks[1]["data"]["message"]["json_object"]["pid"] == restarted["pid"]
