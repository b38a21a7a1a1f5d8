"""The replication wire format: a batch is a stream of framed operations.

    frame    := u32be(len(header)) header
    header   := UTF-8 JSON object, at most MAX_HEADER_BYTES
    put      := frame(op=put, size=N) N content bytes, then a trailer: 1 flag
                byte (0 = complete, 1 = the source changed while it was read:
                discard) and the whole-file check of the N bytes (ContentCheck:
                XXH3-128 from protocol 5, SHA-256 before)
    delta    := frame(op=delta, size=N, block_size, basis_size) an instruction
                stream (see delta.py) against the replica's current copy, then
                the same trailer, for the N bytes it rebuilds
    end      := frame(op=end, seq=S): the sender considered everything up to S

Operations are idempotent and describe the sender's current state of a path
(not the writes that produced it), so a batch can be resent after any
disconnect. Decoding is strict: anything unexpected is a ProtocolError or a
ContainmentError, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import xxhash

from replication.errors import ProtocolError
from replication.paths import validate_relpath

OpKind = Literal["put", "delta", "mkdir", "symlink", "delete", "rename", "attr", "end"]
OP_KINDS: frozenset[str] = frozenset(get_args(OpKind))
MAX_HEADER_BYTES = 64 * 1024
MAX_FILE_BYTES = 1 << 44
MAX_MTIME_NS = 1 << 62
MAX_SEQUENCE = 1 << 62
"""Sequences fit in 63 bits (SQLite and PostgreSQL integers)."""
MAX_EPOCH = 1 << 62
"""The highest epoch any node may act under (the API refuses more)."""
EPOCH_HEADROOM = 1 << 20
"""Promotions kept possible above the highest epoch taken from outside."""
MAX_PEER_EPOCH = MAX_EPOCH - EPOCH_HEADROOM
"""The highest epoch taken from a peer: a node that follows it can still be promoted 2**20 times
before reaching MAX_EPOCH, so a hostile epoch "near the top" can never wedge the cluster."""
MAX_PATHS_PER_REQUEST = 10_000
"""Paths in one hashes or signatures request: the receiver refuses more, the sender asks in chunks."""
SPECIAL_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
"""Never replicated: a setuid file of an unprivileged user must not become a root-owned setuid file
on a standby that runs as root."""
FLAG_COMPLETE = 0
FLAG_DISCARD = 1
_LEN = struct.Struct(">I")
_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))
"""json.dumps with arguments builds an encoder per call: a seed encodes one header per file."""

_REQUIRED: dict[str, tuple[str, ...]] = {
    "put": ("path", "mode", "mtime_ns", "size"),
    "delta": ("path", "mode", "mtime_ns", "size", "block_size", "basis_size"),
    "mkdir": ("path", "mode", "mtime_ns"),
    "symlink": ("path", "target", "mtime_ns"),
    "delete": ("path",),
    "rename": ("path", "dest"),
    "attr": ("path", "mode", "mtime_ns"),
    "end": (),
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One replicated change; `seq` is the journal sequence that produced it."""

    seq: int
    op: OpKind
    path: str = ""
    dest: str | None = None
    mode: int | None = None
    mtime_ns: int | None = None
    size: int | None = None
    target: str | None = None
    block_size: int | None = None
    basis_size: int | None = None

    def header(self) -> bytes:
        # Not dataclasses.asdict: its deep copy was ~9% of the leader's time in a seed (issue 15 profile).
        fields = {k: v for k in self.__slots__ if (v := getattr(self, k)) is not None and v != ""}
        # ASCII escapes keep non-UTF-8 file names (surrogate escapes) intact.
        raw = _HEADER_JSON.encode(fields).encode()
        return _LEN.pack(len(raw)) + raw


def replicated_mode(mode: int) -> int:
    """The permission bits that travel: S_IMODE without setuid, setgid and sticky."""
    return stat.S_IMODE(mode) & ~SPECIAL_MODE_BITS


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class ContentCheck:
    """The whole-file check in a put's or a delta's trailer.

    It proves that the replica wrote what the leader read (and, for a delta, that the blocks it
    matched rebuilt the leader's file); it is no defence against the leader itself, which is trusted
    with the content anyway. Whoever could craft a collision (a plugin writing into the storage)
    already decides that file's content on the leader, and a delta's basis is the replica's copy of
    the same path, so a forged match cannot bring in another file's bytes. So it needs no collision
    resistance against an adversary, and rsync 3 uses XXH3-128 for the same check. SHA-256 cost
    each side 0.7 s of CPU per GiB (1.6 GiB/s with SHA-NI), about a fifth of both nodes' CPU in a
    1 GiB seed on two cores; XXH3-128 runs at tens of GiB/s (issue 15,
    bench/results/2026-12-07-session16-notes.txt).
    """

    name: str
    new: Callable[[], Hasher]
    digest_bytes: int

    @property
    def trailer_bytes(self) -> int:
        return 1 + self.digest_bytes

    def of(self, content: bytes) -> bytes:
        hasher = self.new()
        hasher.update(content)
        return hasher.digest()


SHA256 = ContentCheck("sha256", hashlib.sha256, 32)
"""Protocols 1-4, and what a batch naming no check uses."""
XXH128 = ContentCheck("xxh128", xxhash.xxh3_128, 16)
"""Protocol 5 on."""
CONTENT_CHECKS = {check.name: check for check in (SHA256, XXH128)}


def content_check(protocol: int) -> ContentCheck:
    """The check a sender uses with a replica that chose `protocol` (versions.py)."""
    return XXH128 if protocol >= 5 else SHA256


def named_check(name: str | None) -> ContentCheck:
    """The check a batch names (X-Hotstandby-Check); SHA-256 when it names none (protocol 1-4)."""
    if name is None:
        return SHA256
    check = CONTENT_CHECKS.get(name)
    if check is None:
        raise ProtocolError(f"unknown content check {name[:40]!r}; known: {', '.join(CONTENT_CHECKS)}")
    return check


def encode_trailer(flag: int, digest: bytes) -> bytes:
    return bytes([flag]) + digest


def decode_trailer(raw: bytes, check: ContentCheck) -> tuple[int, bytes]:
    if len(raw) != check.trailer_bytes or raw[0] not in (FLAG_COMPLETE, FLAG_DISCARD):
        raise ProtocolError("malformed content trailer")
    return raw[0], raw[1:]


def decode_length(raw: bytes) -> int:
    if len(raw) != _LEN.size:
        raise ProtocolError("a frame length is 4 bytes")
    (length,) = _LEN.unpack(raw)
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise ProtocolError(f"header length {length} out of range")
    return int(length)


def decode_header(raw: bytes) -> Operation:
    """Parse and validate one header; paths are checked for containment here."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("header is not UTF-8 JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError("header is not a JSON object")
    op = data.get("op")
    if not isinstance(op, str) or op not in OP_KINDS:
        raise ProtocolError(f"unknown operation {op!r}")
    missing = [name for name in _REQUIRED[op] if data.get(name) is None]
    if missing:
        raise ProtocolError(f"{op} lacks {', '.join(missing)}")
    return Operation(
        seq=_int(data, "seq", 0, MAX_SEQUENCE, required=True) or 0,
        op=op,  # type: ignore[arg-type]
        path=validate_relpath(data["path"]) if "path" in data else "",
        dest=validate_relpath(data["dest"]) if "dest" in data else None,
        mode=_int(data, "mode", 0, 0o7777),
        mtime_ns=_int(data, "mtime_ns", -MAX_MTIME_NS, MAX_MTIME_NS),
        size=_int(data, "size", 0, MAX_FILE_BYTES),
        target=_target(data),
        block_size=_int(data, "block_size", 1, 1 << 24),
        basis_size=_int(data, "basis_size", 0, MAX_FILE_BYTES),
    )


def _int(data: dict[str, Any], name: str, low: int, high: int, *, required: bool = False) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ProtocolError(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{name} must be an integer in [{low}, {high}]")
    return value


def _target(data: dict[str, Any]) -> str | None:
    """A symlink target is data, never followed by us: any non-empty string without NUL."""
    target = data.get("target")
    if target is None:
        return None
    if not isinstance(target, str) or not target or "\x00" in target or len(target) > 4096:
        raise ProtocolError("symlink target must be a non-empty string without NUL")
    return target
