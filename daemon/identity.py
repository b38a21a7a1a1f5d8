"""This node's persistent identity and epoch, kept in STATE_PATH/node.json."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

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
            epoch=int(data.get("epoch", 0)),
            path=path,
            has_led=bool(data.get("has_led", False)),
        )
        if data.get("node_id") != identity.node_id or "epoch" not in data:
            identity.save()
        return identity

    def save(self) -> None:
        statefile.save(self.path, {"node_id": self.node_id, "epoch": self.epoch, "has_led": self.has_led})
