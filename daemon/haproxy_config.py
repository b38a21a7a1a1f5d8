"""HAProxy configuration for a hotstandby pair, rendered from daemon/haproxy.cfg.template
(package data, read with importlib.resources so an installed wheel or an image has it too).

Two modes. "api": HAProxy fronts hotstandby's own API on both nodes. "plugin-daemon": HAProxy
fronts the real Dify plugin daemon on both nodes and asks hotstandby beside it (`check port`)
who leads. Either way both servers are checked with HEAD /primary and the standby is `backup`.

`hotstandby haproxy-config` (wired with `add_arguments` and `run`) takes every option from the
command line or else from the environment; bad values print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import os
import re
import shlex
import string
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from daemon.config import ConfigError

Mode = Literal["api", "plugin-daemon"]
MODES: tuple[Mode, ...] = ("api", "plugin-daemon")
INIT_STATE_CHOICES = ("auto", "on", "off")
TEMPLATE = "haproxy.cfg.template"  # package data of `daemon` (haproxy/haproxy.cfg.template links to it)
DESCRIPTION = "Render the HAProxy configuration for a hotstandby pair."
STREAMING_MS = 600_000  # streaming plugin calls can run this long
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]-]+$")
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
_SUN_PATH_MAX = 107  # bytes in a unix socket path, without the trailing NUL


class SettingsError(ConfigError):
    """A setting is invalid; `field` names it so the CLI can name the option and variable."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class HAProxySettings:
    mode: Mode = "api"
    master_addr: str = "hotstandby-master"
    standby_addr: str = "hotstandby-slave"
    traffic_port: int = 5002
    check_port: int | None = None  # hotstandby's port; None: the traffic port (api mode)
    bind_addr: str = "0.0.0.0"
    bind_port: int = 5002
    stats_socket: str = "/run/haproxy/admin.sock"
    stats_port: int | None = None  # None: no stats page
    timeout_connect_ms: int = 3_000
    timeout_client_ms: int = STREAMING_MS
    timeout_server_ms: int = STREAMING_MS
    timeout_tunnel_ms: int = 3_600_000
    timeout_check_ms: int = 1_000
    check_inter_ms: int = 1_000
    check_fastinter_ms: int = 250
    # Failover time (bench/results, README "Failover"): a new leader is noticed within downinter,
    # and one 200 on /primary is proof enough (only the writable leader answers it), so rise 1.
    check_downinter_ms: int = 500
    check_fall: int = 2
    check_rise: int = 1
    init_state: bool = False  # `init-state down`: HAProxy >= 3.1 only, see supports_init_state()
    tls_ca_file: str = ""  # nodes serve TLS (TLS_CERT_FILE): check them over TLS, verified against this CA
    tls_crt: str = ""  # mutual TLS (the nodes have TLS_CA_FILE): HAProxy's certificate and key, one PEM

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError("mode", f"must be one of {', '.join(MODES)}, not {self.mode!r}")
        for name in ("master_addr", "standby_addr", "bind_addr"):
            _check_address(name, getattr(self, name))
        for name in ("traffic_port", "check_port", "bind_port", "stats_port"):
            _check_port(name, getattr(self, name))
        _check_socket_path(self.stats_socket)
        for name in ("tls_ca_file", "tls_crt"):
            if any(c.isspace() for c in getattr(self, name)):
                raise SettingsError(name, "must be a path without spaces")
        if self.tls_crt and not self.tls_ca_file:
            raise SettingsError("tls_crt", "needs tls_ca_file: the nodes' certificates are verified too")
        for f in fields(self):
            if f.name.endswith("_ms") and getattr(self, f.name) <= 0:
                raise SettingsError(f.name, "must be a positive duration")
        for name in ("check_fall", "check_rise"):
            if not 1 <= getattr(self, name) <= 100:
                raise SettingsError(name, "must be a count of checks from 1 to 100")
        if self.mode == "plugin-daemon":
            self._check_plugin_daemon_rules()

    def _check_plugin_daemon_rules(self) -> None:
        if self.check_port is None or self.check_port == self.traffic_port:
            raise SettingsError(
                "check_port", "must be hotstandby's port in plugin-daemon mode, not the plugin daemon's"
            )
        for name in ("timeout_client_ms", "timeout_server_ms", "timeout_tunnel_ms"):
            if getattr(self, name) < STREAMING_MS:
                raise SettingsError(name, "must be at least 600s in plugin-daemon mode (streaming calls)")

    @property
    def health_port(self) -> int:
        return self.traffic_port if self.check_port is None else self.check_port


def _check_address(name: str, value: str) -> None:
    if not value:
        raise SettingsError(name, "must not be empty")
    if not _ADDRESS.match(value):
        raise SettingsError(name, f"is not a host name or IP address: {value!r}")


def _check_port(name: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise SettingsError(name, f"must be a port from 1 to 65535, not {value}")


def _check_socket_path(value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise SettingsError("stats_socket", "must be a path without spaces")
    if len(os.fsencode(value)) > _SUN_PATH_MAX:
        raise SettingsError("stats_socket", f"is longer than a unix socket path may be ({_SUN_PATH_MAX})")


def format_duration(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def parse_duration(text: str) -> int:
    """'250ms', '2s', '10m', '1h' -> milliseconds; raises ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(text)
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


# --- rendering ---------------------------------------------------------------------------------

_TITLES: dict[Mode, tuple[str, str]] = {
    "api": ("HAProxy in front of hotstandby's own API on a master/standby pair.", "hotstandby's API"),
    "plugin-daemon": (
        "HAProxy in front of the Dify plugin daemon on a hotstandby master/standby pair.",
        "the Dify plugin daemon",
    ),
}
_INIT_STATE_ON = "init-state down: after a (re)start no traffic reaches a node before it passed a check."
_INIT_STATE_OFF = (
    "No `init-state down`: it needs HAProxy >= 3.1 (render with --init-state auto or on there).\n"
    "Without it servers start up, and for up to one check period after HAProxy starts traffic may\n"
    "reach a node that is not the leader; the first failed check marks it down."
)


def render(settings: HAProxySettings) -> str:
    title, traffic = _TITLES[settings.mode]
    values = {
        "TITLE": title,
        "COMMAND": command_line(settings),
        "TRAFFIC_DESCRIPTION": traffic,
        "MASTER_ADDR": settings.master_addr,
        "STANDBY_ADDR": settings.standby_addr,
        "TRAFFIC_PORT": str(settings.traffic_port),
        "CHECK_PORT": str(settings.health_port),
        "BIND_ADDR": settings.bind_addr,
        "BIND_PORT": str(settings.bind_port),
        "STATS_SOCKET": settings.stats_socket,
        "STATS": "" if settings.stats_port else "#",
        "STATS_PORT": str(settings.stats_port or 8404),
        "STATS_NOTE": "Enabled by --stats-port." if settings.stats_port else "Enable with --stats-port PORT.",
        "TIMEOUT_CONNECT": format_duration(settings.timeout_connect_ms),
        "TIMEOUT_CLIENT": format_duration(settings.timeout_client_ms),
        "TIMEOUT_SERVER": format_duration(settings.timeout_server_ms),
        "TIMEOUT_TUNNEL": format_duration(settings.timeout_tunnel_ms),
        "TIMEOUT_CHECK": format_duration(settings.timeout_check_ms),
        "CHECK_INTER": format_duration(settings.check_inter_ms),
        "CHECK_FASTINTER": format_duration(settings.check_fastinter_ms),
        "CHECK_DOWNINTER": format_duration(settings.check_downinter_ms),
        "CHECK_FALL": str(settings.check_fall),
        "CHECK_RISE": str(settings.check_rise),
        "INIT_STATE": " init-state down" if settings.init_state else "",
        "CHECK_TLS": _check_tls(settings),
        "TRAFFIC_TLS": " ssl" if settings.tls_ca_file and settings.mode == "api" else "",
        "INIT_STATE_NOTE": (_INIT_STATE_ON if settings.init_state else _INIT_STATE_OFF).replace(
            "\n", "\n    # "
        ),
    }
    return string.Template(template_text()).substitute(values)


def template_text() -> str:
    return importlib.resources.files("daemon").joinpath(TEMPLATE).read_text(encoding="utf-8")


def _check_tls(settings: HAProxySettings) -> str:
    """Checks (and, in api mode, traffic) to nodes that serve TLS: verified against the CA; with a
    certificate for mutual TLS. `check-ssl` is needed because the checks name their port."""
    if not settings.tls_ca_file:
        return ""
    words = f" check-ssl verify required ca-file {settings.tls_ca_file}"
    return words + (f" crt {settings.tls_crt}" if settings.tls_crt else "")


@functools.cache
def supports_init_state(haproxy_binary: str = "haproxy") -> bool:
    """Whether this HAProxy accepts `init-state` (3.1 and later; Debian's 2.6 does not): `haproxy -c`
    on a tiny config that uses it."""
    probe = (
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n"
        "listen probe\n    bind 127.0.0.1:9\n    server probe 127.0.0.1:9 check init-state down\n"
    )
    with tempfile.TemporaryDirectory(prefix="hotstandby-haproxy-") as tmp:
        path = Path(tmp) / "probe.cfg"
        path.write_text(probe, encoding="utf-8")
        try:
            done = subprocess.run(
                [haproxy_binary, "-c", "-q", "-f", str(path)], capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def check_config(path: str | Path, haproxy_binary: str = "haproxy") -> subprocess.CompletedProcess[str]:
    """`haproxy -c -f path`: exit status 0 when HAProxy accepts the configuration."""
    return subprocess.run(
        [haproxy_binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


# --- command line ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    kind: Literal["text", "mode", "port", "optional-port", "duration", "count", "bind"]
    field: str  # for "bind": bind_addr and bind_port
    help: str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


_OPTIONS = (
    _Option("--mode", "HAPROXY_MODE", "mode", "mode", "api (hotstandby's API) or plugin-daemon"),
    _Option("--master-addr", "MASTER_ADDR", "text", "master_addr", "master node's host name or IP"),
    _Option("--standby-addr", "STANDBY_ADDR", "text", "standby_addr", "standby node's host name or IP"),
    _Option("--traffic-port", "HAPROXY_TRAFFIC_PORT", "port", "traffic_port", "port traffic goes to"),
    _Option(
        "--check-port",
        "HAPROXY_CHECK_PORT",
        "optional-port",
        "check_port",
        "hotstandby's port for /primary checks (default: the traffic port; required in plugin-daemon mode)",
    ),
    _Option("--bind", "HAPROXY_BIND", "bind", "bind_addr", "ADDRESS:PORT HAProxy listens on"),
    _Option("--stats-socket", "HAPROXY_STATS_SOCKET", "text", "stats_socket", "runtime API socket path"),
    _Option("--stats-port", "HAPROXY_STATS_PORT", "optional-port", "stats_port", "stats page port (none)"),
    _Option("--timeout-connect", "HAPROXY_TIMEOUT_CONNECT", "duration", "timeout_connect_ms", "connect"),
    _Option("--timeout-client", "HAPROXY_TIMEOUT_CLIENT", "duration", "timeout_client_ms", "client idle"),
    _Option("--timeout-server", "HAPROXY_TIMEOUT_SERVER", "duration", "timeout_server_ms", "server idle"),
    _Option("--timeout-tunnel", "HAPROXY_TIMEOUT_TUNNEL", "duration", "timeout_tunnel_ms", "tunnel idle"),
    _Option("--timeout-check", "HAPROXY_TIMEOUT_CHECK", "duration", "timeout_check_ms", "check answer"),
    _Option("--check-inter", "HAPROXY_CHECK_INTER", "duration", "check_inter_ms", "check period"),
    _Option(
        "--check-fastinter", "HAPROXY_CHECK_FASTINTER", "duration", "check_fastinter_ms", "in transition"
    ),
    _Option("--check-downinter", "HAPROXY_CHECK_DOWNINTER", "duration", "check_downinter_ms", "while down"),
    _Option("--check-fall", "HAPROXY_CHECK_FALL", "count", "check_fall", "failed checks to mark down"),
    _Option("--check-rise", "HAPROXY_CHECK_RISE", "count", "check_rise", "passed checks to mark up"),
    _Option(
        "--tls-ca-file",
        "HAPROXY_TLS_CA_FILE",
        "text",
        "tls_ca_file",
        "the nodes serve TLS: check them (and in api mode send traffic) over TLS verified by this CA",
    ),
    _Option(
        "--tls-crt",
        "HAPROXY_TLS_CRT",
        "text",
        "tls_crt",
        "PEM with HAProxy's certificate and key (mutual TLS)",
    ),
)
_INIT_STATE = _Option(
    "--init-state",
    "HAPROXY_INIT_STATE",
    "text",
    "init_state",
    "auto (use `init-state down` when this HAProxy supports it), on or off",
)
_BINARY = _Option(
    "--haproxy", "HAPROXY_BINARY", "text", "", "HAProxy executable for --check and init-state auto"
)
_ALWAYS_SHOWN = {"mode", "master_addr", "standby_addr"}
ENV_VARS = tuple(option.env for option in (*_OPTIONS, _INIT_STATE, _BINARY))


def _label(field: str) -> str:
    for option in (*_OPTIONS, _INIT_STATE):
        if field == option.field or (option.kind == "bind" and field == "bind_port"):
            return f"{option.env} ({option.flag})"
    return field


def _shown(option: _Option, settings: HAProxySettings) -> str:
    if option.kind == "bind":
        return f"{settings.bind_addr}:{settings.bind_port}"
    value = getattr(settings, option.field)
    if option.kind == "duration":
        return format_duration(value)
    return "" if value is None else str(value)


def command_line(settings: HAProxySettings) -> str:
    """The options that render these settings (defaults left out): the header of rendered files."""
    default = HAProxySettings()
    words = ["python", "-m", "daemon.haproxy_config"]
    for option in _OPTIONS:
        shown = _shown(option, settings)
        if option.field in _ALWAYS_SHOWN or shown != _shown(option, default):
            words += [option.flag, shown]
    words += [_INIT_STATE.flag, "on" if settings.init_state else "off"]
    return shlex.join(words)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in (*_OPTIONS, _INIT_STATE, _BINARY):
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            metavar=option.env,
            help=f"{option.help} (env {option.env})",
        )
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="write the configuration here (default: stdout)"
    )
    parser.add_argument(
        "--check", action="store_true", help="run `haproxy -c` on the result, exit with its status"
    )


def _parse(option: _Option, text: str) -> dict[str, Any]:
    try:
        if option.kind in ("text", "mode"):
            return {option.field: text}
        if option.kind == "optional-port":
            return {option.field: int(text) if text.strip() else None}
        if option.kind in ("port", "count"):
            return {option.field: int(text)}
        if option.kind == "duration":
            return {option.field: parse_duration(text)}
        address, _, port = text.rpartition(":")
        return {"bind_addr": address, "bind_port": int(port)}
    except ValueError:
        expected = {
            "port": "a port number",
            "optional-port": "a port number",
            "count": "a whole number",
            "duration": "a duration like 250ms, 2s or 10m",
            "bind": "ADDRESS:PORT",
        }[option.kind]
        raise SettingsError(option.field, f"must be {expected}, not {text!r}") from None


def _given(args: argparse.Namespace, option: _Option, environ: Mapping[str, str]) -> str | None:
    value: str | None = getattr(args, option.dest, None)
    return value if value is not None else environ.get(option.env)


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> HAProxySettings:
    """Settings from parsed arguments, else the environment, else the defaults; init-state resolved."""
    values: dict[str, Any] = {}
    for option in _OPTIONS:
        text = _given(args, option, environ)
        if text is not None:
            values.update(_parse(option, text))
    init_state = _init_state_choice(args, environ)
    settings = HAProxySettings(**values)  # validates everything else
    if init_state == "auto":
        return replace(settings, init_state=supports_init_state(_binary(args, environ)))
    return replace(settings, init_state=init_state == "on")


def _init_state_choice(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    choice = (_given(args, _INIT_STATE, environ) or "auto").strip().lower()
    if choice not in INIT_STATE_CHOICES:
        raise SettingsError("init_state", f"must be one of {', '.join(INIT_STATE_CHOICES)}, not {choice!r}")
    return choice


def _binary(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    return _given(args, _BINARY, environ) or "haproxy"


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        text = render(settings)
    except SettingsError as exc:
        print(f"hotstandby haproxy-config: {_label(exc.field)} {exc.problem}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hotstandby haproxy-config: cannot read the template: {exc}", file=sys.stderr)
        return 1
    output: str | None = args.output
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(
                f"hotstandby haproxy-config: --output: cannot write {output}: {exc.strerror}", file=sys.stderr
            )
            return 2
    if args.check:
        status = _check_text(text, output, _binary(args, os.environ))
        if status != 0:
            return status
    if not output:
        sys.stdout.write(text)
    if _init_state_choice(args, os.environ) == "auto" and not settings.init_state:
        print(
            f"hotstandby haproxy-config: note: {_binary(args, os.environ)} does not support init-state"
            " (HAProxy < 3.1); rendered without it",
            file=sys.stderr,
        )
    return 0


def _check_text(text: str, output: str | None, binary: str) -> int:
    with tempfile.TemporaryDirectory(prefix="hotstandby-haproxy-") as tmp:
        path = Path(output) if output else Path(tmp) / "haproxy.cfg"
        if not output:
            path.write_text(text, encoding="utf-8")
        try:
            done = check_config(path, binary)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"hotstandby haproxy-config: cannot run {binary} -c: {exc}", file=sys.stderr)
            return 1
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotstandby haproxy-config", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
