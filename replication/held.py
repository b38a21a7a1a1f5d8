"""The journal's pending changes, kept compact where a manifest planned them in bulk.

A seed plans 100,000 syncs at once. Held as one `Change` each in a dict by sequence, with the
index of unsent paths beside it, they took some 35 MiB on the leader at the very moment its own
scan was still in memory (issue 15: peak RSS under 100 MiB). Here such syncs are held as a
`_Run`: consecutive sequence numbers, their paths in path order (a list), their sizes and
attribute hints in arrays, one recording time; a `Change` is made for one of them only when
asked. Everything else (deletes, renames, ready markers, syncs the watcher records) is a
`Change` in a dict as before. `Held` answers as one store ordered by sequence.

Unsent syncs of a run need no index entry: one is unsent while it is alive and its sequence is
above the journal's sent position, and its path is found by bisection (`unsent`, `under`).
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import replace

from replication.changes import Change
from replication.paths import path_key

_ALIVE = 1
_ATTR = 2
_HIDDEN = 4
"""Held and sent, but no longer found as its path's unsent sync (Held.hide_older_in_runs)."""
_NO_SIZE = -1


def fits_a_run(attr_hint: tuple[int, int] | None, size_hint: int | None) -> bool:
    """A run stores a size (or none) and an attribute hint's mtime, whose size must be that size."""
    if size_hint is not None and size_hint < 0:
        return False
    return attr_hint is None or (size_hint is not None and attr_hint[0] == size_hint)


class _Run:
    """Syncs with sequences `first`, `first` + 1, ... of paths in strictly increasing path order."""

    __slots__ = ("enqueued_at", "first", "flags", "last_key", "live", "mtimes", "paths", "sizes")

    def __init__(self, first: int, enqueued_at: float) -> None:
        self.first = first
        self.paths: list[str] = []
        self.sizes = array("q")
        self.mtimes: array[int] | None = None
        """Attribute hints' mtimes, made at the first one (a seed's runs have none)."""
        self.flags = bytearray()
        self.live = 0
        self.enqueued_at = enqueued_at
        self.last_key = ""
        """path_key of the last path appended: a lookup of a later path stops at one comparison."""

    @property
    def end(self) -> int:
        """The sequence right after the last one."""
        return self.first + len(self.paths)

    def takes(self, key: str) -> bool:
        """A path of path_key `key` can follow the last one."""
        return not self.paths or key > self.last_key

    def append(self, path: str, key: str, attr_hint: tuple[int, int] | None, size_hint: int | None) -> None:
        self.paths.append(path)
        self.last_key = key
        self.sizes.append(_NO_SIZE if size_hint is None else size_hint)
        flags = _ALIVE
        if attr_hint is not None:
            flags |= _ATTR
            if self.mtimes is None:
                self.mtimes = array("q", bytes(8 * (len(self.paths) - 1)))
        if self.mtimes is not None:
            self.mtimes.append(0 if attr_hint is None else attr_hint[1])
        self.flags.append(flags)
        self.live += 1

    def alive(self, index: int) -> bool:
        return bool(self.flags[index] & _ALIVE)

    def findable(self, index: int) -> bool:
        return self.flags[index] & (_ALIVE | _HIDDEN) == _ALIVE

    def change(self, index: int) -> Change:
        size = self.sizes[index]
        attr_hint = None
        if self.flags[index] & _ATTR:
            assert self.mtimes is not None
            attr_hint = (size, self.mtimes[index])
        return Change(
            self.first + index,
            "sync",
            self.paths[index],
            attr_hint=attr_hint,
            enqueued_at=self.enqueued_at,
            size_hint=None if size == _NO_SIZE else size,
        )

    def kill(self, index: int) -> None:
        self.flags[index] &= ~_ALIVE
        self.live -= 1

    def forget_attr_hint(self, index: int) -> None:
        self.flags[index] &= ~_ATTR

    def index_of(self, path: str, key: str) -> int | None:
        """The index of `path` (whose path_key is `key`), if this run holds it."""
        if not self.paths or key > self.last_key:
            return None  # at once for the next path of a run being recorded
        index = bisect_left(self.paths, key, key=path_key)
        if index < len(self.paths) and self.paths[index] == path:
            return index
        return None

    def indexes_under(self, path: str) -> range:
        """Indexes of `path` and of every path below it ('' has none below it: as in the journal's
        index of unsent syncs, the root's own entry is no folder of the others)."""
        key = path_key(path)
        low = bisect_left(self.paths, key, key=path_key)
        return range(low, bisect_left(self.paths, key + "\x01", lo=low, key=path_key))

    def drop_before(self, index: int) -> None:
        """Forget the first `index` entries (acknowledged)."""
        self.live -= sum(1 for flags in self.flags[:index] if flags & _ALIVE)
        del self.paths[:index], self.sizes[:index], self.flags[:index]
        if self.mtimes is not None:
            del self.mtimes[:index]
        self.first += index


class _PathFilter:
    """A Bloom filter of paths (two bits of 2**20 from the string's own cached hash, 128 KiB): "not
    held" at once for nearly every path that is not, where a set of 100,000 paths would cost 4 MiB
    of the leader's 100 MiB. Paths are never removed: a path gone from every run may still pass,
    and is then looked up."""

    BITS = 1 << 20

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)
        self.empty = True

    def add(self, path: str) -> None:
        value = hash(path)
        low, high = value & (self.BITS - 1), (value >> 20) & (self.BITS - 1)
        self._bits[low >> 3] |= 1 << (low & 7)
        self._bits[high >> 3] |= 1 << (high & 7)
        self.empty = False

    def may_hold(self, path: str) -> bool:
        value = hash(path)
        low, high = value & (self.BITS - 1), (value >> 20) & (self.BITS - 1)
        return bool(self._bits[low >> 3] & (1 << (low & 7)) and self._bits[high >> 3] & (1 << (high & 7)))


class Held:
    """Pending changes by sequence: a dict of single `Change`s and runs of planned syncs."""

    def __init__(self) -> None:
        self._single: dict[int, Change] = {}
        self._runs: list[_Run] = []
        """In sequence order; their sequences never overlap the singles' or each other's."""
        self._live_in_runs = 0
        """The sum of the runs' `live`: the journal asks for its length at every record."""
        self._in_runs = _PathFilter()
        """Every path a run holds passed it (and some that no run holds): a seed's plan comes in
        chunks, a run each, and each planned path was looked up in every earlier run."""

    # -- adding --------------------------------------------------------------------------------
    def append(self, change: Change) -> None:
        """A change with a sequence above every one held."""
        self._single[change.seq] = change

    def append_to_run(
        self,
        seq: int,
        path: str,
        attr_hint: tuple[int, int] | None,
        size_hint: int | None,
        enqueued_at: float,
    ) -> None:
        """Hold a planned sync (`seq` above every one held; hints that `fits_a_run`) in the last
        run when it continues it (next sequence, next path in path order, same time), else in a
        new run."""
        key = path_key(path)
        run = self._runs[-1] if self._runs else None
        if run is None or run.end != seq or run.enqueued_at != enqueued_at or not run.takes(key):
            run = _Run(seq, enqueued_at)
            self._runs.append(run)
        run.append(path, key, attr_hint, size_hint)
        self._live_in_runs += 1
        self._in_runs.add(path)

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._single) + self._live_in_runs

    def __bool__(self) -> bool:
        return bool(self._single) or bool(self._runs)

    def __contains__(self, seq: int) -> bool:
        if seq in self._single:
            return True
        found = self._in_run(seq)
        return found is not None and found[0].alive(found[1])

    def __getitem__(self, seq: int) -> Change:
        change = self._single.get(seq)
        if change is not None:
            return change
        found = self._in_run(seq)
        if found is None or not found[0].alive(found[1]):
            raise KeyError(seq)
        return found[0].change(found[1])

    def __iter__(self) -> Iterator[int]:
        return self.seqs()

    def values(self) -> Iterator[Change]:
        return (change for _seq, change in self.items())

    def first(self) -> int | None:
        return next(iter(self.seqs()), None)

    def last(self) -> int | None:
        last_single = next(reversed(self._single), None)
        for run in reversed(self._runs):
            for index in range(len(run.paths) - 1, -1, -1):
                if run.alive(index):
                    seq = run.first + index
                    return seq if last_single is None else max(seq, last_single)
        return last_single

    def seqs(self, after: int = 0) -> Iterator[int]:
        """Every held sequence above `after`, ascending."""
        return (seq for seq, _change in self.items(after))

    def items(self, after: int = 0) -> Iterator[tuple[int, Change]]:
        """(sequence, change) above `after`, ascending."""
        singles = ((seq, change) for seq, change in self._single.items() if seq > after)
        if not self._runs:
            return singles
        return heapq.merge(singles, self._run_items(after), key=lambda item: item[0])

    def singles(self) -> Iterator[Change]:
        """The changes not held in runs (every delete, rename and ready marker is one)."""
        return iter(self._single.values())

    def unsent_in_runs(self, path: str, sent_upto: int) -> int | None:
        """The highest unsent sequence of a sync of `path` held in a run."""
        if not self._in_runs.may_hold(path):
            return None
        key = path_key(path)
        for run in reversed(self._runs):
            if run.end - 1 <= sent_upto:
                break
            index = run.index_of(path, key)
            if index is not None and run.findable(index) and run.first + index > sent_upto:
                return run.first + index
        return None

    def unsent_in_runs_under(
        self, path: str, sent_upto: int, *, hidden_too: bool = False
    ) -> Iterator[tuple[int, str]]:
        """(sequence, path) of the unsent syncs held in runs at `path` or below it; `hidden_too`: also
        those no longer found as their path's unsent sync (hide_older_in_runs)."""
        for run in self._runs:
            if run.end - 1 <= sent_upto:
                continue
            for index in run.indexes_under(path):
                if (
                    run.alive(index) if hidden_too else run.findable(index)
                ) and run.first + index > sent_upto:
                    yield run.first + index, run.paths[index]

    # -- changing ------------------------------------------------------------------------------
    def hide_older_in_runs(self, path: str, seq: int) -> None:
        """The syncs of `path` held in runs before `seq` are no longer found as its unsent sync (they
        are still sent). A single older sync of a path is not indexed either (Journal._drop): after a
        rewind left two syncs of a path and the newer one was dropped, a new sync must not coalesce into
        the older one, which may stand before a delete of the path."""
        if not self._in_runs.may_hold(path):
            return
        key = path_key(path)
        for run in self._runs:
            if run.first >= seq:
                break
            index = run.index_of(path, key)
            if index is not None and run.first + index < seq:
                run.flags[index] |= _HIDDEN

    def find_all_again(self) -> None:
        """Every held sync is found as its path's unsent sync again, the newest first (a rewind)."""
        for run in self._runs:
            for index, flags in enumerate(run.flags):
                if flags & _HIDDEN:
                    run.flags[index] = flags & ~_HIDDEN

    def forget_attr_hint(self, seq: int) -> None:
        """The sync `seq` must send content again, not attributes only."""
        change = self._single.get(seq)
        if change is not None:
            self._single[seq] = replace(change, attr_hint=None)
            return
        found = self._in_run(seq)
        if found is None:
            raise KeyError(seq)
        found[0].forget_attr_hint(found[1])

    def pop(self, seq: int) -> Change:
        change = self._single.pop(seq, None)
        if change is not None:
            return change
        found = self._in_run(seq)
        if found is None or not found[0].alive(found[1]):
            raise KeyError(seq)
        run, index = found
        change = run.change(index)
        run.kill(index)
        self._live_in_runs -= 1
        if not run.live:
            self._runs.remove(run)
            self._forget_paths_if_no_runs()
        return change

    def drop_through(self, seq: int) -> list[int]:
        """Forget every change up to `seq`; returns the singles' sequences forgotten."""
        done = []
        for held in self._single:  # ascending: stop at the first one still pending
            if held > seq:
                break
            done.append(held)
        for held in done:
            del self._single[held]
        while self._runs and self._runs[0].first <= seq:
            run = self._runs[0]
            if run.end - 1 <= seq:
                self._live_in_runs -= run.live
                self._runs.pop(0)
            else:
                live = run.live
                run.drop_before(seq + 1 - run.first)
                self._live_in_runs -= live - run.live
                if not run.live:
                    self._runs.pop(0)
        self._forget_paths_if_no_runs()
        return done

    def clear(self) -> None:
        self._single.clear()
        self._runs.clear()
        self._live_in_runs = 0
        self._in_runs = _PathFilter()

    # -- internals -----------------------------------------------------------------------------
    def _forget_paths_if_no_runs(self) -> None:
        if not self._runs and not self._in_runs.empty:
            self._in_runs = _PathFilter()

    def _in_run(self, seq: int) -> tuple[_Run, int] | None:
        position = bisect_right(self._runs, seq, key=lambda run: run.first) - 1
        if position < 0:
            return None
        run = self._runs[position]
        if seq >= run.end:
            return None
        return run, seq - run.first

    def _run_items(self, after: int) -> Iterator[tuple[int, Change]]:
        start = max(0, bisect_right(self._runs, after, key=lambda run: run.end - 1))
        for run in self._runs[start:]:
            for index in range(max(0, after + 1 - run.first), len(run.paths)):
                if run.alive(index):
                    yield run.first + index, run.change(index)
