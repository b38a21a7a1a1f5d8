"""The one reconnect policy of both links (the HTTP sender and the SFTP link): capped exponential backoff
with jitter, reset by a successful hello.

The first retry comes after about `initial` seconds, each further one waits twice as long up to `cap`;
every wait is drawn from [0.5, 1.5) of the current step, so a pair of nodes restarted together does not
retry in lockstep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

INITIAL = 0.1
"""Seconds before the first retry after a link went down."""


@dataclass
class Backoff:
    cap: float
    initial: float = INITIAL
    current: float = field(init=False)
    """The next step, before jitter: what `retry_in` logs."""

    def __post_init__(self) -> None:
        self.current = self.initial

    def reset(self) -> None:
        """The link came up: the next failure retries quickly again."""
        self.current = self.initial

    def at_least(self, seconds: float) -> None:
        """Another reason to wait (a replica whose answers keep being refused) lengthens this step."""
        self.current = max(self.current, seconds)

    async def sleep(
        self,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        """Wait the current step, jittered, then double it up to the cap."""
        await sleep(self.current * (0.5 + draw()))
        self.current = min(self.current * 2, self.cap)
