"""One immutable Config, read once from the environment.

Every option lives here with its default. `Config.from_env` validates each
value and the rules that tie values together, and raises ConfigError naming
the variable and what it accepts; the CLI turns that into one line and exit
status 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Role = Literal["master", "slave"]
LogFormat = Literal["json", "console"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_STORAGE_PATH = "/app/storage/cwd"
DEFAULT_READY_MARKERS = ("**/.venv/dify/plugin.json",)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Config:
    role: Role = "master"
    storage_path: str = DEFAULT_STORAGE_PATH
    state_path: str = ""
    server_host: str = "0.0.0.0"
    server_port: int = 5002
    sync_target: str = ""
    sync_source: str = ""
    server_key: str = field(default="", repr=False)
    exclude: tuple[str, ...] = ()
    ready_markers: tuple[str, ...] = DEFAULT_READY_MARKERS
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    heartbeat_interval: float = 1.0
    shutdown_timeout: float = 10.0
    batch_max_ops: int = 1000
    batch_max_bytes: int = 16 * 1024 * 1024
    journal_max_entries: int = 200_000

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "server_key":
                value = "***" if value else ""
            elif f.name in ("sync_target", "sync_source"):
                value = _hide_password(value)
            shown.append(f"{f.name}={value!r}")
        return f"Config({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build and validate the configuration from `env` (default: os.environ)."""
        return _Reader(os.environ if env is None else env).build()


class _Reader:
    """Reads one variable at a time so every error names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str, default: str = "") -> str:
        return self.env.get(name, default).strip()

    def choice(self, name: str, default: str, accepted: tuple[str, ...], *, upper: bool = False) -> str:
        value = self.raw(name, default)
        value = value.upper() if upper else value.lower()
        if value not in accepted:
            raise ConfigError(f"{name}={value!r} is invalid: accepted values are {', '.join(accepted)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name, str(default))
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is invalid: expected an integer") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={number} is out of range: expected {low}..{high}")
        return number

    def seconds(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name, str(default))
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is invalid: expected a number of seconds") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={number} is out of range: expected {low}..{high} seconds")
        return number

    def url(self, name: str) -> str:
        value = self.raw(name).rstrip("/")
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{name}={_hide_password(value)!r} is invalid: expected http://host:port")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigError(f"{name}={_hide_password(value)!r} has an invalid port") from None
        return value

    def path(self, name: str, default: str) -> str:
        value = self.raw(name, default)
        if not value or "\x00" in value:
            raise ConfigError(f"{name} must be a non-empty filesystem path")
        return os.path.abspath(value)

    def globs(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if name not in self.env:
            return default
        return tuple(p.strip() for p in self.raw(name).split(",") if p.strip())

    def build(self) -> Config:
        role = self.choice("ROLE", "master", ("master", "slave"))
        storage_path = self.path("STORAGE_PATH", DEFAULT_STORAGE_PATH)
        default_state = os.path.join(os.path.dirname(storage_path), ".hotstandby")
        state_path = self.path("STATE_PATH", default_state)
        if _is_within(state_path, storage_path):
            raise ConfigError(
                f"STATE_PATH={state_path!r} is inside STORAGE_PATH: "
                "hotstandby's own files must live outside it"
            )
        config = Config(
            role=role,  # type: ignore[arg-type]
            storage_path=storage_path,
            state_path=state_path,
            server_host=self.raw("SERVER_HOST", "0.0.0.0") or "0.0.0.0",
            server_port=self.integer("SERVER_PORT", 5002, 0, 65535),
            sync_target=self.url("SYNC_TARGET"),
            sync_source=self.url("SYNC_SOURCE"),
            server_key=self.env.get("SERVER_KEY", ""),
            exclude=self.globs("EXCLUDE", ()),
            ready_markers=self.globs("READY_MARKERS", DEFAULT_READY_MARKERS),
            log_level=self.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            log_format=self.choice("LOG_FORMAT", "json", ("json", "console")),  # type: ignore[arg-type]
            heartbeat_interval=self.seconds("HEARTBEAT_INTERVAL", 1.0, 0.05, 60),
            shutdown_timeout=self.seconds("SHUTDOWN_TIMEOUT", 10.0, 0.1, 600),
            batch_max_ops=self.integer("BATCH_MAX_OPS", 1000, 1, 100_000),
            batch_max_bytes=self.integer("BATCH_MAX_BYTES", 16 * 1024 * 1024, 1024, 1 << 34),
            journal_max_entries=self.integer("JOURNAL_MAX_ENTRIES", 200_000, 100, 100_000_000),
        )
        if config.role == "master" and config.sync_source:
            raise ConfigError("SYNC_SOURCE is for ROLE=slave; a master replicates to SYNC_TARGET")
        if config.role == "slave" and config.sync_target:
            raise ConfigError("SYNC_TARGET is for ROLE=master; a slave names its master in SYNC_SOURCE")
        if "\n" in config.server_key or (config.server_key and len(config.server_key) < 8):
            raise ConfigError("SERVER_KEY must be at least 8 characters on one line")
        return config


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
