"""Secrets never reach a log line, a status answer, a problem document or a catalogue event.

Two layers. `hide_password` hides what a URL carries (a userinfo password, a bare token as the user
of an http URL, `?password=` and the like in the query) wherever the code shows a URL on purpose.
Behind it, a `Redactor` built once from the configuration knows every secret value (SERVER_KEY,
PGPASSWORD, the passwords and secret query values of every configured URL, proxies included) and
replaces them wherever they turn up anyway: in the text of an exception from a library, in a
peer's error message, in a field someone forgot. The logs, the API's JSON and text answers and
the catalogue's events pass through it (daemon/logs.py, daemon/api.py, daemon/store/store.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "sslpassword",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "auth",
        "key",
        "api_key",
        "apikey",
        "sig",
        "signature",
    }
)
"""Query parameters whose value is a credential (libpq's password=, redis-py's password=, tokens)."""
BARE_USER_SCHEMES = frozenset({"http", "https"})
"""Schemes where a user without a password is itself a credential (https://TOKEN@host)."""
SECRET_ENV = ("SERVER_KEY", "PGPASSWORD", "REDIS_PASSWORD", "DIFY_REDIS_PASSWORD")
"""Variables whose whole value is a secret."""
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "WS_PROXY", "WSS_PROXY")
"""Proxies the store's downloads honour (aiohttp's trust_env), upper and lower case."""
MIN_SECRET = 6
"""Shorter values are not searched for in free text (a short password would garble every line that
happens to contain it); in URLs they are masked all the same (hide_password)."""


def hide_password(url: str) -> str:
    """`url` with its credentials masked: userinfo password, a bare http user, secret query values."""
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing can be trusted to be hidden
        return "<not a URL>"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{user or ''}:{MASK}@{netloc.rpartition('@')[2]}"
    elif user and parts.scheme in BARE_USER_SCHEMES:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _hide_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _hide_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(name.lower() in SECRET_QUERY_KEYS for name, _ in pairs):
        return query
    shown = [(name, MASK if name.lower() in SECRET_QUERY_KEYS else value) for name, value in pairs]
    return urlencode(shown, safe="*/:,")


def url_secrets(url: str) -> set[str]:
    """The secret values in one URL (raw and percent-decoded), for the Redactor."""
    try:
        parts = urlsplit(url)
        found = {parts.password or ""}
        if parts.username and parts.password is None and parts.scheme in BARE_USER_SCHEMES:
            found.add(parts.username)
    except ValueError:
        return {url}  # unparsable: the whole value is all that can be searched for
    found.update(
        v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_QUERY_KEYS
    )
    found |= {unquote(value) for value in found} | {quote(value, safe="") for value in found}
    return {value for value in found if value}


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret values in text, JSON values and response bodies."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: Iterable[str]) -> Redactor:
        """Longest first, so a secret that contains another is masked whole."""
        kept = {value for value in values if len(value) >= MIN_SECRET}
        return cls(tuple(sorted(kept, key=len, reverse=True)))

    @classmethod
    def from_settings(cls, keys: Iterable[str], urls: Iterable[str], env: Mapping[str, str]) -> Redactor:
        """Whole secrets (`keys`, SECRET_ENV), the secrets inside `urls` and inside proxy variables."""
        values = {key for key in keys if key}
        values.update(env.get(name, "") for name in SECRET_ENV)
        proxies = [env.get(name, "") for name in PROXY_ENV] + [
            env.get(name.lower(), "") for name in PROXY_ENV
        ]
        for url in [*urls, *proxies]:
            values |= url_secrets(url) if url else set()
        return cls.of(values)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def value(self, value: Any) -> Any:
        """A JSON-like value with every string in it redacted (keys included).

        Any other object (an exception, a library's exc_info) becomes its repr, redacted: what a
        JSON renderer would have shown of it, minus the secrets.
        """
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return self.text(repr(value))

    def body(self, raw: bytes) -> bytes:
        """A response body: each secret as UTF-8 and as JSON writes it (escaped, ASCII-only)."""
        for secret in self.secrets:
            for form in {secret.encode(), json.dumps(secret)[1:-1].encode()}:
                raw = raw.replace(form, MASK.encode())
        return raw


_active = Redactor()


def install(redactor: Redactor) -> None:
    """Make `redactor` the one the logs use (set once at start-up, before the first log line)."""
    global _active
    _active = redactor


def active() -> Redactor:
    return _active
