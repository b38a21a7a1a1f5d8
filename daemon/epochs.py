"""The bounds of an epoch for the daemon side: the API, the control loop, the roles, the election
backends, the node's state file and the catalogue use these; the numbers themselves are the wire
format's (replication/protocol.py), so the link and the daemon refuse the same epochs.

An epoch is a 63-bit integer (SQLite INTEGER, PostgreSQL bigint, the wire format): the API accepts
0..MAX_EPOCH. An epoch learnt from outside (a peer's /internal/status, a 409 answer on the link, a
lease term from Redis or PostgreSQL, an event posted to the catalogue) is taken only up to
MAX_PEER_EPOCH = MAX_EPOCH - 2**20, and refused above it: never followed, never persisted. So a
hostile peer can push a cluster no further than MAX_PEER_EPOCH, from where a node can still be
promoted EPOCH_HEADROOM (about a million) times with epochs the API accepts. Real epochs grow by one
per promotion or lease acquisition and stay far below either bound.
"""

from __future__ import annotations

from replication.errors import HotstandbyError
from replication.protocol import EPOCH_HEADROOM, MAX_EPOCH, MAX_PEER_EPOCH

__all__ = ["EPOCH_HEADROOM", "MAX_EPOCH", "MAX_PEER_EPOCH", "EpochError", "checked_own", "from_outside"]


class EpochError(HotstandbyError, ValueError):
    """An epoch outside the bounds above (a corrupted state file, a hostile peer)."""


def from_outside(value: object) -> int | None:
    """`value` as an epoch learnt from outside, or None when it is not an integer in 0..MAX_PEER_EPOCH.

    bool is refused although Python counts it as an int: `true` in a peer's JSON is not an epoch.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_PEER_EPOCH else None


def checked_own(epoch: int, what: str = "epoch") -> int:
    """`epoch` if this node may hold it (0..MAX_EPOCH), else EpochError: checked before it is persisted."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise EpochError(f"{what} {epoch!r} is outside 0..{MAX_EPOCH}")
    return epoch
