"""Which node is what in one phase of a drill, named once instead of index arithmetic in every step.

Nodes are indexes into the drill's targets (the --nodes order). The leader at the start is the node the
drill stops; whichever replica answers 200 on /primary after the stop is the new leader (a pair has one
candidate; with more replicas the election picks one); every node but the new leader must end up
following it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Parts:
    old: int
    """The leader at the start of the phase: the node the drill stops and starts again."""
    replicas: tuple[int, ...]
    """Every other node, in --nodes order."""
    new: int | None = None
    """The replica that became the leader; known from the start when there is only one."""

    @classmethod
    def at_start(cls, leader: int, count: int) -> Parts:
        replicas = tuple(i for i in range(count) if i != leader)
        return cls(leader, replicas, replicas[0] if len(replicas) == 1 else None)

    def promoted(self, index: int) -> Parts:
        if index not in self.replicas:
            raise ValueError(f"node {index} was not a replica of node {self.old}")
        return replace(self, new=index)

    @property
    def others(self) -> tuple[int, ...]:
        """The replicas that did not become the leader: they must switch to following the new one."""
        return tuple(i for i in self.replicas if i != self.new)

    @property
    def followers(self) -> tuple[int, ...]:
        """Every node that must follow the new leader at the end: the old leader and the other replicas."""
        return (self.old, *self.others)

    @property
    def everyone(self) -> tuple[int, ...]:
        return (self.old, *self.replicas)
