"""The watch count behind new folders is not a failure; watches that stop coming are
(replication/watcher.py, Watcher.verify_coverage)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

from replication import watcher as watcher_module
from replication.watcher import STALLED_SECONDS, Watcher
from tests.unit.test_watcher_quiet import Recorded


@pytest.fixture
def held_back(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """watchdog's dispatcher thread handles no event (so adds no watch for a new folder) until set:
    a dispatcher that runs behind, as it does while a burst makes folders and files."""
    go_on = threading.Event()
    go_on.set()

    class Behind(InotifyFD):
        def handle_event(self, event: InotifyEvent) -> None:
            go_on.wait(10)
            super().handle_event(event)

    monkeypatch.setattr(watcher_module, "InotifyFD", Behind)
    yield go_on
    go_on.set()  # never leave the thread waiting


def _verify_after_new_folders(
    root: Path, held_back: threading.Event, catch_up_after: float | None
) -> tuple[str | None, float]:
    """Make 20 folders while the dispatcher is held back, let it go on after `catch_up_after` seconds (never
    when None) and verify the coverage: the watcher's failure and the seconds the verification took."""

    async def main() -> tuple[str | None, float]:
        watcher = Watcher(str(root), Recorded(), lambda _p: False)
        await watcher.start()
        try:
            await watcher.ready()
            held_back.clear()
            for n in range(20):
                (root / f"new{n:02d}").mkdir()
            if catch_up_after is not None:
                asyncio.get_running_loop().call_later(catch_up_after, held_back.set)
            began = time.monotonic()
            await watcher.verify_coverage()
            return watcher.failure, time.monotonic() - began
        finally:
            held_back.set()
            watcher.stop()

    return asyncio.run(asyncio.wait_for(main(), 20))


def test_folders_whose_watches_come_late_are_no_failure(tmp_path: Path, held_back: threading.Event) -> None:
    failure, took = _verify_after_new_folders(tmp_path, held_back, catch_up_after=0.4)
    assert failure is None
    assert 0.3 < took < STALLED_SECONDS + 2  # it waited for the watches, not for the stall bound


def test_watches_that_stop_coming_are_a_failure(tmp_path: Path, held_back: threading.Event) -> None:
    failure, took = _verify_after_new_folders(tmp_path, held_back, catch_up_after=None)
    assert failure is not None and "only 1 of 21 directories are watched" in failure
    assert took >= STALLED_SECONDS
