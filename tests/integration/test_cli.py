"""Promise 9: bad configuration exits with status 2 and one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ROLE": "boss"}, "ROLE"),
        ({"SERVER_PORT": "http"}, "SERVER_PORT"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"SYNC_TARGET": "ftp://slave"}, "SYNC_TARGET"),
        ({"ROLE": "slave", "SYNC_TARGET": "http://x:1"}, "SYNC_TARGET"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(tmp_path, env: dict[str, str], variable: str) -> None:
    full_env = {**os.environ, "STORAGE_PATH": str(tmp_path / "s"), **env}
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "serve"], env=full_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert "Traceback" not in done.stderr
