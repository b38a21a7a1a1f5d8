"""What the store asks of its node (NodeView): its role and epoch, may it write, has the replica got a write.

`RunningNode` answers from the running Node; `StandaloneNode` is a node without a peer
(tests, or a store run on its own), always writable and never waiting. (A "link" is only ever the
replication connection to a replica: replication/links.py, daemon/node.py ReplicaLink.)
"""

from __future__ import annotations

from typing import Protocol

from daemon.node import Node
from daemon.store.errors import NotReplicated


class NodeView(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def epoch(self) -> int: ...

    def writable(self) -> bool:
        """May this node write the replicated storage now (it is the leader, not drained or fenced)?"""
        ...

    def sync_problem(self) -> str | None:
        """Why a write could not be confirmed by a replica as SYNC_MODE asks, or None."""
        ...

    async def settle(self, replicated_paths: list[str]) -> bool:
        """After writing these paths (relative to STORAGE_PATH): True once the replica has them durably,
        False when nothing waits for it (SYNC_MODE=async); NotReplicated when it did not confirm."""
        ...


class StandaloneNode:
    role = "standalone"
    epoch = 0

    def writable(self) -> bool:
        return True

    def sync_problem(self) -> str | None:
        return None

    async def settle(self, replicated_paths: list[str]) -> bool:
        return False


class RunningNode:
    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def role(self) -> str:
        return self.node.role

    @property
    def epoch(self) -> int:
        return self.node.epoch

    def writable(self) -> bool:
        return self.node.accepts_writes()

    def _waits(self) -> bool:
        return self.node.config.sync_mode == "sync" and self.node.peer_connected()

    def sync_problem(self) -> str | None:
        config = self.node.config
        if config.sync_mode == "sync" and not self._waits() and config.sync_mode_fallback != "async":
            return "SYNC_MODE=sync needs a connected replica (or SYNC_MODE_FALLBACK=async)"
        return None

    async def settle(self, replicated_paths: list[str]) -> bool:
        if not replicated_paths or not self._waits() or self.node.leader is None:
            return False
        seq = self.node.record_written(replicated_paths)
        try:
            await self.node.wait_replicated(seq, self.node.config.sync_write_timeout)
        except Exception as exc:
            raise NotReplicated(
                f"stored on the primary, but the replica did not confirm it: {exc}", seq=seq
            ) from None
        return True
