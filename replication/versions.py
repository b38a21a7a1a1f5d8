"""The replication protocol's version, negotiated at hello.

Each node speaks a range of versions. The sender's hello names its range
(`protocol_min`, `protocol`); the replica answers the version both will use
(`protocol`), or refuses naming both ranges. A peer that names no version is
the release before versions existed: it speaks version 1 only, and it neither
sends nor reads these fields, so this node can still talk to it in version 1.

Versions:
  1  the release before issue 15 (main at d763280): stop-and-wait batches, one
     fsync + rename per file on the replica before the acknowledgement
  2  hello carries the versions (issue 15); the sender asks for block signatures with
     6-byte strong digests (`digest_bytes`, delta.SHORT_DIGEST_BYTES) instead of 16; the
     batch stream itself is version 1's
  3  the sender asks for block signatures with CRC-32 strong digests (`block_hash`: "crc32",
     signature format version 2, delta.BLOCK_HASHES): 2.3x cheaper to compute on both sides than
     SHA-256 (issue 15: delta time); everything else is version 2's
  4  before asking for a replica's manifest, the sender may ask for one digest of it
     (`GET /internal/replication/manifest/digest`, manifest.TreeDigest): equal to the digest of its
     own walk, nothing differs and no manifest moves (issue 15: the no-change pass); everything else
     is version 3's
  5  the whole-file check in each put's and delta's trailer is XXH3-128 (16 bytes) instead of SHA-256
     (protocol.ContentCheck); the batch names it (`X-Hotstandby-Check: xxh128`), a batch that names
     none is checked with SHA-256 (issue 15: the seeds' and the deltas' CPU); everything else is
     version 4's
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replication.errors import ProtocolError

PROTOCOL_VERSION = 5
"""The newest version this node speaks."""
OLDEST_PROTOCOL = 1
"""The oldest version this node still speaks (1: a node of the previous release)."""
UNVERSIONED = 1
"""What a peer that names no version speaks."""
MISMATCH_TITLE = "replication protocol mismatch"
"""The title of the replica's refusal (a 400 problem document naming both ranges)."""


class IncompatibleProtocolError(ProtocolError):
    """The two nodes share no protocol version; the message names both ranges."""

    def __init__(self, ours: tuple[int, int], theirs: tuple[int, int], peer: str) -> None:
        super().__init__(
            f"{MISMATCH_TITLE}: this node speaks {_span(ours)}, the {peer} speaks "
            f"{_span(theirs)}; upgrade the older node (README: rolling upgrade of a pair)"
        )
        self.ours = ours
        self.theirs = theirs


def ours() -> tuple[int, int]:
    return (OLDEST_PROTOCOL, PROTOCOL_VERSION)


def offer() -> dict[str, int]:
    """The fields of the sender's hello."""
    return {"protocol_min": OLDEST_PROTOCOL, "protocol": PROTOCOL_VERSION}


def offered(hello: Mapping[str, Any]) -> tuple[int, int]:
    """The range a sender's hello names; (1, 1) when it names none (the previous release)."""
    newest = hello.get("protocol", UNVERSIONED)
    oldest = hello.get("protocol_min", newest)
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16 for v in (oldest, newest)
    ):
        raise ProtocolError("protocol and protocol_min must be integers in [1, 65536]")
    if oldest > newest:
        raise ProtocolError(f"protocol_min {oldest} is above protocol {newest}")
    return (oldest, newest)


def negotiate(theirs: tuple[int, int], peer: str) -> int:
    """The newest version both ranges hold; IncompatibleProtocolError when there is none."""
    chosen = min(PROTOCOL_VERSION, theirs[1])
    if chosen < max(OLDEST_PROTOCOL, theirs[0]):
        raise IncompatibleProtocolError(ours(), theirs, peer)
    return chosen


def answered(hello_answer: Mapping[str, Any]) -> int:
    """The version the replica chose; one that names none is the previous release (version 1).

    A version outside our own range is refused: the replica must pick from what we offered.
    """
    chosen = hello_answer.get("protocol", UNVERSIONED)
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 1 <= chosen <= 1 << 16:
        raise ProtocolError("the replica's protocol version is not an integer in [1, 65536]")
    if not OLDEST_PROTOCOL <= chosen <= PROTOCOL_VERSION:
        raise IncompatibleProtocolError(ours(), (chosen, chosen), "replica")
    return chosen


def _span(versions: tuple[int, int]) -> str:
    low, high = versions
    return f"version {low}" if low == high else f"versions {low}-{high}"
