"""Our walk for a reconciliation (replication/scan.py): taken as chunks or as a Listing, never both,
every entry once, whenever the choice is made."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from replication import manifest, scan
from replication.manifest import Entry
from replication.scan import Scan


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "CHUNK_ENTRIES", 3)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for folder in range(4):
        (tmp_path / f"d{folder}").mkdir()
        for index in range(5):
            (tmp_path / f"d{folder}" / f"f{index}").write_bytes(b"x" * index)
    return tmp_path


def walked(root: Path) -> list[Entry]:
    return list(manifest.walk(str(root)))


async def streamed(scanning: Scan) -> list[Entry]:
    return [entry async for chunk in scanning.stream() for entry in chunk]


async def test_streamed_while_the_walk_goes_every_entry_comes_once_in_walk_order(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real_walk = scan.walk

    def held_walk(*args: object) -> Iterator[Entry]:
        for count, entry in enumerate(real_walk(*args)):  # type: ignore[arg-type]
            if count == 7:
                gate.wait(10)  # the loop chooses while the walk is in its middle
            yield entry

    monkeypatch.setattr(scan, "walk", held_walk)
    scanning = Scan(str(tree), lambda _p: False)
    scanning.start()
    await asyncio.sleep(0.05)
    assert not scanning.done
    collecting = asyncio.ensure_future(streamed(scanning))
    await asyncio.sleep(0.05)
    gate.set()
    assert await collecting == walked(tree)


async def test_streamed_after_the_walk_ended_every_entry_still_comes(tree: Path) -> None:
    scanning = Scan(str(tree), lambda _p: False)
    scanning.start()
    assert scanning.walking is not None
    await scanning.walking
    assert await streamed(scanning) == walked(tree)


async def test_kept_it_is_a_listing_of_the_whole_walk(tree: Path) -> None:
    scanning = Scan(str(tree), lambda _p: False)
    scanning.start()
    listing = await scanning.listing()
    entries = walked(tree)
    assert len(listing) == len(entries)
    assert sorted(entry.path for entry in listing.left()) == sorted(entry.path for entry in entries)
    with pytest.raises(AssertionError):
        await streamed(scanning)  # taken one way only


async def test_a_failed_walk_fails_the_stream(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_walk = scan.walk

    def failing_walk(*args: object) -> Iterator[Entry]:
        for count, entry in enumerate(real_walk(*args)):  # type: ignore[arg-type]
            if count == 5:
                raise OSError(5, "Input/output error")
            yield entry

    monkeypatch.setattr(scan, "walk", failing_walk)
    scanning = Scan(str(tree), lambda _p: False)
    scanning.start()
    with pytest.raises(OSError, match="Input/output"):
        await streamed(scanning)


async def test_a_stopped_walk_ends_at_its_next_chunk(tree: Path) -> None:
    scanning = Scan(str(tree), lambda _p: False)
    scanning.stop()
    scanning.start()
    assert scanning.walking is not None
    await scanning.walking
    assert len(await scanning.listing()) < len(walked(tree))
