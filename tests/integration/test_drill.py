"""`hotstandby drill` against real pairs behind a real HAProxy: the drill passes, its numbers agree with
what the test saw for itself, nothing acknowledged is lost, the pair is always restored.

The nodes listen on 127.0.0.2 and 127.0.0.3 (one port, as two hosts would). The drill stops and starts
them with small scripts the test writes: `stop.sh NAME` sends SIGKILL to the node's pid (from its pid
file) after noting the time, `start.sh NAME` launches it again, detached, with the same environment.
The same scripts serve the local-command stopper and, through a real sshd on 127.0.0.1, the SSH one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon import cli
from daemon.drill import CallableStopper, DrillConfig, Target, run_drill
from daemon.drill.config import (
    HAProxySettings,
    LoadSettings,
    SshSettings,
    StopperKind,
    StopperSettings,
    Thresholds,
)
from daemon.drill.haproxy import Server, match_servers, parse_stat
from daemon.drill.load import content
from daemon.drill.report import DrillReport
from daemon.drill.stoppers import make_stopper
from daemon.drill.templates import render
from tests.support.cluster import SERVER_KEY, Node, Pair, free_port, http, make_pair, wait_until
from tests.support.ha import LEASE, BackgroundSampler
from tests.support.haproxy import RunningHAProxy, free_port_on, running_haproxy
from tests.support.services import running_redis
from tests.support.sshd import running_sshd

HOSTS = ("127.0.0.2", "127.0.0.3")
NAMES = ("master", "slave")
SYNC = {"SYNC_MODE": "sync", "SYNC_MODE_FALLBACK": "async"}
FAST = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3"}
STATIC_AUTO = (
    {**FAST, **SYNC, "FAILOVER": "auto", "FAILOVER_TIMEOUT": "2"},
    {**FAST, **SYNC, "FAILOVER": "auto", "FAILOVER_TIMEOUT": "2"},
)
REPO = Path(__file__).resolve().parents[2]

DRILL = (sys.executable, "-m", "daemon", "drill")
ENV = {**os.environ, "SERVER_KEY": SERVER_KEY}

LAUNCH = """\
import json, subprocess, sys
from pathlib import Path
folder, name = Path(sys.argv[1]), sys.argv[2]
spec = json.loads((folder / f"{name}.json").read_text())
with open(spec["log"], "ab") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve"], env=spec["env"], cwd=spec["cwd"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
(folder / f"{name}.pid").write_text(str(proc.pid))
"""

AGREEMENT = 1.0


def lease_env(redis_url: str) -> tuple[dict[str, str], dict[str, str]]:
    env = {**LEASE, **SYNC, "ELECTION": "redis", "REDIS_URL": redis_url}
    return dict(env), dict(env)


@dataclass
class Scripts:
    """stop.sh / start.sh NAME for the nodes (by name), and every pid they ever started."""

    folder: Path
    nodes: dict[str, Node]
    started: list[int] = field(default_factory=list)

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, node in self.nodes.items():
            spec = {"env": node.env(), "log": str(node.log_path), "cwd": str(REPO)}
            (self.folder / f"{name}.json").write_text(json.dumps(spec))
            assert node.proc is not None
            (self.folder / f"{name}.pid").write_text(str(node.proc.pid))
        (self.folder / "launch.py").write_text(LAUNCH)
        folder = self.folder
        (folder / "stop.sh").write_text(
            f'#!/bin/sh\nset -eu\ncd {folder}\ndate +%s.%N >> "$1.killed-at"\nkill -KILL "$(cat "$1.pid")"\n'
        )
        (folder / "start.sh").write_text(
            f'#!/bin/sh\nset -eu\ncd {folder}\ndate +%s.%N >> "$1.started-at"\n'
            f'exec {sys.executable} {folder / "launch.py"} {folder} "$1"\n'
        )
        for script in ("stop.sh", "start.sh"):
            (folder / script).chmod(0o755)

    def times(self, name: str, what: str) -> list[float]:
        path = self.folder / f"{name}.{what}-at"
        return [float(line) for line in path.read_text().split()] if path.exists() else []

    def cleanup(self) -> None:
        """Stop whatever start.sh launched, and ask the nodes' own processes to stop at the same time
        (the fixture then waits for those: one shutdown period for all, not one each)."""
        own = {n.proc.pid for n in self.nodes.values() if n.proc and n.proc.poll() is None}
        pids = []
        for name in self.nodes:
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.folder / f"{name}.pid").read_text())
                if pid not in own:
                    pids.append(pid)
        for pid in [*pids, *own]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Site:
    pair: Pair
    haproxy: RunningHAProxy
    scripts: Scripts

    @property
    def urls(self) -> list[str]:
        return [self.pair.master.url, self.pair.slave.url]

    def targets(self, ssh_host: str | None = None) -> tuple[Target, Target]:
        first, second = (
            Target(url, name, ssh_host or HOSTS[i])
            for i, (url, name) in enumerate(zip(self.urls, NAMES, strict=True))
        )
        return first, second

    def argv(self, *extra: str) -> list[str]:
        """`hotstandby drill` on this site with the local-command stopper."""
        folder = self.scripts.folder
        return [
            *DRILL,
            *("--nodes", ",".join(self.urls), "--names", ",".join(NAMES), "--haproxy-url", self.haproxy.url),
            *(
                "--stop-cmd",
                f"{folder / 'stop.sh'} {{name}}",
                "--start-cmd",
                f"{folder / 'start.sh'} {{name}}",
            ),
            *("--warmup", "1", "--rejoin-timeout", "30"),
            *extra,
        ]


@contextlib.contextmanager
def drill_site(
    tmp_path: Path, master_env: dict[str, str], slave_env: dict[str, str], **haproxy: Any
) -> Iterator[Site]:
    port = free_port_on(*HOSTS)
    pair = make_pair(tmp_path, master_env=master_env, slave_env=slave_env, hosts=HOSTS, port=port)
    scripts = Scripts(tmp_path / "scripts", {"master": pair.master, "slave": pair.slave})
    with ExitStack() as stack:
        stack.callback(pair.stop)
        stack.callback(scripts.cleanup)
        pair.start()
        scripts.write()
        balancer = stack.enter_context(running_haproxy(HOSTS[0], HOSTS[1], port, **haproxy))
        balancer.wait_for_state({"master": "UP", "standby": "DOWN"}, timeout=10)
        wait_until(lambda: pair.slave.status().get("synced", False), 10, message="the slave to be synced")
        yield Site(pair, balancer, scripts)


class Observer(BackgroundSampler):
    """The test's own eyes: HAProxy's server states and each node's /primary every 50 ms, wall clock."""

    interval = 0.05

    def __init__(self, site: Site) -> None:
        super().__init__()
        self.site = site
        self.samples: list[tuple[float, dict[str, str], list[bool]]] = []

    def sample(self) -> None:
        states = self.site.haproxy.server_states()
        primaries = [_primary(url) for url in self.site.urls]
        self.samples.append((time.time(), states, primaries))

    def first(self, after: float, test: Any) -> float:
        return next(t for t, states, primaries in self.samples if t >= after and test(states, primaries))


def _primary(url: str) -> bool:
    try:
        return http("GET", f"{url}/primary", timeout=1)[0] == 200
    except OSError:
        return False


def config_for(site: Site, tmp_path: Path, stopper: StopperSettings, **overrides: Any) -> DrillConfig:
    settings: dict[str, Any] = {
        "targets": site.targets(),
        "server_key": SERVER_KEY,
        "haproxy": HAProxySettings(site.haproxy.url, socket=site.haproxy.settings.stats_socket),
        "stopper": stopper,
        "load": LoadSettings(write_rate=20, read_rate=10, request_timeout=5),
        "thresholds": Thresholds(rejoin_timeout=30),
        "warmup": 1.0,
        "settle": 1.0,
        "poll_interval": 0.05,
        "out_dir": str(tmp_path / "reports"),
        "history_file": str(tmp_path / "drills.jsonl"),
        **overrides,
    }
    return DrillConfig(**settings)


def command_stopper(site: Site) -> StopperSettings:
    folder = site.scripts.folder
    return StopperSettings("command", f"{folder / 'stop.sh'} {{name}}", f"{folder / 'start.sh'} {{name}}", 30)


def assert_png(path: str) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 400, image.size
        image.verify()


def check_phase_against_observations(
    phase: dict[str, Any], report: dict[str, Any], site: Site, observer: Observer, name: str, index: int
) -> None:
    """The report's moments agree with the kill time the stop script noted and with what the test's own
    observer saw of HAProxy and of /primary."""
    t0 = report["drill"]["started_unix"]
    moments: dict[str, float] = {k: t0 + v for k, v in phase["moments"].items() if v is not None}
    killed = site.scripts.times(name, "killed")[-1]
    assert moments["stop_issued"] <= killed + 0.05 and killed <= moments["stop_returned"] + 0.05
    server = "master" if name == "master" else "standby"
    seen_down = observer.first(killed, lambda states, _p: states.get(server, "").startswith("DOWN"))
    seen_primary = observer.first(killed, lambda _s, primaries: primaries[1 - index])
    # Two pollers (the drill's and this observer's, each every ~0.1 s, in other threads of a loaded
    # machine) see the same moment: they agree within AGREEMENT, not to the poll interval.
    assert abs(moments["haproxy_marked_down"] - seen_down) < AGREEMENT, (
        moments["haproxy_marked_down"],
        seen_down,
    )
    assert abs(moments["new_leader_primary"] - seen_primary) < AGREEMENT, (
        moments["new_leader_primary"],
        seen_primary,
    )
    assert (
        moments["first_write_ok"] >= max(moments["haproxy_marked_down"], moments["new_leader_primary"]) - 0.1
    )
    durations = phase["durations"]
    assert durations["switchover"] == pytest.approx(
        moments["first_write_ok"] - moments["stop_issued"], abs=0.002
    )
    assert 0 < durations["switchover"] < 30
    # Counts in the summary are the outcomes' own.
    outcomes = [dict(zip(phase["outcome_fields"], row, strict=True)) for row in phase["outcomes"]]
    window = (phase["moments"]["stop_issued"], phase["moments"]["first_write_ok"])
    failed = [o for o in outcomes if not o["ok"] and window[0] <= o["started"] <= window[1]]
    during = phase["requests"]["failed_during_switchover"]
    assert during["writes"] + during["reads"] == len(failed)
    assert phase["requests"]["writes_acknowledged"] == sum(o["ok"] for o in outcomes if o["kind"] == "write")
    assert phase["verification"]["lost"] == 0 and phase["verification"]["checked"] > 0


def check_acknowledged_writes_on_disk(phase: dict[str, Any], report: dict[str, Any], leader: Node) -> None:
    """Every write the report says was acknowledged is on the new leader's disk, with the known content."""
    drill_id = report["drill"]["id"]
    acked = phase["acknowledged_writes"]
    assert len(acked) == phase["requests"]["writes_acknowledged"] > 10
    for write in acked:
        data = (leader.storage / write["path"]).read_bytes()
        number = int(write["path"].rsplit("-", 1)[1].removesuffix(".bin"))
        assert data == content(drill_id, phase["number"], number)
        assert hashlib.sha256(data).hexdigest() == write["sha256"]


def load_report(report: DrillReport) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(report.files["json"]).read_text())
    return data


# -- the drill passes, and its numbers are the ones the test saw -----------------------------------------
@pytest.mark.timeout(100)
def test_drill_with_failback_passes_and_its_numbers_match_what_the_test_saw(tmp_path: Path) -> None:
    with drill_site(tmp_path, *STATIC_AUTO) as site, Observer(site) as observer:
        config = config_for(site, tmp_path, command_stopper(site), failback=True)
        report = asyncio.run(run_drill(config, out=lambda line: print(line)))
    assert report.exit_status == 0, report.reasons
    data = load_report(report)
    assert data["drill"]["result"] == "pass" and len(data["phases"]) == 2
    assert data["preflight"]["haproxy_servers"] == ["master", "standby"]
    first, second = data["phases"]
    check_phase_against_observations(first, data, site, observer, "master", 0)
    check_phase_against_observations(second, data, site, observer, "slave", 1)
    check_acknowledged_writes_on_disk(first, data, site.pair.slave)
    check_acknowledged_writes_on_disk(second, data, site.pair.master)
    assert first["new_epoch"] > first["old_epoch"] and second["new_epoch"] > second["old_epoch"]
    assert data["final"]["healthy"] and data["final"]["leader"] == site.pair.master.url
    assert data["restore"] == [] and data["timeline"]["both_primary"] == []
    assert_png(report.files["png"])
    summary = Path(report.files["markdown"]).read_text()
    assert "PASS" in summary and "acknowledged writes lost" in summary
    for phase in data["phases"]:
        durations, failed = phase["durations"], phase["requests"]["failed_during_switchover"]
        print(
            f"{phase['name']}: switchover {durations['switchover']:.2f}s, HAProxy marked the old leader down"
            f" after {durations['haproxy_detection']:.2f}s, {failed} requests failed during the switchover"
        )


@pytest.mark.timeout(60)
def test_drill_command_line_with_a_redis_lease_passes_and_records_its_history(tmp_path: Path) -> None:
    with (
        running_redis(tmp_path / "redis") as redis,
        drill_site(tmp_path, *lease_env(redis.url), stats_port=free_port()) as site,
    ):
        history = tmp_path / "drills.jsonl"
        stats = f"http://127.0.0.1:{site.haproxy.settings.stats_port}/stats"
        argv = site.argv(
            *("--haproxy-stats", stats, "--haproxy-servers", "master,standby", "--write-rate", "20"),
            *("--settle", "1", "--poll-interval", "0.05"),
            *("--out", str(tmp_path / "reports"), "--history-file", str(history)),
        )
        done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=50, cwd=REPO)
        assert done.returncode == 0, done.stdout + done.stderr
        past = [*DRILL, "--history", "--json", "--nodes", ",".join(site.urls), "--history-file", str(history)]
        shown = subprocess.run(past, env=ENV, capture_output=True, text=True, timeout=20, cwd=REPO)
    assert "# Failover drill" in done.stdout and ": PASS" in done.stdout
    [folder_line] = [line for line in done.stderr.splitlines() if line.startswith("json: ")]
    data = json.loads(Path(folder_line.removeprefix("json: ")).read_text())
    [phase] = data["phases"]
    assert data["settings"]["haproxy"]["view"] == "stats page"
    assert phase["durations"]["haproxy_detection"] < phase["durations"]["switchover"] < 30
    assert phase["verification"]["lost"] == 0 and phase["requests"]["writes_acknowledged"] > 10
    assert_png(str(Path(folder_line.removeprefix("json: ")).with_name("timeline.png")))
    catalogue = data["history"]["catalogue"]
    assert catalogue.startswith("recorded on"), catalogue
    assert phase["verification"]["direct"] is True, phase["verification"]
    assert data["history"]["file"] == f"recorded in {history}"
    [line] = history.read_text().splitlines()
    assert json.loads(line)["drill_id"] == data["drill"]["id"]
    assert shown.returncode == 0, shown.stderr
    [past] = json.loads(shown.stdout)["drills"]
    assert past["drill_id"] == data["drill"]["id"] and past["result"] == "pass"
    print(f"redis lease: switchover {phase['durations']['switchover']:.2f}s")


# -- over SSH, against a real OpenSSH server ---------------------------------------------------------
@pytest.mark.timeout(60)
def test_drill_over_ssh_checks_the_host_key_then_passes(tmp_path: Path) -> None:
    with (
        running_sshd(tmp_path / "sshd") as sshd,
        running_redis(tmp_path / "redis") as redis,
        drill_site(tmp_path, *lease_env(redis.url)) as site,
    ):
        folder = site.scripts.folder

        def ssh(known_hosts: Path) -> StopperSettings:
            settings = SshSettings(sshd.port, sshd.user, (str(sshd.client_key),), str(known_hosts))
            return StopperSettings(
                "ssh", f"{folder / 'stop.sh'} {{name}}", f"{folder / 'start.sh'} {{name}}", 30, ssh=settings
            )

        # No HAProxy stats this time: what HAProxy does is inferred from the traffic through it.
        settings = {"targets": site.targets("127.0.0.1"), "haproxy": HAProxySettings(site.haproxy.url)}
        wrong = config_for(site, tmp_path, ssh(sshd.wrong_known_hosts), **settings)
        refused = asyncio.run(run_drill(wrong))
        assert refused.exit_status == 3 and refused.result == "refused", refused.reasons
        assert any("host key not verified" in r for r in refused.reasons), refused.reasons
        assert site.scripts.times("master", "killed") == [] and _primary(site.pair.master.url)

        config = config_for(site, tmp_path, ssh(sshd.known_hosts), **settings)
        report = asyncio.run(run_drill(config))
        assert report.exit_status == 0, report.reasons
        assert "Starting session: command" in sshd.log()
    data = load_report(report)
    [phase] = data["phases"]
    assert (
        len(site.scripts.times("master", "killed")) == 1 and len(site.scripts.times("master", "started")) == 1
    )
    assert phase["verification"]["lost"] == 0
    assert "host key checked" in json.dumps(data["preflight"])
    assert data["settings"]["haproxy"]["view"] == "inferred from traffic"
    assert phase["moments"]["haproxy_marked_down"] is None
    assert phase["moments"]["haproxy_new_leader_up"] <= phase["moments"]["first_write_ok"] + 0.2
    assert_png(report.files["png"])
    print(f"ssh stopper: switchover {phase['durations']['switchover']:.2f}s")


# -- a failed step still restores the pair, and says what it could not restore -------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_works", [True, False], ids=["restored", "not-restored"])
def test_a_failing_stop_step_still_restores_the_stopped_node_or_says_it_could_not(
    tmp_path: Path, start_works: bool
) -> None:
    with drill_site(tmp_path, *STATIC_AUTO) as site:

        def stop(target: Target) -> None:
            site.pair.master.kill()
            raise RuntimeError("the stop command crashed after stopping the node")

        def start(target: Target) -> None:
            if not start_works:
                raise RuntimeError("no way to start it")
            site.pair.master.start(wait=False)

        config = config_for(site, tmp_path, StopperSettings("python"))
        report = asyncio.run(run_drill(config, stopper=CallableStopper(stop, start)))
        assert report.result == "fail"
        assert any("the stop command crashed" in r for r in report.reasons), report.reasons
        [restore] = report.restore
        assert restore.node == site.pair.master.url
        if start_works:
            assert restore.ok and report.exit_status == 1
            assert site.pair.master.is_up()
        else:
            assert not restore.ok and report.exit_status == 4
            assert "no way to start it" in restore.detail and "start(master)" in restore.command
            summary = Path(report.files["markdown"]).read_text()
            assert "NOT RESTORED" in summary and site.pair.master.url in summary


@pytest.mark.timeout(60)
def test_a_drill_stopped_by_sigterm_starts_the_node_it_stopped_and_reports_the_interruption(
    tmp_path: Path,
) -> None:
    with drill_site(tmp_path, *STATIC_AUTO) as site:
        argv = site.argv("--haproxy-socket", site.haproxy.settings.stats_socket, "--no-history-file")
        argv += ["--out", str(tmp_path / "reports")]
        pipe = subprocess.PIPE
        with subprocess.Popen(argv, env=ENV, cwd=REPO, stdout=pipe, stderr=pipe, text=True) as drill:
            try:
                wait_until(
                    lambda: bool(site.scripts.times("master", "killed")), 20, message="the drill to stop"
                )
                drill.send_signal(signal.SIGTERM)
                out, err = drill.communicate(timeout=40)
            finally:
                drill.kill()
        assert drill.returncode == 1, out + err
        assert len(site.scripts.times("master", "started")) == 1, "the stopped master was not started again"
        wait_until(lambda: _answers(site.pair.master.url), 10, message="the restarted master")
    assert "interrupted" in out and "restored" in out, out
    [json_line] = [line for line in err.splitlines() if line.startswith("json: ")]
    data = json.loads(Path(json_line.removeprefix("json: ")).read_text())
    assert data["drill"]["interrupted"] and data["drill"]["result"] == "fail"
    assert [r["ok"] for r in data["restore"]] == [True] and data["restore"][0]["node"] == site.pair.master.url


def _answers(url: str) -> bool:
    try:
        return http("GET", f"{url}/health", timeout=1)[0] == 200
    except OSError:
        return False


# -- small parts ------------------------------------------------------------------------------------------
def test_haproxy_servers_are_matched_to_nodes_by_address_or_name() -> None:
    text = (
        "# pxname,svname,status,bck,type,addr\n"
        "nodes,FRONTEND,OPEN,,0,\n"
        "nodes,master,UP,0,2,127.0.0.2:5002\n"
        "nodes,standby,DOWN,1,2,127.0.0.3:5002\n"
        "nodes,BACKEND,UP,0,1,\n"
    )
    servers = parse_stat(text)
    assert [(s.name, s.status, s.backup) for s in servers] == [
        ("master", "UP", False),
        ("standby", "DOWN", True),
    ]
    targets = [Target("http://127.0.0.3:5002", "b", ""), Target("http://127.0.0.2:5002", "a", "")]
    found = match_servers(servers, targets, None)
    assert [s.name for s in found] == ["standby", "master"]
    assert [s.name for s in match_servers(servers, targets, ("standby", "master"))] == ["standby", "master"]
    with pytest.raises(Exception, match="--haproxy-servers"):
        match_servers([Server("nodes", "x", "UP", "10.0.0.9:1", False)], targets, None)


def test_command_templates_quote_node_values_and_keep_other_braces() -> None:
    target = Target("http://node-1:5002", "node 1; rm -rf /", "node-1")
    rendered = render("docker stop {name} && awk '{print $1}' {url}", target)
    assert rendered == "docker stop 'node 1; rm -rf /' && awk '{print $1}' http://node-1:5002"


def test_command_templates_are_filled_in_one_pass_so_a_value_is_never_expanded_again() -> None:
    target = Target("http://node-1:5002", "{url}'; touch /tmp/x; '{port}", "node-1")
    rendered = render("stop {name} at {url}", target)
    assert rendered == "stop '{url}'\"'\"'; touch /tmp/x; '\"'\"'{port}' at http://node-1:5002"
    assert shlex.split(rendered) == ["stop", "{url}'; touch /tmp/x; '{port}", "at", "http://node-1:5002"]


def test_known_content_is_deterministic() -> None:
    assert content("d", 1, 7) == content("d", 1, 7) != content("d", 1, 8)
    assert 256 <= len(content("d", 2, 12345)) < 4096


def test_bad_flags_are_one_line_and_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    pair = ["drill", "--nodes", "http://a:1,http://b:2"]
    lb = ["--haproxy-url", "http://h:1"]
    cases = [
        ([*pair, "--stop-cmd", "x", "--start-cmd", "y"], "--haproxy-url is required"),
        ([*pair, *lb], "say how to stop"),
        ([*pair, *lb, "--stop-cmd", "x"], "needs both --stop-cmd and --start-cmd"),
        ([*pair, *lb, "--stopper", "docker", "--max-switchover", "0"], "--max-switchover must be"),
        ([*pair, *lb, "--stopper", "docker", "--remote-stop-cmd", "x"], "are for the ssh stopper"),
        (["drill", "--nodes", "http://a:1", *lb, "--stopper", "docker"], "need at least two node URLs"),
    ]
    for args, expected in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["docker", "kubectl"])
async def test_docker_and_kubectl_stoppers_run_the_commands_they_describe(
    tmp_path: Path, kind: StopperKind
) -> None:
    calls = tmp_path / "calls"
    program = tmp_path / kind
    program.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = inspect ] && echo true\nexit 0\n')
    program.chmod(0o755)
    settings = StopperSettings(
        kind, docker=str(program), kubectl=str(program), namespace="ha", grace_period=5
    )
    stopper = make_stopper(settings)
    target = Target("http://hotstandby-0.hotstandby:5002", "hotstandby-0", "hotstandby-0.hotstandby")
    await stopper.check(target)
    await stopper.stop(target)
    await stopper.start(target)
    seen = calls.read_text().splitlines()
    if kind == "docker":
        assert seen == [
            "inspect --format {{.State.Running}} hotstandby-0",
            "stop -t 10 hotstandby-0",
            "start hotstandby-0",
        ]
    else:
        assert seen == [
            "--namespace ha get pod hotstandby-0 --output=name",
            "--namespace ha delete pod hotstandby-0 --wait=false --grace-period=5",
        ]
        assert "StatefulSet" in stopper.describe("start", target)
    assert stopper.describe("stop", target).endswith(seen[1].split()[-1])


@pytest.mark.timeout(30)
async def test_in_a_pod_without_kubectl_the_pod_is_deleted_through_the_api(tmp_path: Path) -> None:
    from aiohttp import web

    from daemon.drill.errors import StopperError
    from daemon.drill.kube import Pods
    from daemon.drill.stoppers import KubectlStopper

    seen: list[tuple[str, str, str, Any]] = []

    async def pod(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path, request.headers["Authorization"], body))
        if request.match_info["name"] != "hotstandby-0":
            return web.json_response({"message": 'pods "x" is forbidden'}, status=403)
        return web.json_response({"kind": "Pod"})

    app = web.Application()
    app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{name}", pod)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text("token-1\n")
        (account / "namespace").write_text("hotstandby\n")
        pods = Pods(None, 5.0, base_url=f"http://127.0.0.1:{port}", sa_dir=str(account))
        stopper = KubectlStopper(StopperSettings("kubectl", grace_period=3), pods=pods)
        target = Target("http://hotstandby-0.hotstandby:5002", "hotstandby-0", "")
        assert "exists" in await stopper.check(target)
        assert await stopper.stop(target) == "deleted pod hotstandby/hotstandby-0"
        with pytest.raises(StopperError, match='HTTP 403: pods "x" is forbidden'):
            await stopper.check(Target("http://x:1", "x", ""))
    finally:
        await runner.cleanup()
    path = "/api/v1/namespaces/hotstandby/pods/hotstandby-0"
    assert seen[0][:3] == ("GET", path, "Bearer token-1")
    assert seen[1] == (
        "DELETE",
        path,
        "Bearer token-1",
        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 3},
    )
