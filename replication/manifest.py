"""Manifests: what a tree holds, compared cheaply.

An entry records type, size, mode, mtime and symlink target, which is all a
`stat` gives for free. Content hashes are computed only for the entries
whose cheap fields disagree in a way that could still mean equal content
(same type and size, different mtime).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import stat
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from replication.errors import ReplicationError
from replication.paths import MAX_PATH_BYTES, TEMP_PREFIX, StorageRoot, is_temp_name, path_key
from replication.protocol import replicated_mode

EntryType = Literal["file", "dir", "symlink"]
HASH_CHUNK = 1024 * 1024


class Entry(NamedTuple):
    """One path of a manifest. A tuple: walks and answers make one per path, and a frozen
    dataclass's __init__ (an object.__setattr__ per field) cost three times as much."""

    path: str
    type: EntryType
    mode: int
    mtime_ns: int
    size: int = 0
    target: str | None = None

    def to_json(self) -> list[Any]:
        return list(self)

    @classmethod
    def from_json(cls, raw: list[Any]) -> Entry:
        path, type_, mode, mtime_ns, size, target = raw
        return cls(path=path, type=type_, mode=mode, mtime_ns=mtime_ns, size=size, target=target)

    @property
    def mtime_s(self) -> int:
        return self.mtime_ns // 1_000_000_000


_MODES: dict[int, int] = {}
"""At most 4096 permission values, shared by every entry (32 bytes an entry otherwise)."""


def entry_from_stat(path: str, st: os.stat_result, target: str | None = None) -> Entry | None:
    """The manifest entry for one lstat result, or None for types we do not replicate (FIFOs,
    sockets, devices). The mode is the file's own: `compare` decides what the replica should have."""
    mode = stat.S_IMODE(st.st_mode)
    mode = _MODES.setdefault(mode, mode)  # one int object per distinct mode, not one per file
    if stat.S_ISREG(st.st_mode):
        return Entry(path, "file", mode, st.st_mtime_ns, st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, "dir", mode, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        return Entry(path, "symlink", mode, st.st_mtime_ns, target=target)
    return None


OnSpecial = Callable[[str, int], None]
"""Told (path, st_mode) of each FIFO, socket or device a walk leaves out."""


def walk(
    root: str,
    top: str = "",
    skip: Callable[[str], bool] = lambda _p: False,
    on_special: OnSpecial | None = None,
) -> Iterator[Entry]:
    """Entries under `root/top` (top included when not ''), parents before children.

    Every folder is reached from the root through no-follow fds (StorageRoot):
    symlinks are reported, never followed, and a folder swapped for a symlink
    during the walk is not entered. Temp files, `skip` matches, paths no peer
    would accept and special files are left out (the last told to `on_special`).
    """
    storage = StorageRoot(root)
    if top:
        entry = stat_entry(storage, top, on_special)
        if entry is None or skip(top):
            return
        yield entry
        if entry.type != "dir":
            return

    def listed(rel: str) -> bool:
        return not is_temp_name(rel) and not skip(rel) and _acceptable(rel)

    for rel_dir, _fd, children in storage.walk_dirs(top, enter=listed):
        prefix = f"{rel_dir}/" if rel_dir else ""
        for name, st, target in children:
            # `listed`, inlined: the walk's busiest lines (issue 15, no-change pass)
            if name.startswith(TEMP_PREFIX):
                continue
            rel = prefix + name
            if skip(rel) or not (len(rel) <= _SURELY_ACCEPTABLE or _acceptable(rel)):
                continue
            entry = entry_from_stat(rel, st, target)
            if entry is None:
                if on_special is not None:
                    on_special(rel, st.st_mode)
                continue
            yield entry


def walk_kinds(root: str | StorageRoot, top: str, skip: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    """(path, kind) of what `walk(root, top, skip)` would list, kind "dir", "file" or "symlink", from the
    folder listings alone: no lstat, so no mode, mtime or size (StorageRoot.kinds_below)."""
    if is_temp_name(top) or skip(top):
        return
    storage = root if isinstance(root, StorageRoot) else StorageRoot(root)

    def listed(rel: str) -> bool:
        return not is_temp_name(rel) and not skip(rel) and _acceptable(rel)

    for path, kind in storage.kinds_below(top, listed):
        if kind != "other":  # FIFOs, sockets and devices are never replicated
            yield path, kind


class TreeDigest:
    """SHA-256 over what `difference` compares of each entry of a walk, in the walk's order.

    Two trees whose walks give equal digests need nothing sent, attributes included: the quick check
    of a whole tree, so that a pass that finds nothing changed moves one digest instead of an entry
    per path (issue 15: the no-change pass). Left out as `difference` leaves them out: a folder's
    mtime, a symlink's mode and its mtime below the second. The source's modes count as they travel
    (`replicated_mode`), the replica's as they are, as `difference` compares them. Fields end with
    NUL, which no path or link text holds, so no two lists of entries give the same bytes.
    """

    def __init__(self, side: Literal["source", "replica"]) -> None:
        self._hash = hashlib.sha256()
        self._mode: Callable[[int], int] = replicated_mode if side == "source" else int
        self.entries = 0

    def add(self, entries: Iterable[Entry]) -> None:
        records = []
        as_compared = self._mode
        for path, type_, mode, mtime_ns, size, target in entries:
            if type_ == "file":
                records.append(f"f\0{path}\0{size}\0{mtime_ns}\0{as_compared(mode)}\0")
            elif type_ == "dir":
                records.append(f"d\0{path}\0{as_compared(mode)}\0")
            else:
                records.append(f"l\0{path}\0{target}\0{mtime_ns // 1_000_000_000}\0")
        self._hash.update("".join(records).encode("utf-8", "surrogateescape"))
        self.entries += len(records)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def replica_digest(
    root: str, skip: Callable[[str], bool] = lambda _p: False, chunk: int = 1000
) -> TreeDigest:
    """The replica's TreeDigest of `walk(root, "", skip)`."""
    digest = TreeDigest("replica")
    entries: list[Entry] = []
    for entry in walk(root, "", skip):
        entries.append(entry)
        if len(entries) >= chunk:
            digest.add(entries)
            entries = []
    digest.add(entries)
    return digest


def stat_entry(root: str | StorageRoot, path: str, on_special: OnSpecial | None = None) -> Entry | None:
    """The entry for `path` now, read without following any symlink; None when gone or not replicated."""
    storage = root if isinstance(root, StorageRoot) else StorageRoot(root)
    st = storage.lstat(path)
    if st is None:
        return None
    target = None
    if stat.S_ISLNK(st.st_mode):
        target = storage.readlink(path)
        if target is None:
            return None
    entry = entry_from_stat(path, st, target)
    if entry is None and on_special is not None:
        on_special(path, st.st_mode)
    return entry


def scan(
    root: str, skip: Callable[[str], bool] = lambda _p: False, on_special: OnSpecial | None = None
) -> dict[str, Entry]:
    return {e.path: e for e in walk(root, "", skip, on_special)}


_TYPES: tuple[EntryType, ...] = ("file", "dir", "symlink")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class Listing:
    """Our manifest for one comparison, compact (issue 15: 100,000 files under 100 MiB).

    As a dict of entries it took about 280 bytes a path (an Entry, its mtime and size as ints, a
    dict slot) beside the path's 80; here the fields are in arrays in the order the walk found
    them, and each path is kept once, as a record: the path with '/' as NUL (`path_key`, so that
    plain string order is path order), two NULs (below anything a path may continue with) and its
    position in the arrays in four characters. The records are sorted in place (no second list,
    no index objects): a path is found by bisection, and whatever the comparison did not meet is
    already in the plan's order. Each entry can be taken once (`take`); `left` yields the others.
    """

    def __init__(self, entries: Iterable[Entry] = (), *, sealed: bool = True) -> None:
        """With `sealed` False, `extend` it as a walk goes and `seal` it before any lookup."""
        self._records: list[str] = []
        self._types, self._modes = bytearray(), array("H")
        self._mtimes, self._sizes = array("q"), array("q")
        self._targets: dict[int, str] = {}
        self._odd_mtimes: dict[int, int] = {}
        """mtimes beyond 64 bits (an absurd date is still a valid one), by position."""
        self._taken = bytearray()
        self.extend(entries)
        if sealed:
            self.seal()

    def extend(self, entries: Iterable[Entry]) -> None:
        for position, entry in enumerate(entries, start=len(self._records)):
            self._records.append(f"{path_key(entry.path)}{_SEPARATOR}{_position(position)}")
            self._types.append(_TYPES.index(entry.type))
            self._modes.append(entry.mode)
            if _INT64[0] <= entry.mtime_ns <= _INT64[1]:
                self._mtimes.append(entry.mtime_ns)
            else:
                self._mtimes.append(0)
                self._odd_mtimes[position] = entry.mtime_ns
            self._sizes.append(entry.size)
            if entry.target is not None:
                self._targets[position] = entry.target

    def seal(self) -> None:
        self._records.sort()
        self._taken = bytearray(len(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def take(self, path: str) -> int | None:
        """The position of our entry of `path` the first time it is asked for; TAKEN when it was
        asked for before; None when we have no such path."""
        prefix = path_key(path) + _SEPARATOR
        index = bisect_left(self._records, prefix)
        if index == len(self._records) or not self._records[index].startswith(prefix):
            return None
        record = self._records[index]
        if len(record) != len(prefix) + _POSITION_CHARS:
            return None  # the path itself holds two NULs: it cannot be ours
        position = _position_of(record)
        if self._taken[position]:
            return TAKEN
        self._taken[position] = 1
        return position

    def fields(self, position: int) -> tuple[EntryType, int, int, int, str | None]:
        """(type, mode, mtime_ns, size, target) of the entry at `position`, without making it."""
        mtime_ns = self._odd_mtimes.get(position) if self._odd_mtimes else None
        return (
            _TYPES[self._types[position]],
            self._modes[position],
            self._mtimes[position] if mtime_ns is None else mtime_ns,
            self._sizes[position],
            self._targets.get(position) if self._targets else None,
        )

    def entry(self, position: int, path: str) -> Entry:
        type_, mode, mtime_ns, size, target = self.fields(position)
        return Entry(path, type_, _MODES.setdefault(mode, mode), mtime_ns, size, target)

    def left(self) -> Iterator[Entry]:
        """The entries never taken, in path order (parents first)."""
        for record in self._records:
            position = _position_of(record)
            if not self._taken[position]:
                yield self.entry(position, _path_of(record))

    def left_sizes(self) -> tuple[list[str], array[int]]:
        """The paths never taken, in path order, and their sizes."""
        paths, sizes = [], array("q")
        for record in self._records:
            position = _position_of(record)
            if not self._taken[position]:
                paths.append(_path_of(record))
                sizes.append(self._sizes[position])
        return paths, sizes

    def release(self) -> None:
        """Let the memory go (the comparison is over; a caller may still hold this object)."""
        self._records = []
        self._types, self._taken = bytearray(), bytearray()
        self._modes, self._mtimes, self._sizes = array("H"), array("q"), array("q")
        self._targets, self._odd_mtimes = {}, {}


TAKEN = -1
"""`Listing.take` of a path taken before."""
_SEPARATOR = "\0\0"
_POSITION_CHARS = 4


def _position(position: int) -> str:
    return position.to_bytes(_POSITION_CHARS, "big").decode("latin-1")


def _position_of(record: str) -> int:
    return int.from_bytes(record[-_POSITION_CHARS:].encode("latin-1"), "big")


def _path_of(record: str) -> str:
    return record[: -_POSITION_CHARS - len(_SEPARATOR)].replace("\0", "/")


def storage_sha256(storage: StorageRoot, path: str) -> str | None:
    """Hex SHA-256 of the regular file `path` read through no-follow fds; None if it is gone or
    no regular file (a FIFO, socket or device is never opened)."""
    try:
        fd, _st = storage.open_regular(path)
    except (OSError, ReplicationError):
        return None
    return fd_sha256(fd)


def fd_sha256(fd: int) -> str | None:
    """Hex SHA-256 of an open regular file; closes `fd`."""
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_SURELY_ACCEPTABLE = MAX_PATH_BYTES // 4
"""No str this long encodes to more than MAX_PATH_BYTES (4 bytes a character at most)."""


def _acceptable(rel: str) -> bool:
    """Only paths a receiver accepts are listed (a path beyond PATH_MAX would be refused forever).

    `rel` is built from names the kernel listed, each already a valid component (no '/', no NUL,
    never '.' or '..', at most NAME_MAX bytes): only the total length is left to check.
    """
    return len(os.fsencode(rel)) <= MAX_PATH_BYTES


@dataclass
class Plan:
    """What makes the replica equal to the source: send these, delete those."""

    send: list[Entry]
    attrs_only: list[Entry]
    delete: list[str]
    to_hash: list[str]
    compared: int
    unlisted: tuple[list[str], array[int]] = field(default_factory=lambda: ([], array("q")))
    """With `Comparison.plan(whole=False)`: the paths the replica does not list (and their sizes),
    in path order, kept out of `send` as paths rather than entries (a seed's 100,000)."""
    _in_order: int = field(default=-1, repr=False, compare=False)
    """How many entries at the head of `send` are in path order (what `resolve_hashes` appends after
    them is not)."""

    def __post_init__(self) -> None:
        if self._in_order < 0:
            self._in_order = len(self.send)

    @property
    def sending(self) -> int:
        return len(self.send) + len(self.unlisted[0])

    def sizes_to_send(self) -> dict[str, int]:
        """Every path to send and its size, in the order to send them: `send` and `unlisted` merged
        in path order, then what was appended to `send` since."""
        paths, sizes = self.unlisted
        ordered = heapq.merge(
            ((entry.path, entry.size) for entry in self.send[: self._in_order]),
            zip(paths, sizes, strict=True),
            key=lambda item: path_key(item[0]),
        )
        found = dict(ordered)
        found.update((entry.path, entry.size) for entry in self.send[self._in_order :])
        return found


def compare(source: dict[str, Entry], replica: dict[str, Entry]) -> Plan:
    """`Comparison` of two whole manifests (neither is changed)."""
    comparison = Comparison(Listing(source.values()))
    for entry in replica.values():
        comparison.add(entry)
    return comparison.plan()


class Comparison:
    """First pass, one replica entry at a time: decide from stat fields alone; `to_hash` lists the
    undecided paths (their entries stay in `undecided` for `resolve_hashes`).

    It takes `source` over (a dict is made a Listing): each of our entries is taken from it once
    compared, so the replica's manifest is never held whole (issue 15's 100,000 files under
    100 MiB). A path the replica lists twice counts once, the first time (`repeated` counts the
    others). Whatever is left when the answer ends is missing on the replica.

    A replica should have our mode without setuid, setgid and sticky bits: one that still has
    them (from before they were stripped) gets its attributes sent again.
    """

    def __init__(self, source: Listing | Mapping[str, Entry]) -> None:
        self._source = source if isinstance(source, Listing) else Listing(source.values())
        self.compared = len(self._source)
        self._send: list[Entry] = []
        self._attrs: list[Entry] = []
        self.undecided: dict[str, Entry] = {}
        self._extra: set[str] = set()
        """Paths only the replica has (to delete)."""
        self.repeated = 0

    def add(self, theirs: Entry) -> None:
        path = theirs.path
        position = self._source.take(path)
        if position == TAKEN or (position is None and path in self._extra):
            self.repeated += 1
        elif position is None:
            self._extra.add(path)
        else:
            self._decide(position, theirs)

    def _decide(self, position: int, theirs: Entry) -> None:
        """Our entry is made only when a list takes it (a no-change pass makes none)."""
        verdict = difference(self._source.fields(position), theirs)
        if verdict == "send":
            self._send.append(self._source.entry(position, theirs.path))
        elif verdict == "hash":
            self.undecided[theirs.path] = self._source.entry(position, theirs.path)
        elif verdict == "attrs":
            self._attrs.append(self._source.entry(position, theirs.path))

    def plan(self, whole: bool = True) -> Plan:
        """The plan once the answer is over: entries to send and attributes in path order, parents
        first; with `whole` False, the paths the replica does not list stay out of `send`, as
        `unlisted`. Our listing is released here (the plan holds what it needs)."""
        send = self._send
        send.sort(key=_path_order)
        unlisted = self._source.left_sizes() if not whole else ([], array("q"))
        if whole:
            send = list(heapq.merge(send, self._source.left(), key=_path_order))
        self._source.release()
        self._attrs.sort(key=_path_order)
        plan = Plan(
            send=send,
            attrs_only=self._attrs,
            delete=_topmost(self._extra),
            to_hash=list(self.undecided),
            compared=self.compared,
            unlisted=unlisted,
        )
        self._send, self._attrs, self._extra = [], [], set()
        return plan


Verdict = Literal["send", "hash", "attrs"] | None
"""What one path needs: its content sent, its content hashed on both sides (same size and type,
another mtime: maybe the same bytes), its attributes only, or nothing."""


def difference(ours: tuple[EntryType, int, int, int, str | None], theirs: Entry) -> Verdict:
    """What the replica's `theirs` needs to equal our (type, mode, mtime_ns, size, target)."""
    type_, mode, mtime_ns, size, target = ours
    if theirs.type != type_:
        return "send"
    if type_ == "file":
        if theirs.size != size:
            return "send"
        if theirs.mtime_ns != mtime_ns:
            return "hash"
        return "attrs" if theirs.mode != replicated_mode(mode) else None
    if type_ == "symlink":
        if theirs.target != target:
            return "send"
        return "attrs" if theirs.mtime_s != mtime_ns // 1_000_000_000 else None
    return "attrs" if theirs.mode != replicated_mode(mode) else None


class ScanComparison:
    """The other way round from `Comparison`, for a replica that has little: its whole manifest is
    held (a dict of at most a few thousand entries) and our scan is compared a chunk at a time as
    the walk goes, so what the replica lacks can be queued, and sent, before our walk is over (a
    seed: the replica lists nothing, and 100,000 files used to wait for the whole walk).

    `add` answers what to send of each chunk; `rest` is the plan of everything else once the walk
    is over: attributes, paths to hash, and what only the replica has (to delete).
    """

    def __init__(self, theirs: dict[str, Entry], repeated: int = 0) -> None:
        self._theirs = theirs
        self.repeated = repeated
        """Paths the replica listed more than once (the first counts, as in `Comparison`)."""
        self.compared = 0
        self._attrs: list[Entry] = []
        self.undecided: dict[str, Entry] = {}

    @classmethod
    def of(cls, answer: Iterable[Entry]) -> ScanComparison:
        theirs: dict[str, Entry] = {}
        repeated = 0
        for entry in answer:
            if entry.path in theirs:
                repeated += 1
            else:
                theirs[entry.path] = entry
        return cls(theirs, repeated)

    def add(self, chunk: Iterable[Entry]) -> list[Entry]:
        """Our entries of one chunk of the walk (parents first); returns those to send, in that order."""
        send: list[Entry] = []
        for ours in chunk:
            self.compared += 1
            theirs = self._theirs.pop(ours.path, None)
            if theirs is None:
                send.append(ours)
                continue
            verdict = difference((ours.type, ours.mode, ours.mtime_ns, ours.size, ours.target), theirs)
            if verdict == "send":
                send.append(ours)
            elif verdict == "hash":
                self.undecided[ours.path] = ours
            elif verdict == "attrs":
                self._attrs.append(ours)
        return send

    def rest(self) -> Plan:
        """After the last chunk: what `add` did not send (nothing is left to send in it)."""
        self._attrs.sort(key=_path_order)
        plan = Plan(
            send=[],
            attrs_only=self._attrs,
            delete=_topmost(self._theirs),
            to_hash=list(self.undecided),
            compared=self.compared,
        )
        self._attrs, self._theirs = [], {}
        return plan


def _path_order(entry: Entry) -> str:
    return path_key(entry.path)


def resolve_hashes(
    plan: Plan, source: Mapping[str, Entry], mine: dict[str, str | None], theirs: dict[str, str | None]
) -> None:
    """Second pass: equal content needs only attributes, different content a full send."""
    for path in plan.to_hash:
        entry = source[path]
        if mine.get(path) is not None and mine.get(path) == theirs.get(path):
            plan.attrs_only.append(entry)
        else:
            plan.send.append(entry)
    plan.to_hash = []


def _topmost(paths: Iterable[str]) -> list[str]:
    """Drop paths that lie below another path of the set: deleting the parent covers them."""
    result: list[str] = []
    for path in sorted(paths, key=lambda p: p.split("/")):
        if result and path.startswith(result[-1] + "/"):
            continue
        result.append(path)
    return result
