"""A control loop that stopped ticking is visible on /liveness while HTTP still answers."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from daemon.api import build_app
from daemon.config import Config
from daemon.ha_loop import ControlLoop
from daemon.node import Node


async def test_liveness_turns_503_when_the_control_loop_stalls(tmp_path: Path) -> None:
    config = Config.from_env(
        {"STORAGE_PATH": str(tmp_path / "storage"), "LIVENESS_BOUND": "2", "SERVER_HOST": "127.0.0.1"}
    )
    node = Node(config)
    control = ControlLoop(node, backend=None)
    async with TestClient(TestServer(build_app(node, control))) as client:
        control.last_tick = time.monotonic()
        assert (await client.get("/liveness")).status == 200
        control.last_tick = time.monotonic() - 3
        response = await client.get("/liveness")
        assert response.status == 503
        assert (await response.json())["bound"] == 2
        assert (await client.get("/health")).status in (200, 503)  # the HTTP side still answers
