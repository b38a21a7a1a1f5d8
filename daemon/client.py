"""The one HTTP client of the operator commands (status, promote, demote, switchover, preload, drill history),
of the drill (its node checks, its load, its read-back) and of the nodes' own peer checks: the
Authorization header, TLS, timeouts, and what a node that does not answer usefully looks like
(Unreachable, with why: refused, untrusted or unreachable). Every answer is an Answer; a problem
document comes back as (status, body) from `call`, or as one error type (Refused) from `expect`; HTTP
401 is always the operator's key to `call`: a UsageError. `Client` blocks (the commands);
`AsyncClient` is the same client on the event loop (the drill, the peer pollers, the status page),
one aiohttp session reused for every request.

Its settings (ClientSettings) come from the same reader as the daemon's Config (daemon/config.py
EnvReader), so SERVER_KEY, TLS_* and REPLICA_MAX_LAG have one parser and one error message each.
"""

from __future__ import annotations

import errno
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client import DEFAULT_TIMEOUT

from daemon.config import REPLICA_MAX_LAG_RANGE, EnvReader
from daemon.errors import ConfigError, HotstandbyError, UsageError
from daemon.limits import read_limited
from daemon.tls import TLSFiles, client_context

REQUEST_TIMEOUT = 3.0
DEFAULT_MAX_LAG = 10.0


NoAnswer = Literal["refused", "unreachable", "untrusted"]
"""Why nothing useful came back. `refused`: nothing listens there (the process is gone from a living
host): certain. `untrusted`: TLS failed, either way: who is there is unknown. `unreachable`: timeouts
and every other network error, and answers that are not what was asked for."""


class Unreachable(HotstandbyError):
    """The node did not answer usefully: connection refused, timed out, TLS failed, or not JSON."""

    def __init__(self, reason: str, failure: NoAnswer = "unreachable") -> None:
        super().__init__(reason)
        self.failure: NoAnswer = failure


class Refused(HotstandbyError):
    """A node answered with an error status: its problem document (daemon/problems.py) read once."""

    def __init__(self, url: str, status: int, body: Mapping[str, Any]) -> None:
        self.url, self.status, self.body = url, status, dict(body)
        self.title = str(body.get("title") or "")
        self.detail = str(body.get("detail") or self.title or f"HTTP {status}")
        """What a person reads: the document's detail, else its title, else the status."""
        super().__init__(f"{url} answered HTTP {status}: {self.detail}")


def classify(exc: BaseException) -> NoAnswer:
    """Why a request got no answer, from what the socket, urllib or aiohttp raised."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, aiohttp.ClientSSLError | ssl.SSLError):
        return "untrusted"
    if isinstance(reason, aiohttp.ClientConnectorError) and reason.os_error.errno == errno.ECONNREFUSED:
        return "refused"
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    return "unreachable"


# -- settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientSettings:
    """What every operator command needs to talk to the nodes: the key, TLS, the lag still in step."""

    server_key: str = field(repr=False)
    tls: TLSFiles
    max_lag: float = DEFAULT_MAX_LAG

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, key_file: str | None = None, max_lag: float | None = None
    ) -> ClientSettings:
        """--key-file, else SERVER_KEY; TLS_CA_FILE (and TLS_CERT_FILE/TLS_KEY_FILE for mutual TLS);
        --max-lag, else REPLICA_MAX_LAG. A bad value is a UsageError with the daemon's own wording."""
        reader = EnvReader(environ)
        if max_lag is not None and max_lag <= 0:
            raise UsageError("--max-lag must be a positive number of seconds")
        try:
            tls = reader.tls_files()
            lag = max_lag or reader.seconds("REPLICA_MAX_LAG", DEFAULT_MAX_LAG, *REPLICA_MAX_LAG_RANGE)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        key = read_key_file(key_file, "--key-file") if key_file else environ.get("SERVER_KEY", "")
        return cls(key, tls, lag)

    def ssl_context(self) -> ssl.SSLContext:
        return client_context(self.tls)

    def client(self, timeout: float = REQUEST_TIMEOUT) -> Client:
        return Client(self.server_key, timeout, self.ssl_context())


def read_key_file(path: str, flag: str) -> str:
    """A key given as a file (a secret mounted by Docker or Kubernetes), its trailing newline dropped."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def local_url(environ: Mapping[str, str]) -> str:
    """This node's API on loopback, at SERVER_PORT read as the daemon reads it (5002 unless set)."""
    try:
        port = EnvReader(environ).integer("SERVER_PORT", 5002, 0, 65535)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return f"http://127.0.0.1:{port}"


def base_url(text: str, source: str) -> str:
    """A node's (or HAProxy's) base URL given on the command line: http(s)://host:port, nothing after."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"{source}: {url!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise UsageError(f"{source}: {url!r} is not a node URL like http://host:port")
    return url


# -- requests -------------------------------------------------------------------------------------
def auth_headers(key: str) -> dict[str, str]:
    """The header every /internal request carries when the nodes have a SERVER_KEY (daemon/api.py)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class Answer:
    """What a node sent back (Client.send, AsyncClient.send), whatever its status."""

    url: str
    status: int
    raw: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (anything else wrapped as {"value": ...}, nothing as {});
        ValueError when it is not JSON."""
        body = json.loads(self.raw) if self.raw.strip() else {}
        return body if isinstance(body, dict) else {"value": body}

    def body(self) -> dict[str, Any]:
        """`json()`, or {"detail": the start of the text} when the body is not JSON (a proxy's page)."""
        try:
            return self.json()
        except ValueError:
            return {"detail": self.raw[:200].decode(errors="replace")}

    def expect(self, *ok: int) -> dict[str, Any]:
        """The JSON body when the status is one of `ok` (200 when none given), else Refused."""
        if self.status not in (ok or (200,)):
            raise Refused(self.url, self.status, self.body())
        return self.body()


@dataclass(frozen=True)
class Client:
    key: str = field(repr=False)
    timeout: float = REQUEST_TIMEOUT
    ssl_context: ssl.SSLContext | None = None
    """For https:// nodes (ClientSettings.ssl_context); None: urllib's default verification."""

    def send(self, method: str, url: str, payload: Any = None, timeout: float | None = None) -> Answer:
        """One request, never through a proxy: its Answer, errors included; Unreachable when nothing
        came back. A POST without a payload sends an empty body."""
        headers = auth_headers(self.key)
        data = None if method != "POST" else b""
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # traffic is direct
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=timeout or self.timeout) as resp:
                return Answer(url, resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return Answer(url, exc.code, _read_error_body(exc))
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(describe(exc), classify(exc)) from None

    def call(
        self, method: str, url: str, path: str, timeout: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request to the node's API: (status, JSON body); 401 is a UsageError (wrong key)."""
        answer = self.send(method, url + path, timeout=timeout)
        refused_key(answer.status, url)
        try:
            return answer.status, answer.json()
        except ValueError:
            raise Unreachable(f"answered HTTP {answer.status} without JSON") from None

    def expect(
        self, method: str, url: str, path: str, timeout: float | None = None, ok: tuple[int, ...] = (200,)
    ) -> dict[str, Any]:
        """`call`, with any status but `ok` raised as Refused (Unreachable and UsageError as there)."""
        status, body = self.call(method, url, path, timeout)
        if status not in ok:
            raise Refused(url, status, body)
        return body


def refused_key(status: int, url: str) -> None:
    if status == 401:
        raise UsageError(f"{url} refused the key (HTTP 401): set SERVER_KEY or --key-file")


class AsyncClient:
    """The client on the event loop: one aiohttp session for every request it sends (a poller asks
    every control interval: no session, connector or TLS context built per request), the key's header
    on each request to the nodes, and no answer raised as Unreachable with its NoAnswer reason."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        key: str = "",
        *,
        timeout: float | None = None,
        limit: int = 100,
        force_close: bool = False,
    ) -> None:
        self.key = key
        self.ssl_context = ssl_context
        connector = aiohttp.TCPConnector(limit=limit, force_close=force_close, ssl=ssl_context or True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # never a proxy from the environment: traffic to the nodes is direct
            timeout=DEFAULT_TIMEOUT if timeout is None else aiohttp.ClientTimeout(total=timeout),
        )
        """Without the key's header (each request adds it): the drill also reads HAProxy's stats page
        with this session, with its own Basic credentials."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.session.close()

    async def send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = None,
        payload: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        limit: int | None = None,
    ) -> Answer:
        """One request: its Answer whatever the status, its body read whole (or up to `limit` bytes:
        AnswerTooLarge beyond); Unreachable when nothing came back within `timeout` (else the
        session's). `payload` is sent as JSON."""
        headers = auth_headers(self.key)
        if payload is not None:
            data = json.dumps(payload, default=str).encode()
            headers["Content-Type"] = "application/json"
        bound = self.session.timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.request(
                method, url, data=data, params=params, headers=headers, timeout=bound
            ) as resp:
                raw = await (resp.read() if limit is None else read_limited(resp.content, limit, url))
                return Answer(url, resp.status, raw)
        except TimeoutError as exc:
            raise Unreachable("timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_in_a_line(exc), classify(exc)) from exc


def _in_a_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_error_body(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def describe(exc: BaseException) -> str:
    """A failed connection in a few words: "connection refused", "timed out", the OS's or OpenSSL's reason."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ssl.SSLError):
        return str(reason)  # as OpenSSL says it: CERTIFICATE_VERIFY_FAILED is what one searches for
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__
