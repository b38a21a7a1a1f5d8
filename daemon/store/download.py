"""HTTP downloads from the marketplace: timeouts, bounded retries with jittered backoff, a size cap.

One aiohttp session per store, with `trust_env=True` so HTTP_PROXY, HTTPS_PROXY and
NO_PROXY apply as they do for other tools. Retries come from tenacity: exponential
backoff with jitter, DOWNLOAD_RETRIES retries after the first attempt, only for
failures a second try can fix (connection errors, timeouts, truncated bodies, 5xx,
429, and content that does not verify, which is what a flaky proxy or cache produces).
A 4xx or an oversized package fails at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from daemon.limits import AnswerTooLarge, read_json
from daemon.redact import hide_password
from daemon.store.errors import InvalidPackage, MarketplaceError, NotFound, PackageTooLarge
from daemon.store.files import PendingFile
from replication.errors import HotstandbyError

log = structlog.get_logger("daemon.store.download")

CHUNK = 256 * 1024
BACKOFF_MAX = 30.0
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
JSON_LIMIT = 1024 * 1024
"""A marketplace document (a plugin's latest version, one version) is a few kilobytes: read no more."""


@dataclass(frozen=True)
class DownloadSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    max_size: int = 52_428_800


class UpstreamStatus(HotstandbyError):
    """The marketplace answered with an HTTP error status."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{hide_password(url)} answered HTTP {status} {reason}".rstrip())
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status in RETRY_STATUSES or self.status >= 500


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamStatus):
        return exc.transient
    if isinstance(exc, PackageTooLarge):
        return False
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | InvalidPackage)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


class Downloader:
    def __init__(self, settings: DownloadSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout,
                sock_read=self.settings.read_timeout,
            )
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=True)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _retrying(self, url: str) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            log.warning(
                "download_retry",
                url=hide_password(url),
                attempt=state.attempt_number,
                error=_describe(error) if error else None,
                sleep=round(state.upcoming_sleep, 3),
            )

        base = self.settings.backoff
        return AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries + 1),
            wait=wait_exponential(multiplier=base, max=max(base, BACKOFF_MAX)) + wait_random(0, base),
            retry=retry_if_exception(_transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def fetch_json(self, url: str) -> tuple[Any, int]:
        """GET a JSON document with retries: (document, attempts)."""
        attempts = 0

        async def once() -> Any:
            async with self.session.get(url, headers={"Accept": "application/json"}) as resp:
                _raise_for_status(url, resp)
                if resp.content_length is not None and resp.content_length > JSON_LIMIT:
                    raise AnswerTooLarge(
                        f"{hide_password(url)} announces {resp.content_length} bytes of JSON"
                    )
                return await read_json(resp.content, JSON_LIMIT, hide_password(url))

        try:
            async for attempt in self._retrying(url):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    document = await once()
        except Exception as exc:
            raise _final_error(url, exc, attempts) from None
        return document, attempts

    async def fetch_to(
        self, url: str, target: PendingFile, check: Callable[[PendingFile], Awaitable[object]]
    ) -> int:
        """Stream `url` into `target` and `check` it, retrying both; returns the attempts made.

        Each attempt starts from an empty temp file. On failure the caller discards the target.
        """
        attempts = 0
        try:
            async for attempt in self._retrying(url):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    target.rewind()
                    await self._stream(url, target)
                    await check(target)
        except Exception as exc:
            raise _final_error(url, exc, attempts) from None
        return attempts

    async def _stream(self, url: str, target: PendingFile) -> None:
        limit = self.settings.max_size
        shown = hide_password(url)
        async with self.session.get(url) as resp:
            _raise_for_status(url, resp)
            if resp.content_length is not None and resp.content_length > limit:
                raise PackageTooLarge(
                    f"{shown} announces {resp.content_length} bytes, "
                    f"more than MAX_PLUGIN_PACKAGE_SIZE={limit}",
                    limit=limit,
                )
            async for chunk in resp.content.iter_chunked(CHUNK):
                if target.size + len(chunk) > limit:
                    raise PackageTooLarge(
                        f"{shown} sent more than MAX_PLUGIN_PACKAGE_SIZE={limit} bytes", limit=limit
                    )
                target.write(chunk)
            if resp.content_length is not None and target.size != resp.content_length:
                raise aiohttp.ClientPayloadError(
                    f"{shown} sent {target.size} of {resp.content_length} announced bytes"
                )


def _raise_for_status(url: str, resp: aiohttp.ClientResponse) -> None:
    if resp.status >= 400:
        raise UpstreamStatus(url, resp.status, resp.reason or "")


def _final_error(url: str, exc: BaseException, attempts: int) -> Exception:
    """What the caller sees once the retry budget is spent (or a failure is not worth retrying)."""
    url = hide_password(url)
    tried = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if isinstance(exc, PackageTooLarge):
        exc.extra["attempts"] = attempts
        return exc
    if isinstance(exc, UpstreamStatus) and exc.status == 404:
        return NotFound(f"{exc} ({tried}): the marketplace does not have it", attempts=attempts, url=url)
    extra: dict[str, Any] = {"attempts": attempts, "url": url}
    if isinstance(exc, InvalidPackage):
        extra.update(exc.extra)
    return MarketplaceError(f"{_describe(exc)} ({tried})", **extra)
