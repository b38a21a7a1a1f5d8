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
from typing import Any, Literal, TypedDict, TypeVar, get_args
from urllib.parse import urlsplit

from daemon.errors import ConfigError as ConfigError  # its home is daemon/errors.py; imported from here too
from daemon.exposure import is_loopback
from daemon.redact import Redactor, hide_password
from daemon.tls import TLSError, TLSFiles
from replication.delta import DELTA_MIN_SIZE
from replication.ssh_target import SshTarget, is_ssh_url

Role = Literal["master", "slave"]
Election = Literal["static", "redis", "postgres"]
LogFormat = Literal["json", "console"]
Failover = Literal["manual", "auto"]
SyncMode = Literal["async", "sync"]
SyncFallback = Literal["none", "async"]
_Choice = TypeVar("_Choice", bound=str)


class _SecurityFields(TypedDict):
    """Config's TLS, key-rule and request-timeout fields, as EnvReader._security reads them."""

    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str
    require_auth: bool
    allow_unauthenticated: bool
    request_header_timeout: float
    request_body_timeout: float


class _ElectionFields(TypedDict):
    """Config's election fields: the backend, its servers, and the lease timings LEASE_TTL scales."""

    election: Election
    redis_url: str
    redis_password: str
    database_url: str
    cluster_name: str
    lease_ttl: float
    lease_renew_interval: float
    lease_safety_margin: float
    election_timeout: float


class _StoreFolders(TypedDict):
    plugin_storage_root: str
    package_dir: str
    plugin_dir: str
    working_path: str
    quarantine_dir: str


class _RetentionFields(TypedDict):
    events_keep: int
    events_max_age: float
    conflicts_keep: int
    conflicts_max_age: float


class _StoreFields(_StoreFolders, _RetentionFields):
    """Config's plugin-store fields: its folders, downloads, periodic jobs and retention."""

    marketplace_url: str
    download_connect_timeout: float
    download_read_timeout: float
    download_retries: int
    download_backoff: float
    max_plugin_package_size: int
    verify_interval: float
    workdir_scan_interval: float


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_STORAGE_PATH = "/app/storage/cwd"
DEFAULT_READY_MARKERS = ("**/.venv/dify/plugin.json",)
DEFAULT_MARKETPLACE_URL = "https://marketplace.dify.ai"
DEFAULT_MAX_PLUGIN_PACKAGE_SIZE = 52_428_800
DEFAULT_RETENTION_AGE = 90 * 86400.0
"""Events and preserved conflicts older than this (90 days) are deleted (0: no age limit)."""
_TEN_YEARS = 10 * 365 * 86400.0
_BOOLEANS = ("true", "false", "1", "0", "yes", "no")
REPLICA_MAX_LAG_RANGE = (0.1, 86400.0)
"""Seconds: the bounds of REPLICA_MAX_LAG, for the daemon and the operator commands alike."""


@dataclass(frozen=True)
class Config:
    role: Role = "master"
    storage_path: str = DEFAULT_STORAGE_PATH
    state_path: str = ""
    server_host: str = "0.0.0.0"
    server_port: int = 5002
    sync_target: str = ""
    sync_source: str = ""
    ssh_key_file: str = ""
    ssh_known_hosts: str = ""
    server_key: str = field(default="", repr=False)
    status_key: str = field(default="", repr=False)
    """Read-only: the status page (/ui) and nothing else; SERVER_KEY is still needed to act."""
    exclude: tuple[str, ...] = ()
    ready_markers: tuple[str, ...] = DEFAULT_READY_MARKERS
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    heartbeat_interval: float = 1.0
    shutdown_timeout: float = 10.0
    batch_max_ops: int = 2000
    batch_max_bytes: int = 32 * 1024 * 1024
    journal_max_entries: int = 200_000
    election: Election = "static"
    redis_url: str = field(default="", repr=False)
    redis_password: str = field(default="", repr=False)
    """For REDIS_URL when the URL carries none (e.g. from a Docker secret: REDIS_PASSWORD_FILE)."""
    database_url: str = field(default="", repr=False)
    cluster_name: str = "hotstandby"
    lease_ttl: float = 4.0  # README "Failover": a dead leader is replaced within about this long
    lease_renew_interval: float = 4.0 / 3
    lease_safety_margin: float = 4.0 / 6
    election_timeout: float = 4.0 / 6
    failover: Failover = "manual"
    failover_timeout: float = 6.0
    replica_max_lag: float = 10.0
    plugin_daemon_url: str = ""
    plugin_daemon_gate: bool = False
    dify_redis_url: str = field(default="", repr=False)
    dify_redis_password: str = field(default="", repr=False)
    sync_mode: SyncMode = "async"
    sync_mode_fallback: SyncFallback = "none"
    sync_write_timeout: float = 10.0
    control_interval: float = 0.25
    anti_entropy_interval: float = 300.0
    delta_min_size: int = DELTA_MIN_SIZE
    liveness_bound: float = 5.0
    plugin_storage_root: str = "/app/storage"
    package_dir: str = "/app/storage/plugin_packages"
    plugin_dir: str = "/app/storage/plugin"
    working_path: str = "/app/storage/cwd"
    quarantine_dir: str = "/app/storage/plugin_quarantine"
    marketplace_url: str = DEFAULT_MARKETPLACE_URL
    download_connect_timeout: float = 10.0
    download_read_timeout: float = 60.0
    download_retries: int = 3
    download_backoff: float = 1.0
    max_plugin_package_size: int = DEFAULT_MAX_PLUGIN_PACKAGE_SIZE
    verify_interval: float = 3600.0
    workdir_scan_interval: float = 30.0
    events_keep: int = 10_000
    events_max_age: float = DEFAULT_RETENTION_AGE
    conflicts_keep: int = 50
    conflicts_max_age: float = DEFAULT_RETENTION_AGE
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    require_auth: bool = False
    allow_unauthenticated: bool = False
    request_header_timeout: float = 30.0
    request_body_timeout: float = 60.0

    @property
    def tls(self) -> TLSFiles:
        return TLSFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    @property
    def peer_urls(self) -> tuple[str, ...]:
        """The other nodes: where a leader sends (to every one), and whom a replica watches.

        SYNC_TARGET (or SYNC_SOURCE) may list several, comma-separated: a
        leader fans out to all of them, and a replica promoted later does the same.
        """
        listed = self.sync_target or self.sync_source
        return tuple(url for url in listed.split(",") if url)

    @property
    def peer_url(self) -> str:
        """The first of `peer_urls` (the only one in a pair)."""
        return self.peer_urls[0] if self.peer_urls else ""

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL this node was given: each may carry a credential (daemon/redact.py)."""
        listed = (
            *self.peer_urls,
            self.redis_url,
            self.database_url,
            self.marketplace_url,
            self.plugin_daemon_url,
            self.dify_redis_url,
        )
        return tuple(url for url in listed if url)

    def redactor(self, env: Mapping[str, str] | None = None) -> Redactor:
        """What logs and answers must never show: SERVER_KEY, PGPASSWORD, the URLs' and proxies' secrets."""
        keys = [self.server_key, self.redis_password, self.dify_redis_password]
        return Redactor.from_settings(keys, self.urls, os.environ if env is None else env)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("server_key", "status_key"):
                value = "***" if value else ""
            elif f.name in (
                "sync_target",
                "sync_source",
                "redis_url",
                "database_url",
                "plugin_daemon_url",
                "marketplace_url",
                "dify_redis_url",
            ):
                value = ",".join(hide_password(url) for url in value.split(","))  # SYNC_* are lists
            elif f.name in ("dify_redis_password", "redis_password"):
                value = "***" if value else ""
            shown.append(f"{f.name}={value!r}")
        return f"Config({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build and validate the configuration from `env` (default: os.environ)."""
        return EnvReader(os.environ if env is None else env).build()


def _shown(value: str) -> str:
    """`value` quoted for an error message; a URL's password masked, whichever variable it was put in
    (a DATABASE_URL pasted into the wrong variable is still a secret; found by test_input_fuzz)."""
    return repr(_masked(value))


def _masked(value: str) -> str:
    """`value` with a URL's password masked, unquoted."""
    return hide_password(value) if "://" in value and "@" in value else value


class EnvReader:
    """Reads one variable at a time so every error names its variable; the operator commands read their
    own settings with it too (daemon/client.py), so a variable has one parser and one message."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str, default: str = "") -> str:
        return self.env.get(name, default).strip()

    def choice(self, name: str, default: str, accepted: tuple[str, ...], *, upper: bool = False) -> str:
        value = self.raw(name, default)
        value = value.upper() if upper else value.lower()
        if value not in accepted:
            raise ConfigError(f"{name}={_shown(value)} is invalid: accepted values are {', '.join(accepted)}")
        return value

    def literal(self, name: str, default: _Choice, kind: Any) -> _Choice:
        """One of the values of the Literal type `kind`, typed as it (`choice` with its message)."""
        accepted: tuple[_Choice, ...] = get_args(kind)
        value = self.choice(name, default, accepted)
        return next(option for option in accepted if option == value)

    def boolean(self, name: str, default: str = "false") -> bool:
        return self.choice(name, default, _BOOLEANS) in ("true", "1", "yes")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.raw(name, str(default))
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={_shown(value)} is invalid: expected an integer") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={number} is out of range: expected {low}..{high}")
        return number

    def seconds(self, name: str, default: float, low: float, high: float) -> float:
        value = self.raw(name, str(default))
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}={_shown(value)} is invalid: expected a number of seconds") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}={number} is out of range: expected {low}..{high} seconds")
        return number

    def url(self, name: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
        return self.url_value(name, self.raw(name), schemes)

    def url_value(self, name: str, value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
        value = value.rstrip("/")
        if not value:
            return ""
        try:
            parts = urlsplit(value)
        except ValueError as exc:
            raise ConfigError(f"{name} is not a URL ({exc}): expected {schemes[0]}://host:port") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(
                f"{name}={hide_password(value)!r} is invalid: expected {schemes[0]}://host:port"
            )
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigError(f"{name}={hide_password(value)!r} has an invalid port") from None
        return value

    def urls(self, name: str) -> str:
        """A comma-separated list of distinct node URLs, kept as one normalised string.

        SYNC_TARGET may also list ssh://user@host[:port]/absolute/path: a plain SSH host.
        """
        listed = [self.node_url(name, item.strip()) for item in self.raw(name).split(",") if item.strip()]
        if len(set(listed)) != len(listed):
            raise ConfigError(f"{name} lists the same node twice")
        return ",".join(listed)

    def node_url(self, name: str, value: str) -> str:
        if name != "SYNC_TARGET" or not is_ssh_url(value):
            return self.plain_node_url(name, self.url_value(name, value))
        try:
            return str(SshTarget.parse(value))
        except ValueError as exc:
            raise ConfigError(f"{name}={hide_password(value)!r} is invalid: {exc}") from None

    @staticmethod
    def plain_node_url(name: str, value: str) -> str:
        """A peer's base URL: scheme, host, port and at most a path prefix.

        Credentials in it would never work (the link sends SERVER_KEY as its Authorization
        header, and aiohttp refuses both at once) and would only end up shown somewhere; a
        query or fragment would be glued in front of every path of the link.
        """
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"{name}={hide_password(value)!r} carries credentials: remove them "
                "(the link authenticates with SERVER_KEY, and TLS_* for certificates)"
            )
        if parts.query or parts.fragment:
            base = parts._replace(query="", fragment="").geturl()
            raise ConfigError(
                f"{name}: {base!r} has a query or fragment (not shown): give http(s)://host:port"
            )
        return value

    def ssh_file(self, name: str) -> str:
        """A key or known_hosts file for ssh:// targets: required then, and it must be readable."""
        targets = self.raw("SYNC_TARGET").split(",")
        if self.raw("ROLE", "master").lower() != "master" or not any(is_ssh_url(t.strip()) for t in targets):
            return self.raw(name)  # a slave with a SYNC_TARGET is refused below, naming SYNC_TARGET
        value = self.raw(name)
        why = "the private key to log in with" if name == "SSH_KEY_FILE" else "the host keys to check against"
        if not value:
            raise ConfigError(f"{name} is required with an ssh:// SYNC_TARGET: {why}")
        path = os.path.abspath(os.path.expanduser(value))
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"{name}={_shown(value)} is not a readable file ({why})")
        return path

    def tls_files(self) -> TLSFiles:
        """TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE, checked: cert and key together, readable, loadable."""
        files = TLSFiles(self.raw("TLS_CERT_FILE"), self.raw("TLS_KEY_FILE"), self.raw("TLS_CA_FILE"))
        try:
            files.check()
        except TLSError as exc:
            raise ConfigError(str(exc)) from None
        return files

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
        role: Role = self.literal("ROLE", "master", Role)
        storage_path, state_path = self._paths()
        config = Config(
            role=role,
            storage_path=storage_path,
            state_path=state_path,
            server_host=self.raw("SERVER_HOST", "0.0.0.0") or "0.0.0.0",
            server_port=self.integer("SERVER_PORT", 5002, 0, 65535),
            sync_target=self.urls("SYNC_TARGET"),
            sync_source=self.urls("SYNC_SOURCE"),
            ssh_key_file=self.ssh_file("SSH_KEY_FILE"),
            ssh_known_hosts=self.ssh_file("SSH_KNOWN_HOSTS"),
            server_key=self.env.get("SERVER_KEY", ""),
            status_key=self.env.get("STATUS_KEY", ""),
            exclude=self.globs("EXCLUDE", ()),
            ready_markers=self.globs("READY_MARKERS", DEFAULT_READY_MARKERS),
            log_level=self.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            log_format=self.literal("LOG_FORMAT", "json", LogFormat),
            heartbeat_interval=self.seconds("HEARTBEAT_INTERVAL", 1.0, 0.05, 60),
            shutdown_timeout=self.seconds("SHUTDOWN_TIMEOUT", 10.0, 0.1, 600),
            batch_max_ops=self.integer("BATCH_MAX_OPS", 2000, 1, 100_000),
            batch_max_bytes=self.integer("BATCH_MAX_BYTES", 32 * 1024 * 1024, 1024, 1 << 34),
            journal_max_entries=self.integer("JOURNAL_MAX_ENTRIES", 200_000, 100, 100_000_000),
            failover=self.literal("FAILOVER", "manual", Failover),
            failover_timeout=self.seconds("FAILOVER_TIMEOUT", 6.0, 0.5, 3600),
            replica_max_lag=self.seconds("REPLICA_MAX_LAG", 10.0, *REPLICA_MAX_LAG_RANGE),
            plugin_daemon_url=self.url("PLUGIN_DAEMON_URL"),
            plugin_daemon_gate=self.boolean("PLUGIN_DAEMON_GATE"),
            dify_redis_url=self.url("DIFY_REDIS_URL", ("redis", "rediss", "unix")),
            dify_redis_password=self.env.get("DIFY_REDIS_PASSWORD", ""),
            sync_mode=self.literal("SYNC_MODE", "async", SyncMode),
            sync_mode_fallback=self.literal("SYNC_MODE_FALLBACK", "none", SyncFallback),
            sync_write_timeout=self.seconds("SYNC_WRITE_TIMEOUT", 10.0, 0.1, 3600),
            control_interval=self.seconds("CONTROL_INTERVAL", 0.25, 0.01, 10),
            delta_min_size=self.integer("DELTA_MIN_SIZE", DELTA_MIN_SIZE, 0, 1 << 40),
            anti_entropy_interval=self.seconds("ANTI_ENTROPY_INTERVAL", 300.0, 1.0, 7 * 86400),
            liveness_bound=self.seconds("LIVENESS_BOUND", 5.0, 0.5, 600),
            **self._election(),
            **self._store(storage_path, state_path),
            **self._security(),
        )
        self._check_election(config)
        _check_topology(config)
        _check_exposure(config)
        _check_status_key(config)
        return config

    def _paths(self) -> tuple[str, str]:
        """STORAGE_PATH, and STATE_PATH (beside it by default), which must not be inside it."""
        storage_path = self.path("STORAGE_PATH", DEFAULT_STORAGE_PATH)
        default_state = os.path.join(os.path.dirname(storage_path), ".hotstandby")
        state_path = self.path("STATE_PATH", default_state)
        if _is_within(state_path, storage_path):
            raise ConfigError(
                f"STATE_PATH={state_path!r} is inside STORAGE_PATH: "
                "hotstandby's own files must live outside it"
            )
        return storage_path, state_path

    def _election(self) -> _ElectionFields:
        """The backend and its servers; the lease's timings default to fractions of LEASE_TTL."""
        lease_ttl = self.seconds("LEASE_TTL", 4.0, 0.5, 3600)
        return {
            "election": self.literal("ELECTION", "static", Election),
            "redis_url": self.url("REDIS_URL", ("redis", "rediss", "unix")),
            "redis_password": self.env.get("REDIS_PASSWORD", ""),
            "database_url": self.url("DATABASE_URL", ("postgresql", "postgres")),
            "cluster_name": self.raw("CLUSTER_NAME", "hotstandby") or "hotstandby",
            "lease_ttl": lease_ttl,
            "lease_renew_interval": self.seconds("LEASE_RENEW_INTERVAL", lease_ttl / 3, 0.05, 3600),
            "lease_safety_margin": self.seconds("LEASE_SAFETY_MARGIN", min(1.0, lease_ttl / 6), 0.0, 3600),
            "election_timeout": self.seconds("ELECTION_TIMEOUT", min(1.0, lease_ttl / 6), 0.05, 60),
        }

    def _security(self) -> _SecurityFields:
        """TLS files (checked: cert and key together, readable, loadable), the key rule, request timeouts."""
        files = self.tls_files()
        return {
            "tls_cert_file": files.cert and os.path.abspath(files.cert),
            "tls_key_file": files.key and os.path.abspath(files.key),
            "tls_ca_file": files.ca and os.path.abspath(files.ca),
            "require_auth": self.boolean("REQUIRE_AUTH"),
            "allow_unauthenticated": self.boolean("ALLOW_UNAUTHENTICATED"),
            "request_header_timeout": self.seconds("REQUEST_HEADER_TIMEOUT", 30.0, 0.5, 3600),
            "request_body_timeout": self.seconds("REQUEST_BODY_TIMEOUT", 60.0, 0.5, 3600),
        }

    def _store(self, storage_path: str, state_path: str) -> _StoreFields:
        """The plugin store's settings: its folders under the plugin daemon's root, and downloads."""
        return {
            **self._store_folders(storage_path, state_path),
            "marketplace_url": self.url("MARKETPLACE_URL")
            if "MARKETPLACE_URL" in self.env
            else DEFAULT_MARKETPLACE_URL,
            "download_connect_timeout": self.seconds("DOWNLOAD_CONNECT_TIMEOUT", 10.0, 0.1, 600),
            "download_read_timeout": self.seconds("DOWNLOAD_READ_TIMEOUT", 60.0, 0.1, 3600),
            "download_retries": self.integer("DOWNLOAD_RETRIES", 3, 0, 20),
            "download_backoff": self.seconds("DOWNLOAD_BACKOFF", 1.0, 0.0, 60),
            "max_plugin_package_size": self.integer(
                "MAX_PLUGIN_PACKAGE_SIZE", DEFAULT_MAX_PLUGIN_PACKAGE_SIZE, 1024, 1 << 34
            ),
            "verify_interval": self._interval("VERIFY_INTERVAL", 3600.0),
            "workdir_scan_interval": self._interval("WORKDIR_SCAN_INTERVAL", 30.0),
            **self._retention(),
        }

    def _retention(self) -> _RetentionFields:
        """How much history is kept: the catalogue's events, and divergent writes in STATE_PATH/conflicts."""
        return {
            "events_keep": self.integer("EVENTS_KEEP", 10_000, 100, 100_000_000),
            "events_max_age": self.seconds("EVENTS_MAX_AGE", DEFAULT_RETENTION_AGE, 0.0, _TEN_YEARS),
            "conflicts_keep": self.integer("CONFLICTS_KEEP", 50, 1, 1_000_000),
            "conflicts_max_age": self.seconds("CONFLICTS_MAX_AGE", DEFAULT_RETENTION_AGE, 0.0, _TEN_YEARS),
        }

    def _store_folders(self, storage_path: str, state_path: str) -> _StoreFolders:
        """PLUGIN_STORAGE_ROOT (default: the parent of a STORAGE_PATH named cwd) and four folders in it."""
        default_root = (
            os.path.dirname(storage_path) if os.path.basename(storage_path) == "cwd" else storage_path
        )
        root = self.path("PLUGIN_STORAGE_ROOT", default_root)
        folders = {
            "PACKAGE_DIR": self.path("PACKAGE_DIR", os.path.join(root, "plugin_packages")),
            "PLUGIN_DIR": self.path("PLUGIN_DIR", os.path.join(root, "plugin")),
            "WORKING_PATH": self.path("WORKING_PATH", os.path.join(root, "cwd")),
            "QUARANTINE_DIR": self.path("QUARANTINE_DIR", os.path.join(root, "plugin_quarantine")),
        }
        for name, path in folders.items():
            if path == root or not _is_within(path, root):
                raise ConfigError(f"{name}={path!r} must be a folder inside PLUGIN_STORAGE_ROOT={root!r}")
            if _is_within(state_path, path):
                raise ConfigError(
                    f"STATE_PATH={state_path!r} is inside {name}={path!r}: keep hotstandby's files out"
                )
        names = list(folders)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                a, b = folders[first], folders[second]
                if _is_within(a, b) or _is_within(b, a):
                    raise ConfigError(
                        f"{second}={b!r} overlaps {first}={a!r}: the store's folders must be distinct "
                        "(the quarantine must lie outside every folder the plugin daemon scans)"
                    )
        return {
            "plugin_storage_root": root,
            "package_dir": folders["PACKAGE_DIR"],
            "plugin_dir": folders["PLUGIN_DIR"],
            "working_path": folders["WORKING_PATH"],
            "quarantine_dir": folders["QUARANTINE_DIR"],
        }

    def _interval(self, name: str, default: float) -> float:
        """A period in seconds, or 0 to turn the periodic job off."""
        value = self.seconds(name, default, 0.0, 7 * 86400)
        if 0 < value < 1:
            raise ConfigError(f"{name}={value} is out of range: expected 0 (off) or 1..604800 seconds")
        return value

    @staticmethod
    def _check_election(config: Config) -> None:
        if config.election == "redis" and not config.redis_url:
            raise ConfigError("ELECTION=redis needs REDIS_URL (e.g. redis://redis:6379/0)")
        if config.election == "postgres" and not config.database_url:
            raise ConfigError("ELECTION=postgres needs DATABASE_URL (e.g. postgresql://user@db/hotstandby)")
        if config.election != "static":
            budget = config.lease_renew_interval + config.election_timeout + config.lease_safety_margin
            if budget >= config.lease_ttl:
                raise ConfigError(
                    f"LEASE_RENEW_INTERVAL ({config.lease_renew_interval:g}s) + ELECTION_TIMEOUT "
                    f"({config.election_timeout:g}s) + LEASE_SAFETY_MARGIN ({config.lease_safety_margin:g}s) "
                    f"must be shorter than LEASE_TTL ({config.lease_ttl:g}s), "
                    "or a healthy leader could lose its lease"
                )
        if config.failover == "auto" and config.election != "static":
            raise ConfigError(
                "FAILOVER=auto applies to ELECTION=static; with a lease backend failover is automatic"
            )


def _check_topology(config: Config) -> None:
    """Rules across variables: which role names which peers, automatic failover only for a pair, the key."""
    if config.role == "master" and config.sync_source:
        raise ConfigError("SYNC_SOURCE is for ROLE=slave; a master replicates to SYNC_TARGET")
    if config.role == "slave" and config.sync_target:
        raise ConfigError("SYNC_TARGET is for ROLE=master; a slave names its master in SYNC_SOURCE")
    if config.failover == "auto" and len(config.peer_urls) > 1:
        raise ConfigError(
            "FAILOVER=auto with several nodes could promote two of them at once: "
            "use ELECTION=redis or ELECTION=postgres beyond a pair"
        )
    if "\n" in config.server_key or (config.server_key and len(config.server_key) < 8):
        raise ConfigError("SERVER_KEY must be at least 8 characters on one line")


def _check_exposure(config: Config) -> None:
    """Closed by default: without SERVER_KEY a node listens on loopback only, unless told otherwise.

    Anyone who reaches /internal or the replication link of a node without a key can write
    plugin code into its storage or force a promotion, so beyond loopback a missing key is a
    configuration error; ALLOW_UNAUTHENTICATED=true is the one explicit way around it (logged
    loudly, daemon/exposure.py). REQUIRE_AUTH=true (older) also refuses a missing key on loopback.
    """
    if config.server_key:
        return
    if config.require_auth and config.allow_unauthenticated:
        raise ConfigError(
            "REQUIRE_AUTH=true and ALLOW_UNAUTHENTICATED=true contradict each other: set SERVER_KEY"
        )
    if config.require_auth:
        raise ConfigError("REQUIRE_AUTH=true but SERVER_KEY is not set: /internal and the link need one")
    if config.allow_unauthenticated or is_loopback(config.server_host):
        return
    raise ConfigError(
        f"SERVER_KEY is not set and SERVER_HOST={_masked(config.server_host)} is not a loopback address: "
        "set SERVER_KEY (8+ characters; in a container, SERVER_KEY_FILE names a file the entrypoint reads), "
        "or ALLOW_UNAUTHENTICATED=true to let anyone who reaches the port write into STORAGE_PATH"
    )


def _check_status_key(config: Config) -> None:
    """STATUS_KEY opens the status page read-only; it only means something beside a SERVER_KEY."""
    key = config.status_key
    if not key:
        return
    if "\n" in key or len(key) < 8:
        raise ConfigError("STATUS_KEY must be at least 8 characters on one line")
    if not config.server_key:
        raise ConfigError("STATUS_KEY is set but SERVER_KEY is not: without it /internal is open to anyone")
    if key == config.server_key:
        raise ConfigError("STATUS_KEY must differ from SERVER_KEY: it is the key that may look but not act")


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
