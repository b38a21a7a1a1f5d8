"""The leader lease as a Redis key with a TTL, and the term as an INCR counter.

`hotstandby:{cluster}:leader` holds `"{node_id}:{term}"` (or `">{node_id}:{term}"` while
handed over to that node and not yet taken) and expires on its own;
`hotstandby:{cluster}:term` only ever grows. Acquisition, renewal,
hand-over and release are each one Lua script, so Redis runs the check and the write as one
step and two nodes can never both see the key free.

Terms survive only as long as Redis keeps its data: run it with persistence
(appendonly) and an eviction policy that spares keys without a TTL
(noeviction or volatile-*), or a restarted Redis starts counting from 1 again
and terms stop being fencing tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from daemon.election.base import ElectionError, LeaseHolder, checked_term

T = TypeVar("T")

# Only if nobody holds the lease: a new term, and the lease stamped with it. A lease handed to us
# (">{node_id}:{term}", see _HANDOVER) is taken at the term the handover created. Terms travel as
# strings: a Lua number is a double, exact only up to 2**53 (and printed as 4.6e+18 beyond).
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local handed = '>' .. ARGV[1] .. ':'
  if string.sub(current, 1, string.len(handed)) ~= handed then
    return false
  end
  local term = string.sub(current, string.len(handed) + 1)
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. term, 'PX', ARGV[2])
  return term
end
redis.call('INCR', KEYS[2])
local term = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. term, 'PX', ARGV[2])
return term
"""

# Planned switchover: only the holder, at its term, hands the lease to a named node under a new term.
_HANDOVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call('INCR', KEYS[2])
local term = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], '>' .. ARGV[2] .. ':' .. term, 'PX', ARGV[3])
return term
"""

# Compare-and-extend: an expired or re-acquired lease is someone else's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _where(url: str) -> str:
    """Where REDIS_URL points, for error messages: host and port, never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _password(url: str) -> str | None:
    """The password in REDIS_URL, wherever it is written, so messages can blank it out."""
    parts = urlsplit(url)
    return parts.password or next(iter(parse_qs(parts.query).get("password", [])), None)


def _millis(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"lease ttl must be positive, got {ttl}")
    return max(1, round(ttl * 1000))


def _lean_handshake() -> dict[str, Any]:
    """Connection options that make a new connection cost no round trip before the command.

    After a timed-out request the connection is dropped, and the next renewal pays for a new one
    within ELECTION_TIMEOUT. redis-py 6+ spends round trips on HELLO 3, CLIENT MAINT_NOTIFICATIONS
    and CLIENT SETINFO first: on a 100 ms path that left too little of 0.67 s for the renewal, so
    one lost packet became a string of failed renewals and a lost lease (tests/faults/
    test_slow_link_failover.py). RESP2 needs no HELLO and has no maintenance notifications.
    """
    options: dict[str, Any] = {"protocol": 2}
    if "driver_info" in inspect.signature(aioredis.Redis.__init__).parameters:
        options["driver_info"] = None
    else:  # redis-py before 7
        options.update(lib_name=None, lib_version=None)
    return options


class RedisLease:
    """LeaseBackend on one Redis server (REDIS_URL)."""

    name = "redis"

    def __init__(
        self, url: str, cluster: str = "hotstandby", request_timeout: float = 1.0, password: str = ""
    ) -> None:
        """`password` is used when the URL carries none (a password in the URL wins)."""
        self._where = _where(url)
        self._password = _password(url) or password or None
        self._timeout = request_timeout
        self._leader_key = f"hotstandby:{cluster}:leader"
        self._term_key = f"hotstandby:{cluster}:term"
        # One quick retry replaces a pooled connection that died with a restarted server;
        # wait_for in _call still bounds the whole request.
        self._client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=request_timeout,
            socket_connect_timeout=request_timeout,
            retry=Retry(NoBackoff(), 1),
            password=password or None,
            **_lean_handshake(),
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._handover = self._client.register_script(_HANDOVER)

    async def try_acquire(self, node_id: str, ttl: float) -> int | None:
        keys = [self._leader_key, self._term_key]
        term = await self._call("acquire", self._acquire(keys=keys, args=[node_id, _millis(ttl)]))
        return None if term is None else self._term(term)

    async def renew(self, node_id: str, term: int, ttl: float) -> bool:
        args: list[str | int] = [f"{node_id}:{term}", _millis(ttl)]
        return bool(await self._call("renew", self._renew(keys=[self._leader_key], args=args)))

    async def handover(self, node_id: str, term: int, to_node: str, ttl: float) -> int | None:
        keys = [self._leader_key, self._term_key]
        args: list[str | int] = [f"{node_id}:{term}", to_node, _millis(ttl)]
        new_term = await self._call("handover", self._handover(keys=keys, args=args))
        return None if new_term is None else self._term(new_term)

    async def release(self, node_id: str, term: int) -> None:
        await self._call("release", self._release(keys=[self._leader_key], args=[f"{node_id}:{term}"]))

    async def holder(self) -> LeaseHolder | None:
        value, pttl = await self._call("holder", self._get_with_ttl())
        if value is None or pttl == -2:
            return None
        node_id, _, term = str(value).removeprefix(">").rpartition(":")
        if not node_id or not term.isdigit():
            raise ElectionError(f"redis at {self._where}: {self._leader_key} holds {value!r}, not node:term")
        ttl_left = float("inf") if pttl == -1 else pttl / 1000
        return LeaseHolder(node_id=node_id, term=self._term(term), ttl_left=ttl_left)

    async def close(self) -> None:
        """Best effort and bounded: shutdown must not hang on a server that stopped answering."""
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            await asyncio.wait_for(self._client.aclose(), self._timeout)

    async def _get_with_ttl(self) -> list[Any]:
        """GET and PTTL in one MULTI, so the ttl belongs to the value we read."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._leader_key)
            pipe.pttl(self._leader_key)
            result: list[Any] = await pipe.execute()
            return result

    async def _call(self, what: str, request: Awaitable[T]) -> T:
        """Run one request within request_timeout; every failure becomes an ElectionError."""
        try:
            return await asyncio.wait_for(request, self._timeout)
        except TimeoutError:
            raise ElectionError(
                f"redis at {self._where} (REDIS_URL) did not answer {what} within {self._timeout}s"
            ) from None
        except (RedisError, OSError) as exc:
            raise ElectionError(
                f"redis at {self._where} (REDIS_URL) failed {what}: {self._safe(exc)}"
            ) from None

    def _term(self, term: object) -> int:
        where = f"redis at {self._where} (REDIS_URL)"
        try:
            number = int(str(term))
        except ValueError:
            raise ElectionError(f"{where}: {self._term_key} holds {str(term)[:40]!r}, not a term") from None
        return checked_term(number, where, self._term_key)

    def _safe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        return text.replace(self._password, "***") if self._password else text
