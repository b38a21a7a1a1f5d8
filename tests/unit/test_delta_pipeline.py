"""The delta's stages overlap: the replica rebuilds while the leader searches, and NumPy is
imported before the delta needs it (issue 15: delta time)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from replication import receiver as receiver_module
from replication.metrics import ReplicationMetrics
from replication.receiver import Receiver
from replication.sender import FLUSH, PIECE, _pieces


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in chunks]


async def test_small_chunks_wait_for_a_piece_unless_flushed() -> None:
    assert await _collect(_pieces(_chunks(b"head", b"copy"))) == [b"headcopy"]
    assert await _collect(_pieces(_chunks(b"head", b"copy", FLUSH, b"more"))) == [b"headcopy", b"more"]
    assert await _collect(_pieces(_chunks(FLUSH, b"a" * PIECE, FLUSH, FLUSH))) == [b"a" * PIECE]


def _receiver(base: Path) -> Receiver:
    (base / "storage").mkdir()
    (base / "state").mkdir()
    metrics = ReplicationMetrics(CollectorRegistry())
    return Receiver(str(base / "storage"), str(base / "state"), metrics, skip=lambda p: False)


@pytest.mark.parametrize(("size", "preloads"), [(1 << 20, 1), ((1 << 20) - 1, 0)])
def test_replica_preloads_numpy_when_it_holds_a_file_big_enough_for_deltas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, preloads: int
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(receiver_module, "preload_numpy", lambda: calls.append(None))
    receiver = _receiver(tmp_path)
    (tmp_path / "storage" / "small.txt").write_bytes(b"x")
    with (tmp_path / "storage" / "big.bin").open("wb") as fh:
        fh.truncate(size)
    answer = json.loads(b"".join(receiver.manifest()))
    assert len(answer["entries"]) == 2
    assert len(calls) == preloads
