"""`hotstandby drill` on one leader and two replicas (ELECTION=redis, every node listing the other two)
behind a real HAProxy with three servers: the drill finds which replica took over, checks the other one
follows it, the old leader rejoins, and every node has every acknowledged write.

The nodes listen on 127.0.0.2, .3 and .4 (one port, as three hosts would); stop.sh/start.sh are the ones
tests/integration/test_drill.py writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from daemon import cli
from daemon.drill import DrillConfig, Target, run_drill
from daemon.drill.config import HAProxySettings, LoadSettings, StopperSettings, Thresholds
from tests.integration.test_drill import (
    SYNC,
    Scripts,
    assert_png,
    check_acknowledged_writes_on_disk,
    load_report,
)
from tests.integration.test_fanout import replicas_connected
from tests.support.cluster import SERVER_KEY, Node, wait_until
from tests.support.ha import LEASE, primary
from tests.support.haproxy import RunningHAProxy, free_port_on, running_haproxy
from tests.support.services import running_redis

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
NAMES = ("n0", "n1", "n2")
SERVERS = ["master", "standby", "standby2"]


@dataclass
class TrioSite:
    nodes: list[Node]
    haproxy: RunningHAProxy
    scripts: Scripts


@contextlib.contextmanager
def trio_site(tmp_path: Path, redis_url: str) -> Iterator[TrioSite]:
    port = free_port_on(*HOSTS)
    env = {**LEASE, **SYNC, "ELECTION": "redis", "REDIS_URL": redis_url}
    nodes = [
        Node(name, "master" if i == 0 else "slave", tmp_path / name, port, dict(env), host)
        for i, (name, host) in enumerate(zip(NAMES, HOSTS, strict=True))
    ]
    for i, node in enumerate(nodes):
        others = ",".join(other.url for j, other in enumerate(nodes) if j != i)
        node.extra_env["SYNC_TARGET" if i == 0 else "SYNC_SOURCE"] = others
    scripts = Scripts(tmp_path / "scripts", dict(zip(NAMES, nodes, strict=True)))
    with ExitStack() as stack:
        for node in nodes:
            stack.callback(node.kill)
            stack.callback(node.stop)
        stack.callback(scripts.cleanup)
        for node in [*nodes[1:], nodes[0]]:
            node.start()
        scripts.write()
        wait_until(lambda: primary(nodes[0]), 15, message="n0 to take the lease")
        wait_until(lambda: replicas_connected(nodes[0]) == [True, True], 15, message="both links")
        wait_until(
            lambda: all(n.status().get("synced") for n in nodes[1:]), 15, message="both replicas synced"
        )
        balancer = stack.enter_context(running_haproxy(*HOSTS[:2], port, more_standbys=HOSTS[2:]))
        balancer.wait_for_state(dict(zip(SERVERS, ["UP", "DOWN", "DOWN"], strict=True)), timeout=10)
        yield TrioSite(nodes, balancer, scripts)


def trio_config(site: TrioSite, tmp_path: Path) -> DrillConfig:
    folder = site.scripts.folder
    return DrillConfig(
        targets=tuple(
            Target(n.url, name, host) for n, name, host in zip(site.nodes, NAMES, HOSTS, strict=True)
        ),
        server_key=SERVER_KEY,
        haproxy=HAProxySettings(site.haproxy.url, socket=site.haproxy.settings.stats_socket),
        stopper=StopperSettings(
            "command", f"{folder / 'stop.sh'} {{name}}", f"{folder / 'start.sh'} {{name}}", 30
        ),
        load=LoadSettings(write_rate=20, read_rate=10, request_timeout=5),
        thresholds=Thresholds(rejoin_timeout=30),
        warmup=1.0,
        settle=1.0,
        poll_interval=0.05,
        out_dir=str(tmp_path / "reports"),
        history_file=str(tmp_path / "drills.jsonl"),
    )


@pytest.mark.timeout(120)
def test_drill_with_failback_on_three_nodes_names_each_new_leader_and_every_node_ends_with_every_write(
    tmp_path: Path,
) -> None:
    with running_redis(tmp_path / "redis") as redis, trio_site(tmp_path, redis.url) as site:
        config = replace(trio_config(site, tmp_path), failback=True)
        report = asyncio.run(run_drill(config, out=lambda line: print(line)))
        assert report.exit_status == 0, (report.reasons, [statuses(n) for n in site.nodes])
        data = load_report(report)
        urls = [n.url for n in site.nodes]
        first, second = data["phases"]
        assert first["old_leader"] == urls[0] and second["old_leader"] == first["new_leader"]
        for phase in (first, second):
            check_phase(phase, urls)
        leader = next(n for n in site.nodes if n.url == second["new_leader"])
        assert primary(leader) and not any(primary(n) for n in site.nodes if n is not leader)
        for node in site.nodes:  # every node, both old leaders included, has every acknowledged write
            for phase in (first, second):
                check_acknowledged_writes_on_disk(phase, data, node)
            if node is not leader:
                status = node.status()
                assert status["role"] == "slave" and status["master_node"] == leader.status()["node_id"]
    assert data["preflight"]["haproxy_servers"] == SERVERS and data["preflight"]["replicas"] == [1, 2]
    assert [n["url"] for n in data["settings"]["nodes"]] == urls
    assert len(data["timeline"]["nodes"]) == 3 and data["timeline"]["both_primary"] == []
    assert data["final"]["healthy"] and data["final"]["leader"] == leader.url
    summary = Path(report.files["markdown"]).read_text()
    assert all(url in summary for url in urls)
    for phase in (first, second):
        assert f"(other replicas: {phase['other_replicas'][0]})" in summary
    assert_png(report.files["png"])
    for phase in (first, second):
        durations = phase["durations"]
        print(
            f"{phase['name']}: {phase['old_leader']} -> {phase['new_leader']}; switchover"
            f" {durations['switchover']:.2f}s, the other replica followed"
            f" {durations['other_replicas_follow']:.2f}s after the stop"
        )


def statuses(node: Node) -> dict[str, Any]:
    """What a node says of itself and of its replicas (the failure message of a drill that did not pass)."""
    keep = ("role", "epoch", "synced", "applied_sequence", "journal_id", "lag_seconds", "produced_sequence")
    status = node.status()
    return {"url": node.url, **{k: status.get(k) for k in keep}, "replicas": status.get("replicas")}


def check_phase(phase: dict[str, Any], urls: list[str]) -> None:
    """The new leader is one of the replicas, the other one followed it, and every node that follows it
    had every acknowledged write."""
    replicas = [url for url in urls if url != phase["old_leader"]]
    assert phase["new_leader"] in replicas
    [other] = [url for url in replicas if url != phase["new_leader"]]
    assert phase["other_replicas"] == [other]
    assert phase["verification"]["lost"] == 0 and phase["verification"]["node"] == phase["new_leader"]
    everywhere = phase["verification_everywhere"]
    assert sorted(v["node"] for v in everywhere) == sorted([phase["old_leader"], other])
    acked = phase["requests"]["writes_acknowledged"]
    assert acked > 10 and all(v["lost"] == 0 and v["checked"] == acked for v in everywhere)
    moments = phase["moments"]
    assert moments["stop_issued"] < moments["other_replicas_follow"] < moments["every_node_in_step"]
    assert phase["new_epoch"] > phase["old_epoch"] and 0 < phase["durations"]["switchover"] < 30


def test_per_node_flags_take_one_value_per_node(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = ["drill", "--nodes", "http://a:1,http://b:2,http://c:3", "--haproxy-url", "http://h:1"]
    cases = [
        ([*nodes, "--stopper", "docker", "--names", "a,b"], "--names takes 3 comma-separated values"),
        ([*nodes, "--stopper", "docker", "--haproxy-servers", "a,b"], "--haproxy-servers takes 3"),
        (
            [
                "drill",
                "--nodes",
                "http://a:1,http://a:1",
                "--haproxy-url",
                "http://h:1",
                "--stopper",
                "docker",
            ],
            "need at least two node URLs",
        ),
    ]
    for args, expected in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
