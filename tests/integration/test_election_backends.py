"""The lease promises every election backend keeps, checked against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import redis.asyncio

from daemon.election.base import ElectionError, LeaseBackend
from daemon.election.factory import make_backend
from daemon.epochs import MAX_PEER_EPOCH
from tests.support.services import (  # noqa: F401
    PostgresService,
    RedisService,
    free_port,
    postgres_service,
    redis_service,
)

pytestmark = pytest.mark.timeout(60)

REQUEST_TIMEOUT = 0.5
SLACK = 1.0  # how much longer than request_timeout a failing call may take


@dataclass
class Rig:
    """One running service and the lease backends (one per node) opened against it."""

    kind: str
    service: RedisService | PostgresService
    opened: list[LeaseBackend] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.service.url if isinstance(self.service, RedisService) else self.service.dsn

    @property
    def keeps_data(self) -> bool:
        """Redis runs without persistence here, so a restart forgets the lease and the term."""
        return self.kind == "postgres"

    def node(self, address: str | None = None) -> LeaseBackend:
        url = address or self.address
        backend = make_backend(
            self.kind, redis_url=url, database_url=url, cluster="test", request_timeout=REQUEST_TIMEOUT
        )
        assert backend is not None
        self.opened.append(backend)
        return backend


@pytest.fixture(params=["redis", "postgres"])
def service(request: pytest.FixtureRequest) -> RedisService | PostgresService:
    started: RedisService | PostgresService = request.getfixturevalue(f"{request.param}_service")
    return started


@pytest.fixture
async def rig(service: RedisService | PostgresService) -> AsyncIterator[Rig]:
    kind = "redis" if isinstance(service, RedisService) else "postgres"
    made = Rig(kind, service)
    try:
        yield made
    finally:
        for backend in made.opened:
            await backend.close()


async def timed(call: Awaitable[Any]) -> tuple[BaseException | None, float]:
    """The error a call raised (or None) and how long it took."""
    started = time.monotonic()
    try:
        await call
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


async def every_call_fails_fast(backend: LeaseBackend, where: str) -> list[float]:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: backend.try_acquire("a", 1.0),
        lambda: backend.renew("a", 1, 1.0),
        lambda: backend.release("a", 1),
        backend.holder,
    ]
    took = []
    for call in calls:
        error, elapsed = await timed(call())
        assert isinstance(error, ElectionError), f"expected ElectionError, got {error!r}"
        assert where in str(error)
        assert elapsed < REQUEST_TIMEOUT + SLACK, f"{error} took {elapsed:.2f}s"
        took.append(elapsed)
    return took


async def test_a_free_lease_is_acquired_with_a_term(rig: Rig) -> None:
    term = await rig.node().try_acquire("a", 2.0)
    assert isinstance(term, int)
    assert term >= 1


async def test_a_held_lease_cannot_be_taken_by_anyone(rig: Rig) -> None:
    a, b = rig.node(), rig.node()
    assert await a.try_acquire("a", 2.0) is not None
    assert await b.try_acquire("b", 2.0) is None
    assert await a.try_acquire("a", 2.0) is None


async def test_renewing_keeps_the_lease_well_past_its_ttl(rig: Rig) -> None:
    a, b = rig.node(), rig.node()
    term = await a.try_acquire("a", 0.6)
    assert term is not None
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        await asyncio.sleep(0.2)
        assert await a.renew("a", term, 0.6)
    assert await b.try_acquire("b", 0.6) is None
    held = await b.holder()
    assert held is not None
    assert (held.node_id, held.term) == ("a", term)


async def test_renew_by_another_node_or_with_another_term_fails(rig: Rig) -> None:
    a, b = rig.node(), rig.node()
    term = await a.try_acquire("a", 2.0)
    assert term is not None
    assert not await b.renew("b", term, 2.0)
    assert not await a.renew("a", term - 1, 2.0)
    assert not await a.renew("a", term + 1, 2.0)
    assert await a.renew("a", term, 2.0)


async def test_a_lapsed_lease_goes_to_another_node_with_a_higher_term(rig: Rig) -> None:
    a, b = rig.node(), rig.node()
    first = await a.try_acquire("a", 0.4)
    assert first is not None
    await asyncio.sleep(0.6)
    second = await b.try_acquire("b", 2.0)
    assert second is not None
    assert second > first
    assert not await a.renew("a", first, 2.0), "the old holder must not get its lapsed lease back"


async def test_release_frees_the_lease_at_once(rig: Rig) -> None:
    a, b = rig.node(), rig.node()
    first = await a.try_acquire("a", 30.0)
    assert first is not None
    await a.release("a", first + 1)
    await b.release("b", first)
    assert await b.try_acquire("b", 30.0) is None, "only the holder with its term may release"
    await a.release("a", first)
    assert await b.holder() is None
    second = await b.try_acquire("b", 30.0)
    assert second is not None
    assert second > first
    assert not await a.renew("a", first, 30.0)


async def test_holder_reports_node_term_and_time_left(rig: Rig) -> None:
    a = rig.node()
    assert await a.holder() is None
    term = await a.try_acquire("node-1:eu", 2.0)
    assert term is not None
    held = await rig.node().holder()
    assert held is not None
    assert (held.node_id, held.term) == ("node-1:eu", term)
    assert 1.0 < held.ttl_left <= 2.0
    await asyncio.sleep(0.3)
    later = await a.holder()
    assert later is not None
    assert later.ttl_left < held.ttl_left


async def test_terms_strictly_increase_across_many_acquisitions(rig: Rig) -> None:
    nodes = [rig.node(), rig.node(), rig.node()]
    terms: list[int] = []
    for i in range(30):
        node = nodes[i % len(nodes)]
        term = await node.try_acquire(f"n{i % len(nodes)}", 5.0)
        assert term is not None
        terms.append(term)
        await node.release(f"n{i % len(nodes)}", term)
    assert all(later > earlier for earlier, later in itertools.pairwise(terms))


async def test_racing_nodes_get_exactly_one_lease(rig: Rig) -> None:
    nodes = [rig.node() for _ in range(6)]
    for _round in range(5):
        results = await asyncio.gather(*(n.try_acquire(f"n{i}", 5.0) for i, n in enumerate(nodes)))
        winners = [(i, term) for i, term in enumerate(results) if term is not None]
        assert len(winners) == 1, results
        i, term = winners[0]
        await nodes[i].release(f"n{i}", term)


async def test_a_stopped_service_fails_every_call_fast_and_recovers(rig: Rig) -> None:
    a, b = rig.node(), rig.node()
    first = await a.try_acquire("a", 10.0)
    assert first is not None
    rig.service.stop()
    took = await every_call_fails_fast(a, f"127.0.0.1:{rig.service.port}")
    print(f"{rig.kind} stopped: calls failed in {', '.join(f'{t:.3f}s' for t in took)}")
    rig.service.start()
    assert await a.renew("a", first, 10.0) is rig.keeps_data, "the lease lives exactly as long as the data"
    await a.release("a", first)
    second = await b.try_acquire("b", 10.0)
    assert second is not None
    if rig.keeps_data:
        assert second > first
    held = await a.holder()
    assert held is not None
    assert (held.node_id, held.term) == ("b", second)


async def test_a_restart_between_calls_costs_no_error(rig: Rig) -> None:
    a = rig.node()
    term = await a.try_acquire("a", 5.0)
    assert term is not None
    rig.service.stop()
    rig.service.start()
    error, _ = await timed(a.holder())
    assert error is None, f"the first call after a restart failed: {error}"


async def test_a_hung_service_fails_every_call_within_the_timeout(rig: Rig) -> None:
    a = rig.node()
    term = await a.try_acquire("a", 5.0)
    assert term is not None
    rig.service.freeze()
    try:
        took = await every_call_fails_fast(a, f"127.0.0.1:{rig.service.port}")
        assert all(t >= REQUEST_TIMEOUT * 0.9 for t in took), "a hung server only fails by timing out"
        print(f"{rig.kind} hung: calls failed in {', '.join(f'{t:.3f}s' for t in took)}")
    finally:
        rig.service.thaw()
    assert await a.renew("a", term, 5.0)


async def test_errors_name_the_host_but_never_the_password(rig: Rig) -> None:
    port = free_port()
    scheme = "redis" if rig.kind == "redis" else "postgresql"
    backend = rig.node(f"{scheme}://admin:s3cret-pw@127.0.0.1:{port}/0")
    error, _ = await timed(backend.try_acquire("a", 1.0))
    assert isinstance(error, ElectionError)
    assert f"127.0.0.1:{port}" in str(error)
    assert "s3cret-pw" not in str(error)


async def _tamper_term(rig: Rig, term: int) -> None:
    """Set the cluster's term behind the backend's back, as a hostile or broken service would."""
    if rig.kind == "redis":
        client = redis.asyncio.Redis.from_url(rig.address)
        try:
            await client.set("hotstandby:test:term", term)
        finally:
            await client.aclose()
        return
    assert await rig.node().holder() is None  # creates the table
    async with await psycopg.AsyncConnection.connect(rig.address, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO hotstandby_lease VALUES ('test', 'gone', %s, clock_timestamp() - interval '1 s')",
            (term,),
        )


async def test_a_term_above_the_epoch_bound_is_refused_and_never_becomes_an_epoch(rig: Rig) -> None:
    await _tamper_term(rig, MAX_PEER_EPOCH)  # the next acquisition draws MAX_PEER_EPOCH + 1
    a = rig.node()
    error, _ = await timed(a.try_acquire("a", 5.0))
    assert isinstance(error, ElectionError), error
    assert f"outside 0..{MAX_PEER_EPOCH}" in str(error) and "refused" in str(error)
    error, _ = await timed(a.holder())
    assert isinstance(error, ElectionError), "nor is it reported as a holder's term"
    assert await rig.node().try_acquire("b", 5.0) is None, "the lease is left to expire: no new term per tick"


# -- planned switchover: the holder hands the lease to a named node under a new term -------------------
async def test_only_the_holder_hands_the_lease_over_and_only_the_named_node_takes_it(rig: Rig) -> None:
    a, b, c = rig.node(), rig.node(), rig.node()
    term = await a.try_acquire("a", 5.0)
    assert term is not None
    assert await b.handover("b", term, "b", 5.0) is None, "a non-holder handed the lease over"
    assert await a.handover("a", term + 1, "b", 5.0) is None, "the holder handed over a term it never had"
    new_term = await a.handover("a", term, "b", 5.0)
    assert new_term is not None and new_term > term
    holder = await c.holder()
    assert holder is not None and (holder.node_id, holder.term) == ("b", new_term)
    # The old holder cannot win it back, nobody else can take it, and it cannot be handed on again.
    assert not await a.renew("a", term, 5.0)
    assert await a.try_acquire("a", 5.0) is None
    assert await c.try_acquire("c", 5.0) is None
    assert await a.handover("a", term, "c", 5.0) is None
    assert not await b.renew("b", new_term, 5.0), "renewed before it was taken"
    # The named node takes it at the term the hand-over created, and then holds it like any lease.
    assert await b.try_acquire("b", 5.0) == new_term
    assert await b.renew("b", new_term, 5.0)
    assert await b.try_acquire("b", 5.0) is None
    assert await c.try_acquire("c", 5.0) is None


async def test_a_lease_handed_over_and_never_taken_expires_like_any_other(rig: Rig) -> None:
    a, c = rig.node(), rig.node()
    term = await a.try_acquire("a", 5.0)
    assert term is not None
    handed = await a.handover("a", term, "b", 0.4)
    assert handed is not None
    assert await c.try_acquire("c", 5.0) is None
    await asyncio.sleep(0.6)
    later = await c.try_acquire("c", 5.0)
    assert later is not None and later > handed
