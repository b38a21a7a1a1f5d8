"""Background pollers whose last answers the control loop and /primary read without waiting.

The peer's /internal/status tells its role and epoch (how a restarted old
leader learns it was replaced); the co-located plugin daemon's
/health/check gates /primary when PLUGIN_DAEMON_URL is set.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from daemon.client import AsyncClient, NoAnswer, Unreachable
from daemon.limits import parse_json

log = structlog.get_logger("daemon.peers")

Failure = Literal[NoAnswer, "http"]
"""Why the last poll failed: no answer (daemon/client.py NoAnswer: `refused`, `untrusted`,
`unreachable`), or `http`, an answer other than 200. An answer of 401 or 403 (our key refused) is
`untrusted` too: the peer's role is unknown, never "not leading". A body that is not JSON, or longer
than ANSWER_LIMIT, is `unreachable`."""
UNTRUSTED_STATUSES = (401, 403)


ANSWER_LIMIT = 1024 * 1024
"""A status answer is a few kilobytes: a peer that sends more is not read further (and counts as down)."""


@dataclass
class PeerView:
    epoch: int | None = None
    writable: bool | None = None
    role: str | None = None
    synced: bool = False
    journal_id: str | None = None
    """A replica: the journal of the leader it follows, and how much of it it applied."""
    applied_sequence: int | None = None
    answered_at: float | None = None
    error: str | None = None
    failure: Failure | None = None
    was_leader: bool = False
    """Its last good answer said it was the writable leader."""
    node_id: str | None = None

    def fresh(self, now: float, max_age: float) -> bool:
        return self.answered_at is not None and now - self.answered_at <= max_age


class Poller:
    """Polls one URL every `interval`; keeps the last answer and when it came."""

    def __init__(
        self,
        url: str,
        interval: float,
        timeout: float,
        key: str = "",
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.ssl_context = ssl_context
        self.interval = interval
        self.timeout = timeout
        self.key = key
        """Sent to peers (ha_loop), never to the plugin daemon (server.py)."""
        self.clock = clock
        self.ok: bool | None = None
        self.body: dict[str, Any] | None = None
        self.answered_at: float | None = None
        self.error: str | None = None
        self.failure: Failure | None = None
        self.failed_at: float | None = None
        self.last_good_body: dict[str, Any] | None = None
        self.attempts = 0
        self.first_poll_done = asyncio.Event()
        """Set once the first poll ended, answered or not (the HA loop waits for it at start)."""

    async def run(self) -> None:
        async with AsyncClient(self.ssl_context, self.key, timeout=self.timeout) as client:
            while True:
                started = self.clock()
                await self._poll(client)
                await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))

    async def _poll(self, client: AsyncClient) -> None:
        try:
            await self._ask(client)
        finally:
            self.attempts += 1
            self.first_poll_done.set()

    async def _ask(self, client: AsyncClient) -> None:
        try:
            answer = await client.send("GET", self.url, limit=ANSWER_LIMIT)
            body = parse_json(answer.raw, "the peer") if answer.status == 200 else None
        except Unreachable as exc:
            self._unanswered(str(exc), exc.failure)
            return
        except ValueError as exc:  # not JSON, or more than ANSWER_LIMIT (AnswerTooLarge)
            self._unanswered(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, "unreachable"
            )
            return
        self.ok = answer.status == 200
        self.body = body if isinstance(body, dict) else None
        self.answered_at = self.clock()
        self.error = None if self.ok else f"HTTP {answer.status}"
        untrusted = answer.status in UNTRUSTED_STATUSES
        self._failed(None if self.ok else "untrusted" if untrusted else "http")
        if self.ok and self.body is not None:
            self.last_good_body = self.body

    def _unanswered(self, error: str, failure: Failure) -> None:
        self.ok = False
        self.body = None
        self.error = error
        self._failed(failure)

    def _failed(self, failure: Failure | None) -> None:
        if failure is not None and failure != self.failure:
            log.warning("peer_check_failed", url=self.url, failure=failure, error=self.error)
        self.failure = failure
        self.failed_at = None if failure is None else self.clock()

    def fresh_ok(self, max_age: float) -> bool:
        return bool(self.ok) and self.answered_at is not None and self.clock() - self.answered_at <= max_age

    def peer_view(self, max_age: float) -> PeerView:
        was_leader = self.last_good_body is not None and self.last_good_body.get("writable") is True
        if not self.fresh_ok(max_age) or self.body is None:
            return PeerView(error=self.error, failure=self.failure, was_leader=was_leader)
        epoch = self.body.get("epoch")
        journal_id = self.body.get("journal_id")
        applied = self.body.get("applied_sequence")
        node_id = self.body.get("node_id")
        return PeerView(
            epoch=epoch if _integer(epoch) else None,  # bounded by the control loop (daemon/epochs.py)
            writable=bool(self.body.get("writable")),
            role=str(self.body.get("role")),
            synced=self.body.get("synced") is True,
            journal_id=journal_id if isinstance(journal_id, str) else None,
            applied_sequence=applied if _integer(applied) else None,
            answered_at=self.answered_at,
            was_leader=was_leader,
            node_id=node_id if isinstance(node_id, str) else None,
        )


def _integer(value: object) -> bool:
    """A JSON integer: Python counts `true` as an int, a peer's JSON does not."""
    return isinstance(value, int) and not isinstance(value, bool)
