"""Every error a client can see, as an RFC 9457 problem response, decided in one place."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from replication.errors import (
    ContainmentError,
    FencedError,
    IntegrityError,
    PeerError,
    ProtocolError,
    StorageFullError,
)

log = structlog.get_logger("daemon.problems")


class HTTPProblem(Exception):
    """An error raised by a handler that already knows its status and wording."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


_MAPPED: tuple[tuple[type[Exception], int, str], ...] = (
    (ContainmentError, 400, "path refused"),
    (ProtocolError, 400, "malformed replication stream"),
    (IntegrityError, 422, "content does not match its hash"),
    (FencedError, 409, "fenced by a higher epoch"),
    (StorageFullError, 507, "no space left on the receiving disk"),
    (PeerError, 503, "peer unavailable"),
)


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
        for cls, status, title in _MAPPED:
            if isinstance(exc, cls):
                extra: dict[str, Any] = {}
                if isinstance(exc, FencedError):
                    extra["peer_epoch"] = exc.peer_epoch
                if isinstance(exc, ContainmentError) and exc.symlink_at is not None:
                    extra["symlink_at"] = exc.symlink_at
                failed = getattr(exc, "failed_seq", None)
                if failed is not None:
                    extra["failed_seq"] = failed
                applied = getattr(exc, "applied_seq", None)
                if applied is not None:
                    extra["applied_seq"] = applied
                log.warning("request_refused", path=request.path, status=status, error=str(exc))
                return problem(status, title, str(exc), **extra)
        return _unexpected(request, exc)


def _client_gone(request: web.Request) -> bool:
    """The client closed the connection (mid-body, say): nobody is left to answer."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _unexpected(request: web.Request, exc: Exception) -> web.Response:
    """Anything not foreseen: logged with its traceback, answered without one."""
    log.error("request_failed", path=request.path, exc_info=exc)
    return problem(500, "internal error", "the request failed; see the server log")
