"""The lease interface every election backend implements.

Timing rule (why leases are safe here): the caller notes `time.monotonic()`
*before* sending an acquire or renew request, and treats the lease as valid
only until that instant + ttl - safety margin. The backend's own expiry can
only come later than that, so a leader that stops renewing stops acting as
leader before anyone else can acquire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.epochs import MAX_PEER_EPOCH, from_outside
from replication.errors import HotstandbyError


class ElectionError(HotstandbyError):
    """The election service could not be reached or answered unexpectedly."""


def checked_term(term: object, where: str, key: str) -> int:
    """A term from the election service as an epoch, or ElectionError when it is out of range.

    A term above MAX_PEER_EPOCH (daemon/epochs.py) can only come from a tampered service; taken as
    an epoch it would leave no valid epoch for the next promotion. It is refused, never persisted;
    a lease acquired with it is left to expire (releasing it would let every node draw a new,
    still larger term at every tick).
    """
    epoch = from_outside(term)
    if epoch is None:
        raise ElectionError(
            f"{where} handed out the term {str(term)[:40]}, outside 0..{MAX_PEER_EPOCH}: refused; "
            f"set {key} back to the cluster's epoch"
        )
    return epoch


@dataclass(frozen=True)
class LeaseHolder:
    """What the backend says about the current lease."""

    node_id: str
    term: int
    ttl_left: float
    """Seconds until the backend expires it, as the backend sees it."""


class LeaseBackend(Protocol):
    name: str

    async def try_acquire(self, node_id: str, ttl: float) -> int | None:
        """Take the lease if nobody holds it, or if its holder handed it to us (`handover`); return
        the term (fencing token: new, or the one the handover created), else None."""
        ...

    async def renew(self, node_id: str, term: int, ttl: float) -> bool:
        """Extend our lease to `ttl` from now; False if it is no longer ours (expired or taken)."""
        ...

    async def handover(self, node_id: str, term: int, to_node: str, ttl: float) -> int | None:
        """Planned switchover: if we still hold the lease at `term`, hand it to `to_node` under a new,
        higher term, in one atomic step; return that term, else None (the lease is not ours).

        Until `to_node` takes it with `try_acquire` nobody holds it and nobody else can take it; if
        `to_node` never does, it expires after `ttl` like any lease. The old holder cannot renew it.
        """
        ...

    async def release(self, node_id: str, term: int) -> None:
        """Give the lease up at once if we still hold it (planned switchover, shutdown)."""
        ...

    async def holder(self) -> LeaseHolder | None:
        """The current holder, or None when the lease is free."""
        ...

    async def close(self) -> None: ...
