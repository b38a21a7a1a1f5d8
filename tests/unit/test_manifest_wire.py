"""The manifest answer streamed: the same bytes as before, read in any pieces, hostile text refused,
and neither side holding the answer whole (issue 15: 100,000 files under 100 MiB)."""

from __future__ import annotations

import json
import random
import tracemalloc
from array import array
from typing import Any

import pytest

from replication import manifest, manifest_wire, peer_answers
from replication.errors import MalformedAnswerError
from replication.manifest import Entry
from replication.manifest_wire import MAX_ELEMENT_CHARS, EntriesReader, WireError
from replication.peer_answers import Refusals

ENTRIES: list[list[Any]] = [
    ["a", "dir", 0o755, 1_700_000_000_123_456_789, 0, None],
    ["a/f", "file", 0o644, -5, 12_345, None],
    ["a/link", "symlink", 0o777, 3, 0, "../t], [x"],
    ['a/\u00e9t\u00e9 \\ "q"', "file", 0o600, 0, 1.5, None],
    ["a/surrogate-\udcff", "file", 0o600, 0, 0, None],
]


def read_in_pieces(body: bytes, size: int) -> list[Any]:
    reader = EntriesReader()
    found: list[Any] = []
    for start in range(0, len(body), size):
        found += reader.feed(body[start : start + size])
    return found + reader.close()


def test_the_answer_is_byte_for_byte_what_a_whole_json_answer_was() -> None:
    """A leader of the previous release reads it with json.loads, as it always did."""
    many = ENTRIES * 1001
    for entries in ([], ENTRIES, many):
        body = b"".join(manifest_wire.pieces(iter(entries), per_piece=7))
        assert body == json.dumps({"entries": entries}).encode()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
def test_any_split_reads_the_same_entries(size: int) -> None:
    entries = ENTRIES * 50
    body = json.dumps({"entries": entries}).encode()
    assert read_in_pieces(body, size) == json.loads(body)["entries"]


def test_other_members_whitespace_and_numbers_split_across_pieces() -> None:
    """An answer of the previous release, or of a later one with more members, reads the same."""
    body = b'\n{ "version" : 12345678 ,"entries":\t[ [1] ,[ 22 ]\r] , "more": {"x": [1, 2]} }\n'
    assert read_in_pieces(body, 1) == [[1], [22]]
    assert read_in_pieces(b'{"entries": [123456, 7]}', 3) == [123456, 7]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{}",
        b'{"entries": {"a": 1}}',
        b'{"entries": "x"}',
        b'{"entries": [1, 2]',
        b'{"entries": [1, 2]}}',
        b'{"entries": [1, 2]} x',
        b'{"entries": [1,, 2]}',
        b'{"entries": [1, 2,]}',
        b'{"entries": [1 2]}',
        b'{"entries": [], "entries": []}',
        b'{"entries": [1], }',
        b"{entries: []}",
        b'{"entries": ["\xff"]}',
        b'{"entries": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
        b'{"entries": ["' + b"x" * (MAX_ELEMENT_CHARS + 10) + b'"]}',
        b'{"other": "' + b"x" * (MAX_ELEMENT_CHARS + 10) + b'", "entries": []}',
    ],
)
def test_text_that_is_no_manifest_is_refused(body: bytes) -> None:
    for size in (1, 4096, len(body) or 1):
        with pytest.raises(WireError):
            read_in_pieces(body, size)


def test_a_long_malformed_element_is_refused_without_waiting_for_the_end() -> None:
    reader = EntriesReader()
    reader.feed(b'{"entries": ["unterminated')
    with pytest.raises(WireError):
        for _ in range(100):
            reader.feed(b"x" * 4096)


# -- checked entries (peer_answers.ManifestAnswer) -----------------------------------------------------
def answer_entries(body: bytes, *, size: int = 5, limit: int | None = None) -> tuple[list[Entry], Refusals]:
    refuse = Refusals("manifest", None)
    kwargs = {} if limit is None else {"limit": limit}
    answer = peer_answers.ManifestAnswer(refuse, skip=lambda _p: False, **kwargs)
    found: list[Entry] = []
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    for n, piece in enumerate(pieces):
        if n % 3 == 0:
            answer.hold(piece)  # arrived before our scan was done
        else:
            found += answer.feed(piece)
    found += answer.close()
    return found, refuse


def test_streamed_entries_are_checked_as_a_whole_answer_is() -> None:
    raw = [
        ["data/a.txt", "file", 0o644, 1_700_000_000_000_000_000, 5, None],
        ["../escape", "file", 0o644, 0, 5, None],
        ["/abs", "file", 0o644, 0, 5, None],
        [".hs~temp.1", "file", 0o644, 0, 5, None],
        ["bad-mode", "file", 0o10000, 0, 5, None],
        ["bad-size", "file", 0o644, 0, -1, None],
        ["bad-target", "symlink", 0o777, 0, 0, "a\x00b"],
        ["short"],
        "not a list",
        None,
    ]
    body = json.dumps({"entries": raw}).encode()
    found, refuse = answer_entries(body)
    assert found == list(
        peer_answers.manifest({"entries": raw}, Refusals("m", None), skip=lambda _p: False).values()
    )
    assert found == [Entry("data/a.txt", "file", 0o644, 1_700_000_000_000_000_000, 5)]
    assert refuse.counts == {"path": 3, "manifest_entry": 6}


def test_the_answer_knows_its_largest_file_and_only_a_checked_one_counts() -> None:
    """The leader loads NumPy ahead when the replica has a file big enough for a delta (Sender)."""
    refuse = Refusals("manifest", None)
    answer = peer_answers.ManifestAnswer(refuse, skip=lambda _p: False)
    raw = [
        ["small.txt", "file", 0o644, 0, 7, None],
        ["big.bin", "file", 0o644, 0, 3 << 20, None],
        ["../huge.bin", "file", 0o644, 0, 9 << 30, None],
        ["folder", "dir", 0o755, 0, 1 << 30, None],
    ]
    assert answer.largest == 0
    body = json.dumps({"entries": raw}).encode()
    assert [e.path for e in [*answer.feed(body), *answer.close()]] == ["small.txt", "big.bin", "folder"]
    assert answer.largest == 3 << 20


def test_an_answer_over_the_byte_limit_is_unusable_even_while_held() -> None:
    body = json.dumps({"entries": ENTRIES * 100}).encode()
    with pytest.raises(MalformedAnswerError):
        answer_entries(body, size=100, limit=len(body) - 1)
    refuse = Refusals("manifest", None)
    answer = peer_answers.ManifestAnswer(refuse, skip=lambda _p: False, limit=1000)
    with pytest.raises(MalformedAnswerError):
        for _ in range(11):
            answer.hold(b" " * 100)
    assert refuse.counts == {"too_large": 1}


def test_a_truncated_or_malformed_answer_is_unusable() -> None:
    body = json.dumps({"entries": ENTRIES}).encode()
    for broken in (body[:-1], body[:40], body + b"]"):
        with pytest.raises(MalformedAnswerError):
            answer_entries(broken)


def test_entries_beyond_the_count_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_answers, "MAX_MANIFEST_ENTRIES", 3)
    raw = [[f"f{i}", "file", 0o644, 0, 1, None] for i in range(5)]
    found, refuse = answer_entries(json.dumps({"entries": raw}).encode())
    assert [e.path for e in found] == ["f0", "f1", "f2"]
    assert refuse.counts == {"too_many": 2}


# -- comparing as it arrives (manifest.Comparison) ---------------------------------------------------
def test_comparing_one_entry_at_a_time_plans_what_a_whole_comparison_planned() -> None:
    rng = random.Random(15)
    ours = {}
    theirs = {}
    for i in range(2000):
        path = f"d{i % 17}/f{i}"
        mine = Entry(path, "file", 0o644, 1_000 + i, i)
        ours[path] = mine
        roll = rng.random()
        if roll < 0.2:
            continue  # missing there
        if roll < 0.3:
            theirs[path] = Entry(path, "file", 0o644, 1_000 + i, i + 1)  # size differs
        elif roll < 0.4:
            theirs[path] = Entry(path, "file", 0o644, 7, i)  # mtime differs: hash
        elif roll < 0.5:
            theirs[path] = Entry(path, "file", 0o600, 1_000 + i, i)  # mode differs
        else:
            theirs[path] = mine
    for i in range(50):
        theirs[f"gone{i}/x"] = Entry(f"gone{i}/x", "file", 0o644, 0, 0)
    plan = manifest.compare(ours, theirs)
    comparison = manifest.Comparison(dict(ours))
    shuffled = list(theirs.values())
    rng.shuffle(shuffled)
    for entry in shuffled + shuffled[:10]:  # ten listed twice: the first one counts
        comparison.add(entry)
    streamed = comparison.plan()
    assert comparison.repeated == 10
    assert streamed.send == sorted(plan.send, key=lambda e: e.path.split("/"))
    assert sorted(e.path for e in streamed.attrs_only) == sorted(e.path for e in plan.attrs_only)
    assert sorted(streamed.to_hash) == sorted(plan.to_hash)
    assert set(comparison.undecided) == set(plan.to_hash)
    assert streamed.delete == plan.delete and len(plan.delete) == 50
    assert streamed.compared == plan.compared == 2000


def test_our_walk_a_chunk_at_a_time_against_a_held_answer_plans_what_a_whole_comparison_planned() -> None:
    """manifest.ScanComparison (a replica that has little): the same plan, its sends as the chunks go."""
    rng = random.Random(16)
    ours: dict[str, Entry] = {}
    theirs: list[Entry] = []
    for i in range(600):
        path = f"d{i % 7}/f{i}"
        mine = ours[path] = Entry(path, "file", 0o644, 1_000 + i, i)
        roll = rng.random()
        if roll < 0.4:
            continue
        if roll < 0.5:
            theirs.append(Entry(path, "file", 0o644, 1_000 + i, i + 1))
        elif roll < 0.6:
            theirs.append(Entry(path, "file", 0o644, 7, i))
        elif roll < 0.7:
            theirs.append(Entry(path, "file", 0o600, 1_000 + i, i))
        elif roll < 0.75:
            theirs.append(Entry(path, "dir", 0o755, 1_000 + i))
        else:
            theirs.append(mine)
    ours["link"] = Entry("link", "symlink", 0o777, 5_000_000_000, target="a")
    theirs.append(Entry("link", "symlink", 0o777, 9_000_000_000, target="a"))  # another second: attrs
    theirs += [Entry(f"gone{i}/x", "file", 0o644, 0, 0) for i in range(20)]
    theirs += [Entry("gone", "dir", 0o755, 0)]
    whole = manifest.compare(ours, {entry.path: entry for entry in theirs})

    comparison = manifest.ScanComparison.of([*theirs, *theirs[:4]])  # four listed twice
    walk = list(ours.values())
    sent = [entry for start in range(0, len(walk), 50) for entry in comparison.add(walk[start : start + 50])]
    rest = comparison.rest()
    assert comparison.repeated == 4
    assert sorted(e.path for e in sent) == sorted(e.path for e in whole.send)
    assert [e.path for e in sent] == [e.path for e in walk if e in sent], "walk order"
    assert rest.send == []
    assert sorted(e.path for e in rest.attrs_only) == sorted(e.path for e in whole.attrs_only)
    assert sorted(rest.to_hash) == sorted(whole.to_hash) == sorted(comparison.undecided)
    assert rest.delete == whole.delete and "gone" in rest.delete and len(rest.delete) == 21
    assert rest.compared == whole.compared == len(ours)


def test_a_repeated_path_the_replica_alone_has_is_deleted_once() -> None:
    comparison = manifest.Comparison({})
    for _ in range(3):
        comparison.add(Entry("x", "file", 0o644, 0, 0))
    assert comparison.plan().delete == ["x"]
    assert comparison.repeated == 2


def test_reading_and_comparing_50k_entries_holds_far_less_than_the_answer_parsed_whole() -> None:
    """The leader's memory for the replica's manifest stays a few MiB: json.loads of this answer
    alone takes about 20 MiB, and its checked entries as a dict about 17 MiB more."""
    paths = [f"d{i % 100:03d}/s{i % 97:03d}/f{i:06d}" for i in range(50_000)]
    raw = [[p, "file", 0o644, 1_700_000_000_000_000_000 + i, 1000 + i, None] for i, p in enumerate(paths)]
    body = json.dumps({"entries": raw}).encode()
    del raw
    ours = manifest.Listing(
        Entry(p, "file", 0o644, 1_700_000_000_000_000_000 + i, 1000 + i) for i, p in enumerate(paths)
    )
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    tracemalloc.start()
    try:
        answer = peer_answers.ManifestAnswer(Refusals("manifest", None), skip=lambda _p: False)
        comparison = manifest.Comparison(ours)
        for piece in pieces:
            for entry in answer.feed(piece):
                comparison.add(entry)
        for entry in answer.close():
            comparison.add(entry)
        plan = comparison.plan()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.send == plan.attrs_only == plan.to_hash == plan.delete == []
    assert peak < 2 * 1024 * 1024, f"{peak / 2**20:.1f} MiB"


# -- our side held compactly (manifest.Listing) -----------------------------------------------------
ODD_NAMES = [
    "a",
    "a b",
    "a-b",
    "a.b",
    "a/b",
    "a/b/c",
    "a/b-c",
    "a/b.c",
    "a/b c",
    "a!/x",
    "ab",
    "a\u00e9",
    "z",
]


def test_a_listing_gives_back_each_entry_once_and_the_rest_in_path_order() -> None:
    entries = [
        Entry(p, "dir" if p in ("a", "a/b") else "file", 0o755 if p == "a" else 0o644, i - 3, 10 * i)
        for i, p in enumerate(reversed(ODD_NAMES))
    ]
    entries.append(Entry("l", "symlink", 0o777, 1 << 70, target="../x"))  # an mtime beyond 64 bits
    listing = manifest.Listing(entries)
    assert len(listing) == len(entries)
    by_path = {e.path: e for e in entries}
    for path in ("a/b", "l"):
        position = listing.take(path)
        assert position is not None and position >= 0
        assert listing.entry(position, path) == by_path[path]
        assert listing.take(path) == manifest.TAKEN
    assert listing.take("nothing") is None and listing.take("a/b/") is None
    left = list(manifest.Listing(entries).left())
    assert left == sorted(entries, key=lambda e: e.path.split("/"))
    rest = [e for e in left if e.path not in ("a/b", "l")]
    assert list(listing.left()) == rest
    assert listing.left_sizes() == ([e.path for e in rest], array("q", [e.size for e in rest]))


def test_a_plan_with_unlisted_paths_apart_sends_what_a_whole_plan_sends_in_the_same_order() -> None:
    rng = random.Random(7)
    ours = {}
    theirs = []
    for i in range(3000):
        path = f"{rng.choice(ODD_NAMES)}/{rng.choice(ODD_NAMES)}/f{i}"
        ours[path] = Entry(path, "file", 0o644, 1_000 + i, i)
        roll = rng.random()
        if roll < 0.4:
            continue  # not listed there
        size = i + 1 if roll < 0.5 else i
        theirs.append(Entry(path, "file", 0o644, 7 if roll > 0.9 else 1_000 + i, size))
    plans = []
    for whole in (True, False):
        comparison = manifest.Comparison(dict(ours))
        for entry in theirs:
            comparison.add(entry)
        plan = comparison.plan(whole=whole)
        assert plan.to_hash
        manifest.resolve_hashes(plan, comparison.undecided, {}, {})  # every hash unknown: all sent
        plans.append(plan)
    whole_plan, apart = plans
    assert apart.sending == len(whole_plan.send) > len(apart.send)
    assert list(apart.sizes_to_send().items()) == [(e.path, e.size) for e in whole_plan.send]
    assert whole_plan.sizes_to_send() == apart.sizes_to_send()


def test_a_listing_of_100k_entries_holds_far_less_than_a_dict_of_entries() -> None:
    """Issue 15: our own scan of 100,000 files took ~28 MiB as a dict of entries."""
    paths = [f"d{i % 100:03d}/s{i % 97:03d}/f{i:06d}" for i in range(100_000)]
    tracemalloc.start()
    try:
        listing = manifest.Listing(
            Entry(p, "file", 0o644, 1_700_000_000_000_000_000 + i, 1000 + i) for i, p in enumerate(paths)
        )
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listing) == 100_000
    assert held < 12 * 1024 * 1024, f"{held / 2**20:.1f} MiB"


def test_an_answer_held_until_our_scan_is_done_is_held_compressed_and_read_unchanged() -> None:
    """Issue 15: the replica's whole answer (~7 MiB for 100,000 files) may arrive before our scan
    is done; held as it came it sat in the leader's memory beside that scan."""
    raw = [
        [f"d{i % 100:03d}/s{i % 97:03d}/f{i:06d}", "file", 0o644, 1_700_000_000 + i, i, None]
        for i in range(50_000)
    ]
    body = json.dumps({"entries": raw}).encode()
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    answer = peer_answers.ManifestAnswer(Refusals("manifest", None), skip=lambda _p: False)
    tracemalloc.start()
    try:
        for piece in pieces[:-1]:
            answer.hold(piece)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < len(body) // 3, f"{held} bytes held for {len(body)}"
    found = list(answer.feed(pieces[-1])) + list(answer.close())
    assert [e.to_json() for e in found] == raw
