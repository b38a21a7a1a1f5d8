"""Hot storage, warm daemon: the plugin daemon runs only on the writable leader.

A stand-in daemon (tests/support/busy_daemon.py) writes into its storage while it runs and
notes any file the leader wrote that shows up meanwhile; the real daemon's behaviour is
modelled in tests/support/plugin_daemon_model.py and exercised in test_plugin_daemon_failover.py.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Node, Pair, free_port, make_pair, wait_until
from tests.support.gated import Gate, descendants
from tests.support.ha import FAST

GATED = {**FAST, "PLUGIN_DAEMON_GATE": "true"}


def events(node: Node) -> list[dict[str, Any]]:
    path = node.base / "daemon-events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(node: Node, event: str) -> list[dict[str, Any]]:
    return [e for e in events(node) if e["event"] == event]


def busy_daemon(node: Node) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.support.busy_daemon",
        str(node.storage),
        str(node.base / "daemon-events.jsonl"),
    ]


@pytest.fixture
def gated_pair(tmp_path: Path) -> Iterator[tuple[Pair, dict[str, Gate]]]:
    pair = make_pair(tmp_path, master_env=GATED, slave_env=GATED)
    gates = {node.name: Gate(node, busy_daemon(node)) for node in (pair.master, pair.slave)}
    try:
        for gate in gates.values():
            gate.start()
        pair.start()
        yield pair, gates
    finally:
        for gate in gates.values():
            gate.stop()
        pair.stop()


def test_the_daemon_runs_on_the_leader_only(gated_pair: tuple[Pair, dict[str, Gate]]) -> None:
    pair, gates = gated_pair
    wait_until(lambda: bool(named(pair.master, "started")), 10, message="the leader's daemon to start")
    wait_until(
        lambda: pair.slave.status()["plugin_daemon"]["gate_seconds_since_report"] is not None,
        5,
        message="the replica's gate to report",
    )
    pid = named(pair.master, "started")[0]["pid"]
    wait_until(
        lambda: (pair.slave.storage / "persistence" / f"written-by-{pid}").exists(),
        10,
        message="the leader daemon's writes to reach the replica",
    )
    status = pair.slave.status()["plugin_daemon"]
    assert status["reported_running"] is False and status["blocks_applying"] is None
    assert named(pair.slave, "started") == [], gates["slave"].log()
    wait_until(
        lambda: pair.master.status()["plugin_daemon"]["reported_running"] is True,
        5,
        message="the leader's gate to report its daemon running",
    )
    closed = f"http://127.0.0.1:{free_port()}/health/check"
    assert gates["slave"].healthcheck(closed) == 0, "a replica's daemon is stopped on purpose: healthy"
    assert gates["master"].healthcheck(closed) == 1, "the leader's daemon must answer its health check"


def test_a_demoted_leader_stops_its_daemon_before_it_applies_anything(
    gated_pair: tuple[Pair, dict[str, Gate]],
) -> None:
    pair, gates = gated_pair
    wait_until(lambda: bool(named(pair.master, "started")), 10, message="the leader's daemon to start")
    writing = threading.Event()
    writing.set()

    def write_on_new_leader() -> None:
        n = 0
        while writing.is_set():
            if pair.slave.status()["writable"]:
                (pair.slave.storage / f"from-leader-{n}").write_text("new leader")
                n += 1
            threading.Event().wait(0.02)

    writer = threading.Thread(target=write_on_new_leader, daemon=True)
    writer.start()
    try:
        assert pair.master.call("POST", "/internal/drain")[0] == 200
        wait_until(lambda: pair.slave.call("POST", "/internal/promote")[0] == 200, 10, message="promotion")
        wait_until(lambda: bool(named(pair.slave, "started")), 10, message="the new leader's daemon")
        wait_until(lambda: bool(named(pair.master, "stopped")), 10, message="the old leader's daemon to stop")
        wait_until(
            lambda: any(p.name.startswith("from-leader-") for p in pair.master.storage.iterdir()),
            15,
            message="the old leader to apply the new leader's changes",
        )
    finally:
        writing.clear()
        writer.join(5)
    assert named(pair.master, "foreign_file_while_running") == [], gates["master"].log()
    assert len(named(pair.master, "started")) == 1, "the old leader's daemon must stay stopped"


def test_a_gate_killed_by_sigkill_takes_its_daemon_with_it(gated_pair: tuple[Pair, dict[str, Gate]]) -> None:
    """The daemon runs in a session of its own: only the gate's death signal ends it when the gate
    is killed outright (outside a container nothing else would, and the replica would then refuse
    to apply for as long as the orphan answers)."""
    pair, gates = gated_pair
    wait_until(lambda: bool(named(pair.master, "started")), 10, message="the leader's daemon to start")
    pid = int(named(pair.master, "started")[0]["pid"])
    gate = gates["master"].proc
    assert gate is not None and pid in descendants(gate.pid)
    gate.kill()
    gate.wait(10)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, message="the daemon to die")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
