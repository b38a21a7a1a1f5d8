"""A file written by one long call has no events while it grows: it must not ship half written
(replication/watcher.py, Watcher._look and still_written)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent

from replication.exclude import ReadyMarkers
from replication.watcher import QUIET_SECONDS, Watcher, still_written
from tests.support.folder_opens import folder_opens


class Recorded:
    def __init__(self) -> None:
        self.synced: list[tuple[str, float]] = []
        self.changed = asyncio.Event()

    def record_sync(self, path: str, attr_hint: object = None, size_hint: object = None) -> None:
        self.synced.append((path, time.monotonic()))
        self.changed.set()

    async def until(self, count: int) -> None:
        while len(self.synced) < count:
            self.changed.clear()
            await self.changed.wait()

    def record_delete(self, path: str) -> None:
        raise AssertionError(path)

    def record_rename(self, src: str, dest: str) -> None:
        raise AssertionError(src)


def grow(path: Path, seconds: float, step: float) -> float:
    """Append to `path` every `step` seconds, without any event reaching the watcher; returns the end."""
    with open(path, "ab") as fh:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fh.write(b"x" * 4096)
            fh.flush()
            time.sleep(step)
    return time.monotonic()


def test_a_created_file_that_keeps_growing_without_events_waits_until_it_stops(tmp_path: Path) -> None:
    recorded = Recorded()
    target = tmp_path / "big.bin"
    target.write_bytes(b"")

    async def main() -> float:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        watcher._on_events([FileCreatedEvent(str(target))])
        finished = await asyncio.to_thread(grow, target, 4 * QUIET_SECONDS, QUIET_SECONDS / 8)
        await recorded.until(1)
        return finished

    finished = asyncio.run(asyncio.wait_for(main(), 10))
    assert [path for path, _at in recorded.synced] == ["big.bin"]
    assert recorded.synced[0][1] >= finished, "shipped while it was still growing"


def test_a_file_that_stays_still_ships_after_the_quiet_time_and_a_close_ships_at_once(tmp_path: Path) -> None:
    recorded = Recorded()
    still, closed = tmp_path / "still", tmp_path / "closed"
    still.write_bytes(b"done")
    closed.write_bytes(b"done")
    os.utime(still, (time.time() - 10, time.time() - 10))

    async def main() -> float:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        started = time.monotonic()
        watcher._on_events([FileModifiedEvent(str(still)), FileCreatedEvent(str(closed))])
        watcher._on_events([FileClosedEvent(str(closed))])
        await recorded.until(2)
        await asyncio.sleep(3 * QUIET_SECONDS)  # nothing more comes: the closed file's timer was cancelled
        return started

    started = asyncio.run(asyncio.wait_for(main(), 10))
    assert [path for path, _at in recorded.synced] == ["closed", "still"]
    assert recorded.synced[0][1] - started < QUIET_SECONDS
    assert QUIET_SECONDS <= recorded.synced[1][1] - started < 3 * QUIET_SECONDS


def test_still_written_reads_a_change_or_a_fresh_mtime() -> None:
    now_ns = 1_000 * 10**9
    quiet_ns = int(QUIET_SECONDS * 1e9)
    assert still_written((10, 5), (0, 5), now_ns)  # grew since the last look
    assert still_written((10, 6), (10, 5), now_ns)  # rewritten in place
    assert not still_written((10, 5), (10, 5), now_ns)
    assert still_written((10, now_ns - quiet_ns // 2), None, now_ns)  # a write began after the last event
    assert not still_written((10, now_ns - 2 * quiet_ns), None, now_ns)


def test_a_symlink_ships_after_one_quiet_time_and_a_file_never_closed_after_two(tmp_path: Path) -> None:
    """Neither gets a close: the symlink is complete when it appears, the file is looked at twice."""
    recorded = Recorded()
    (tmp_path / "link").symlink_to("anywhere")
    (tmp_path / "held").write_bytes(b"held open")
    os.utime(tmp_path / "held", (time.time() - 10, time.time() - 10))

    async def main() -> float:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        started = time.monotonic()
        watcher._on_events(
            [FileCreatedEvent(str(tmp_path / "link")), FileCreatedEvent(str(tmp_path / "held"))]
        )
        await recorded.until(2)
        return started

    started = asyncio.run(asyncio.wait_for(main(), 10))
    (link, link_at), (held, held_at) = recorded.synced
    assert (link, held) == ("link", "held")
    assert QUIET_SECONDS <= link_at - started < 2 * QUIET_SECONDS
    assert 2 * QUIET_SECONDS <= held_at - started < 4 * QUIET_SECONDS


MARKERS = ReadyMarkers(["**/.venv/dify/plugin.json"])


def files_in_order(recorded: Recorded) -> list[str]:
    """The files recorded, in order (the walk of a new folder records its folders too)."""
    return [path for path, _at in recorded.synced if path.endswith((".py", ".json"))]


def plugin_folder_that_appeared(tmp_path: Path, *, marker_written: bool) -> tuple[Path, Path]:
    """`p/` with a file written just now (its close came before any watch) and maybe its marker."""
    plugin = tmp_path / "p"
    (plugin / ".venv" / "dify").mkdir(parents=True)
    (plugin / "a.py").write_text("value = 1\n")
    marker = plugin / ".venv" / "dify" / "plugin.json"
    if marker_written:
        marker.write_text("{}")
        old = time.time() - 10
        os.utime(marker, (old, old))  # walked as a settled file, not one still being written
    return plugin, marker


def test_a_ready_marker_closed_while_its_plugin_files_wait_for_quiet_goes_after_them(tmp_path: Path) -> None:
    """The installer wrote a.py before our watch on the new folder: a.py waits for quiet, the
    marker's close comes at once. The marker must still reach the journal last, and at once."""
    recorded = Recorded()

    async def main() -> None:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False, MARKERS)
        _plugin, marker = plugin_folder_that_appeared(tmp_path, marker_written=False)
        watcher.record_tree("p", appeared=True)
        assert files_in_order(recorded) == []  # a.py waits for its close or for quiet
        marker.write_text("{}")
        watcher._on_events([FileCreatedEvent(str(marker)), FileClosedEvent(str(marker))])
        watcher.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert files_in_order(recorded) == ["p/a.py", "p/.venv/dify/plugin.json"]


def test_a_ready_marker_found_walking_a_new_folder_goes_after_its_waiting_files(tmp_path: Path) -> None:
    recorded = Recorded()

    async def main() -> None:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False, MARKERS)
        plugin_folder_that_appeared(tmp_path, marker_written=True)
        watcher.record_tree("p", appeared=True)
        watcher.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert files_in_order(recorded) == ["p/a.py", "p/.venv/dify/plugin.json"]


def test_files_of_other_plugins_keep_waiting_for_quiet(tmp_path: Path) -> None:
    recorded = Recorded()

    async def main() -> None:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False, MARKERS)
        (tmp_path / "q").mkdir()
        (tmp_path / "q" / "b.py").write_text("value = 2\n")
        watcher.record_tree("q", appeared=True)
        _plugin, marker = plugin_folder_that_appeared(tmp_path, marker_written=False)
        marker.write_text("{}")
        watcher._on_events([FileClosedEvent(str(marker))])
        assert files_in_order(recorded) == ["p/.venv/dify/plugin.json"]
        while len(files_in_order(recorded)) < 2:  # q/b.py after its quiet time
            await recorded.until(len(recorded.synced) + 1)
        watcher.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert files_in_order(recorded) == ["p/.venv/dify/plugin.json", "q/b.py"]


def test_a_new_folders_files_wait_for_their_close_and_its_creates_add_no_wait(tmp_path: Path) -> None:
    """A folder that was made is listed, not lstat'ed file by file (Watcher._folder_made): its files wait
    for their close, or ship after one quiet time and one look. watchdog reports every file it finds in
    such a folder as created; those creates must not make them wait twice (Watcher._created)."""
    from watchdog.events import DirCreatedEvent, FileDeletedEvent

    recorded = Recorded()
    recorded.record_delete = lambda path: None  # type: ignore[method-assign]
    folder = tmp_path / "venv"
    (folder / "lib").mkdir(parents=True)
    old = time.time() - 10
    for name in ("a.py", "b.py", "gone.py", "closed.py"):
        (folder / name).write_bytes(b"done")
        os.utime(folder / name, (old, old))
    os.symlink("a.py", folder / "link")

    async def main() -> tuple[list[str], dict[str, bool], list[str], int]:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        watcher._on_events([DirCreatedEvent(str(folder))])
        at_once = sorted(path for path, _at in recorded.synced)
        (folder / "gone.py").unlink()
        (folder / "gone.py").write_bytes(b"new")  # created again after the listing: a new file
        watcher._on_events(
            [FileCreatedEvent(str(folder / n)) for n in ("a.py", "b.py", "closed.py")]
            + [FileDeletedEvent(str(folder / "gone.py")), FileCreatedEvent(str(folder / "gone.py"))]
            + [FileClosedEvent(str(folder / "closed.py"))]
        )
        waiting = {path: dirty.created for path, dirty in watcher._dirty.items()}
        await recorded.until(len(at_once) + 4)  # the new gone.py last, once quiet twice
        return at_once, waiting, [path for path, _at in recorded.synced[len(at_once) :]], len(watcher._walked)

    at_once, waiting, then, left = asyncio.run(asyncio.wait_for(main(), 10))
    assert at_once == ["venv", "venv/lib", "venv/link"]
    assert waiting == {"venv/a.py": False, "venv/b.py": False, "venv/gone.py": True}
    assert then[0] == "venv/closed.py" and sorted(then[1:3]) == ["venv/a.py", "venv/b.py"]
    assert then[3] == "venv/gone.py"
    assert left == 0


def test_files_whose_quiet_ends_together_are_looked_at_through_one_open_of_their_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst's files come a few hundred to a folder, and many reach us without a close (they closed
    before watchdog watched their new folder): each look opened the folder again (Watcher._look)."""
    recorded = Recorded()
    (tmp_path / "d").mkdir()
    old = time.time() - 10
    for n in range(50):
        (tmp_path / "d" / f"f{n:02d}").write_bytes(b"done")
        os.utime(tmp_path / "d" / f"f{n:02d}", (old, old))

    async def main() -> list[str]:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        opened = folder_opens(monkeypatch, watcher._storage)
        watcher._on_events([FileModifiedEvent(str(tmp_path / "d" / f"f{n:02d}")) for n in range(50)])
        await recorded.until(50)
        watcher.stop()
        return opened

    opened = asyncio.run(asyncio.wait_for(main(), 10))
    assert sorted(path for path, _at in recorded.synced) == [f"d/f{n:02d}" for n in range(50)]
    assert opened == ["d"]


def test_a_folder_moved_in_from_outside_is_recorded_at_once(tmp_path: Path) -> None:
    """watchdog reports a folder moved in from outside the storage as created; its files get no event
    at all. Its entries changed long ago (its mtime says so): its finished files go at once, as a walk
    finds them, not after a quiet time each (Watcher._folder_appeared)."""
    from watchdog.events import DirCreatedEvent

    recorded = Recorded()
    folder = tmp_path / "plugin"
    (folder / "lib").mkdir(parents=True)
    old = time.time() - 10
    for name in ("a.py", "lib/b.py"):
        (folder / name).write_bytes(b"done")
        os.utime(folder / name, (old, old))
    for made in (folder / "lib", folder):
        os.utime(made, (old, old))

    async def main() -> tuple[list[str], int]:
        watcher = Watcher(str(tmp_path), recorded, lambda _p: False)
        watcher._on_events([DirCreatedEvent(str(folder))])
        waiting = len(watcher._dirty)
        watcher.stop()
        return sorted(path for path, _at in recorded.synced), waiting

    at_once, waiting = asyncio.run(asyncio.wait_for(main(), 10))
    assert at_once == ["plugin", "plugin/a.py", "plugin/lib", "plugin/lib/b.py"]
    assert waiting == 0
