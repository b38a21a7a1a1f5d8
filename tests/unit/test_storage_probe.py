"""/health's write probe never runs on the event loop and never waits longer than its bound (issue 13).

A stalled disk (here: a probe that blocks until released) makes the node unhealthy with a reason;
the loop keeps answering meanwhile, and only one probe is ever in flight.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from daemon import storage_probe
from daemon.storage_probe import StorageProbe


async def test_a_writable_storage_is_healthy(tmp_path: Path) -> None:
    probe = StorageProbe(str(tmp_path), timeout=5)
    assert await probe.check() == (True, "")
    assert probe.last == (True, "")


async def test_a_missing_storage_is_unhealthy(tmp_path: Path) -> None:
    ok, reason = await StorageProbe(str(tmp_path / "gone"), timeout=5).check()
    assert not ok and "missing" in reason


async def test_a_stalled_write_is_unhealthy_and_never_blocks_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started: list[str] = []

    def stalled(path: str) -> tuple[bool, str]:
        started.append(threading.current_thread().name)
        release.wait(30)
        return True, ""

    monkeypatch.setattr(storage_probe, "storage_writable", stalled)
    probe = StorageProbe(str(tmp_path), timeout=0.2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        for _ in range(3):
            ok, reason = await probe.check()
            assert not ok and "stalled disk" in reason
        assert ticks >= 20  # the loop kept running through 0.6 s of stalled probes
        assert started == ["storage-probe"]  # one probe in flight, on its own thread
        release.set()
        for _ in range(50):
            if await probe.check() == (True, ""):
                break
        assert probe.last == (True, "")
    finally:
        release.set()
        task.cancel()
