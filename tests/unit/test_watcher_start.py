"""The watches are added off the loop (watchdog adds them as its emitter starts, walking the whole tree),
and a start abandoned half way stops what its thread started (replication/watcher.py, Watcher.start)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from replication import watcher as watcher_module
from replication.watcher import Inotify, Watcher
from tests.unit.test_watcher_quiet import Recorded


def test_the_watches_are_added_off_the_loop_and_changes_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(20):
        (tmp_path / f"d{n}" / "sub").mkdir(parents=True)
    started_on: list[threading.Thread] = []

    class Recording(Inotify):
        def start(self) -> None:
            started_on.append(threading.current_thread())
            super().start()

    monkeypatch.setattr(watcher_module, "Inotify", Recording)
    recorded = Recorded()

    async def main() -> None:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        await watcher.start()
        try:
            await watcher.ready()
            (tmp_path / "d7" / "sub" / "new.txt").write_bytes(b"seen")
            await recorded.until(1)
        finally:
            watcher.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert started_on and started_on[0] is not threading.main_thread()
    assert [path for path, _at in recorded.synced] == ["d7/sub/new.txt"]


def test_a_cancelled_start_stops_the_inotify_threads_once_its_thread_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    made: list[Inotify] = []

    class Slow(Inotify):
        def start(self) -> None:
            made.append(self)
            entered.set()
            release.wait(5)
            super().start()

    monkeypatch.setattr(watcher_module, "Inotify", Slow)

    async def main() -> None:
        watcher = Watcher(str(tmp_path), Recorded(), lambda _p: False)
        starting = asyncio.create_task(watcher.start())
        await asyncio.to_thread(entered.wait, 5)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        watcher.stop()  # what the node does when its start is cancelled: the alarm goes
        release.set()
        for _ in range(200):  # the threads are stopped on the loop once the start thread returns
            if made[0].stopped:
                break
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert made[0].stopped
    made[0].join(5)
    assert not made[0].is_alive()
