"""A master without SERVER_KEY on a non-loopback address warns loudly; with REQUIRE_AUTH=true it refuses.

Listening on 0.0.0.0 happens inside a network namespace of the test's own (`unshare -n`), where the
only interface is a loopback that is down: nothing outside the test can reach the port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def daemon_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    drop = ("SERVER_KEY", "SYNC_TARGET", "SYNC_SOURCE", "ROLE", "REQUIRE_AUTH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        {
            "ROLE": "master",
            "STORAGE_PATH": str(tmp_path / "storage"),
            "STATE_PATH": str(tmp_path / "state"),
            "SERVER_PORT": str(free_port()),
            "MARKETPLACE_URL": "",
            **extra,
        }
    )
    return env


def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -n` (root or user namespaces)")
def test_a_master_without_a_key_on_all_addresses_logs_a_loud_warning(tmp_path: Path) -> None:
    log_path = tmp_path / "node.log"
    env = daemon_env(tmp_path, SERVER_HOST="0.0.0.0")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "-n", sys.executable, "-m", "daemon", "serve"], env=env, stdout=log, stderr=log
        )
    try:
        wait_until(lambda: '"event": "started"' in log_path.read_text(), 20, message="the daemon to start")
        text = log_path.read_text()
        warning = next(line for line in text.splitlines() if "UNAUTHENTICATED_API" in line)
        assert '"level": "warning"' in warning and "SERVER_KEY is not set" in warning
        assert proc.poll() is None, "a warning, not a refusal"
    finally:
        proc.terminate()
        proc.wait(15)


def test_with_require_auth_it_refuses_to_start_naming_the_variable(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, SERVER_HOST="0.0.0.0", REQUIRE_AUTH="true")  # refused before any bind
    done = subprocess.run([sys.executable, "-m", "daemon", "serve"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2, done.stderr.decode()
    assert b"REQUIRE_AUTH=true but SERVER_KEY is not set" in done.stderr


def test_on_loopback_there_is_no_warning(tmp_path: Path) -> None:
    log_path = tmp_path / "node.log"
    env = daemon_env(tmp_path, SERVER_HOST="127.0.0.1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_until(lambda: '"event": "started"' in log_path.read_text(), 20, message="the daemon to start")
        assert "UNAUTHENTICATED_API" not in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
