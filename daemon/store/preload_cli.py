"""`hotstandby preload`: ask the primary (through HAProxy) to preload a list of plugins.

For cron and the Kubernetes CronJob: every plugin is tried, each request retried with
jittered exponential backoff while the API is unreachable or has no primary (a failover
in progress); a refusal (bad identifier, checksum mismatch, marketplace failure after the
daemon's own retries) is final. Prints one line per plugin; exit status 0 when every
plugin is stored, 1 when any failed (each named, with why), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from daemon.client import Client, ClientSettings, Refused, Unreachable, local_url, refused_key
from daemon.errors import ConfigError, UsageError

DEFAULT_RETRIES = 5
DEFAULT_TIMEOUT = 900.0
"""Per request: the daemon's own download retries can take minutes for a large package."""
RETRY_STATUSES = frozenset({502, 503, 504})
FINAL_TITLES = frozenset({"marketplace download failed", "checksum mismatch", "invalid package"})


@dataclass
class Outcome:
    plugin: str
    ok: bool
    body: dict[str, Any]
    error: str = ""

    def line(self) -> str:
        if not self.ok:
            return f"FAIL {self.plugin}: {self.error}"
        body = self.body
        what = "already present" if body.get("already_present") else f"downloaded in {body.get('seconds')}s"
        tries = body.get("attempts")
        return (
            f"ok   {body.get('identifier', self.plugin)} ({body.get('size')} bytes, {what}, attempts {tries})"
        )


def add_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "preload",
        help="preload plugin packages through the primary's API (exit 1 if any failed)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--from", dest="from_file", metavar="FILE", help="plugins, one per line (# comments)")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="ID",
        help="author/name[:version][@checksum]; repeatable",
    )
    parser.add_argument(
        "--url",
        help="the API, usually HAProxy's frontend (default: HOTSTANDBY_URL, else http://127.0.0.1:5002)",
    )
    parser.add_argument("--key-file", metavar="FILE", help="read SERVER_KEY from this file (default: env)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries per plugin (default 5)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (default 1)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")


def main(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    try:
        return run(args, environ)
    except ConfigError as exc:
        print(f"hotstandby preload: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    plugins = _plugins(args.from_file, args.plugin)
    if args.retries < 0 or args.timeout <= 0 or args.backoff < 0:
        raise UsageError("--retries, --backoff and --timeout must not be negative (--timeout above 0)")
    settings = ClientSettings.from_env(environ, key_file=args.key_file)
    preloader = Preloader(_url(args.url, environ), settings.client(args.timeout))
    outcomes = [preloader.preload(plugin, args.retries, args.backoff) for plugin in plugins]
    failed = [o for o in outcomes if not o.ok]
    if args.json:
        print(
            json.dumps(
                [{"plugin": o.plugin, "ok": o.ok, "error": o.error or None, **o.body} for o in outcomes]
            )
        )
    else:
        for outcome in outcomes:
            print(outcome.line(), file=sys.stdout if outcome.ok else sys.stderr)
        print(f"{len(outcomes) - len(failed)} of {len(outcomes)} plugins stored", file=sys.stderr)
    return 1 if failed else 0


@dataclass(frozen=True)
class Preloader:
    url: str
    client: Client
    """The operator commands' client (daemon/client.py): key, TLS, timeout."""

    def preload(self, plugin: str, retries: int, backoff: float) -> Outcome:
        retrying = Retrying(
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential(multiplier=backoff, max=max(backoff, 30.0)) + wait_random(0, backoff),
            retry=retry_if_exception(lambda exc: isinstance(exc, Unreachable | Refused)),
            reraise=True,
        )
        try:
            status, body = retrying(self._post, plugin)
        except Unreachable as exc:
            return Outcome(plugin, False, {}, f"{self.url}: {exc} (after {retries + 1} attempts)")
        except Refused as exc:
            why = f"HTTP {exc.status} {exc.body.get('title', '')}: {exc.body.get('detail', '')}".strip()
            return Outcome(plugin, False, {}, f"{why} (after {retries + 1} attempts)")
        refused_key(status, self.url)
        if status >= 400:
            return Outcome(
                plugin, False, {}, f"HTTP {status} {body.get('title', '')}: {body.get('detail', '')}"
            )
        return Outcome(plugin, True, body)

    def _post(self, plugin: str) -> tuple[int, dict[str, Any]]:
        """One attempt: Unreachable, or Refused when the API had no primary: worth another try."""
        answer = self.client.send("POST", f"{self.url}/internal/preload", {"plugin_identifier": plugin})
        status, body = answer.status, answer.body()
        if status in RETRY_STATUSES and body.get("title") not in FINAL_TITLES:
            raise Refused(self.url, status, body)
        return status, body


def _plugins(from_file: str | None, given: Sequence[str]) -> list[str]:
    plugins = [p.strip() for p in given if p.strip()]
    if from_file:
        try:
            with open(from_file, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise UsageError(f"--from: cannot read {from_file}: {exc.strerror}") from None
        plugins += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    if not plugins:
        raise UsageError("no plugins given: use --from FILE and/or --plugin ID")
    return list(dict.fromkeys(plugins))


def _url(given: str | None, environ: Mapping[str, str]) -> str:
    text = (given or environ.get("HOTSTANDBY_URL", "")).strip().rstrip("/")
    if not text:
        text = local_url(environ)
    if not text.startswith(("http://", "https://")):
        raise UsageError(f"--url {text!r} must be http(s)://host:port")
    return text
