"""The leader's read-ahead: the same frames as reading on the loop, torn and vanished files handled alike."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replication import sender as sender_module
from replication.journal import Change
from replication.read_ahead import ReadAhead, Snapshot, take_snapshot
from replication.sender import Sender
from replication.source import SourceTree
from tests.unit.test_sender_races import frames, make_sender


@pytest.fixture(autouse=True)
def read_ahead_for_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests use batches of a few changes: read them ahead as a seed's would be."""
    monkeypatch.setattr(sender_module, "READ_AHEAD_FROM", 1)


def loop_frames(root: Path, change: Change) -> tuple[bytes, list[str]]:
    """The frames of one change read on the loop, as before the read-ahead existed."""
    sender = make_sender(root)
    resend: list[str] = []

    async def collect() -> bytes:
        whole = sender._sync_frame(change, resend)
        if whole is not None:
            return whole
        return b"".join([chunk async for chunk in sender._put_frames(change, resend)])

    return asyncio.run(collect()), resend


def test_frames_from_the_read_ahead_are_the_bytes_the_loop_would_send(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "small.bin").write_bytes(os.urandom(70_000))
    (tmp_path / "a" / "empty").write_bytes(b"")
    os.symlink("small.bin", tmp_path / "a" / "link")
    changes = [
        Change(1, "sync", "a"),
        Change(2, "sync", "a/small.bin"),
        Change(3, "sync", "a/empty"),
        Change(4, "sync", "a/link"),
    ]
    sent, resend = frames(make_sender(tmp_path), changes)

    expected = b"".join(loop_frames(tmp_path, change)[0] for change in changes)
    assert sent.startswith(expected) and resend == []
    assert sent.count((tmp_path / "a" / "small.bin").read_bytes()) == 1


def test_a_file_changed_while_read_ahead_goes_out_discarded_and_is_sent_again(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    sender = make_sender(tmp_path)
    opened = sender._tree.open_file

    def open_then_append(*args: Any) -> Any:
        found = opened(*args)
        with open(tmp_path / "f", "ab") as fh:
            fh.write(b"more")
        return found

    sender._tree.open_file = open_then_append  # type: ignore[method-assign]
    sent, resend = frames(sender, [Change(1, "sync", "f")])
    assert resend == ["f"]
    assert b"x" * 1000 in sent


def test_a_file_gone_at_the_open_is_remembered_and_sent_under_its_new_name(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "f.txt").write_bytes(b"content that must arrive")
    sender = make_sender(tmp_path)
    opened = sender._tree.open_file

    def rename_then_open(*args: Any) -> Any:
        os.rename(tmp_path / "deep" / "f.txt", tmp_path / "deep" / "g.txt")
        return opened(*args)

    sender._tree.open_file = rename_then_open  # type: ignore[method-assign]
    sent, _ = frames(sender, [Change(1, "sync", "deep/f.txt")])
    assert b"content that must arrive" not in sent
    _, resend = frames(sender, [Change(2, "rename", "deep/f.txt", dest="deep/g.txt")])
    assert resend == ["deep/g.txt"]


def test_a_snapshot_reads_only_small_regular_files_that_must_travel(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"s" * 10)
    (tmp_path / "big").write_bytes(b"b" * 5000)
    os.mkfifo(tmp_path / "fifo")  # opened, it would block the thread forever
    tree = SourceTree(str(tmp_path))
    st = os.lstat(tmp_path / "small")

    small = take_snapshot(tree, Change(1, "sync", "small"), limit=4096)
    assert small.content == b"s" * 10
    assert take_snapshot(tree, Change(2, "sync", "big"), limit=4096).opened is None
    assert take_snapshot(tree, Change(3, "sync", "fifo"), limit=4096).opened is None
    hinted = Change(4, "sync", "small", attr_hint=(st.st_size, st.st_mtime_ns))
    assert take_snapshot(tree, hinted, limit=4096).opened is None  # attributes only: no content read
    assert take_snapshot(tree, Change(5, "sync", "missing"), limit=4096) == Snapshot(None)


def test_every_change_of_a_batch_longer_than_a_window_gets_its_own_snapshot(tmp_path: Path) -> None:
    for n in range(150):
        (tmp_path / f"f{n}").write_bytes(str(n).encode())
    batch = [Change(n + 1, "sync", f"f{n}") for n in range(150)]
    wanted: Callable[[Change], bool] = lambda c: c.seq % 7 != 0  # noqa: E731
    ahead = ReadAhead(SourceTree(str(tmp_path)), batch, wanted, window=16)

    async def collect() -> list[Snapshot | None]:
        try:
            return [await ahead.get(i) for i in range(len(batch))]
        finally:
            ahead.close()

    found = asyncio.run(collect())
    for n, snapshot in enumerate(found):
        if (n + 1) % 7 == 0:
            assert snapshot is None
        else:
            assert snapshot is not None and snapshot.content == str(n).encode()


def two_batches(root: Path, between: Callable[[Sender], None]) -> bytes:
    """Frames of the journal's second batch (one change each), `between` run after the first batch's
    frames, i.e. while the next batch's reads have already started."""
    sender = make_sender(root)
    for name in ("f1", "f2"):
        sender.journal.record_sync(name)

    async def run() -> bytes:
        first = sender.journal.take_batch(1, 1 << 30, lambda _c: 0)
        [_ async for _ in sender._frames(first, first[-1].seq, [])]
        assert sender._next_reads is not None
        await asyncio.gather(*sender._next_reads._started.values())  # the reads are done
        between(sender)
        second = sender.journal.take_batch(1, 1 << 30, lambda _c: 0)
        assert [c.path for c in second] == ["f2"]
        return b"".join([chunk async for chunk in sender._frames(second, second[-1].seq, [])])

    return asyncio.run(run())


def test_the_next_batch_is_read_while_this_one_awaits_its_answer(tmp_path: Path) -> None:
    (tmp_path / "f1").write_bytes(b"one")
    (tmp_path / "f2").write_bytes(b"read early")

    def rewrite_quietly(_sender: Sender) -> None:
        (tmp_path / "f2").write_bytes(b"read late!")  # no event recorded: the early read is used

    assert b"read early" in two_batches(tmp_path, rewrite_quietly)


def test_an_event_recorded_after_the_early_read_makes_the_next_batch_read_again(tmp_path: Path) -> None:
    """The event coalesces into the unsent change the early read covers: sending that read would lose it."""
    (tmp_path / "f1").write_bytes(b"one")
    (tmp_path / "f2").write_bytes(b"read early")

    def rewrite(sender: Sender) -> None:
        (tmp_path / "f2").write_bytes(b"read late!")
        sender.journal.record_sync("f2")

    sent = two_batches(tmp_path, rewrite)
    assert b"read late!" in sent and b"read early" not in sent


def test_windows_with_nothing_to_read_and_past_the_end_start_no_thread(tmp_path: Path) -> None:
    batch = [Change(1, "delete", "a"), Change(2, "rename", "b", dest="c")]
    ahead = ReadAhead(SourceTree(str(tmp_path)), batch, lambda c: c.kind == "sync", window=1)

    def no_thread(_changes: list[Change | None]) -> list[Snapshot | None]:
        raise AssertionError("a thread was started for a window with nothing to read")

    ahead._take = no_thread  # type: ignore[method-assign]

    async def collect() -> list[Snapshot | None]:
        found = [await ahead.get(0), await ahead.get(1)]
        assert sorted(ahead._started) == [1]  # window 2 would be past the end: never started
        return found

    assert asyncio.run(collect()) == [None, None]


def test_a_small_batch_is_read_by_the_loop_without_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming sends a few files per batch: a thread hop each would only add latency."""
    monkeypatch.setattr(sender_module, "READ_AHEAD_FROM", 32)
    (tmp_path / "f").write_bytes(b"streamed")

    def no_thread(_self: ReadAhead, _changes: list[Change | None]) -> list[Snapshot | None]:
        raise AssertionError("a small batch was read in a thread")

    monkeypatch.setattr(ReadAhead, "_take", no_thread)
    sent, _ = frames(make_sender(tmp_path), [Change(1, "sync", "f")])
    assert b"streamed" in sent


def test_a_window_opens_each_folder_once_and_closes_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(3):
            (tmp_path / folder / f"f{i}").write_bytes(f"{folder}{i}".encode())
    tree = SourceTree(str(tmp_path))
    opened: list[str] = []
    parent_folder = tree.storage.parent_folder
    monkeypatch.setattr(tree.storage, "parent_folder", lambda rel: opened.append(rel) or parent_folder(rel))
    fds_before = len(os.listdir("/proc/self/fd"))
    changes = [Change(i + 1, "sync", f"{d}/f{i % 3}") for i, d in enumerate("aaabbb")]
    changes.append(Change(7, "sync", "gone/f"))
    snapshots = ReadAhead(tree, changes, lambda _c: True)._take(list(changes))
    assert [s.content if s else None for s in snapshots] == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2", b""]
    assert snapshots[-1] == Snapshot(None)
    assert opened == ["a/f0", "b/f0", "gone/f"]  # one open per folder, a missing one asked once
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_a_batch_cut_by_size_needs_one_lstat_per_file_on_the_loop_for_deltas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size taken for the batch limit also says which files are too small for a delta: only the
    big file is looked at again, and only its signature is asked for."""
    (tmp_path / "small").write_bytes(b"x" * 100)
    (tmp_path / "big").write_bytes(b"y" * (2 << 20))
    sender = make_sender(tmp_path)
    for name in ("small", "big"):
        sender.journal.record_sync(name)
    with sender._tree.folders() as folders:
        batch = sender.journal.take_batch(10, 1 << 30, lambda change: sender._size_of(change, folders))
    looked_at: list[str] = []
    current = sender._tree.current
    monkeypatch.setattr(sender._tree, "current", lambda path, *a: looked_at.append(path) or current(path, *a))
    asked: list[list[str]] = []

    async def answer(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        asked.append(kwargs["json"]["paths"])
        return {"signatures": {}}

    monkeypatch.setattr(sender, "_call", answer)
    assert asyncio.run(sender._fetch_signatures(batch)) == {}
    assert (looked_at, asked) == (["big"], [["big"]])
    # Not measured (a batch not cut by _size_of): both are looked at, as before.
    looked_at.clear()
    asked.clear()
    asyncio.run(sender._fetch_signatures(batch))
    assert (looked_at, asked) == (["small", "big"], [["big"]])


def test_a_window_asks_for_every_file_before_it_reads_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold disk serves a window's files faster when it has all their reads queued (FADVISE)."""
    from replication import read_ahead

    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(b"x" * (i + 1))
    (tmp_path / "empty").write_bytes(b"")
    calls: list[tuple[str, int]] = []
    advise, read = os.posix_fadvise, read_ahead.read_exactly
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, off, n, how: calls.append(("advise", n)) or advise(fd, off, n, how)
    )
    monkeypatch.setattr(read_ahead, "read_exactly", lambda fd, n: calls.append(("read", n)) or read(fd, n))
    changes = [Change(i + 1, "sync", f"f{i}") for i in range(4)] + [Change(5, "sync", "empty")]
    snapshots = ReadAhead(SourceTree(str(tmp_path)), changes, lambda _c: True)._take(list(changes))
    assert [s.content if s else None for s in snapshots] == [b"x", b"xx", b"xxx", b"xxxx", b""]
    assert calls == [("advise", 1), ("advise", 2), ("advise", 3), ("advise", 4)] + [
        ("read", n) for n in (1, 2, 3, 4, 0)
    ]


def test_a_read_failing_in_the_middle_of_a_window_closes_every_file_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replication import read_ahead

    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"y" * 10)
    read = read_ahead.read_exactly

    def failing(fd: int, size: int) -> bytes:
        if failing.calls == 2:  # type: ignore[attr-defined]
            raise OSError(5, "Input/output error")
        failing.calls += 1  # type: ignore[attr-defined]
        return read(fd, size)

    failing.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(read_ahead, "read_exactly", failing)
    fds_before = len(os.listdir("/proc/self/fd"))
    changes = [Change(i + 1, "sync", f"f{i}") for i in range(5)]
    with pytest.raises(OSError, match="Input/output"):
        ReadAhead(SourceTree(str(tmp_path)), changes, lambda _c: True)._take(list(changes))
    assert len(os.listdir("/proc/self/fd")) == fds_before
