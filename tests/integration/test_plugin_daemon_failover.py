"""The Dify plugin daemon beside each node, modelled from its source (tests/support/plugin_daemon_model.py).

First the hazard: a daemon running beside a standby deletes and rebuilds a venv that hotstandby is
still copying (its marker has not arrived), on storage only replication may write. Then the cure:
each daemon runs under its gate (daemon/plugin_gate.py) and only beside the writable leader; after a
failover the promoted node's daemon launches every plugin from the replicated venvs without running
uv, the dead leader's init lock is cleared, and plugin calls through HAProxy succeed again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from daemon.drill.config import (
    DrillConfig,
    HAProxySettings,
    LoadSettings,
    PluginCallSettings,
    StopperSettings,
    Target,
    Thresholds,
)
from daemon.drill.run import run_drill
from daemon.drill.stoppers import CallableStopper
from tests.support.cluster import SERVER_KEY, Pair, free_port, make_pair, wait_until
from tests.support.gated import Gate
from tests.support.ha import FAST, primary
from tests.support.haproxy import running_haproxy
from tests.support.plugin_cluster import (
    BUILD_EVENTS,
    MASTER_HOST,
    MODEL_FAST,
    STANDBY_HOST,
    UV_CACHES,
    call_through,
    events,
    gated_pair,
    launched,
    same_trees,
    seconds_until_answered,
)
from tests.support.plugin_daemon_driver import running_model
from tests.support.plugin_daemon_model import DEFAULT_SERVER_KEY, LOCK_PREFIX
from tests.support.plugin_package import build_package, install_package
from tests.support.services import RedisService, running_redis

pytestmark = pytest.mark.timeout(240)

PLUGINS = 3


@pytest.fixture
def dify_redis(tmp_path: Path) -> Iterator[RedisService]:
    with running_redis(tmp_path) as service:
        yield service


def test_without_the_gate_a_standby_daemon_builds_over_a_venv_being_replicated(
    tmp_path: Path, dify_redis: RedisService
) -> None:
    """The fight, reproduced: replication lags a moment (a burst), the marker is late, the daemon rebuilds."""
    env = {**FAST, "EXCLUDE": UV_CACHES}
    pair = make_pair(tmp_path, master_env=env, slave_env=env)
    package = build_package(marker="hazard")
    with ExitStack() as stack:
        stack.callback(pair.stop)
        pair.start()
        leader = stack.enter_context(
            running_model(
                pair.master.storage,
                free_port(),
                tmp_path / "leader.jsonl",
                [*MODEL_FAST, "--redis-url", dify_redis.url],
            )
        )
        standby = stack.enter_context(
            running_model(
                pair.slave.storage,
                free_port(),
                tmp_path / "standby.jsonl",
                [*MODEL_FAST, "--redis-url", dify_redis.url],
            )
        )
        install_package(pair.master.storage, package)
        rel = package.parsed.relpath
        leader.wait_for_event("lock_acquired", package.identifier, timeout=30)
        assert leader.proc is not None and pair.slave.proc is not None
        os.killpg(leader.proc.pid, signal.SIGSTOP)  # hold the leader's build until replication lags
        try:
            wait_until(
                lambda: (pair.slave.storage / "plugin" / rel).exists(), 15, message="plugin/<id> there"
            )
            wait_until(
                lambda: any(package.identifier in e.get("launching", []) for e in standby.events()),
                10,
                message="the standby's daemon to start launching it (it waits for the leader's lock)",
            )
            pair.slave.proc.send_signal(signal.SIGSTOP)  # replication lags: the marker will arrive late
        finally:
            os.killpg(leader.proc.pid, signal.SIGCONT)
        try:
            # The leader's whole build (uv venv, pip install, compileall): 2-25 s here, over 60 s once
            # in a fresh-clone run while the image test's buildah build loaded the same disk.
            leader.wait_for_event("lock_released", package.identifier, timeout=120)
            built = standby.wait_for_event("uv_venv", package.identifier, timeout=30)
            building = (
                standby.events().index(built) + 1
            )  # what follows its own `uv venv`, even if already there
        finally:
            pair.slave.proc.send_signal(signal.SIGCONT)
        # The standby's daemon built a venv of its own (deleting the part already copied, if any,
        # since its marker had not arrived) in the folder replication is writing the leader's into.
        # How its launch ends depends on which files land first: its own marker, or a failure
        # because the leader's files replaced part of its venv (seen: .venv/bin/python gone).
        standby.wait_for_event(
            ("marker_written", "launch_failed"), package.identifier, timeout=30, after=building
        )
        assert (pair.master.storage / "cwd" / package.workdir / ".venv" / "dify" / "plugin.json").exists()


@pytest.fixture
def gated(tmp_path: Path, dify_redis: RedisService) -> Iterator[tuple[Pair, dict[str, Gate], int]]:
    # The drill counts every acknowledged write: with asynchronous writes a kill -9 may legitimately take
    # the last few with it (seen on a loaded machine), so the pair acknowledges once the replica has them.
    sync = {"SYNC_MODE": "sync", "SYNC_MODE_FALLBACK": "async"}
    with gated_pair(tmp_path, dify_redis.url, node_env=sync) as parts:
        yield parts


def test_after_failover_the_promoted_daemon_launches_replicated_venvs_without_uv(
    gated: tuple[Pair, dict[str, Gate], int], dify_redis: RedisService
) -> None:
    pair, gates, daemon_port = gated
    packages = [build_package(marker=f"failover-{n}") for n in range(PLUGINS)]
    with running_haproxy(
        MASTER_HOST, STANDBY_HOST, daemon_port, check_port=pair.master.port, mode="plugin-daemon"
    ) as proxy:
        for package in packages:
            install_package(pair.master.storage, package)
        wanted = {p.identifier for p in packages}
        wait_until(lambda: launched(pair.master) == wanted, 90, message="the leader's daemon to launch them")
        wait_until(lambda: not same_trees(pair), 30, message="identical trees after the installs")
        assert events(pair.slave) == [], "a daemon ran beside the standby"
        for package in packages:
            wait_until(
                lambda p=package: call_through(proxy.url, p.identifier)[0] == 200, 15, message="a call"
            )
        # The leader dies in the middle of installing another plugin: its init lock stays in Redis.
        stale = packages[0].identifier
        redis.Redis.from_url(dify_redis.url).set(LOCK_PREFIX + stale, "1", ex=900)
        killed = time.time()
        gates["master"].kill_tree()
        pair.master.kill()
        wait_until(lambda: primary(pair.slave), 15, message="the standby to take over")
        first_call = seconds_until_answered(proxy.url, [packages[1].identifier], killed, timeout=30)
        assert first_call is not None, gates["slave"].log()[-3000:]
        wait_until(
            lambda: launched(pair.slave, killed) == wanted, 30, message="every plugin on the new leader"
        )
        after = events(pair.slave, killed)
        rebuilt = [e for e in after if e["event"] in BUILD_EVENTS]
        assert rebuilt == [], f"the promoted daemon rebuilt replicated venvs: {rebuilt}"
        assert not redis.Redis.from_url(dify_redis.url).exists(LOCK_PREFIX + stale), (
            "the stale lock is still there"
        )
        for package in packages:
            assert call_through(proxy.url, package.identifier)[0] == 200
        print(f"kill -9 of the leader -> first plugin call through HAProxy: {first_call:.2f}s")
        assert first_call < 10

        # The old leader comes back: it follows, and its daemon is never started.
        restarted = time.time()
        gates["master"].start()
        pair.master.start()
        wait_until(lambda: pair.master.status()["role"] == "slave", 15, message="the old leader to follow")
        (pair.slave.storage / "persistence").mkdir(exist_ok=True)
        (pair.slave.storage / "persistence" / "after-failover").write_text("new leader")
        wait_until(lambda: not same_trees(pair), 30, message="identical trees after the rejoin")
        assert events(pair.master, restarted) == [], "the old leader's daemon started beside a replica"


def test_the_drill_times_the_first_plugin_call_after_the_leader_dies(
    gated: tuple[Pair, dict[str, Gate], int], tmp_path: Path
) -> None:
    """`hotstandby drill --plugin-call`: a Dify user's view of the failover, in the report."""
    pair, gates, daemon_port = gated
    packages = [build_package(marker=f"drill-{n}") for n in range(PLUGINS)]
    for package in packages:
        install_package(pair.master.storage, package)
    wait_until(lambda: launched(pair.master) == {p.identifier for p in packages}, 90, message="the launches")

    def stop(target: Target) -> None:
        gates["master"].kill_tree()
        pair.master.kill()

    def start(target: Target) -> None:
        gates["master"].start()
        pair.master.start(wait=False)

    with ExitStack() as stack:
        api = stack.enter_context(running_haproxy(MASTER_HOST, STANDBY_HOST, pair.master.port))
        plugins = stack.enter_context(
            running_haproxy(
                MASTER_HOST, STANDBY_HOST, daemon_port, check_port=pair.master.port, mode="plugin-daemon"
            )
        )
        # The drill's preflight refuses a pair whose leader does not answer /primary yet (its daemon's
        # health is polled once a second) or that HAProxy has not marked up yet: wait for both first.
        wait_until(lambda: primary(pair.master), 15, message="the master to answer /primary")
        for proxy in (api, plugins):
            proxy.wait_for_state({"master": "UP", "standby": "DOWN"}, timeout=10)
        config = DrillConfig(
            targets=tuple(Target(n.url, n.name, n.host) for n in (pair.master, pair.slave)),
            server_key=SERVER_KEY,
            haproxy=HAProxySettings(api.url, socket=api.settings.stats_socket),
            stopper=StopperSettings("python"),
            load=LoadSettings(write_rate=20, read_rate=0, request_timeout=5),
            thresholds=Thresholds(rejoin_timeout=30),
            warmup=1.0,
            settle=1.0,
            poll_interval=0.05,
            out_dir=str(tmp_path / "reports"),
            history_file=None,
            plugin_call=PluginCallSettings(
                url=plugins.url,
                plugin=packages[0].identifier,
                key=DEFAULT_SERVER_KEY,
                tool="hsplug/echo",
                parameters={"text": "drill"},
            ),
        )
        report = asyncio.run(run_drill(config, stopper=CallableStopper(stop, start)))
    assert report.result == "pass", report.reasons
    phase = json.loads(Path(report.files["json"]).read_text())["phases"][0]
    calls = phase["durations"]["plugin_call_switchover"]
    assert calls is not None and calls >= phase["durations"]["promotion"]
    assert phase["plugin_calls"]["ok"] > 0
    assert "plugin calls" in Path(report.files["markdown"]).read_text()
    print(f"drill: writes resumed {phase['durations']['switchover']:.2f}s, plugin calls {calls:.2f}s")
