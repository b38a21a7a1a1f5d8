"""The master's journal: sequencing, coalescing, ordering rules, acknowledgement and resume (no I/O)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication import held as held_module
from replication.exclude import ReadyMarkers
from replication.journal import Change, Journal, JournalFanout, SequenceCounter
from replication.paths import is_within

MARKERS = ReadyMarkers(["**/.venv/dify/plugin.json"])
PLUGIN = "cwd/langgenius/openai-0.0.1@" + "ab" * 32
MARKER = f"{PLUGIN}/.venv/dify/plugin.json"
UNLIMITED = 10**9


class FakeClock:
    """An injected monotonic clock (starts well above 0: 0.0 is falsy to the journal)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_journal(*, clock: Callable[[], float] | None = None, max_entries: int = 200_000) -> Journal:
    return Journal("journal-1", MARKERS, max_entries=max_entries, clock=clock or FakeClock())


def take_all(journal: Journal) -> list[Change]:
    return journal.take_batch(UNLIMITED, UNLIMITED, lambda change: 0)


def drain(journal: Journal, max_ops: int = 1) -> list[Change]:
    """Everything unsent, in the order successive small batches hand it out."""
    out: list[Change] = []
    while batch := journal.take_batch(max_ops, UNLIMITED, lambda change: 0):
        out.extend(batch)
    return out


def summary(changes: list[Change]) -> list[tuple[str, str, str | None]]:
    return [(c.kind, c.path, c.dest) for c in changes]


def touches(change: Change, directory: str) -> bool:
    return any(p is not None and is_within(p, directory) for p in (change.path, change.dest))


def assert_marker_last(changes: list[Change], marker: str = MARKER, plugin_dir: str = PLUGIN) -> None:
    paths = [c.path for c in changes]
    assert marker in paths
    marker_index = max(i for i, c in enumerate(changes) if c.path == marker)
    later = [c for c in changes[marker_index + 1 :] if touches(c, plugin_dir)]
    assert later == [], f"changes under {plugin_dir} after its ready marker: {summary(later)}"


# --- sequencing and coalescing -------------------------------------------------------


def test_sequence_numbers_increase_with_every_recorded_change():
    journal = make_journal()
    assert journal.head == 0
    journal.record_sync("a")
    journal.record_sync("b")
    journal.record_delete("c")
    journal.record_rename("d", "e")
    batch = take_all(journal)
    seqs = [c.seq for c in batch]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs) == 4
    assert seqs[0] >= 1
    assert journal.head == seqs[-1]
    assert summary(batch) == [
        ("sync", "a", None),
        ("sync", "b", None),
        ("delete", "c", None),
        ("rename", "d", "e"),
    ]


def test_sequence_numbers_keep_increasing_after_acknowledge():
    journal = make_journal()
    journal.record_sync("a")
    first = take_all(journal)
    journal.acknowledge(first[-1].seq)
    journal.record_sync("a")
    (second,) = take_all(journal)
    assert second.seq > first[-1].seq


def test_repeated_sync_of_one_unsent_path_coalesces_into_one_change():
    journal = make_journal()
    for _ in range(5):
        journal.record_sync("persistence/key")
    assert journal.pending == 1
    assert journal.head == 1
    assert summary(take_all(journal)) == [("sync", "persistence/key", None)]


def test_coalesced_sync_keeps_its_original_position():
    journal = make_journal()
    journal.record_sync("a")
    journal.record_sync("b")
    journal.record_sync("a")
    assert [c.path for c in take_all(journal)] == ["a", "b"]


def test_coalescing_a_full_sync_into_an_attribute_hint_drops_the_hint():
    journal = make_journal()
    journal.record_sync("f", attr_hint=(10, 123))
    journal.record_sync("f")
    (change,) = take_all(journal)
    assert change.attr_hint is None


def test_coalescing_an_attribute_hint_into_a_full_sync_keeps_the_full_sync():
    journal = make_journal()
    journal.record_sync("f")
    journal.record_sync("f", attr_hint=(10, 123))
    (change,) = take_all(journal)
    assert change.attr_hint is None


def test_sync_already_taken_is_not_coalesced_a_new_change_is_appended():
    journal = make_journal()
    journal.record_sync("a")
    (sent,) = take_all(journal)
    journal.record_sync("a")
    assert journal.pending == 2
    assert journal.has_unsent
    (again,) = take_all(journal)
    assert again.path == "a"
    assert again.seq > sent.seq
    assert not journal.has_unsent


# --- deletes ---------------------------------------------------------------------------


def test_unsent_syncs_below_a_deleted_directory_move_behind_the_delete():
    # A scan can record a re-created tree before the delete event arrives: those syncs
    # must follow the delete (they read the disk when sent and are skipped if gone).
    journal = make_journal()
    journal.record_sync("d/x")
    journal.record_sync("d/y/z")
    journal.record_sync("dx")  # a sibling sharing the prefix, not below d
    journal.record_sync("d")
    journal.record_sync("other")
    journal.record_delete("d")
    assert summary(take_all(journal)) == [
        ("sync", "dx", None),
        ("sync", "other", None),
        ("delete", "d", None),
        ("sync", "d/x", None),
        ("sync", "d/y/z", None),
        ("sync", "d", None),
    ]


def test_delete_of_a_file_moves_its_own_unsent_sync_behind_it():
    journal = make_journal()
    journal.record_sync("f")
    journal.record_sync("f2")
    journal.record_delete("f")
    assert summary(take_all(journal)) == [("sync", "f2", None), ("delete", "f", None), ("sync", "f", None)]


def test_a_file_deleted_where_a_folder_was_already_scanned_keeps_the_folder_after_the_delete():
    # symlink b; scan sees b as a new folder b/c; then the event 'b deleted' arrives.
    journal = make_journal()
    journal.record_sync("b")
    journal.record_sync("b/c")
    journal.record_delete("b")
    assert summary(take_all(journal)) == [("delete", "b", None), ("sync", "b", None), ("sync", "b/c", None)]


def test_delete_does_not_drop_syncs_already_sent():
    journal = make_journal()
    journal.record_sync("d/x")
    take_all(journal)
    journal.record_delete("d")
    assert journal.pending == 2
    assert summary(take_all(journal)) == [("delete", "d", None)]


# --- renames ---------------------------------------------------------------------------


def test_rename_of_a_file_carries_its_unsent_sync_after_the_rename():
    journal = make_journal()
    journal.record_sync("f", attr_hint=(3, 4))
    journal.record_rename("f", "g")
    batch = take_all(journal)
    assert summary(batch) == [("rename", "f", "g"), ("sync", "g", None)]
    assert batch[1].attr_hint == (3, 4)


def test_rename_of_a_directory_carries_unsent_syncs_below_it_in_order():
    journal = make_journal()
    journal.record_sync("a/x")
    journal.record_sync("b")
    journal.record_sync("a/y/z")
    journal.record_sync("ab/q")  # shares the prefix, not below a
    journal.record_rename("a", "c")
    assert summary(take_all(journal)) == [
        ("sync", "b", None),
        ("sync", "ab/q", None),
        ("rename", "a", "c"),
        ("sync", "c/x", None),
        ("sync", "c/y/z", None),
    ]


def test_rename_does_not_carry_syncs_already_sent():
    journal = make_journal()
    journal.record_sync("a/x")
    take_all(journal)
    journal.record_rename("a", "c")
    assert summary(take_all(journal)) == [("rename", "a", "c")]


def test_rename_over_a_path_with_an_unsent_sync_still_syncs_the_destination_after_the_rename():
    # write b, write a, `mv a b`: the replica's a is stale (its last write was never sent), so the
    # replica needs b's content *after* the rename, or the rename leaves stale bytes at b.
    journal = make_journal()
    journal.record_sync("b")
    journal.record_sync("a")
    journal.record_rename("a", "b")
    batch = summary(take_all(journal))
    rename_at = batch.index(("rename", "a", "b"))
    assert ("sync", "b", None) in batch[rename_at + 1 :], batch


# --- ready markers ---------------------------------------------------------------------


def test_marker_directory_is_the_part_the_leading_glob_matched():
    assert MARKERS.plugin_dir(MARKER) == PLUGIN
    assert MARKERS.plugin_dir(f"{PLUGIN}/.venv/dify/other.json") is None


def test_ready_marker_goes_after_files_recorded_later_under_its_plugin_directory():
    journal = make_journal()
    journal.record_sync(f"{PLUGIN}/main.py")
    journal.record_sync(MARKER)
    journal.record_sync(f"{PLUGIN}/.venv/lib/python3.12/site-packages/x.py")
    journal.record_sync(f"{PLUGIN}/.venv/bin/python")
    batch = take_all(journal)
    assert batch[-1].path == MARKER
    assert_marker_last(batch)


def test_ready_marker_goes_after_later_deletes_and_renames_under_its_plugin_directory():
    journal = make_journal()
    journal.record_sync(MARKER)
    journal.record_sync("cwd/unrelated")
    journal.record_delete(f"{PLUGIN}/old.py")
    journal.record_delete(f"{PLUGIN}/build")
    journal.record_rename(f"{PLUGIN}/a.tmp", f"{PLUGIN}/a")
    journal.record_rename("cwd/staging/lib", f"{PLUGIN}/lib")  # renamed into the plugin directory
    journal.record_sync("cwd/after")
    batch = take_all(journal)
    assert_marker_last(batch)
    # changes outside the plugin directory are not reordered
    paths = [c.path for c in batch]
    assert paths.index("cwd/unrelated") < paths.index(MARKER) < paths.index("cwd/after")


def test_ready_marker_goes_after_files_carried_into_its_directory_by_a_rename():
    journal = make_journal()
    journal.record_sync(MARKER)
    journal.record_sync("cwd/staging/lib/mod.py")
    journal.record_rename("cwd/staging/lib", f"{PLUGIN}/lib")
    batch = take_all(journal)
    assert_marker_last(batch)
    assert ("sync", f"{PLUGIN}/lib/mod.py", None) in summary(batch)


def test_ready_marker_stays_last_when_its_plugin_directory_is_renamed():
    journal = make_journal()
    journal.record_sync(f"{PLUGIN}/a.py")
    journal.record_sync(MARKER)
    journal.record_sync(f"{PLUGIN}/b.py")
    journal.record_rename(PLUGIN, "cwd/moved")
    batch = take_all(journal)
    assert_marker_last(batch, "cwd/moved/.venv/dify/plugin.json", "cwd/moved")
    assert summary(batch)[0] == ("rename", PLUGIN, "cwd/moved")


def test_ready_marker_is_last_across_several_small_batches():
    journal = make_journal()
    journal.record_sync(f"{PLUGIN}/a")
    journal.record_sync(MARKER)
    journal.record_sync(f"{PLUGIN}/b")
    first = journal.take_batch(1, UNLIMITED, lambda c: 0)
    assert [c.path for c in first] == [f"{PLUGIN}/a"]
    journal.record_sync(f"{PLUGIN}/a")  # already sent: a new change, which must still precede the marker
    journal.record_sync(f"{PLUGIN}/c")
    rest = drain(journal)
    assert_marker_last(first + rest)
    assert [c.path for c in rest][-1] == MARKER


def test_ready_markers_of_two_plugins_are_ordered_independently():
    other = "cwd/langgenius/other-1.0.0@" + "cd" * 32
    other_marker = f"{other}/.venv/dify/plugin.json"
    journal = make_journal()
    journal.record_sync(MARKER)
    journal.record_sync(other_marker)
    journal.record_sync(f"{PLUGIN}/x")
    batch = take_all(journal)
    assert_marker_last(batch)
    assert_marker_last(batch, other_marker, other)
    paths = [c.path for c in batch]
    assert paths.index(other_marker) < paths.index(f"{PLUGIN}/x")


def test_markers_lying_in_each_others_plugin_folder_are_moved_once_each():
    """A marker's path renamed into a folder that holds a plugin of its own: each marker lies in the
    other's plugin folder. Recording used to move them behind each other until the recursion limit
    (found by test_a_plan_held_compactly_behaves_as_its_syncs_recorded_one_by_one)."""
    journal = make_journal()
    journal.record_sync(MARKER)
    journal.record_rename(PLUGIN, "cwd/other")
    journal.record_sync("cwd/other")
    journal.record_rename("cwd/other", MARKER)  # the plugin folder, marker and all, now lies at MARKER
    nested = f"{MARKER}/.venv/dify/plugin.json"
    assert summary(take_all(journal)) == [
        ("rename", PLUGIN, "cwd/other"),
        ("rename", "cwd/other", MARKER),
        ("sync", MARKER, None),  # a folder now, and the plugin folder of the marker below it
        ("sync", nested, None),
    ]


_NAMES = st.sampled_from(
    [
        f"{PLUGIN}/a",
        f"{PLUGIN}/.venv/bin/python",
        f"{PLUGIN}/.venv/lib",
        f"{PLUGIN}/.venv/lib/x.py",
        f"{PLUGIN}/.venv",
        MARKER,
        PLUGIN,
        "cwd/other",
        "cwd/other/y",
    ]
)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("sync"), _NAMES),
        st.tuples(st.just("delete"), _NAMES, st.booleans()),
        st.tuples(st.just("rename"), _NAMES, _NAMES),
        st.tuples(st.just("take"), st.integers(1, 3)),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, database=None)
@given(_STEPS)
def test_an_unsent_ready_marker_is_never_followed_by_a_change_under_its_directory(steps):
    journal = make_journal()
    sent: list[Change] = []
    for step in steps:
        if step[0] == "sync":
            journal.record_sync(step[1])
        elif step[0] == "delete":
            journal.record_delete(step[1])
        elif step[0] == "rename":
            if is_within(step[2], step[1]):
                continue  # the kernel refuses to move a directory into itself
            journal.record_rename(step[1], step[2])
        else:
            sent.extend(journal.take_batch(step[1], UNLIMITED, lambda c: 0))
    unsent = take_all(journal)
    for i, change in enumerate(unsent):
        plugin_dir = MARKERS.plugin_dir(change.path)
        if change.kind == "sync" and plugin_dir is not None:
            later = [c for c in unsent[i + 1 :] if touches(c, plugin_dir)]
            assert later == [], (summary(unsent), i)
    seqs = [c.seq for c in sent + unsent]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@settings(max_examples=300, deadline=None, database=None)
@given(_STEPS)
def test_unsent_index_finds_exactly_the_unsent_syncs_below_a_path(steps):
    """The subtree index (which keeps bursts linear) agrees with a scan of every unsent sync."""
    journal = make_journal()
    for step in steps:
        if step[0] == "sync":
            journal.record_sync(step[1])
        elif step[0] == "delete":
            journal.record_delete(step[1])
        elif step[0] == "rename" and not is_within(step[2], step[1]):
            journal.record_rename(step[1], step[2])
        elif step[0] == "take":
            journal.take_batch(step[1], UNLIMITED, lambda c: 0)
        unsent = [c for c in journal._entries.values() if c.seq > journal.sent_upto and c.kind == "sync"]
        for probe in ("cwd", PLUGIN, f"{PLUGIN}/.venv", "cwd/other", MARKER):
            expected = sorted(c.seq for c in unsent if is_within(c.path, probe))
            assert sorted(journal._unsent_sync.under(probe)) == expected, (probe, steps)


# --- acknowledgement and observation ------------------------------------------------------


def test_acknowledge_drops_entries_up_to_the_acknowledged_sequence():
    journal = make_journal()
    for path in ("a", "b", "c"):
        journal.record_sync(path)
    take_all(journal)
    assert journal.pending == 3
    journal.acknowledge(2)
    assert journal.acked == 2
    assert journal.pending == 1
    journal.acknowledge(1)  # going backwards is ignored
    assert journal.acked == 2
    assert journal.pending == 1
    journal.acknowledge(99)  # never beyond what was issued
    assert journal.acked == journal.head == 3
    assert journal.pending == 0
    assert not journal.has_unsent


def test_oldest_unacked_age_follows_the_injected_clock():
    clock = FakeClock(100.0)
    journal = make_journal(clock=clock)
    assert journal.oldest_unacked_age() == 0.0
    journal.record_sync("a")
    clock.now = 105.0
    journal.record_sync("b")
    clock.now = 110.0
    assert journal.oldest_unacked_age() == pytest.approx(10.0)
    take_all(journal)
    assert journal.oldest_unacked_age() == pytest.approx(10.0)  # sent is not acknowledged
    journal.acknowledge(1)
    assert journal.oldest_unacked_age() == pytest.approx(5.0)
    journal.acknowledge(2)
    assert journal.oldest_unacked_age() == 0.0
    assert journal.pending == 0


def test_oldest_unacked_age_never_negative():
    clock = FakeClock(100.0)
    journal = make_journal(clock=clock)
    journal.record_sync("a")
    clock.now = 50.0
    assert journal.oldest_unacked_age() == 0.0


def test_oldest_unacked_age_counts_a_ready_marker_moved_behind_later_changes():
    # The marker was recorded first and is still unacknowledged: it is the oldest change waiting,
    # even though it now sits behind a younger change in send order.
    clock = FakeClock(100.0)
    journal = make_journal(clock=clock)
    journal.record_sync(MARKER)
    clock.now = 110.0
    journal.record_sync(f"{PLUGIN}/main.py")
    clock.now = 120.0
    assert journal.pending == 2
    assert journal.oldest_unacked_age() == pytest.approx(20.0)


# --- resume ------------------------------------------------------------------------------


def test_rewind_makes_changes_after_seq_sendable_again_in_order():
    journal = make_journal()
    for path in ("a", "b", "c", "d"):
        journal.record_sync(path)
    assert [c.path for c in take_all(journal)] == ["a", "b", "c", "d"]
    assert take_all(journal) == []
    journal.rewind(1)
    assert journal.acked == 1
    assert journal.pending == 3
    assert journal.has_unsent
    assert [(c.seq, c.path) for c in take_all(journal)] == [(2, "b"), (3, "c"), (4, "d")]


def test_rewound_syncs_coalesce_again():
    journal = make_journal()
    journal.record_sync("a")
    journal.record_sync("b")
    take_all(journal)
    journal.rewind(0)
    journal.record_sync("b")
    assert journal.pending == 2
    assert [c.path for c in take_all(journal)] == ["a", "b"]


def test_rewind_within_the_unsent_part_changes_nothing_sendable():
    journal = make_journal()
    for path in ("a", "b", "c"):
        journal.record_sync(path)
    journal.take_batch(1, UNLIMITED, lambda c: 0)
    journal.rewind(1)
    assert [c.path for c in take_all(journal)] == ["b", "c"]


def test_rewind_sets_the_changed_event():
    journal = make_journal()
    journal.record_sync("a")
    take_all(journal)
    journal.changed.clear()
    journal.rewind(0)
    assert journal.changed.is_set()


def test_can_resume_from_requires_every_later_change_to_be_held():
    journal = make_journal()
    assert journal.can_resume_from(0)
    assert not journal.can_resume_from(1)  # beyond the head: from another journal's numbering
    for path in ("a", "b", "c"):
        journal.record_sync(path)
    take_all(journal)
    assert all(journal.can_resume_from(s) for s in (0, 1, 2, 3))
    assert not journal.can_resume_from(4)
    journal.acknowledge(2)
    assert not journal.can_resume_from(0)
    assert not journal.can_resume_from(1)
    assert journal.can_resume_from(2)
    assert journal.can_resume_from(3)


def test_can_resume_from_is_false_after_overflow():
    journal = make_journal(max_entries=2)
    for path in ("a", "b", "c"):
        journal.record_sync(path)
    assert journal.overflowed
    assert not journal.can_resume_from(0)
    assert not journal.can_resume_from(journal.head)


# --- overflow and reset --------------------------------------------------------------------


def test_overflow_is_set_when_more_than_max_entries_are_pending():
    journal = make_journal(max_entries=3)
    for path in ("a", "b", "c"):
        journal.record_sync(path)
    assert not journal.overflowed
    journal.record_sync("a")  # coalesced: still three
    assert not journal.overflowed
    journal.record_sync("d")
    assert journal.overflowed


def test_overflow_counts_sent_but_unacknowledged_entries():
    journal = make_journal(max_entries=2)
    journal.record_sync("a")
    journal.record_sync("b")
    take_all(journal)
    journal.record_sync("c")
    assert journal.overflowed


def test_acknowledged_entries_do_not_count_towards_overflow():
    journal = make_journal(max_entries=2)
    journal.record_sync("a")
    journal.record_sync("b")
    journal.acknowledge(take_all(journal)[-1].seq)
    journal.record_sync("c")
    journal.record_sync("d")
    assert not journal.overflowed


def test_reset_forgets_everything_and_clears_overflow():
    journal = make_journal(max_entries=1)
    journal.record_sync("a")
    journal.record_sync("b")
    assert journal.overflowed
    head = journal.head
    journal.reset()
    assert not journal.overflowed
    assert journal.pending == 0
    assert not journal.has_unsent
    assert journal.acked == journal.sent_upto == journal.head == head
    assert take_all(journal) == []
    assert journal.can_resume_from(head)
    assert not journal.can_resume_from(head - 1)
    journal.record_sync("a")  # not coalesced into a forgotten entry
    (change,) = take_all(journal)
    assert change.path == "a"
    assert change.seq == head + 1


# --- batching -------------------------------------------------------------------------------


def test_take_batch_respects_max_ops():
    journal = make_journal()
    for path in "abcde":
        journal.record_sync(path)
    assert [c.path for c in journal.take_batch(2, UNLIMITED, lambda c: 0)] == ["a", "b"]
    assert [c.path for c in journal.take_batch(2, UNLIMITED, lambda c: 0)] == ["c", "d"]
    assert [c.path for c in journal.take_batch(2, UNLIMITED, lambda c: 0)] == ["e"]
    assert journal.take_batch(2, UNLIMITED, lambda c: 0) == []


def test_take_batch_respects_max_bytes():
    sizes = {"a": 60, "b": 50, "c": 10, "d": 40}
    journal = make_journal()
    for path in sizes:
        journal.record_sync(path)

    def size_of(change: Change) -> int:
        return sizes[change.path]

    assert [c.path for c in journal.take_batch(100, 100, size_of)] == ["a"]
    assert [c.path for c in journal.take_batch(100, 100, size_of)] == ["b", "c", "d"]


def test_take_batch_returns_at_least_one_change_even_over_the_limits():
    journal = make_journal()
    journal.record_sync("huge")
    journal.record_sync("small")
    assert [c.path for c in journal.take_batch(1, 10, lambda c: 10**9)] == ["huge"]
    assert [c.path for c in journal.take_batch(0, 0, lambda c: 1)] == ["small"]


def test_take_batch_advances_sent_upto():
    journal = make_journal()
    journal.record_sync("a")
    journal.record_sync("b")
    (first,) = journal.take_batch(1, UNLIMITED, lambda c: 0)
    assert journal.sent_upto == first.seq
    assert journal.has_unsent
    take_all(journal)
    assert journal.sent_upto == journal.head
    assert not journal.has_unsent


def test_recording_sets_the_changed_event():
    journal = make_journal()
    assert not journal.changed.is_set()
    journal.record_sync("a")
    assert journal.changed.is_set()


# ---- fan-out: one journal per replica, one counter ---------------------------------------------------------


def test_a_fanout_refuses_journals_with_counters_of_their_own() -> None:
    with pytest.raises(ValueError, match="share one SequenceCounter"):
        JournalFanout([make_journal(), make_journal()])


def test_journals_sharing_a_counter_number_changes_in_recording_order() -> None:
    counter = SequenceCounter()
    fast, slow = (Journal("j", MARKERS, clock=FakeClock(), counter=counter) for _ in range(2))
    fanout = JournalFanout([fast, slow])
    fanout.record_sync("a")
    assert summary(take_all(fast)) == [("sync", "a", None)]
    fast.acknowledge(1)
    fanout.record_sync("a")  # new entry for `fast` (its first was sent); coalesced for `slow`
    fanout.record_delete("b")
    assert [c.seq for c in take_all(fast)] == [2, 3]
    assert [c.seq for c in take_all(slow)] == [1, 3]
    assert fast.head == slow.head == 3


def test_confirmed_covers_changes_that_coalesced_into_acknowledged_entries() -> None:
    counter = SequenceCounter()
    first, second = (Journal("j", MARKERS, clock=FakeClock(), counter=counter) for _ in range(2))
    fanout = JournalFanout([first, second])
    fanout.record_sync("a")
    take_all(first)
    fanout.record_sync("b")  # seq 2 in both
    second.record_sync("a")  # coalesces into second's unsent seq 1
    assert second.confirmed == 0
    take_all(second)
    second.acknowledge(2)
    assert second.acked == 2 and second.confirmed == counter.last == 2
    assert first.confirmed == 0  # its seq 1 is sent but not acknowledged
    first.acknowledge(1)
    assert first.confirmed == 1  # seq 2 is still pending there
    take_all(first)
    first.acknowledge(2)
    assert first.confirmed == 2


def test_a_lone_journal_confirms_exactly_what_was_acknowledged() -> None:
    journal = make_journal()
    for path in "abc":
        journal.record_sync(path)
    take_all(journal)
    journal.acknowledge(2)
    assert journal.confirmed == journal.acked == 2
    journal.acknowledge(3)
    assert journal.confirmed == 3


def test_last_held_is_what_this_replica_will_be_sent_not_a_number_only_another_journal_got() -> None:
    """A replica marks itself synced once it applied its baseline: with a shared counter the head can be a
    number its own journal never held (a write the API and then the watcher recorded coalesced here,
    while the other replica, which had been sent the first record, got a new entry)."""
    counter = SequenceCounter()
    sent, behind = (Journal("j", MARKERS, clock=FakeClock(), counter=counter) for _ in range(2))
    fanout = JournalFanout([sent, behind])
    fanout.record_sync("a")  # the API's record
    take_all(sent)
    fanout.record_sync("a")  # the watcher's: appended to `sent` (seq 2), coalesced in `behind`
    assert counter.last == 2 and behind.last_held == 1 and sent.last_held == 2
    assert [c.seq for c in take_all(behind)] == [behind.last_held]
    behind.acknowledge(1)
    assert behind.last_held == behind.head == 2  # nothing held: the head


def test_a_refused_delete_below_a_folder_to_repair_goes_behind_the_repair() -> None:
    """The replica refused `delete race/f1` because its `race` is still a symlink: after resync_first the
    next batch starts with `race` itself, or the same refusal comes back forever (a trust-boundary race
    test looped on it)."""
    journal = Journal("J", ReadyMarkers([]))
    journal.record_delete("race/f1.txt")
    journal.record_sync("race/f2.txt")
    journal.record_sync("other.txt")
    journal.take_batch(100, 1 << 30, lambda _c: 0)
    assert _next_batch_after_refusal_and_repair(journal) == [
        ("sync", "other.txt"),
        ("sync", "race"),
        ("delete", "race/f1.txt"),
        ("sync", "race/f2.txt"),
    ]


def test_a_file_synced_twice_before_a_refusal_goes_behind_the_repair_once() -> None:
    """After a rewind a path may be held twice (the sync sent and a newer one). resync_first moved only
    the newer behind `race`: the older stayed in front, was refused again, and so on (a full run's
    symlink-swap race looped for 30 s, 12 files x MAX_SYMLINK_REPAIRS refusals before each was
    dropped). Every sync at or below the folder goes behind it, once per path."""
    journal = Journal("J", ReadyMarkers([]))
    journal.record_sync("race/f1.txt")
    journal.record_sync("other.txt")
    journal.take_batch(100, 1 << 30, lambda _c: 0)  # in flight
    journal.record_sync("race/f1.txt")  # written again meanwhile: a second, newer sync
    assert _next_batch_after_refusal_and_repair(journal) == [
        ("sync", "other.txt"),
        ("sync", "race"),
        ("sync", "race/f1.txt"),
    ]


def _next_batch_after_refusal_and_repair(journal: Journal) -> list[tuple[str, str]]:
    """The replica refused the batch in flight (nothing applied) because its `race` is a symlink:
    rewind, send `race` first, and take the next batch."""
    journal.rewind(0)
    journal.resync_first("race")
    return [(c.kind, c.path) for c in journal.take_batch(100, 1 << 30, lambda _c: 0)]


FILES = st.sampled_from(
    [f"{PLUGIN}/a.py", f"{PLUGIN}/lib/b.py", MARKER, "cwd/other/x", "cwd/other/y", "plain.txt"]
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("sync"), FILES),
        st.tuples(st.just("delete"), FILES),
        st.tuples(st.just("rename"), FILES, FILES),
        st.tuples(st.just("resync_first"), st.sampled_from([PLUGIN, "cwd/other", "cwd"])),
        st.tuples(st.just("send_and_ack"), st.integers(0, 4)),
        st.tuples(st.just("discard"), st.integers(0, 6)),
        st.tuples(st.just("tick"), st.floats(0.0, 5.0)),
    ),
    max_size=60,
)


def _common_step(journal: Journal, clock: FakeClock, step: tuple[Any, ...]) -> bool:
    """The steps the property tests share (record, resync, discard, clock); False for any other."""
    kind = step[0]
    if kind == "sync":
        journal.record_sync(step[1])
    elif kind == "delete":
        journal.record_delete(step[1])
    elif kind == "rename":
        if step[1] != step[2] and not is_within(step[2], step[1]):
            journal.record_rename(step[1], step[2])
    elif kind == "resync_first":
        journal.resync_first(step[1])
    elif kind == "discard":
        held = list(journal._entries)
        if held:
            journal.discard(held[step[1] % len(held)])
    elif kind == "tick":
        clock.now += step[1]
    else:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_the_oldest_pending_age_is_the_minimum_over_every_pending_change(
    steps: list[tuple[Any, ...]],
) -> None:
    """Kept without a scan of every pending change (a status call during a 100,000-file seed
    walked them all), it must still equal that scan whatever moved markers or resyncs did."""
    clock = FakeClock()
    journal = make_journal(clock=clock)
    for step in steps:
        if not _common_step(journal, clock, step) and step[0] == "send_and_ack":
            batch = journal.take_batch(step[1] + 1, UNLIMITED, lambda change: 0)
            if batch:
                journal.acknowledge(batch[-1].seq)
        pending = list(journal._entries.values())
        expected = max(0.0, clock.now - min(c.enqueued_at for c in pending)) if pending else 0.0
        assert journal.oldest_unacked_age() == expected


def test_a_size_hint_reaches_every_journal_of_a_fanout_and_survives_a_rename() -> None:
    counter = SequenceCounter()
    journals = [Journal(f"J{n}", MARKERS, clock=FakeClock(), counter=counter) for n in range(2)]
    JournalFanout(journals).record_sync("dir/f", size_hint=123)
    for journal in journals:
        journal.record_rename("dir", "moved")
        synced = [c for c in take_all(journal) if c.kind == "sync"]
        assert [(c.path, c.size_hint) for c in synced] == [("moved/f", 123)]


# --- plans held compactly (held.py) ------------------------------------------------------


class OneByOne(Journal):
    """What `record_plan` must equal: each planned sync recorded on its own."""

    def record_plan(self, syncs: Any) -> None:
        for path, attr_hint, size_hint in syncs:
            self.record_sync(path, attr_hint, size_hint)


PLAN_PATHS = [
    "cwd",
    "cwd/other",
    "cwd/other/x",
    "cwd/other/y",
    "cwd/other-z",
    PLUGIN,
    f"{PLUGIN}/.venv",
    MARKER,
    f"{PLUGIN}/.venv/lib/x.py",
    f"{PLUGIN}/a.py",
    "plain.txt",
]
_PLAN = st.lists(
    st.tuples(
        st.sampled_from(PLAN_PATHS),
        st.sampled_from([None, (7, 123), (9, 5)]),
        st.sampled_from([None, 7, 4096]),
    ),
    max_size=12,
)
PLAN_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("plan"), _PLAN, st.booleans()),
        st.tuples(st.just("sync"), st.sampled_from(PLAN_PATHS)),
        st.tuples(st.just("delete"), st.sampled_from(PLAN_PATHS)),
        st.tuples(st.just("rename"), st.sampled_from(PLAN_PATHS), st.sampled_from(PLAN_PATHS)),
        st.tuples(st.just("resync_first"), st.sampled_from(["cwd", PLUGIN, "cwd/other", ""])),
        st.tuples(st.just("take"), st.integers(1, 5)),
        st.tuples(st.just("ack"), st.integers(0, 6)),
        st.tuples(st.just("rewind"), st.integers(0, 6)),
        st.tuples(st.just("discard"), st.integers(0, 6)),
        st.tuples(st.just("tick"), st.floats(0.0, 5.0)),
    ),
    max_size=40,
)


def _observed(journal: Journal) -> tuple[Any, ...]:
    return (
        list(journal._entries.values()),
        journal.pending,
        journal.head,
        journal.acked,
        journal.sent_upto,
        journal.confirmed,
        journal.last_held,
        journal.has_unsent,
        journal.overflowed,
        journal.oldest_unacked_age(),
        journal.peek_unsent(3),
    )


@settings(max_examples=400, deadline=None, database=None)
@given(PLAN_STEPS)
def test_a_plan_held_compactly_behaves_as_its_syncs_recorded_one_by_one(steps: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    compact = Journal("j", MARKERS, max_entries=25, clock=clock)
    reference = OneByOne("j", MARKERS, max_entries=25, clock=clock)
    for step in steps:
        for journal in (compact, reference):
            kind = step[0]
            if _common_step(journal, clock, step):
                pass
            elif kind == "plan":
                syncs = sorted(step[1], key=lambda s: s[0].replace("/", "\0")) if step[2] else step[1]
                journal.record_plan(iter(syncs))
            elif kind == "take":
                journal.take_batch(step[1], UNLIMITED, lambda change: 0)
            elif kind == "ack":
                journal.acknowledge(min(journal.acked + step[1], journal.sent_upto))
            elif kind == "rewind":
                journal.rewind(max(journal.acked, journal.sent_upto - step[1]))
        assert _observed(compact) == _observed(reference), step
    assert take_all(compact) == take_all(reference)


def test_a_seed_plan_is_held_without_a_change_object_per_file() -> None:
    """Issue 15: 100,000 planned syncs in a few arrays, not 100,000 Change objects and their index."""
    paths = sorted(
        (f"d{i % 100:03d}/s{i % 97:03d}/f{i:06d}" for i in range(100_000)), key=lambda p: p.replace("/", "\0")
    )
    journal = make_journal()
    tracemalloc.start()
    try:
        journal.record_plan((path, None, 1000 + i) for i, path in enumerate(paths))
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert journal.pending == 100_000
    assert held < 3 * 1024 * 1024, f"{held / 2**20:.1f} MiB"  # was ~30 MiB as Change objects
    first = take_all(journal)[:2]
    assert [(c.seq, c.kind, c.path, c.size_hint) for c in first] == [
        (1, "sync", paths[0], 1000),
        (2, "sync", paths[1], 1001),
    ]


def test_a_seed_plan_in_chunks_looks_no_path_up_in_earlier_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed comparison records its plan in chunks, a run each, in the walk's order (a folder's
    entries, then its subfolders'). Each planned path was looked up in every earlier run: 49 % of the
    leader's time in a 100,000-file seed (session 14, py-spy), quadratic in the number of chunks. Now
    a path no run holds is known at once but for the filter's rare false positives."""
    lookups = 0
    index_of = held_module._Run.index_of

    def counted(run: Any, path: str, key: str) -> int | None:
        nonlocal lookups
        lookups += 1
        return index_of(run, path, key)

    monkeypatch.setattr(held_module._Run, "index_of", counted)
    clock = FakeClock()
    journal = make_journal(clock=clock)
    chunks = [[f"d{d:03d}" for d in range(50)]]
    chunks += [[f"d{d:03d}/f{i:03d}" for i in range(100)] for d in range(50)]
    for chunk in chunks:
        clock.now += 0.01  # a new time: a new run
        journal.record_plan((path, None, 10) for path in chunk)
    assert journal.pending == 5_050 and len(journal._entries._runs) == 51
    # Was one per earlier run for each path (about 125,000). A false positive of the filter costs a lookup
    # per earlier run (up to 50 here); with 5,050 paths in 2**20 bits there are a few at most, by hash seed.
    assert lookups < 1_000
    before = lookups
    journal.record_plan([("d010/f005", None, 10)])  # already unsent: found, coalesced
    assert journal.pending == 5_050 and lookups > before


def test_a_sync_stays_found_below_a_folder_after_a_rename_from_its_path_went_again() -> None:
    """resync_first sends a rename again behind the folder; dropping the rename took the unsent sync of its
    source path out of the index, and a delete of a folder above then left that sync in front of itself: the
    replica would have deleted the file the sync had just sent (hypothesis found it, see the test above)."""
    journal = make_journal()
    journal.record_rename("cwd/a", f"{PLUGIN}/b")
    journal.record_sync("cwd/a")  # a new cwd/a
    journal.resync_first(PLUGIN)
    journal.resync_first(PLUGIN)
    journal.record_delete("cwd")
    order = [(change.kind, change.path) for change in take_all(journal)]
    assert order.index(("delete", "cwd")) < order.index(("sync", "cwd/a"))


def test_after_a_rewind_a_planned_sync_does_not_take_in_a_sync_meant_for_after_a_delete() -> None:
    """A rewind left two syncs of `cwd`, the planned one (held in a run) and a newer one; a delete of `cwd`
    takes the newer one to go after it. Recorded again, it coalesced into the planned one, in front of the
    delete: the replica would have deleted what it had just received (hypothesis found it)."""
    journal = make_journal()
    journal.record_plan([("cwd", None, None)])
    journal.take_batch(1, 1 << 40, lambda _change: 0)
    journal.record_sync("cwd")
    journal.rewind(0)
    journal.record_delete("cwd")
    order = [(change.kind, change.path) for change in take_all(journal)]
    assert order[-2:] == [("delete", "cwd"), ("sync", "cwd")]
