"""HAProxy in front of the pair: configs HAProxy accepts, clear CLI errors, and a real HAProxy that
sends traffic only to the node whose /primary answers 200 (design section 5)."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import pytest

from daemon import haproxy_config
from daemon.haproxy_config import HAProxySettings, check_config, render, supports_init_state
from tests.support.cluster import http, wait_until
from tests.support.haproxy import HAPROXY, FakeNode, RunningHAProxy, free_port_on, running_haproxy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "haproxy" / "examples").glob("*.cfg"))
MASTER_HOST, STANDBY_HOST = "127.0.0.2", "127.0.0.3"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in haproxy_config.ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    haproxy_config.add_arguments(parser)
    return haproxy_config.run(parser.parse_args(argv))


def assert_valid(path: Path) -> None:
    done = check_config(path, HAPROXY)
    assert done.returncode == 0, done.stdout + done.stderr


# --- (a) configurations HAProxy accepts ---------------------------------------------------------------


def test_both_examples_are_committed() -> None:
    assert [p.name for p in EXAMPLES] == ["dify-plugin-daemon.cfg", "hotstandby-api.cfg"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_haproxy_check(example: Path) -> None:
    assert_valid(example)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_is_exactly_what_its_header_command_renders(example: Path, tmp_path: Path) -> None:
    text = example.read_text()
    command = re.search(r"^#   python -m daemon\.haproxy_config (.*)$", text, re.MULTILINE)
    assert command, "the example names the command that rendered it"
    out = tmp_path / example.name
    assert cli([*shlex.split(command.group(1)), "--output", str(out)]) == 0
    assert out.read_text() == text, f"{example.name} is stale: re-render it with the command in its header"


def test_plugin_daemon_example_keeps_streams_alive_and_checks_hotstandby() -> None:
    text = (ROOT / "haproxy" / "examples" / "dify-plugin-daemon.cfg").read_text()
    for line in (
        "timeout server 600s",
        "timeout client 600s",
        "timeout tunnel 3600s",
        "backup",
        "http-check send meth HEAD uri /primary",
        "http-check expect status 200",
        "server master hotstandby-master:5002 check port 5003",
        "inter 1s fastinter 250ms downinter 500ms fall 2 rise 1 on-marked-down shutdown-sessions",
    ):
        assert line in text
    assert "http-buffer-request" not in text.replace("`option http-buffer-request`", "")


@pytest.mark.parametrize(
    "settings",
    [
        HAProxySettings(master_addr="127.0.0.2", standby_addr="127.0.0.3"),
        HAProxySettings(
            master_addr="127.0.0.2", standby_addr="127.0.0.3", stats_port=8404, check_inter_ms=200
        ),
        HAProxySettings(
            mode="plugin-daemon", master_addr="127.0.0.2", standby_addr="127.0.0.3", check_port=5003
        ),
        HAProxySettings(mode="plugin-daemon", check_port=5003, stats_port=8405),  # names that do not resolve
    ],
    ids=["api", "api-stats-fast", "plugin-daemon", "unresolvable-names"],
)
def test_rendered_config_passes_haproxy_check(settings: HAProxySettings, tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(settings))
    assert_valid(path)


def test_init_state_is_used_exactly_when_this_haproxy_accepts_it(tmp_path: Path) -> None:
    version = re.search(
        r"version (\d+)\.(\d+)", subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout
    )
    assert version
    expected = (int(version.group(1)), int(version.group(2))) >= (3, 1)
    assert supports_init_state(HAPROXY) is expected  # Debian's 2.6.12 here: False
    path = tmp_path / "haproxy.cfg"
    path.write_text(
        render(HAProxySettings(master_addr="127.0.0.2", standby_addr="127.0.0.3", init_state=True))
    )
    assert (check_config(path, HAPROXY).returncode == 0) is expected
    assert cli(["--init-state", "auto", "--haproxy", HAPROXY, "--output", str(path)]) == 0
    assert ("init-state down" in path.read_text().split("default-server", 1)[1].splitlines()[0]) is expected


def test_cli_writes_a_checked_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "haproxy.cfg"
    argv = [
        "--mode",
        "plugin-daemon",
        "--master-addr",
        "127.0.0.2",
        "--standby-addr",
        "127.0.0.3",
        "--check-port",
        "5003",
        "--bind",
        "127.0.0.1:15002",
        "--init-state",
        "off",
        "--haproxy",
        HAPROXY,
    ]
    assert cli([*argv, "--output", str(out), "--check"]) == 0
    assert "bind 127.0.0.1:15002" in out.read_text()
    assert cli([*argv, "--check"]) == 0
    assert capsys.readouterr().out == out.read_text()


def test_cli_takes_values_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    monkeypatch.setenv("STANDBY_ADDR", "node-b")
    monkeypatch.setenv("HAPROXY_BIND", "127.0.0.1:6000")
    assert cli(["--init-state", "off", "--standby-addr", "node-c"]) == 0  # arguments win
    text = capsys.readouterr().out
    assert "server master node-a:5002" in text
    assert "server standby node-c:5002" in text
    assert "bind 127.0.0.1:6000" in text


# --- (b) bad input: one line, exit status 2 ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--traffic-port", "70000"], {}, "HAPROXY_TRAFFIC_PORT"),
        (["--traffic-port", "http"], {}, "HAPROXY_TRAFFIC_PORT"),
        (["--master-addr", ""], {}, "MASTER_ADDR"),
        ([], {"STANDBY_ADDR": ""}, "STANDBY_ADDR"),
        (["--standby-addr", "a b"], {}, "STANDBY_ADDR"),
        (["--bind", "0.0.0.0"], {}, "HAPROXY_BIND"),
        ([], {"HAPROXY_BIND": "127.0.0.1:0"}, "HAPROXY_BIND"),
        (["--mode", "tcp"], {}, "HAPROXY_MODE"),
        (["--mode", "plugin-daemon"], {}, "HAPROXY_CHECK_PORT"),
        (
            ["--mode", "plugin-daemon", "--check-port", "5003", "--timeout-server", "30s"],
            {},
            "HAPROXY_TIMEOUT_SERVER",
        ),
        (["--check-inter", "1000"], {}, "HAPROXY_CHECK_INTER"),
        (["--check-fall", "0"], {}, "HAPROXY_CHECK_FALL"),
        (["--init-state", "maybe"], {}, "HAPROXY_INIT_STATE"),
        (["--stats-socket", "/tmp/" + "x" * 120], {}, "HAPROXY_STATS_SOCKET"),
        (["--output", "/nonexistent/haproxy.cfg"], {}, "--output"),
    ],
)
def test_bad_input_prints_one_line_naming_the_setting_and_returns_2(
    argv: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert named in lines[0]
    assert "Traceback" not in captured.err


# --- (c) a real HAProxy in front of two nodes -------------------------------------------------------


@pytest.fixture
def nodes() -> Iterator[tuple[FakeNode, FakeNode]]:
    port = free_port_on(MASTER_HOST, STANDBY_HOST)
    master = FakeNode("master", MASTER_HOST, port, primary=True).start()
    standby = FakeNode("standby", STANDBY_HOST, port).start()
    try:
        yield master, standby
    finally:
        master.stop()
        standby.stop()


@pytest.fixture
def proxy(nodes: tuple[FakeNode, FakeNode], tmp_path: Path) -> Iterator[RunningHAProxy]:
    master, _standby = nodes
    with running_haproxy(MASTER_HOST, STANDBY_HOST, master.traffic_port, workdir=tmp_path) as started:
        started.wait_for_state({"master": "UP", "standby": "DOWN"})
        yield started


def answered_by(proxy: RunningHAProxy, path: str = "/") -> str:
    """The name of the node that answered, or 'status N', or 'cut': a request in flight to a node
    when it is marked down is cut (on-marked-down shutdown-sessions)."""
    try:
        status, _headers, body = http("GET", proxy.url + path, timeout=5)
    except (HTTPException, OSError):
        return "cut"
    return body.decode() if status == 200 else f"status {status}"


def answers(proxy: RunningHAProxy, count: int = 20) -> set[str]:
    return {answered_by(proxy) for _ in range(count)}


def seconds_until_traffic_reaches(proxy: RunningHAProxy, name: str, timeout: float = 5.0) -> float:
    start = time.monotonic()
    wait_until(lambda: answered_by(proxy) == name, timeout, interval=0.01, message=f"traffic to {name}")
    return time.monotonic() - start


def test_traffic_goes_to_the_master_while_it_is_primary(proxy: RunningHAProxy) -> None:
    assert answers(proxy) == {"master"}


def test_after_a_switchover_traffic_reaches_the_backup_within_2s(
    proxy: RunningHAProxy, nodes: tuple[FakeNode, FakeNode]
) -> None:
    master, standby = nodes
    master.primary, standby.primary = False, True
    assert seconds_until_traffic_reaches(proxy, "standby") < 2.0
    proxy.wait_for_state({"master": "DOWN", "standby": "UP"}, timeout=5.0)  # a wait, not the promise
    assert answers(proxy) == {"standby"}


def test_a_node_marked_down_gets_no_traffic_even_when_nobody_else_leads(
    proxy: RunningHAProxy, nodes: tuple[FakeNode, FakeNode]
) -> None:
    master, standby = nodes
    master.primary = False  # demoted (or restarted stale); the standby is not promoted yet
    proxy.wait_for_state({"master": "DOWN", "standby": "DOWN"}, timeout=5.0)
    served = master.served("/")
    assert answers(proxy) == {"status 503"}
    standby.primary = True
    seconds_until_traffic_reaches(proxy, "standby")
    assert answers(proxy) == {"standby"}
    assert master.served("/") == served, "HAProxy sent requests to a node marked down"


def test_when_both_answer_200_the_active_server_wins(
    proxy: RunningHAProxy, nodes: tuple[FakeNode, FakeNode]
) -> None:
    master, standby = nodes
    master.primary, standby.primary = False, True
    seconds_until_traffic_reaches(proxy, "standby")
    master.primary = True  # both claim the lead for a moment: the master's line is the active one
    proxy.wait_for_state({"master": "UP", "standby": "UP"}, timeout=5.0)
    assert answers(proxy) == {"master"}


def test_streams_are_not_buffered_and_are_cut_when_their_node_is_marked_down(
    proxy: RunningHAProxy, nodes: tuple[FakeNode, FakeNode]
) -> None:
    master, _standby = nodes
    conn = HTTPConnection("127.0.0.1", proxy.settings.bind_port, timeout=5)
    try:
        conn.request("GET", "/stream")
        response = conn.getresponse()
        start = time.monotonic()
        first = [response.readline() for _ in range(5)]
        assert first == [f"master {i}\n".encode() for i in range(5)]
        assert time.monotonic() - start < 1.0, "lines arrive as they are written, not when the body ends"
        master.primary = False
        flipped = time.monotonic()
        received = 5
        try:
            while response.readline():
                received += 1
        except (HTTPException, OSError):
            pass
        assert time.monotonic() - flipped < 2.0
        assert received < 200, "the stream ran to its end instead of being cut"
    finally:
        conn.close()


def test_plugin_daemon_mode_sends_traffic_to_the_daemon_and_checks_to_hotstandby(tmp_path: Path) -> None:
    traffic, check = free_port_on(MASTER_HOST, STANDBY_HOST), free_port_on(MASTER_HOST, STANDBY_HOST)
    master = FakeNode("master", MASTER_HOST, traffic, check, primary=True).start()
    standby = FakeNode("standby", STANDBY_HOST, traffic, check).start()
    try:
        with running_haproxy(
            MASTER_HOST, STANDBY_HOST, traffic, check_port=check, mode="plugin-daemon", workdir=tmp_path
        ) as proxy:
            proxy.wait_for_state({"master": "UP", "standby": "DOWN"})
            assert answers(proxy) == {"master"}
            assert answered_by(proxy, "/e/abc/hook") == "master"  # the plugin endpoint path too
            assert master.served("/e/abc/hook", traffic) == 1
            assert master.served("/primary", check) > 0
            assert master.served("/primary", traffic) == 0
            master.primary, standby.primary = False, True
            assert seconds_until_traffic_reaches(proxy, "standby") < 2.0
            assert standby.served("/", traffic) > 0
    finally:
        master.stop()
        standby.stop()
