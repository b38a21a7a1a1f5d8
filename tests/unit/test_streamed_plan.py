"""A seed's plan queued as our walk goes (Sender._compare_with_replica, manifest.ScanComparison).

Against a replica that lists little, what it lacks is queued chunk by chunk while the walk goes on;
a plugin folder's ready marker still goes behind every other file of that folder, although the walk
(folders in name order, `dify` before `lib`) finds it first. The link's plan runs beside its stream: a
plan that fails takes the link down, and one that ends tells the replica its baseline at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from replication import manifest, scan
from replication.errors import MalformedAnswerError
from replication.exclude import ReadyMarkers
from replication.journal import Journal
from replication.metrics import ReplicationMetrics
from replication.sender import LinkSettings, Sender
from tests.unit.test_protocol_fuzz import FakeReplica

MARKER = "p/.venv/dify/plugin.json"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "p/.venv/dify").mkdir(parents=True)
    (tmp_path / MARKER).write_text("{}")
    (tmp_path / "p/.venv/lib").mkdir()
    for index in range(30):
        (tmp_path / f"p/.venv/lib/m{index:02d}.py").write_text(f"# {index}")
    (tmp_path / "q").mkdir()
    for index in range(10):
        (tmp_path / f"q/f{index}").write_text("x")
    return tmp_path


def make_sender(tree: Path, journal: Journal, answers: dict[str, tuple[int, bytes, bool]]) -> Sender:
    sender = Sender(
        LinkSettings(target="http://replica.invalid", server_key="k", node_id="n", heartbeat_interval=30.0),
        str(tree),
        journal,
        ReplicationMetrics(CollectorRegistry()),
        skip=lambda _p: False,
        epoch=lambda: 1,
        record_tree=lambda _rel: 0,
    )
    sender._session = FakeReplica(answers)  # type: ignore[assignment]
    return sender


def plan_against(tree: Path, manifest_body: bytes) -> tuple[Journal, list[list[str]], Any]:
    journal = Journal("J", ReadyMarkers(["**/.venv/dify/plugin.json"]))
    recorded: list[list[str]] = []
    record_plan = journal.record_plan

    def recording(syncs: Any) -> None:
        syncs = list(syncs)
        recorded.append([path for path, _hint, _size in syncs])
        record_plan(syncs)

    journal.record_plan = recording  # type: ignore[method-assign]
    sender = make_sender(tree, journal, {"manifest": (200, manifest_body, True)})
    summary = asyncio.run(sender.reconcile("initial"))
    return journal, [calls for calls in recorded if calls], summary


def test_what_an_empty_replica_lacks_is_queued_a_chunk_at_a_time_marker_last(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "CHUNK_ENTRIES", 4)
    journal, calls, summary = plan_against(tree, b'{"entries": []}')

    assert len(calls) > 5, f"queued at once, not as the walk went: {calls}"
    everything = [path for call in calls for path in call]
    assert sorted(everything) == sorted(str(p.relative_to(tree)) for p in tree.rglob("*")), (
        "every path queued exactly once"
    )
    assert calls[-1] == [MARKER], "the marker was queued before the walk was over"
    order = [change.path for change in journal.take_batch(1000, 1 << 30, lambda _c: 0)]
    assert order.index(MARKER) > max(order.index(p) for p in order if p.startswith("p/") and p != MARKER)
    assert summary.sent == len(everything)


def test_a_replica_that_has_most_of_it_is_compared_against_our_whole_walk(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "CHUNK_ENTRIES", 4)
    monkeypatch.setattr("replication.sender.STREAM_MAX", 3)
    entries = ", ".join(f'["q/f{index}", "file", 420, 0, 1, null]' for index in range(10))
    _journal, calls, summary = plan_against(tree, ('{"entries": [' + entries + "]}").encode())

    assert len(calls) <= 2, "a big answer is compared against the whole walk: one plan"
    assert summary.compared == len(list(tree.rglob("*")))
    assert summary.sent == summary.compared, "every path differs or is missing there: all sent"
    assert MARKER in [path for call in calls for path in call]


HELLO = (200, b'{"journal_id": "", "applied_seq": 0}', True)
BATCH = (200, b'{"applied_seq": 0, "resend": []}', True)


def test_a_plan_that_fails_beside_the_stream_takes_the_link_down(tree: Path) -> None:
    answers = {"hello": HELLO, "manifest": (200, b"{", True), "batch": BATCH}
    sender = make_sender(tree, Journal("J", ReadyMarkers([])), answers)

    async def link() -> None:
        await sender._link_up()
        await asyncio.wait_for(sender._stream(), 10)  # not a heartbeat interval (30 s) later

    with pytest.raises(MalformedAnswerError):
        asyncio.run(link())


def test_the_replica_hears_the_new_baseline_as_soon_as_the_plan_is_over(tree: Path) -> None:
    """Everything went out while the plan was made: a batch still says so at once (the replica reports
    itself synced only when told the baseline), not after the idle link's heartbeat interval."""
    journal = Journal("J", ReadyMarkers([]))
    entries = ", ".join(
        f'["{p.relative_to(tree)}", "{"dir" if p.is_dir() else "file"}", {p.stat().st_mode & 0o777}, '
        f"{p.stat().st_mtime_ns}, {0 if p.is_dir() else p.stat().st_size}, null]"
        for p in sorted(tree.rglob("*"))
    )
    answers = {
        "hello": HELLO,
        "manifest": (200, ('{"entries": [' + entries + "]}").encode(), True),
        "batch": BATCH,
    }
    sender = make_sender(tree, journal, answers)
    batches: list[str] = []
    send_once = sender._send_once

    async def sent(batch: Any) -> None:
        batches.append(str(sender.baseline_seq))
        await send_once(batch)

    sender._send_once = sent  # type: ignore[method-assign]

    async def link() -> None:
        await sender._link_up()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sender._stream(), 2)

    asyncio.run(link())
    assert batches and batches[0] != "None", f"no batch with the plan's baseline within 2 s: {batches}"


# -- protocol 4: the replica's TreeDigest first ------------------------------------------------------
def digest_plan(
    tree: Path, digest_answer: bytes, *, synced_at_hello: bool = True
) -> tuple[list[str], Any, list[list[str]]]:
    journal = Journal("J", ReadyMarkers(["**/.venv/dify/plugin.json"]))
    sender = make_sender(
        tree, journal, {"digest": (200, digest_answer, True), "manifest": (200, b'{"entries": []}', True)}
    )
    sender.protocol = 4
    sender._replica_synced = synced_at_hello
    summary = asyncio.run(sender.reconcile("anti_entropy"))
    queued = [change.path for change in journal.take_batch(1000, 1 << 30, lambda _c: 0)]
    return sender._session.routes, summary, [queued]  # type: ignore[attr-defined]


def test_a_replica_whose_digest_equals_ours_is_not_asked_for_its_manifest(tree: Path) -> None:
    theirs = manifest.replica_digest(str(tree)).hexdigest()
    routes, summary, (queued,) = digest_plan(tree, json.dumps({"synced": True, "digest": theirs}).encode())
    assert routes == ["digest"]
    assert queued == [] and summary.sent == 0
    assert summary.compared == len(list(tree.rglob("*")))


def test_a_replica_whose_digest_differs_is_compared_entry_by_entry(tree: Path) -> None:
    routes, summary, (queued,) = digest_plan(tree, json.dumps({"synced": True, "digest": "0" * 64}).encode())
    assert routes == ["digest", "manifest"]
    assert sorted(queued) == sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    assert summary.sent == summary.compared == len(queued)


def test_a_replica_without_a_full_copy_is_not_asked_for_a_digest(tree: Path) -> None:
    """A new standby's seed: our walk goes into the plan chunk by chunk, as before protocol 4."""
    routes, summary, (queued,) = digest_plan(tree, b"{}", synced_at_hello=False)
    assert routes == ["manifest"]
    assert summary.sent == len(queued) == len(list(tree.rglob("*")))


def test_a_replica_that_says_it_holds_no_full_copy_after_all_is_compared_entry_by_entry(tree: Path) -> None:
    routes, summary, (queued,) = digest_plan(tree, b'{"synced": false}')
    assert routes == ["digest", "manifest"]
    assert summary.sent == len(queued) == len(list(tree.rglob("*")))


def test_a_malformed_digest_answer_fails_the_plan(tree: Path) -> None:
    with pytest.raises(MalformedAnswerError):
        digest_plan(tree, b'{"synced": true, "digest": "not hex"}')


def test_a_replica_that_applied_this_links_last_plan_is_asked_for_a_digest(tree: Path) -> None:
    """It said at hello it held no full copy (a seed), then acknowledged the seed's baseline."""
    journal = Journal("J", ReadyMarkers([]))
    theirs = manifest.replica_digest(str(tree)).hexdigest()
    answer = json.dumps({"synced": True, "digest": theirs}).encode()
    sender = make_sender(tree, journal, {"digest": (200, answer, True)})
    sender.protocol = 4
    assert not sender._asks_tree_digest()
    sender.baseline_seq = journal.acked  # the last plan's baseline, acknowledged
    assert sender._asks_tree_digest()
    summary = asyncio.run(sender.reconcile("anti_entropy"))
    assert sender._session.routes == ["digest"] and summary.sent == 0  # type: ignore[attr-defined]


def _plan_then_send(tree: Path, manifest_body: bytes) -> list[str]:
    """Reconcile against a replica that lists `manifest_body`, send what was queued; the routes used."""
    journal = Journal("J", ReadyMarkers([]))
    sender = make_sender(tree, journal, {"manifest": (200, manifest_body, True), "batch": BATCH})
    sender.settings = dataclasses.replace(sender.settings, delta_min_size=1024)

    async def plan_and_send() -> None:
        await sender.reconcile("initial")
        await sender._send(journal.take_batch(1000, 1 << 30, lambda _c: 0))

    asyncio.run(plan_and_send())
    return sender._session.routes  # type: ignore[attr-defined,no-any-return]


def test_a_seed_sends_big_files_whole_without_asking_for_signatures(tree: Path) -> None:
    """The replica lists no file big enough for a delta: nothing to build one on, so no round trip
    for signatures (nor NumPy's import on the leader) before the batch."""
    (tree / "q/model.bin").write_bytes(b"m" * 4096)
    routes = _plan_then_send(tree, b'{"entries": []}')
    assert "batch" in routes and "signatures" not in routes


def test_a_replica_with_a_big_file_is_asked_for_signatures(tree: Path) -> None:
    (tree / "q/model.bin").write_bytes(b"m" * 4096)
    routes = _plan_then_send(tree, b'{"entries": [["q/model.bin", "file", 420, 1, 4000, null]]}')
    assert routes.index("signatures") < routes.index("batch")
