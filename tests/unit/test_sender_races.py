"""A folder renamed while the sender reads what is below it: nothing may be left behind.

The sender reads content when a change goes out, so a rename of a folder above a file can land
between the file's lstat and its open (or readlink). The rename change that follows must then
re-send the file under its new name; a CI run of the fan-out test lost one file this way
(lstat found it, the open did not, and nothing remembered it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from replication import sender as sender_module
from replication.errors import PeerError, RefusedError
from replication.exclude import ReadyMarkers
from replication.journal import Change, Journal
from replication.metrics import ReplicationMetrics
from replication.sender import LinkSettings, Sender


@pytest.fixture(autouse=True)
def read_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """These races are about the loop's own reads (big files and deltas are read there): the read-ahead,
    which holds the folder open from lstat to open, has its own tests (test_read_ahead.py)."""
    monkeypatch.setattr(sender_module, "READ_AHEAD_FROM", 1_000_000)


def make_sender(root: Path) -> Sender:
    return Sender(
        LinkSettings(target="http://replica.invalid", server_key="k", node_id="n"),
        str(root),
        Journal("J", ReadyMarkers([])),
        ReplicationMetrics(CollectorRegistry()),
        skip=lambda _p: False,
        epoch=lambda: 1,
        record_tree=lambda _rel: 0,
    )


def frames(sender: Sender, batch: list[Change]) -> tuple[bytes, list[str]]:
    resend: list[str] = []

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in sender._frames(batch, batch[-1].seq, resend)])

    return asyncio.run(collect()), resend


def rename_first(root: Path, call: Callable[..., Any]) -> Callable[..., Any]:
    """`call`, run just after `deep` was renamed to `moved` (the race, made certain)."""

    def raced(*args: Any) -> Any:
        os.rename(root / "deep", root / "moved")
        return call(*args)

    return raced


def test_a_file_whose_folder_moved_between_lstat_and_open_is_sent_under_its_new_name(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "f.txt").write_bytes(b"content that must arrive")
    sender = make_sender(tmp_path)
    sender._tree.open_file = rename_first(tmp_path, sender._tree.open_file)  # type: ignore[method-assign]

    sent, _ = frames(sender, [Change(1, "sync", "deep/f.txt")])
    assert b"content that must arrive" not in sent  # gone at the open: nothing to send yet

    _, resend = frames(sender, [Change(2, "rename", "deep", dest="moved")])
    assert resend == ["moved/f.txt"]


def test_a_symlink_whose_folder_moved_between_lstat_and_readlink_is_sent_under_its_new_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "deep").mkdir()
    os.symlink("somewhere", tmp_path / "deep" / "link")
    sender = make_sender(tmp_path)
    sender._tree.readlink = rename_first(tmp_path, sender._tree.readlink)  # type: ignore[method-assign]

    frames(sender, [Change(1, "sync", "deep/link")])
    _, resend = frames(sender, [Change(2, "rename", "deep", dest="moved")])
    assert resend == ["moved/link"]


def test_what_a_failed_batch_found_moved_is_still_sent_after_it(tmp_path: Path) -> None:
    """The batch carrying the rename is cut after its frames were built: its re-sends are queued anyway.

    Its frames took the vanished paths out of the sender's memory; the batch goes again after the
    reconnect, but only the journal can bring the moved file along then.
    """
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "f.txt").write_bytes(b"content")
    sender = make_sender(tmp_path)
    sender._tree.open_file = rename_first(tmp_path, sender._tree.open_file)  # type: ignore[method-assign]
    frames(sender, [Change(1, "sync", "deep/f.txt")])

    async def cut_after_sending(_method: str, _path: str, *, data: Any = None, **_kw: Any) -> dict[str, Any]:
        async for _chunk in data:
            pass
        raise PeerError("connection reset while waiting for the answer")

    sender._call = cut_after_sending  # type: ignore[method-assign,assignment]
    rename = sender.journal.counter.next()
    with pytest.raises(PeerError):
        asyncio.run(sender._send_once([Change(rename, "rename", "deep", dest="moved")]))
    assert [c.path for c in sender.journal._entries.values() if c.kind == "sync"] == ["moved/f.txt"]


def test_a_symlinked_folder_refused_again_and_again_ends_in_a_rescan_not_a_loop(tmp_path: Path) -> None:
    """Each refusal sends the folder first; if the replica keeps refusing anyway, the change is dropped
    and a rescan repairs by manifest (a full run once looped here for 30 s)."""
    (tmp_path / "race").mkdir()
    (tmp_path / "race" / "f.txt").write_bytes(b"inside")
    sender = make_sender(tmp_path)
    journal = sender.journal
    journal.record_sync("race/f.txt")
    repairs = 0
    for _ in range(sender_module.MAX_SYMLINK_REPAIRS + 1):
        batch = journal.take_batch(100, 1 << 20, lambda _c: 0)
        failed = next(c for c in batch if c.path == "race/f.txt")
        body: dict[str, object] = {
            "applied_seq": batch[0].seq - 1,
            "failed_seq": failed.seq,
            "symlink_at": "race",
        }
        assert sender._after_refusal(RefusedError("refused", status=409, body=body), batch)
        if journal.rescan_reason is not None:
            break
        repairs += 1
        assert [c.path for c in journal.peek_unsent(10)][:1] == ["race"]  # the folder goes first
    assert repairs == sender_module.MAX_SYMLINK_REPAIRS
    assert journal.rescan_reason == "refused_change"
    assert "race/f.txt" not in [c.path for c in journal.peek_unsent(10)]
