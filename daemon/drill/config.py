"""The drill's settings: one frozen DrillConfig built once (by cli.py or a caller of the Python API).

Every duration is in seconds. `__repr__` hides SERVER_KEY and passwords in URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from daemon.errors import UsageError
from daemon.redact import hide_password
from daemon.tls import TLSFiles

StopperKind = Literal["command", "docker", "kubectl", "ssh", "python"]
DEFAULT_MAX_SWITCHOVER = 120.0
"""The seeds' bound on a switchover; a drill slower than this fails."""
DEFAULT_TARGET_SWITCHOVER = 10.0
"""Our own target, printed beside the bound; missing it does not fail the drill."""
DEFAULT_PREFIX = ".hotstandby-drill"
"""Where the drill's writes land, relative to STORAGE_PATH: a dot folder at the top, which the plugin
daemon never reads (never inside plugin/ or plugin_packages/)."""
DEFAULT_HISTORY_FILE = os.path.join("~", ".hotstandby", "drills.jsonl")
MAX_REPEAT = 100


@dataclass(frozen=True)
class Target:
    """One node, as the stoppers see it."""

    url: str
    name: str
    """The container, pod or host name ({name} in commands); by default the URL's host."""
    ssh_host: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class SshSettings:
    port: int = 22
    user: str | None = None
    keys: tuple[str, ...] = ()
    """Private key files; none: asyncssh's defaults (~/.ssh/id_*) and the agent."""
    known_hosts: str | None = None
    """None: ~/.ssh/known_hosts."""
    check_host_key: bool = True


@dataclass(frozen=True)
class StopperSettings:
    kind: StopperKind
    stop_cmd: str = ""
    start_cmd: str = ""
    timeout: float = 60.0
    docker: str = "docker"
    docker_stop_timeout: int = 10
    kubectl: str = "kubectl"
    namespace: str | None = None
    context: str | None = None
    grace_period: int | None = None
    ssh: SshSettings = field(default_factory=SshSettings)


@dataclass(frozen=True)
class HAProxySettings:
    url: str
    """Where the clients go: HAProxy's frontend (or, on Kubernetes, the leader Service)."""
    socket: str | None = None
    stats_url: str | None = None
    servers: tuple[str, ...] | None = None
    """HAProxy server names of the nodes, in node order; None: matched by address."""

    def __repr__(self) -> str:
        stats = None if self.stats_url is None else hide_password(self.stats_url)
        return (
            f"HAProxySettings(url={hide_password(self.url)!r}, socket={self.socket!r}, stats_url={stats!r},"
            f" servers={self.servers!r})"
        )

    @property
    def source(self) -> str:
        if self.socket:
            return "stats socket"
        if self.stats_url:
            return "stats page"
        return "inferred from traffic"


@dataclass(frozen=True)
class LoadSettings:
    write_rate: float = 10.0
    read_rate: float = 10.0
    prefix: str = DEFAULT_PREFIX
    request_timeout: float = 15.0
    max_in_flight: int = 32


@dataclass(frozen=True)
class PluginCallSettings:
    url: str
    """Where Dify reaches the plugin daemon: HAProxy's plugin-daemon frontend."""
    plugin: str
    """X-Plugin-ID: the plugin (author/name) or its unique identifier."""
    key: str
    """The plugin daemon's SERVER_KEY (Dify's PLUGIN_DAEMON_KEY), sent as X-Api-Key."""
    tool: str = ""
    """provider/tool to invoke; empty: the plugin's name for both."""
    parameters: dict[str, Any] = field(default_factory=dict)
    tenant: str = "hotstandby-drill"
    timeout: float = 10.0

    def __repr__(self) -> str:
        return f"PluginCallSettings(url={self.url!r}, plugin={self.plugin!r}, tool={self.tool!r}, key='***')"

    def body(self) -> dict[str, Any]:
        name = self.plugin.split("/")[-1].split(":")[0]
        provider, _, tool = (self.tool or f"{name}/{name}").partition("/")
        return {
            "user_id": "hotstandby-drill",
            "data": {
                "provider": provider,
                "tool": tool or provider,
                "tool_parameters": self.parameters,
                "credentials": {},
            },
        }


@dataclass(frozen=True)
class Thresholds:
    max_switchover: float = DEFAULT_MAX_SWITCHOVER
    target_switchover: float = DEFAULT_TARGET_SWITCHOVER
    max_lag: float = 10.0
    rejoin_timeout: float = 120.0


@dataclass(frozen=True)
class DrillConfig:
    targets: tuple[Target, ...]
    """Every node (two or more), in --nodes order; the drill finds which one leads."""
    server_key: str
    haproxy: HAProxySettings
    stopper: StopperSettings
    load: LoadSettings = field(default_factory=LoadSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    warmup: float = 3.0
    settle: float = 5.0
    poll_interval: float = 0.1
    failback: bool = False
    repeat: int = 1
    """--repeat N: N failovers, each stopping whichever node leads then (so they alternate direction)."""
    out_dir: str = "."
    history_file: str | None = DEFAULT_HISTORY_FILE
    record_catalogue: bool = True
    tls: TLSFiles = field(default_factory=TLSFiles)
    """How https:// nodes and HAProxy are verified, and our client certificate (TLS_* variables)."""
    plugin_call: PluginCallSettings | None = None
    """--plugin-call: also time a real plugin call through HAProxy across the failover."""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def runs(self) -> int:
        """How many failovers the drill makes: --repeat, or two with --failback."""
        return max(self.repeat, 2 if self.failback else 1)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "server_key":
                value = "***" if value else ""
            shown.append(f"{f.name}={value!r}")
        return f"DrillConfig({', '.join(shown)})"


def validate(config: DrillConfig) -> None:
    """Cross-field rules; each failure names the flag."""
    urls = [t.url for t in config.targets]
    if len(urls) < 2 or len(set(urls)) != len(urls):
        raise UsageError(f"--nodes: the drill needs two or more different nodes, got {', '.join(urls)}")
    servers = config.haproxy.servers
    if servers is not None and len(servers) != len(urls):
        raise UsageError(f"--haproxy-servers names {len(servers)} servers for {len(urls)} nodes")
    positive = {
        "--max-switchover": config.thresholds.max_switchover,
        "--target-switchover": config.thresholds.target_switchover,
        "--max-lag": config.thresholds.max_lag,
        "--rejoin-timeout": config.thresholds.rejoin_timeout,
        "--poll-interval": config.poll_interval,
        "--request-timeout": config.load.request_timeout,
        "--command-timeout": config.stopper.timeout,
    }
    for flag, value in positive.items():
        if not value > 0:
            raise UsageError(f"{flag} must be a positive number of seconds")
    if not 1 <= config.repeat <= MAX_REPEAT:
        raise UsageError(f"--repeat must be a number of failovers from 1 to {MAX_REPEAT}")
    if config.failback and config.repeat not in (1, 2):
        raise UsageError("--failback is --repeat 2: give one or the other")
    for flag, value in {"--warmup": config.warmup, "--settle": config.settle}.items():
        if value < 0:
            raise UsageError(f"{flag} must not be negative")
    if config.load.write_rate <= 0:
        raise UsageError("--write-rate must be positive: the drill measures when writes resume")
    if config.load.read_rate < 0:
        raise UsageError("--read-rate must not be negative")
    prefix = config.load.prefix
    if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
        raise UsageError(f"--prefix {prefix!r} must be a relative folder inside STORAGE_PATH")
    _validate_stopper(config.stopper)


def _validate_stopper(stopper: StopperSettings) -> None:
    if stopper.kind == "command" and not (stopper.stop_cmd.strip() and stopper.start_cmd.strip()):
        raise UsageError("the command stopper needs both --stop-cmd and --start-cmd")
    if stopper.kind == "ssh" and not (stopper.stop_cmd.strip() and stopper.start_cmd.strip()):
        raise UsageError("the ssh stopper needs both --remote-stop-cmd and --remote-start-cmd")
    if stopper.kind == "ssh" and not stopper.ssh.check_host_key and stopper.ssh.known_hosts:
        raise UsageError("--known-hosts and --no-host-key-check contradict each other")
