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

from replication.errors import PeerError
from replication.exclude import ReadyMarkers
from replication.journal import Change, Journal
from replication.metrics import ReplicationMetrics
from replication.sender import LinkSettings, Sender


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
