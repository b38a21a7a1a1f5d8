"""`hotstandby serve` loads what a node runs, not the operator commands' parsers or optional clients.

The node is started with PYTHONPROFILEIMPORTTIME=1, so its log lists every module it imported until
it answered /health; the drill (and its plotting), asyncssh and psycopg must not be among them
unless the configuration asks for them (an ssh:// target, DATABASE_URL); nor NumPy, which only a delta needs.
Nor, until the node listens, what only a leader runs (watcher, watchdog, journal, senders), the operator
commands' module or the status page's files (issue 15: start to healthy): a leader imports its code in a
thread once it listens, and a replica too, ahead of a promotion.
"""

from __future__ import annotations

import re
from pathlib import Path

from daemon.node import LEADER_CODE
from tests.support.cluster import Node, make_pair, wait_until

NOT_AT_START = ("daemon.drill", "daemon.store.preload_cli", "asyncssh", "psycopg", "matplotlib", "numpy")
NOT_BEFORE_LISTENING = (*LEADER_CODE, "watchdog", "daemon.ctl", "importlib.resources")


def imported(log: str) -> set[str]:
    return {
        m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.*)$", log, re.MULTILINE)
    }


def test_serve_imports_neither_the_drill_nor_optional_clients(tmp_path: Path) -> None:
    node = Node("alone", "master", tmp_path / "alone", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        node.start()
        modules = imported(node.log_path.read_text())
        assert "daemon.server" in modules, "the import log was not captured"
        loaded = sorted(m for m in modules if m.startswith(NOT_AT_START))
        assert loaded == [], f"serve imported {loaded}"
    finally:
        node.stop()
        node.kill()


def imported_before_listening(log: str) -> list[str]:
    """The modules the import log lists before the node's `started` line (it listens from there).

    The log has a line for each `import` statement, not for importlib.import_module's own module (a
    leader's code is loaded with it): what those modules import shows that they were loaded."""
    head = log.split('"event": "started"', 1)[0]
    return [
        m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.*)$", head, re.MULTILINE)
    ]


def test_both_roles_listen_before_they_load_the_leaders_code_and_then_load_it(tmp_path: Path) -> None:
    profiled = {"PYTHONPROFILEIMPORTTIME": "1"}
    pair = make_pair(tmp_path, master_env=dict(profiled), slave_env=dict(profiled))
    try:
        pair.start()
        for node in (pair.master, pair.slave):
            wait_until(
                lambda n=node: (
                    {"replication.sender", "watchdog.observers"} <= imported(n.log_path.read_text())
                ),
                10,
                message=f"{node.name} to load the leader's code after it listens",
            )
            early = imported_before_listening(node.log_path.read_text())
            assert "daemon.server" in early, "the import log was not captured"
            assert [m for m in early if m.startswith(NOT_BEFORE_LISTENING)] == [], node.name
    finally:
        pair.stop()
