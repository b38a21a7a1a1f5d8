"""Every error a client can see, as an RFC 9457 problem response, decided in one place: `PROBLEMS` maps each
named exception a handler may let through (engine and store alike) to its status and title; the most
specific class in an exception's MRO wins. Anything else is a 500 logged with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from daemon.store.errors import (
    CatalogueError,
    ChecksumMismatch,
    Corrupted,
    InvalidEvent,
    InvalidIdentifier,
    InvalidPackage,
    MarketplaceError,
    NotConfigured,
    NotFound,
    NotReplicated,
    NotWritable,
    PackageTooLarge,
    StoreError,
    UnverifiableIdentifier,
)
from replication.errors import (
    ContainmentError,
    FencedError,
    HotstandbyError,
    IntegrityError,
    PeerError,
    ProtocolError,
    StorageFullError,
)

log = structlog.get_logger("daemon.problems")


class HTTPProblem(HotstandbyError):
    """An error raised by a handler that already knows its status and wording."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


@dataclass(frozen=True)
class Problem:
    status: int
    title: str
    logged: bool = True
    """Logged as `request_refused` (the link's refusals); the store records its own events."""


PROBLEMS: dict[type[HotstandbyError], Problem] = {
    # the replication link (replication/errors.py)
    ContainmentError: Problem(400, "path refused"),
    ProtocolError: Problem(400, "malformed replication stream"),
    IntegrityError: Problem(422, "content does not match its hash"),
    FencedError: Problem(409, "fenced by a higher epoch"),
    StorageFullError: Problem(507, "no space left on the receiving disk"),
    PeerError: Problem(503, "peer unavailable"),
    # the plugin store (daemon/store/errors.py)
    StoreError: Problem(500, "plugin store error", logged=False),
    InvalidIdentifier: Problem(400, "invalid plugin identifier", logged=False),
    UnverifiableIdentifier: Problem(400, "identifier cannot be verified", logged=False),
    InvalidEvent: Problem(400, "invalid event", logged=False),
    NotFound: Problem(404, "not found", logged=False),
    NotWritable: Problem(503, "not the primary", logged=False),
    PackageTooLarge: Problem(413, "package too large", logged=False),
    InvalidPackage: Problem(422, "invalid package", logged=False),
    ChecksumMismatch: Problem(422, "checksum mismatch", logged=False),
    MarketplaceError: Problem(502, "marketplace download failed", logged=False),
    NotConfigured: Problem(503, "not configured", logged=False),
    Corrupted: Problem(409, "package corrupted", logged=False),
    CatalogueError: Problem(503, "catalogue unavailable", logged=False),
    NotReplicated: Problem(504, "not confirmed by the replica", logged=False),
}


NOT_FROM_HANDLERS: dict[str, str] = {
    "daemon.errors.ConfigError": "start-up and operator commands: one line on stderr, exit status 2",
    "daemon.errors.UsageError": "operator commands: one line on stderr, exit status 2",
    "daemon.haproxy_config.SettingsError": "hotstandby haproxy-config: one line on stderr, exit status 2",
    "daemon.tls.TLSError": "start-up (as a ConfigError) and operator commands (as a UsageError)",
    "daemon.epochs.EpochError": "start-up (node.json) and the catalogue's event check; the CLI reports it",
    "daemon.election.base.ElectionError": "caught by the HA loop (daemon/ha_loop.py), which keeps ticking",
    "daemon.limits.AnswerTooLarge": "an answer this node read from a peer or the marketplace, caught there",
    "daemon.store.download.UpstreamStatus": "turned into MarketplaceError or NotFound by the downloader",
    "daemon.client.Unreachable": "the operator commands' client: a node did not answer",
    "daemon.client.Refused": "the operator commands' client: a node answered with a problem document",
    "daemon.drill.errors.StopperError": "the drill (a client of the API): a failed step in its report",
    "daemon.drill.errors.StepFailed": "the drill: a failed step in its report",
    "daemon.drill.errors.HAProxyError": "the drill: HAProxy's view could not be read",
    "daemon.problems.HTTPProblem": "carries its own status and title (problem_middleware's first branch)",
    "replication.errors.ReplicationError": "a base class: raised only as one of its subclasses",
    "replication.errors.NotRegularFileError": "the leader's reads skip the path (replication/source.py)",
}
"""Named exceptions that never leave a handler, and why: daemon/problems.py is where to look either way
(tests/unit/test_problems.py fails on a named exception in neither place)."""


def problem_for(exc: BaseException) -> Problem | None:
    """The row of the most specific class `exc` is an instance of, or None (an unforeseen error)."""
    for cls in type(exc).__mro__:
        if cls in PROBLEMS:
            return PROBLEMS[cls]
    return None


def problem_fields(exc: BaseException) -> dict[str, Any]:
    """The fields an exception adds to its problem document (what a client acts upon)."""
    extra: dict[str, Any] = dict(exc.extra) if isinstance(exc, StoreError) else {}
    if isinstance(exc, FencedError):
        extra["peer_epoch"] = exc.peer_epoch
    if isinstance(exc, ContainmentError) and exc.symlink_at is not None:
        extra["symlink_at"] = exc.symlink_at
    for name in ("failed_seq", "applied_seq"):
        value = getattr(exc, name, None)
        if value is not None:
            extra[name] = value
    return extra


def problem(status: int, title: str, detail: str = "", **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail or title, **extra}
    return web.json_response(body, status=status, content_type="application/problem+json")


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPProblem as exc:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(
            exc.status,
            exc.reason,
            exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason,
        )
    except ConnectionResetError as exc:
        if not _client_gone(request):
            return _unexpected(request, exc)
        log.info("client_disconnected", path=request.path, error=str(exc))
        return problem(400, "client disconnected", "the connection closed before the request was read")
    except Exception as exc:
        known = problem_for(exc)
        if known is None:
            return _unexpected(request, exc)
        if known.logged:
            log.warning("request_refused", path=request.path, status=known.status, error=str(exc))
        return problem(known.status, known.title, str(exc), **problem_fields(exc))


def _client_gone(request: web.Request) -> bool:
    """The client closed the connection (mid-body, say): nobody is left to answer."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _unexpected(request: web.Request, exc: Exception) -> web.Response:
    """Anything not foreseen: logged with its traceback, answered without one."""
    log.error("request_failed", path=request.path, exc_info=exc)
    return problem(500, "internal error", "the request failed; see the server log")
