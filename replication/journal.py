"""The leader's journal: changes waiting for the replica's acknowledgement.

Changes describe *which* path to look at, not the bytes: content is read
when a change is sent, so repeated writes to one path coalesce into one
pending change. Every change gets a sequence number; the replica
acknowledges the highest one it applied durably, and a reconnecting replica
resumes from there.

Ordering rules kept here, at record time:
- a rename carries every not-yet-sent change below its source along to the
  destination, placed after the rename;
- a ready marker (READY_MARKERS) is moved behind every later change under
  its plugin directory, so the replica never sees a venv marked ready
  before its files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from replication.changes import Change, ChangeKind
from replication.exclude import ReadyMarkers
from replication.held import Held, fits_a_run
from replication.paths import ancestors, is_within, rebase

__all__ = ["Change", "ChangeKind", "Journal", "JournalFanout", "Recorder", "SequenceCounter"]


class Recorder(Protocol):
    """Where the watcher records changes: one journal, or a fan-out to several."""

    def record_sync(
        self, path: str, attr_hint: tuple[int, int] | None = None, size_hint: int | None = None
    ) -> None: ...
    def record_delete(self, path: str) -> None: ...
    def record_rename(self, src: str, dest: str) -> None: ...


class SequenceCounter:
    """Issues sequence numbers; the journals of one leader share one, so numbers compare across replicas.

    With one journal per replica (fan-out), a shared counter means "replica A
    applied up to 120" and "replica B applied up to 97" say which of them holds
    more of the leader's history, which is how the most caught-up replica is
    preferred at promotion. A journal's own numbers then have gaps; nothing
    relies on them being contiguous.
    """

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last


class Journal:
    """Sequenced, coalescing, in-memory; all methods run on the event loop thread."""

    def __init__(
        self,
        journal_id: str,
        markers: ReadyMarkers,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
        counter: SequenceCounter | None = None,
    ) -> None:
        self.journal_id = journal_id
        self._markers = markers
        self._max_entries = max_entries
        self._clock = clock
        self._entries = Held()
        self._late: dict[int, float] = {}
        """Entries appended with an older `enqueued_at` than one appended before them (a marker moved
        behind newer changes keeps its time): all others are in time order, so the oldest pending
        change is the first of those or one of these few (see oldest_unacked_age)."""
        self._newest_enqueued = 0.0
        self._unsent_sync = _UnsentIndex()
        self._unsent_markers: dict[str, int] = {}
        self.counter = counter or SequenceCounter()
        self.sent_upto = 0
        self.acked = 0
        self.overflowed = False
        self.rescan_reason: str | None = None
        """Set when events may have been missed: the sender reconciles by manifest, then clears it."""
        self.changed = asyncio.Event()
        self.records = 0
        """Counts every change recorded, coalesced ones included: a read made before the count moved
        may be older than an event that coalesced into a change it covers (Sender's next-batch reads)."""

    # -- recording -------------------------------------------------------------
    def record_sync(
        self, path: str, attr_hint: tuple[int, int] | None = None, size_hint: int | None = None
    ) -> None:
        self.records += 1  # a coalesced sync appends nothing: counted here (every append counts itself)
        seq = self._unsent_seq(path)
        if seq is not None:
            if attr_hint is None and self._entries[seq].attr_hint is not None:
                self._entries.forget_attr_hint(seq)
            return
        self._append(Change(0, "sync", path, attr_hint=attr_hint, size_hint=size_hint))

    def record_plan(self, syncs: Iterable[tuple[str, tuple[int, int] | None, int | None]]) -> None:
        """`record_sync` of each (path, attr_hint, size_hint), in order, recorded at one time: what a
        manifest planned. Syncs in path order are held compactly (held.py), the same changes."""
        stamp = self._clock()
        for path, attr_hint, size_hint in syncs:
            compact = self._holds_compactly(path, attr_hint, size_hint, stamp)
            if not compact or self._unsent_seq(path) is not None:
                self.record_sync(path, attr_hint, size_hint)
                continue
            self._entries.append_to_run(self.counter.next(), path, attr_hint, size_hint, stamp)
            self.records += 1
            self._newest_enqueued = stamp
            self._check_overflow()

    def _holds_compactly(
        self, path: str, attr_hint: tuple[int, int] | None, size_hint: int | None, stamp: float
    ) -> bool:
        """A planned sync can go in a run unless it is a ready marker, would have to move one
        (_keep_markers_last), is older than the newest change (times must not go back) or has
        hints a run cannot hold."""
        return (
            fits_a_run(attr_hint, size_hint)
            and stamp >= self._newest_enqueued
            and self._markers.plugin_dir(path) is None
            and not self._markers_holding(path)
        )

    def record_delete(self, path: str) -> None:
        # Unsent syncs at or below `path` may describe a newer object (a scan can run
        # ahead of the events): they go after the delete and read what exists then.
        behind = self._take_unsent(path)
        self._append(Change(0, "delete", path))
        self._record_again(behind)

    def record_rename(self, src: str, dest: str) -> None:
        carried = [replace(c, path=rebase(c.path, src, dest)) for c in self._take_unsent(src)]
        displaced = self._take_unsent(dest)
        self._append(Change(0, "rename", src, dest=dest))
        self._record_again(carried + displaced)

    def resync_first(self, path: str) -> None:
        """Send `path` itself again before anything still unsent below it.

        Used when the replica refused a change because a folder on its way is
        still the symlink it used to be here: the folder must be replaced first.
        Deletes and renames below it move behind it too: one of them may be the
        refused change, and left in front it would be refused again, forever.
        """
        behind = self._take_unsent(path)
        # After a rewind a path may be held twice; _take_unsent took the newer sync of each, and an
        # older one left in front would be refused again, forever: it goes too (the newer is re-sent).
        older = [
            seq for seq, _found in self._entries.unsent_in_runs_under(path, self.sent_upto, hidden_too=True)
        ]
        moved = []
        for change in self._entries.singles():
            if change.seq <= self.sent_upto:
                continue
            if change.kind == "sync":
                if is_within(change.path, path):
                    older.append(change.seq)
            elif is_within(change.path, path) or (change.dest is not None and is_within(change.dest, path)):
                moved.append(change)
        for seq in older:
            self._drop(seq)
        for change in moved:
            self._drop(change.seq)
        self._append(Change(0, "sync", path))
        for change in sorted(behind + moved, key=lambda c: c.seq):
            if change.kind == "sync":
                self.record_sync(change.path, change.attr_hint, change.size_hint)
            else:
                self._append(replace(change, seq=0))

    def discard(self, seq: int) -> Change | None:
        """Drop one unacknowledged change (the replica refused it for good); the caller decides what next."""
        if seq not in self._entries:
            return None
        change = self._entries[seq]
        self._drop(seq)
        return change

    def request_rescan(self, reason: str) -> None:
        """Ask for a manifest reconciliation (watcher overflow, watcher failure, anti-entropy)."""
        if self.rescan_reason is None:
            self.rescan_reason = reason
        self.changed.set()

    # -- sending ---------------------------------------------------------------
    def take_batch(self, max_ops: int, max_bytes: int, size_of: Callable[[Change], int]) -> list[Change]:
        """The next unsent changes in order, within the limits (at least one)."""
        batch: list[Change] = []
        total = 0
        for _seq, change in self._entries.items(after=self.sent_upto):
            size = size_of(change)
            if batch and (len(batch) >= max_ops or total + size > max_bytes):
                break
            batch.append(change)
            total += size
        for change in batch:
            self._mark_sent(change)
        if batch:
            self.sent_upto = batch[-1].seq
        return batch

    def peek_unsent(self, count: int) -> list[Change]:
        """The first `count` changes the next batch would hand out, without taking them."""
        found: list[Change] = []
        for _seq, change in self._entries.items(after=self.sent_upto):
            found.append(change)
            if len(found) >= count:
                break
        return found

    def acknowledge(self, seq: int) -> None:
        """The replica applied everything up to `seq` durably."""
        if seq <= self.acked:
            return
        self.acked = min(seq, self.head)
        for held in self._entries.drop_through(self.acked):
            self._late.pop(held, None)

    def rewind(self, seq: int) -> None:
        """Send again everything after `seq` (the replica's acknowledged position)."""
        self.acknowledge(seq)
        self.sent_upto = max(self.acked, min(seq, self.sent_upto))
        self._entries.find_all_again()
        self._unsent_sync.clear()
        self._unsent_markers.clear()
        for change in self._entries.singles():  # a run's syncs need no index entry (held.py)
            if change.seq > self.sent_upto and change.kind == "sync":
                self._unsent_sync.add(change.path, change.seq)
                plugin_dir = self._markers.plugin_dir(change.path)
                if plugin_dir is not None:
                    self._unsent_markers[plugin_dir] = change.seq
        self.changed.set()

    def can_resume_from(self, seq: int) -> bool:
        """True when every change after `seq` is still held here."""
        return not self.overflowed and self.acked <= seq <= self.head

    def reset(self) -> None:
        """Forget everything pending; the caller reconciles by manifest instead."""
        self._entries.clear()
        self._late.clear()
        self._unsent_sync.clear()
        self._unsent_markers.clear()
        self.acked = self.sent_upto = self.head
        self.overflowed = False

    # -- observation -----------------------------------------------------------
    @property
    def head(self) -> int:
        """The highest sequence number issued so far (by this journal or one sharing its counter)."""
        return self.counter.last

    @property
    def last_held(self) -> int:
        """The highest sequence this journal still holds; the head when it holds nothing.

        With a shared counter the head may be a number only another replica's
        journal got (a change that coalesced here): this replica will never be
        sent it, so "caught up" means having applied up to `last_held`.
        """
        last = self._entries.last()
        return self.head if last is None else last

    @property
    def confirmed(self) -> int:
        """Every change recorded up to this sequence is on the replica.

        Higher than `acked` when the last changes coalesced into entries the
        replica has since acknowledged, or went to a journal sharing the counter.
        Entries are held in ascending order, so the oldest pending one bounds it.
        """
        first = self._entries.first()
        return self.head if first is None else first - 1

    @property
    def pending(self) -> int:
        return len(self._entries)

    def is_ready_marker(self, path: str) -> bool:
        """True for a READY_MARKERS file: it must land only after everything queued before it."""
        return self._markers.plugin_dir(path) is not None

    @property
    def has_unsent(self) -> bool:
        last = self._entries.last()
        return last is not None and last > self.sent_upto

    def oldest_unacked_age(self) -> float:
        """Seconds since the oldest pending change was recorded (markers may sit behind newer ones)."""
        oldest = min(self._late.values(), default=None)
        for seq, change in self._entries.items():  # skips at most len(self._late) entries
            if seq not in self._late:
                oldest = change.enqueued_at if oldest is None else min(oldest, change.enqueued_at)
                break
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    # -- internals -------------------------------------------------------------
    def _append(self, change: Change, moved: set[str] | None = None) -> None:
        """`moved`: the markers already moved behind the change that started this (`_keep_markers_last`)."""
        self.records += 1
        seq = self.counter.next()
        change = replace(change, seq=seq, enqueued_at=change.enqueued_at or self._clock())
        self._entries.append(change)
        if change.enqueued_at < self._newest_enqueued:
            self._late[seq] = change.enqueued_at
        else:
            self._newest_enqueued = change.enqueued_at
        if change.kind == "sync":
            self._unsent_sync.add(change.path, seq)
            plugin_dir = self._markers.plugin_dir(change.path)
            if plugin_dir is not None:
                self._unsent_markers[plugin_dir] = seq
        self._keep_markers_last(change, set() if moved is None else moved)
        self._check_overflow()

    def _check_overflow(self) -> None:
        if len(self._entries) > self._max_entries:
            self.overflowed = True
        self.changed.set()

    def _keep_markers_last(self, change: Change, moved: set[str]) -> None:
        """Move every unsent marker whose plugin folder holds `change` behind it.

        Looked up by the folders above the changed paths (a few dict lookups), not by
        walking every unsent marker: a burst installing many plugins stays linear.

        A marker moves at most once for the change that started the moves (`moved`, by path): two
        markers can each lie in the other's plugin folder (a marker's path renamed into a folder
        that holds a marker of its own: `p/.venv/dify/plugin.json/.venv/dify/plugin.json`, found by
        test_journal's fuzz), and each would otherwise be moved behind the other without end.
        """
        if not self._unsent_markers:
            return
        holding = {
            marker_seq
            for path in (change.path, change.dest)
            if path
            for marker_seq in self._markers_holding(path)
            if marker_seq != change.seq
        }
        for marker_seq in sorted(holding):
            if marker_seq in self._entries:
                marker = self._entries[marker_seq]
                if marker.path in moved:
                    continue
                moved.add(marker.path)
                self._drop(marker_seq)
                self._append(replace(marker, seq=0), moved)

    def _markers_holding(self, path: str) -> list[int]:
        """Sequences of the unsent markers whose plugin folder holds `path` (or is `path`)."""
        if not self._unsent_markers:
            return []
        found = (self._unsent_markers.get(folder) for folder in ("", *ancestors(path), path))
        return [seq for seq in found if seq is not None]

    def _unsent_seq(self, path: str) -> int | None:
        """The unsent sync of `path`, the newest one if a rewind left two."""
        single = self._unsent_sync.get(path)
        in_run = self._entries.unsent_in_runs(path, self.sent_upto)
        if in_run is None or (single is not None and single > in_run):
            return single
        return in_run

    def _take_unsent(self, path: str) -> list[Change]:
        """Remove and return the unsent syncs at or below `path` (of a path synced twice after a
        rewind, only the newest: the older one stays where it is)."""
        newest: dict[str, int] = {}
        for seq, found in self._entries.unsent_in_runs_under(path, self.sent_upto):
            newest[found] = max(seq, newest.get(found, 0))
        for seq in self._unsent_sync.under(path):
            found = self._entries[seq].path
            newest[found] = max(seq, newest.get(found, 0))
        taken = [self._entries[seq] for seq in sorted(newest.values())]
        for change in taken:
            self._drop(change.seq)
        return taken

    def _record_again(self, changes: list[Change]) -> None:
        for change in sorted(changes, key=lambda c: c.seq):
            self.record_sync(change.path, change.attr_hint, change.size_hint)

    def _drop(self, seq: int) -> None:
        change = self._entries.pop(seq)
        self._late.pop(seq, None)
        indexed = self._unsent_sync.get(change.path)
        if change.kind == "sync" and indexed is not None and indexed < seq:
            # `seq` was in a run, the newest unsent sync of its path: the index would have named it,
            # so it names none now (an older one stays where it is, as after any rewind). Only a sync:
            # a rename or delete dropped to go again (resync_first) leaves its path's sync indexed, or
            # a delete of a folder above would leave that sync in front of it (hypothesis found it).
            self._unsent_sync.discard(change.path, indexed)
        self._unsent_sync.discard(change.path, seq)
        if change.kind == "sync":
            self._entries.hide_older_in_runs(change.path, seq)  # as an older single is not indexed
        plugin_dir = self._markers.plugin_dir(change.path)
        if plugin_dir is not None and self._unsent_markers.get(plugin_dir) == seq:
            del self._unsent_markers[plugin_dir]

    def _mark_sent(self, change: Change) -> None:
        self._unsent_sync.discard(change.path, change.seq)
        plugin_dir = self._markers.plugin_dir(change.path)
        if plugin_dir is not None and self._unsent_markers.get(plugin_dir) == change.seq:
            del self._unsent_markers[plugin_dir]


class _UnsentIndex:
    """Unsent sync changes by path, with a tree of the folders above them so subtree lookups stay cheap.

    Deleting or renaming a folder in a big pending burst must not scan every
    pending change (that made bursts quadratic and kept the loop busy for
    seconds): `under` walks only the subtree below the path.
    """

    def __init__(self) -> None:
        self._by_path: dict[str, int] = {}
        self._kids: dict[str, set[str]] = {}
        """Folder -> the paths directly below it that are pending or lead to pending ones."""

    def get(self, path: str) -> int | None:
        return self._by_path.get(path)

    def add(self, path: str, seq: int) -> None:
        if path not in self._by_path:
            self._link(path)
        self._by_path[path] = seq

    def discard(self, path: str, seq: int) -> None:
        if self._by_path.get(path) != seq:
            return
        del self._by_path[path]
        self._unlink(path)

    def under(self, path: str) -> list[int]:
        """Sequences of unsent syncs at `path` or below it."""
        found = [self._by_path[path]] if path in self._by_path else []
        stack = [path]
        while stack:
            for child in self._kids.get(stack.pop(), ()):
                seq = self._by_path.get(child)
                if seq is not None:
                    found.append(seq)
                stack.append(child)
        return found

    def clear(self) -> None:
        self._by_path.clear()
        self._kids.clear()

    def _link(self, path: str) -> None:
        child = path
        for folder in reversed(ancestors(path)):
            kids = self._kids.setdefault(folder, set())
            if child in kids:
                return  # the folders above are linked already
            kids.add(child)
            child = folder

    def _unlink(self, path: str) -> None:
        child = path
        for folder in reversed(ancestors(path)):
            if child in self._by_path or self._kids.get(child):
                return  # still pending itself, or still leads to pending paths
            kids = self._kids[folder]
            kids.discard(child)
            self._kids.pop(child, None)
            if kids:
                return
            child = folder
        if child not in self._by_path and not self._kids.get(child):
            self._kids.pop(child, None)


class JournalFanout:
    """What the watcher records goes to every replica's journal, in the same order.

    Each replica has a journal of its own (its own sent and acknowledged
    positions, its own coalescing), numbered from one shared counter: one
    recorded change gets the same number in every journal that appends it.
    """

    def __init__(self, journals: list[Journal]) -> None:
        counters = {id(journal.counter) for journal in journals}
        if len(counters) != 1:
            raise ValueError("the journals of a fan-out must share one SequenceCounter")
        self.journals = journals
        self.counter = journals[0].counter

    def record_sync(
        self, path: str, attr_hint: tuple[int, int] | None = None, size_hint: int | None = None
    ) -> None:
        self._each(lambda journal: journal.record_sync(path, attr_hint, size_hint))

    def record_delete(self, path: str) -> None:
        self._each(lambda journal: journal.record_delete(path))

    def record_rename(self, src: str, dest: str) -> None:
        self._each(lambda journal: journal.record_rename(src, dest))

    def request_rescan(self, reason: str) -> None:
        for journal in self.journals:
            journal.request_rescan(reason)

    def _each(self, record: Callable[[Journal], None]) -> None:
        base = high = self.counter.last
        for journal in self.journals:
            self.counter.last = base
            record(journal)
            high = max(high, self.counter.last)
        self.counter.last = high
