"""`hotstandby serve` loads what a node runs, not the operator commands' parsers or optional clients.

The node is started with PYTHONPROFILEIMPORTTIME=1, so its log lists every module it imported until
it answered /health; the drill (and its plotting), asyncssh and psycopg must not be among them
unless the configuration asks for them (an ssh:// target, DATABASE_URL); nor NumPy, which only a delta needs.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.cluster import Node

NOT_AT_START = ("daemon.drill", "daemon.store.preload_cli", "asyncssh", "psycopg", "matplotlib", "numpy")


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
