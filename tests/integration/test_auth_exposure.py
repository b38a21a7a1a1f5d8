"""Closed by default: beyond loopback a node without SERVER_KEY does not start, unless told explicitly.

The refusal comes before any socket is bound. The one run that does listen on 0.0.0.0
(ALLOW_UNAUTHENTICATED=true) happens inside a network namespace of the test's own (`unshare -n`),
whose only interface is its own loopback: nothing outside the test can reach the port, and the
test asks /internal/status from inside that namespace (`nsenter`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import free_port, wait_until

pytestmark = pytest.mark.timeout(60)


def daemon_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    drop = ("SERVER_KEY", "SYNC_TARGET", "SYNC_SOURCE", "ROLE", "REQUIRE_AUTH", "ALLOW_UNAUTHENTICATED")
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
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "daemon", "serve"], env=env, capture_output=True, timeout=30)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_without_a_key_beyond_loopback_it_exits_2_with_one_line_saying_how(tmp_path: Path, host: str) -> None:
    done = serve(daemon_env(tmp_path, SERVER_HOST=host))  # refused before anything is bound
    assert done.returncode == 2, done.stderr.decode()
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    for words in (
        "SERVER_KEY is not set",
        f"SERVER_HOST={host}",
        "SERVER_KEY_FILE",
        "ALLOW_UNAUTHENTICATED=true",
    ):
        assert words in lines[0]
    assert not (tmp_path / "state").exists(), "nothing was started"


def test_the_default_host_is_every_address_so_the_default_is_refused(tmp_path: Path) -> None:
    env = daemon_env(tmp_path)
    env.pop("SERVER_HOST", None)
    done = serve(env)
    assert done.returncode == 2 and b"SERVER_HOST=0.0.0.0" in done.stderr


def test_with_require_auth_it_refuses_even_on_loopback(tmp_path: Path) -> None:
    done = serve(daemon_env(tmp_path, SERVER_HOST="127.0.0.1", REQUIRE_AUTH="true"))
    assert done.returncode == 2, done.stderr.decode()
    assert b"REQUIRE_AUTH=true but SERVER_KEY is not set" in done.stderr


def _status_inside(pid: int, port: int) -> dict[str, object]:
    """GET /internal/status from inside the daemon's own network namespace."""
    script = (
        "import sys, urllib.request; "
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/internal/status', timeout=5).read().decode())"
    )
    done = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", script],
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -n` and `nsenter` (root)")
def test_allow_unauthenticated_starts_and_says_so_loudly_at_start_and_in_status(tmp_path: Path) -> None:
    log_path = tmp_path / "node.log"
    env = daemon_env(tmp_path, SERVER_HOST="0.0.0.0", ALLOW_UNAUTHENTICATED="true")
    inner = 'ip link set lo up && exec "$0" -m daemon serve'
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", inner, sys.executable], env=env, stdout=log, stderr=log
        )
    try:
        wait_until(lambda: '"event": "started"' in log_path.read_text(), 20, message="the daemon to start")
        warning = next(line for line in log_path.read_text().splitlines() if "UNAUTHENTICATED_API" in line)
        assert '"level": "warning"' in warning and "ALLOW_UNAUTHENTICATED=true" in warning
        status = _status_inside(proc.pid, int(env["SERVER_PORT"]))
        warnings = status["warnings"]
        assert isinstance(warnings, list) and len(warnings) == 1
        assert "SERVER_KEY is not set" in warnings[0] and "0.0.0.0" in warnings[0]
    finally:
        proc.terminate()
        proc.wait(15)


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
