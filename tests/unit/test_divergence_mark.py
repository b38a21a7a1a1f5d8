"""The leader's divergence mark: saved once a second off the event loop, never older than what was saved."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from daemon import divergence
from daemon.divergence import DivergenceTracker


def test_the_periodic_save_runs_in_a_worker_thread_not_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved_on: list[str] = []
    real_save = divergence.statefile.save

    def recording_save(path: str, data: dict[str, Any]) -> None:
        saved_on.append(threading.current_thread().name)
        real_save(path, data)

    monkeypatch.setattr(divergence.statefile, "save", recording_save)
    now = [1000.0]
    tracker = DivergenceTracker(str(tmp_path), clock=lambda: now[0])

    async def acknowledge() -> None:
        tracker.acknowledged(oldest_pending_age=0.0, pending=0)
        assert tracker._periodic is not None
        await tracker._periodic

    asyncio.run(acknowledge())
    assert saved_on and saved_on[0] != threading.main_thread().name
    assert json.loads((tmp_path / "divergence.json").read_text()) == {"replicated_until": 1000.0}


def test_a_forced_save_waits_for_a_periodic_one_and_the_newest_mark_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = divergence.statefile.save
    in_save, release = threading.Event(), threading.Event()

    def slow_save(path: str, data: dict[str, Any]) -> None:
        if threading.current_thread() is not threading.main_thread():
            in_save.set()
            release.wait(10)
        real_save(path, data)

    monkeypatch.setattr(divergence.statefile, "save", slow_save)
    now = [1000.0]
    tracker = DivergenceTracker(str(tmp_path), clock=lambda: now[0])

    async def race() -> None:
        tracker.acknowledged(oldest_pending_age=0.0, pending=0)  # periodic, in a thread, held
        assert await asyncio.to_thread(in_save.wait, 10)
        threading.Timer(0.2, release.set).start()
        tracker.leading_from(now=2000.0)  # forced, here: waits for the held save, then writes 2000
        assert tracker._periodic is not None
        await tracker._periodic

    asyncio.run(race())
    assert json.loads((tmp_path / "divergence.json").read_text()) == {"replicated_until": 2000.0}
