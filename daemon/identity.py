"""This node's persistent identity and epoch, kept in STATE_PATH/node.json."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from daemon.epochs import EpochError, checked_own
from replication import statefile


@dataclass
class NodeIdentity:
    node_id: str
    epoch: int
    path: str
    has_led: bool = False
    """This node has been a leader at least once: it no longer bootstraps a new pair on its own."""

    @classmethod
    def load(cls, state_path: str) -> NodeIdentity:
        path = os.path.join(state_path, "node.json")
        data = statefile.load(path)
        identity = cls(
            node_id=str(data.get("node_id") or uuid.uuid4()),
            epoch=_stored_epoch(path, data.get("epoch", 0)),
            path=path,
            has_led=bool(data.get("has_led", False)),
        )
        if data.get("node_id") != identity.node_id or "epoch" not in data:
            identity.save()
        return identity

    def save(self) -> None:
        """Persist; an epoch outside 0..MAX_EPOCH is refused (EpochError) and the file is left as it was."""
        checked_own(self.epoch, f"the epoch to store in {self.path}")
        statefile.save(self.path, {"node_id": self.node_id, "epoch": self.epoch, "has_led": self.has_led})


def _stored_epoch(path: str, value: object) -> int:
    """The epoch in node.json, refused (EpochError, so the node does not start) when not 0..MAX_EPOCH.

    A node that started anyway with such an epoch could never be promoted to a valid one.
    """
    try:
        return checked_own(value, f"{path}: the epoch")  # type: ignore[arg-type]
    except EpochError as exc:
        raise EpochError(
            f"{exc}; hotstandby never writes that: set it to the cluster's epoch (see the leader's status)"
        ) from None
