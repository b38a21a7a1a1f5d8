"""What a replica answers, checked before the leader uses any of it.

A replica, or anything between it and the leader on a plain-http link, may
answer anything. Nothing from an answer is used before it passed here:
every path is validated exactly as the receiver validates incoming ones
(validate_relpath, no temp names, no EXCLUDE match) and must be one the
leader asked about; lists and whole answers have bounds; epochs and
sequences are bounded as in requests. Bad entries are dropped and counted in
`plugin_sync_peer_input_refused_total{reason}`, with one warning per answer
(and at most one a minute per reason), never one per entry. An answer that
cannot be used at all raises MalformedAnswerError, a PeerError: the link
reconnects and tries again, as after any failed request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import reprlib
import time
import zlib
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from prometheus_client import Counter

from replication.delta import Signature
from replication.errors import ContainmentError, MalformedAnswerError, ProtocolError
from replication.manifest import Entry, EntryType
from replication.manifest_wire import EntriesReader, WireError
from replication.paths import is_temp_name, is_within, validate_relpath
from replication.protocol import MAX_FILE_BYTES, MAX_MTIME_NS, MAX_PEER_EPOCH, MAX_SEQUENCE

log = structlog.get_logger("replication.peer_answers")

MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Hello, batch, hashes answers and refusals: far beyond any honest one (a resend list names at most
the paths of one batch)."""
MAX_MANIFEST_BYTES = 1 << 30
"""A manifest answer: about 150 bytes an entry, so room for millions of files."""
MAX_MANIFEST_ENTRIES = 10_000_000
MAX_TARGET_BYTES = 4096
MAX_DETAIL_CHARS = 300
"""A peer's problem `detail` is quoted in logs and status answers only this far."""
LOG_INTERVAL = 60.0
"""A reason already logged is logged again only after this long (it is counted every time)."""
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_ENTRY_TYPES = frozenset({"file", "dir", "symlink"})

Skip = Callable[[str], bool]


class Refusals:
    """What one answer had refused, by reason: counted at once, logged together when the answer is done."""

    def __init__(self, where: str, counter: Counter | None) -> None:
        self.where = where
        self._counter = counter
        self.counts: Tally[str] = Tally()
        self.examples: dict[str, str] = {}

    def __call__(self, reason: str, value: object, count: int = 1) -> None:
        if self._counter is not None:
            self._counter.labels(reason=reason).inc(count)
        self.counts[reason] += count
        if reason not in self.examples:
            self.examples[reason] = _quote(value)

    def malformed(self, reason: str, value: object, message: str) -> MalformedAnswerError:
        """Refuse the whole answer: count it and return the error to raise."""
        self(reason, value)
        return MalformedAnswerError(f"{self.where}: {message}")


@dataclass
class PeerInputGuard:
    """Counts refused peer input and logs it without flooding: a line per answer, one a minute per reason."""

    counter: Counter | None
    target: str = ""
    clock: Callable[[], float] = time.monotonic
    _logged_at: dict[str, float] = field(default_factory=dict)
    _suppressed: Tally[str] = field(default_factory=Tally)

    @contextlib.contextmanager
    def answer(self, where: str) -> Iterator[Refusals]:
        refusals = Refusals(where, self.counter)
        try:
            yield refusals
        finally:
            self._report(refusals)

    def _report(self, refusals: Refusals) -> None:
        now = self.clock()
        due = {
            reason: count
            for reason, count in refusals.counts.items()
            if now - self._logged_at.get(reason, -LOG_INTERVAL) >= LOG_INTERVAL
        }
        for reason, count in refusals.counts.items():
            if reason not in due:
                self._suppressed[reason] += count
        if not due:
            return
        for reason in due:
            self._logged_at[reason] = now
        log.warning(
            "peer_input_refused",
            target=self.target,
            answer=refusals.where,
            refused=dict(due),
            examples={reason: refusals.examples[reason] for reason in due},
            refused_since_last_log={r: self._suppressed.pop(r) for r in due if r in self._suppressed},
        )


# -- single values -----------------------------------------------------------------------------------
def peer_epoch(value: object) -> int | None:
    """`value` as an epoch a node may follow, or None when it is no integer in [0, MAX_PEER_EPOCH]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PEER_EPOCH:
        return None
    return value


def sequence(value: object, refuse: Refusals, *, high: int = MAX_SEQUENCE, what: str = "applied_seq") -> int:
    """An acknowledged sequence in [0, high]; anything else makes the answer unusable."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise refuse.malformed("sequence", value, f"{what} {_quote(value)} is not an integer in [0, {high}]")
    return value


def checked_path(value: object, refuse: Refusals, skip: Skip) -> str | None:
    """`value` if the receiver itself would accept it as a path, else None (refused and counted)."""
    try:
        path = validate_relpath(value)
    except ContainmentError:
        refuse("path", value)
        return None
    if is_temp_name(path):
        refuse("path", value)
        return None
    if skip(path):
        refuse("excluded", value)
        return None
    return path


def detail(body: object) -> str | None:
    """A peer's problem detail, shortened: it is quoted in our logs and status answers."""
    text = body.get("detail") if isinstance(body, dict) else None
    return None if text is None else _quote(text, MAX_DETAIL_CHARS)


# -- answers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HelloAnswer:
    journal_id: str | None
    applied_seq: int
    synced: bool = False
    """The replica held a full copy of some journal's baseline (protocol 4; older replicas say nothing)."""


def hello(body: dict[str, Any], refuse: Refusals) -> HelloAnswer:
    journal_id = body.get("journal_id")
    if journal_id is not None and not isinstance(journal_id, str):
        refuse("malformed", journal_id)
        journal_id = None
    return HelloAnswer(journal_id, sequence(body.get("applied_seq", 0), refuse), body.get("synced") is True)


@dataclass(frozen=True)
class TreeDigestAnswer:
    synced: bool
    digest: str | None
    """manifest.TreeDigest's hex digest; None when the replica never held a full copy (not asked)."""


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def tree_digest(body: dict[str, Any], refuse: Refusals) -> TreeDigestAnswer:
    """The replica's TreeDigest answer (protocol 4). A replica that lies here can only claim to be
    equal when it is not, which its manifest could claim as well: it stays behind, and nothing
    outside its own storage is touched."""
    synced = body.get("synced")
    if not isinstance(synced, bool):
        raise refuse.malformed("malformed", synced, "synced must be true or false")
    if not synced:
        return TreeDigestAnswer(False, None)
    digest = body.get("digest")
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise refuse.malformed("malformed", digest, "digest must be 64 lowercase hex digits")
    return TreeDigestAnswer(True, digest)


@dataclass(frozen=True)
class BatchAnswer:
    applied_seq: int
    resend: list[str]


def batch(
    body: dict[str, Any], asked: Collection[str], refuse: Refusals, *, changes: int, head: int, skip: Skip
) -> BatchAnswer:
    """The acknowledged sequence (at most our head) and the resend list, reduced to paths of this batch.

    An honest replica names at most one path per operation (`changes` of them; a path may come
    back several times, e.g. after a folder renamed back and forth).
    """
    applied = sequence(body.get("applied_seq"), refuse, high=head)
    return BatchAnswer(applied, paths_asked(body.get("resend", []), asked, refuse, limit=changes, skip=skip))


def paths_asked(
    value: object, asked: Collection[str], refuse: Refusals, *, limit: int, skip: Skip
) -> list[str]:
    """The first `limit` entries of a path list, kept when they are valid paths the leader asked about."""
    if not isinstance(value, list):
        refuse("malformed", value)
        return []
    if len(value) > limit:
        refuse("too_many", f"{len(value)} entries for at most {limit}", len(value) - limit)
        value = value[:limit]
    found: list[str] = []
    for item in value:
        path = checked_path(item, refuse, skip)
        if path is None:
            continue
        if path not in asked:
            refuse("unsolicited", path)
            continue
        found.append(path)
    return found


@dataclass(frozen=True)
class RefusalAnswer:
    """What a 4xx answer to a batch says, where it can be believed."""

    applied_seq: int | None = None
    failed_seq: int | None = None
    symlink_at: str | None = None


def refusal(
    body: dict[str, Any],
    seqs: Collection[int],
    asked: Collection[str],
    refuse: Refusals,
    *,
    head: int,
    skip: Skip,
) -> RefusalAnswer:
    """applied_seq at most our head, failed_seq one of the batch's, symlink_at a folder above its paths."""
    applied = body.get("applied_seq")
    if applied is not None and (
        isinstance(applied, bool) or not isinstance(applied, int) or not 0 <= applied <= head
    ):
        refuse("sequence", applied)
        applied = None
    failed = body.get("failed_seq")
    if failed is not None and (isinstance(failed, bool) or not isinstance(failed, int) or failed not in seqs):
        refuse("sequence", failed)
        failed = None
    at = body.get("symlink_at")
    symlink_at = None
    if at is not None and at != "":
        symlink_at = checked_path(at, refuse, skip)
        if symlink_at is not None and not any(p != symlink_at and is_within(p, symlink_at) for p in asked):
            refuse("unsolicited", symlink_at)
            symlink_at = None
    return RefusalAnswer(applied, failed, symlink_at)


def manifest(body: dict[str, Any], refuse: Refusals, *, skip: Skip) -> dict[str, Entry]:
    """The replica's entries that describe a path it may hold, each field in range."""
    entries = body.get("entries")
    if not isinstance(entries, list):
        raise refuse.malformed("malformed", entries, "entries must be a list")
    if len(entries) > MAX_MANIFEST_ENTRIES:
        refuse("too_many", f"{len(entries)} entries", len(entries) - MAX_MANIFEST_ENTRIES)
        entries = entries[:MAX_MANIFEST_ENTRIES]
    found: dict[str, Entry] = {}
    for raw in entries:
        entry = manifest_entry(raw, refuse, skip)
        if entry is not None:
            found[entry.path] = entry
    return found


HELD_PIECE = 64 * 1024


class ManifestAnswer:
    """The replica's manifest as it arrives (manifest_wire): each entry checked as `manifest` checks
    it and handed out as soon as its piece is read, so the answer is never held whole.

    The same bounds as a whole answer: MAX_MANIFEST_BYTES of text (beyond it, or when the text is
    no manifest, the answer is unusable: MalformedAnswerError), MAX_MANIFEST_ENTRIES entries (the
    rest refused as `too_many`). A path listed twice is handed out twice: the comparison keeps the
    first (manifest.Comparison), as remembering every path here would cost what streaming saves.
    """

    def __init__(self, refuse: Refusals, *, skip: Skip, limit: int = MAX_MANIFEST_BYTES) -> None:
        self._refuse = refuse
        self._skip = skip
        self._limit = limit
        self._received = 0
        self._reader = EntriesReader()
        self._held: deque[bytes] = deque()
        self._packer: Any = None
        """Held pieces are kept compressed (zlib level 1: about a fifth of the text, ~30 ms for
        100,000 entries): the replica's whole answer may arrive before our own scan is done."""
        self.listed = 0
        """Entries the answer listed, refused ones included."""
        self.largest = 0
        """The size of the largest file among the entries handed out (0: none)."""

    def hold(self, piece: bytes) -> None:
        """Keep a piece to read later (the leader is not ready to compare yet); counted at once."""
        self._count(piece)
        if self._packer is None:
            self._packer = zlib.compressobj(1)
        self._held.append(self._packer.compress(piece))

    def feed(self, piece: bytes) -> Iterator[Entry]:
        """The entries of the pieces held, then of `piece`, read a piece at a time."""
        self._count(piece)
        for held in self._unheld():
            yield from self._read(self._reader.feed, held)
        yield from self._read(self._reader.feed, piece)

    def close(self) -> Iterator[Entry]:
        """The last entries; MalformedAnswerError unless the answer ended complete."""
        for held in self._unheld():
            yield from self._read(self._reader.feed, held)
        yield from self._read(lambda _piece: self._reader.close(), b"")
        if self.listed > MAX_MANIFEST_ENTRIES:
            self._refuse("too_many", f"{self.listed} entries", self.listed - MAX_MANIFEST_ENTRIES)

    def _unheld(self) -> Iterator[bytes]:
        """The held text again, in pieces of at most HELD_PIECE bytes; nothing is held after."""
        if self._packer is None:
            return
        self._held.append(self._packer.flush())
        self._packer = None
        unpacker = zlib.decompressobj()
        while self._held:
            packed = self._held.popleft()
            while packed:
                yield unpacker.decompress(packed, HELD_PIECE)
                packed = unpacker.unconsumed_tail
        yield unpacker.flush()

    def _count(self, piece: bytes) -> None:
        self._received += len(piece)
        if self._received > self._limit:
            raise self._refuse.malformed(
                "too_large", f"more than {self._limit} bytes", f"answer over {self._limit} bytes"
            )

    def _read(self, read: Callable[[bytes], list[Any]], piece: bytes) -> list[Entry]:
        try:
            raws = read(piece)
        except WireError as exc:
            raise self._refuse.malformed(exc.reason, piece[:200], str(exc)) from None
        found: list[Entry] = []
        for raw in raws:
            self.listed += 1
            if self.listed > MAX_MANIFEST_ENTRIES:
                continue
            entry = manifest_entry(raw, self._refuse, self._skip)
            if entry is not None:
                found.append(entry)
                if entry.size > self.largest and entry.type == "file":
                    self.largest = entry.size
        return found


def manifest_entry(raw: object, refuse: Refusals, skip: Skip) -> Entry | None:
    if not isinstance(raw, list) or len(raw) != 6:
        refuse("manifest_entry", raw)
        return None
    path_value, kind, mode, mtime_ns, size, target = raw
    if not (
        isinstance(kind, str)
        and kind in _ENTRY_TYPES
        and _int_in(mode, 0, 0o7777)
        and _int_in(mtime_ns, -MAX_MTIME_NS, MAX_MTIME_NS)
        and _int_in(size, 0, MAX_FILE_BYTES)
        and _target_ok(kind, target)
    ):
        refuse("manifest_entry", raw)
        return None
    path = checked_path(path_value, refuse, skip)
    if path is None:
        return None
    return Entry(
        path=path, type=cast(EntryType, kind), mode=mode, mtime_ns=mtime_ns, size=size, target=target
    )


def hashes(body: dict[str, Any], asked: Collection[str], refuse: Refusals) -> dict[str, str | None]:
    """Hex SHA-256 per asked path; None (= send it whole) for anything unusable."""
    raw = body.get("hashes")
    if not isinstance(raw, dict):
        refuse("malformed", raw)
        return {}
    found: dict[str, str | None] = {}
    unsolicited = [key for key in raw if key not in asked]
    if unsolicited:
        refuse("unsolicited", unsolicited[0], len(unsolicited))
    for path in asked:
        value = raw.get(path)
        if value is not None and not (isinstance(value, str) and _HEX64.match(value)):
            refuse("hash", value)
            value = None
        found[path] = value
    return found


def signatures(body: dict[str, Any], asked: Collection[str], refuse: Refusals) -> dict[str, Signature]:
    """The block signatures of asked paths that parse; a path without one is sent whole."""
    raw = body.get("signatures")
    if not isinstance(raw, dict):
        refuse("malformed", raw)
        return {}
    found: dict[str, Signature] = {}
    for path, encoded in raw.items():
        if path not in asked:
            refuse("unsolicited", path)
        elif encoded is None:
            continue
        elif not isinstance(encoded, str):
            refuse("signature", encoded)
        else:
            signature = _signature(encoded)
            if signature is None:
                refuse("signature", encoded)
            else:
                found[path] = signature
    return found


def _signature(encoded: str) -> Signature | None:
    try:
        return Signature.from_bytes(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ProtocolError, ValueError):
        return None


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _target_ok(kind: object, target: object) -> bool:
    if kind != "symlink":
        return target is None
    return isinstance(target, str) and 0 < len(target) <= MAX_TARGET_BYTES and "\x00" not in target


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict = 3, 4, 4
    short.maxstring, short.maxother, short.maxlong = 160, 160, 40
    return short


_REPR = _short_repr()


def _quote(value: object, limit: int = 120) -> str:
    """A short, printable rendering of hostile input for a log line (never the whole of a huge value)."""
    text = value[: limit + 1] if isinstance(value, str) else _REPR.repr(value)
    text = text.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."
