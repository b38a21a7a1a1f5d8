"""The leader lease as a row with an expiry time in PostgreSQL.

One row per cluster in `hotstandby_lease`. Every statement is a single
conditional write, so the database decides who wins, and every time is the
database's `clock_timestamp()`: the nodes' clocks never enter into it. The term
column grows by one with each acquisition (and each hand-over) and is never
reset, so it serves as the fencing token. A lease handed over to a node and not
yet taken has the holder `'>' || node_id`: only that node can take it.
(Advisory locks would tie the lease to one session and give no term.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict

from daemon.election.base import ElectionError, LeaseHolder, checked_term

T = TypeVar("T")
Row = tuple[Any, ...]

_CREATE = """
CREATE TABLE IF NOT EXISTS hotstandby_lease (
    cluster text PRIMARY KEY,
    holder text NOT NULL,
    term bigint NOT NULL,
    expires_at timestamptz NOT NULL
)
"""

# A free (expired) lease gets a new term; a lease handed to us (holder '>' || node, see _HANDOVER)
# is taken at the term the handover created.
_ACQUIRE = """
INSERT INTO hotstandby_lease AS lease (cluster, holder, term, expires_at)
VALUES (%(cluster)s, %(node)s, 1, clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (cluster) DO UPDATE
    SET holder = EXCLUDED.holder,
        term = CASE WHEN lease.holder = '>' || EXCLUDED.holder AND lease.expires_at > clock_timestamp()
                    THEN lease.term ELSE lease.term + 1 END,
        expires_at = EXCLUDED.expires_at
    WHERE lease.expires_at < clock_timestamp() OR lease.holder = '>' || EXCLUDED.holder
RETURNING term
"""

# Planned switchover: only the holder, at its term, hands the lease to a named node under a new term.
_HANDOVER = """
UPDATE hotstandby_lease
SET holder = '>' || %(to)s, term = term + 1, expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE cluster = %(cluster)s AND holder = %(node)s AND term = %(term)s AND expires_at > clock_timestamp()
RETURNING term
"""

_RENEW = """
UPDATE hotstandby_lease SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE cluster = %(cluster)s AND holder = %(node)s AND term = %(term)s AND expires_at > clock_timestamp()
RETURNING term
"""

_RELEASE = """
UPDATE hotstandby_lease SET expires_at = clock_timestamp()
WHERE cluster = %(cluster)s AND holder = %(node)s AND term = %(term)s AND expires_at > clock_timestamp()
"""

_HOLDER = """
SELECT ltrim(holder, '>'), term, EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8
FROM hotstandby_lease WHERE cluster = %(cluster)s AND expires_at > clock_timestamp()
"""


def _where(dsn: str) -> str:
    """Where DATABASE_URL points, for error messages: host and port, never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DATABASE_URL)"
    return f"{params.get('host') or params.get('hostaddr') or 'localhost'}:{params.get('port') or 5432}"


def _seconds(ttl: float) -> float:
    if ttl <= 0:
        raise ValueError(f"lease ttl must be positive, got {ttl}")
    return ttl


def _finish(conn: psycopg.AsyncConnection[Row]) -> None:
    """Close a connection whose last request was abandoned, once that request has wound down."""
    conn.pgconn.finish()


class PostgresLease:
    """LeaseBackend on one PostgreSQL database (DATABASE_URL), over one autocommit connection."""

    name = "postgres"

    def __init__(self, dsn: str, cluster: str = "hotstandby", request_timeout: float = 1.0) -> None:
        self._dsn = dsn
        self._cluster = cluster
        self._timeout = request_timeout
        self._where = _where(dsn)
        try:
            self._password = str(conninfo_to_dict(dsn).get("password") or "")
        except psycopg.ProgrammingError:
            self._password = ""
        self._conn: psycopg.AsyncConnection[Row] | None = None
        self._connecting = asyncio.Lock()
        self._abandoned: set[asyncio.Task[Any]] = set()

    async def try_acquire(self, node_id: str, ttl: float) -> int | None:
        row = await self._call(
            "acquire", _ACQUIRE, {"cluster": self._cluster, "node": node_id, "ttl": _seconds(ttl)}
        )
        return None if row is None else self._term(row[0])

    async def renew(self, node_id: str, term: int, ttl: float) -> bool:
        params = {"cluster": self._cluster, "node": node_id, "term": term, "ttl": _seconds(ttl)}
        return await self._call("renew", _RENEW, params) is not None

    async def handover(self, node_id: str, term: int, to_node: str, ttl: float) -> int | None:
        params = {
            "cluster": self._cluster,
            "node": node_id,
            "term": term,
            "to": to_node,
            "ttl": _seconds(ttl),
        }
        row = await self._call("handover", _HANDOVER, params)
        return None if row is None else self._term(row[0])

    async def release(self, node_id: str, term: int) -> None:
        await self._call("release", _RELEASE, {"cluster": self._cluster, "node": node_id, "term": term})

    async def holder(self) -> LeaseHolder | None:
        row = await self._call("holder", _HOLDER, {"cluster": self._cluster})
        if row is None:
            return None
        return LeaseHolder(node_id=str(row[0]), term=self._term(row[1]), ttl_left=max(0.0, float(row[2])))

    async def close(self) -> None:
        """Close the connection; give requests abandoned after a timeout a last bounded moment."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        if self._abandoned:
            await asyncio.wait(self._abandoned, timeout=self._timeout)

    async def _call(self, what: str, sql: str, params: dict[str, Any]) -> Row | None:
        """Run one statement within request_timeout; every failure becomes an ElectionError.

        A connection found dead (the server restarted since the last call) is
        replaced once within the same time budget. Running a statement twice is
        harmless: at worst a repeated acquire finds the lease already taken (by
        us) and returns None, and that lease lapses after its ttl.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            reused = self._conn is not None and not self._conn.closed
            try:
                return await self._attempt(sql, params, deadline)
            except psycopg.OperationalError:
                if not reused or loop.time() >= deadline:
                    raise
                return await self._attempt(sql, params, deadline)
        except TimeoutError:
            raise ElectionError(
                f"postgres at {self._where} (DATABASE_URL) did not answer {what} within {self._timeout}s"
            ) from None
        except (psycopg.Error, OSError) as exc:
            raise ElectionError(
                f"postgres at {self._where} (DATABASE_URL) failed {what}: {self._safe(exc)}"
            ) from None

    async def _attempt(self, sql: str, params: dict[str, Any], deadline: float) -> Row | None:
        conn = await self._bounded(self._connection(), deadline)
        try:
            return await self._bounded(self._execute(conn, sql, params), deadline, conn)
        except (psycopg.Error, OSError):
            await self._drop(conn)
            raise

    @staticmethod
    async def _execute(conn: psycopg.AsyncConnection[Row], sql: str, params: dict[str, Any]) -> Row | None:
        cur = await conn.execute(sql, params)
        return await cur.fetchone() if cur.description is not None else None

    async def _drop(self, conn: psycopg.AsyncConnection[Row]) -> None:
        """Forget a connection that failed; whatever went wrong, the next call starts afresh."""
        if self._conn is conn:
            self._conn = None
        await conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[Row]:
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(2, math.ceil(self._timeout))
            )
            try:
                await self._prepare(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
            return conn

    async def _prepare(self, conn: psycopg.AsyncConnection[Row]) -> None:
        """Session settings that make the lease safe whatever the server's defaults, and the table.

        synchronous_commit is forced on: with it off, a database crash can lose
        the last committed term and hand the same term to the next leader.
        The timeouts are a server-side second guard behind _bounded.
        """
        millis = str(max(1, round(self._timeout * 1000)))
        await conn.execute(
            "SELECT set_config('synchronous_commit', 'on', false), "
            "set_config('statement_timeout', %(ms)s, false), set_config('lock_timeout', %(ms)s, false)",
            {"ms": millis},
        )
        # IF NOT EXISTS does not cover two nodes creating the table (and its row type) at the same moment.
        with contextlib.suppress(pgerrors.UniqueViolation, pgerrors.DuplicateTable, pgerrors.DuplicateObject):
            await conn.execute(_CREATE)

    async def _bounded(
        self, work: Coroutine[Any, Any, T], deadline: float, conn: psycopg.AsyncConnection[Row] | None = None
    ) -> T:
        """Await `work` until `deadline`, and not a moment longer.

        asyncio.wait_for would wait for the cancelled work to finish, and psycopg
        answers a cancellation by asking the server to cancel the query, which
        takes up to 10 s when the server hangs. So on timeout the work is left to
        wind down on its own (tracked in _abandoned) and its connection is
        dropped, so the next call opens a fresh one.
        """
        task = asyncio.ensure_future(work)
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, remaining))
        except asyncio.CancelledError:
            self._abandon(task, conn)
            raise
        if not done:
            self._abandon(task, conn)
            raise TimeoutError
        return task.result()

    def _abandon(self, task: asyncio.Task[Any], conn: psycopg.AsyncConnection[Row] | None) -> None:
        if conn is not None and self._conn is conn:
            self._conn = None
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._reap)
        if conn is not None:
            task.add_done_callback(lambda _: _finish(conn))

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved on purpose: the caller already got an ElectionError

    def _term(self, term: object) -> int:
        where = f"postgres at {self._where} (DATABASE_URL)"
        return checked_term(term, where, f"hotstandby_lease.term of cluster {self._cluster!r}")

    def _safe(self, exc: BaseException) -> str:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return text.replace(self._password, "***") if self._password else text
