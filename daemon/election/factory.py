"""Build the lease backend that ELECTION names, so callers never import a backend module."""

from __future__ import annotations

from daemon.election.base import LeaseBackend


def make_backend(
    kind: str,
    *,
    redis_url: str,
    database_url: str,
    cluster: str,
    request_timeout: float,
    redis_password: str = "",
) -> LeaseBackend | None:
    """The backend for `kind`; None for "static", where ROLE decides and nothing is leased.

    Backend modules are imported here on demand, so a static deployment never
    loads a database driver it does not use.
    """
    if kind == "static":
        return None
    if kind == "redis":
        from daemon.election.redis import RedisLease

        return RedisLease(
            redis_url, cluster=cluster, request_timeout=request_timeout, password=redis_password
        )
    if kind == "postgres":
        from daemon.election.postgres import PostgresLease

        return PostgresLease(database_url, cluster=cluster, request_timeout=request_timeout)
    raise ValueError(f"unknown election backend {kind!r}: expected static, redis or postgres")
