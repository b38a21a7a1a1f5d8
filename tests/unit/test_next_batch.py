"""The link's wait for changes (source.next_batch) must never swallow a cancellation.

asyncio.wait_for of Python 3.11 returns the inner result when the inner wait completes in the same
step as the cancel of its caller (gh-86296): a leader stopped just as its link's plan ended (which
wakes this wait) kept its link running, and SIGTERM never stopped the process
(test_basic.py::test_sigterm_stops_both_nodes_within_bounds, 1 run in 6 under load). Stopping a
leader's links also cancels again until they end (daemon.node.cancel_until_done).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replication.exclude import ReadyMarkers
from replication.journal import Journal
from replication.source import SourceTree, next_batch
from tests.support.folder_opens import folder_opens

TREE = SourceTree("/nonexistent")  # the journals here are empty: nothing is measured


async def _no_reconcile(_reason: str) -> None:
    raise AssertionError("no reconciliation was asked for")


async def test_a_cancel_in_the_same_step_as_a_change_still_cancels() -> None:
    journal = Journal("J", ReadyMarkers([]))
    waiting = asyncio.create_task(
        next_batch(journal, 10, 1 << 20, TREE, lambda _c, _f: 0, 30.0, _no_reconcile)
    )
    await asyncio.sleep(0)  # it waits for a change now
    journal.changed.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_change_ends_the_wait_and_idleness_gives_a_heartbeat() -> None:
    journal = Journal("J", ReadyMarkers([]))
    waiting = asyncio.create_task(
        next_batch(journal, 10, 1 << 20, TREE, lambda _c, _f: 0, 30.0, _no_reconcile)
    )
    await asyncio.sleep(0)
    journal.changed.set()
    assert await waiting is None  # take again: something was recorded
    assert await next_batch(journal, 10, 1 << 20, TREE, lambda _c, _f: 0, 0.01, _no_reconcile) == []


async def test_a_task_that_swallows_its_first_cancel_is_still_stopped() -> None:
    """daemon.node.cancel_until_done, which stops a leader's links: it cancels again."""
    from daemon.node import cancel_until_done

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(task, every=0.01), 5)
    assert task.cancelled() and swallowed == 2


async def test_a_batch_is_measured_through_one_open_of_each_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst's files come a few hundred to a folder: measuring each (the batch byte limit) opened its
    folder for it, five system calls a file on the leader's loop."""
    (tmp_path / "d").mkdir()
    journal = Journal("J", ReadyMarkers([]))
    for n in range(20):
        (tmp_path / "d" / f"f{n:02d}").write_bytes(b"x" * 100)
        journal.record_sync(f"d/f{n:02d}")
    tree = SourceTree(str(tmp_path))
    opened = folder_opens(monkeypatch, tree.storage)
    batch = await next_batch(journal, 100, 1_000, tree, tree.size_of, 30.0, _no_reconcile)
    assert [change.path for change in batch] == [f"d/f{n:02d}" for n in range(10)]  # measured: 100 B each
    assert opened == ["d"]
