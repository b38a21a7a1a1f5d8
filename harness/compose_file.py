"""Read a docker-compose file (and the Dockerfile of services it builds) into plain data.

Only what harness/compose_runner.py needs to run services as processes: interpolation
(`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `$$`) from the environment
over the `.env` or `--env-file` file, `env_file`, environment lists and maps, YAML merge keys,
volumes (short and long syntax), secrets, depends_on with conditions, healthchecks and profiles.
For a service with `build:`, the final stage of its Dockerfile gives the image's ENV,
ENTRYPOINT, CMD and the files it copies into /usr/local/bin. Anything the runner cannot honour
is a ComposeError naming the service and the key.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

Condition = Literal["service_started", "service_healthy", "service_completed_successfully"]
CONDITIONS: tuple[Condition, ...] = ("service_started", "service_healthy", "service_completed_successfully")
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNSUPPORTED = ("extends", "pid", "ipc")


class ComposeError(ValueError):
    """The compose file cannot be read or run as processes; the message names the place."""


@dataclass(frozen=True)
class Mount:
    """One volume of a service: a named volume or a host path, mounted at `target`."""

    target: str
    volume: str | None = None
    source: Path | None = None
    read_only: bool = False


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # an argv; CMD-SHELL becomes ("sh", "-c", ...)
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True)
class ImageSpec:
    """What a built image brings to a container: its environment, entrypoint and command."""

    dockerfile: Path
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    bin_files: dict[str, Path] = field(default_factory=dict)  # /usr/local/bin/NAME -> build file


@dataclass(frozen=True)
class Service:
    name: str
    image: str = ""
    built: ImageSpec | None = None
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()  # (secret name, target path)
    depends_on: dict[str, Condition] = field(default_factory=dict)
    healthcheck: Healthcheck | None = None
    profiles: tuple[str, ...] = ()
    hostname: str = ""
    ports: tuple[str, ...] = ()
    user: str = ""
    network_of: str = ""  # network_mode: service:NAME: runs in NAME's network namespace, at its address
    unsupported: tuple[str, ...] = ()  # keys the runner cannot honour; an error only if selected

    @property
    def argv(self) -> tuple[str, ...]:
        """What the container runs: the entrypoint followed by the command, as Docker combines them."""
        image = self.built
        entrypoint = self.entrypoint if self.entrypoint is not None else (image.entrypoint if image else ())
        if self.command is not None:
            command = self.command
        else:  # an entrypoint set in the compose file drops the image's CMD, as Docker does
            command = image.cmd if image is not None and self.entrypoint is None else ()
        argv = entrypoint + command
        if not argv:
            raise ComposeError(
                f"service {self.name}: image {self.image or '?'} has no command in the compose file "
                "(only the Dockerfiles of built services are read)"
            )
        return argv


@dataclass(frozen=True)
class Project:
    path: Path
    services: dict[str, Service]
    secrets: dict[str, Path]  # secret name -> host file (it may not exist yet)
    volumes: tuple[str, ...]
    profiles: tuple[str, ...]  # active: --profile options and COMPOSE_PROFILES

    def selected(self, names: tuple[str, ...] = ()) -> list[Service]:
        """The services to run, dependencies first: `names` (default: every service enabled by
        the active profiles) and everything they depend on."""
        wanted = list(names) or [s.name for s in self.services.values() if self._enabled(s)]
        order: list[Service] = []
        visiting: set[str] = set()

        def visit(name: str, needed_by: str) -> None:
            if name not in self.services:
                raise ComposeError(f"{needed_by}: no service named {name!r}")
            service = self.services[name]
            if service in order:
                return
            if name in visiting:
                raise ComposeError(f"service {name}: depends_on forms a cycle")
            if service.unsupported:
                raise ComposeError(
                    f"service {name}: {', '.join(service.unsupported)} cannot be run as a process"
                )
            if not self._enabled(service) and name not in names:
                raise ComposeError(
                    f"service {name} (needed by {needed_by}) is in profiles {list(service.profiles)}, "
                    f"none of which is active"
                )
            visiting.add(name)
            for dependency in service.depends_on:
                visit(dependency, f"service {name}")
            visiting.discard(name)
            order.append(service)

        for name in wanted:
            visit(name, "the command line")
        return order

    def _enabled(self, service: Service) -> bool:
        return not service.profiles or any(p in self.profiles for p in service.profiles)


# --- reading -------------------------------------------------------------------------------------


def load(
    path: str | Path | Sequence[str | Path],
    *,
    env_file: str | Path | None = None,
    profiles: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> Project:
    """Read and interpolate a compose file, or several merged in order as `docker compose -f A -f B`
    does (relative paths are resolved from the first file's folder, the project folder). Variables
    come from `environ` (default: os.environ) over `env_file` (default: `.env` beside the first file,
    when present)."""
    paths = [Path(p).resolve() for p in ([path] if isinstance(path, str | Path) else path)]
    if not paths:
        raise ComposeError("no compose file given")
    base = paths[0].parent
    variables = _interpolation_variables(base, env_file, os.environ if environ is None else environ)
    document: dict[str, Any] = {}
    for one in paths:
        document = merge_documents(document, _interpolate_tree(_read(one), variables, ""))
    active = profiles or tuple(p for p in variables.get("COMPOSE_PROFILES", "").split(",") if p)
    services = {
        name: _service(str(name), spec or {}, base, variables) for name, spec in document["services"].items()
    }
    secrets = {
        str(name): _host_path(base, str((spec or {}).get("file", "")), f"secret {name}")
        for name, spec in (document.get("secrets") or {}).items()
    }
    project = Project(paths[0], services, secrets, tuple(document.get("volumes") or ()), active)
    _check_references(project)
    return project


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ComposeError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise ComposeError(f"{path}: no services")
    return raw


# --- merging an override file -----------------------------------------------------------------

# Compose's merge rules: sequences of these keys are appended (duplicates once); `volumes` and
# `secrets` are merged by their container path; any other sequence (command, entrypoint, a
# healthcheck's test) is replaced; mappings are merged key by key; scalars are replaced.
_APPENDED = frozenset({"ports", "expose", "dns", "dns_search", "env_file", "profiles", "cap_add", "cap_drop"})


def merge_documents(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key == "services":
            services = dict(merged.get("services") or {})
            for name, spec in (value or {}).items():
                services[name] = _merge_service(services.get(name) or {}, spec or {})
            merged["services"] = services
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_mapping(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if old is None:
            merged[key] = value
        elif key == "environment":
            merged[key] = {**_env_mapping(old), **_env_mapping(value)}
        elif key == "depends_on":
            merged[key] = _merge_mapping(_depends_mapping(old), _depends_mapping(value))
        elif key in ("volumes", "secrets"):
            by_target = {_target(item, key): item for item in _as_list(old)}
            by_target.update({_target(item, key): item for item in _as_list(value)})
            merged[key] = list(by_target.values())
        elif key in _APPENDED:
            merged[key] = list(dict.fromkeys([*map(str, _as_list(old)), *map(str, _as_list(value))]))
        elif isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge_mapping(old, value)
        else:
            merged[key] = value
    return merged


def _merge_mapping(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        merged[key] = (
            _merge_mapping(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def _env_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    result: dict[str, Any] = {}
    for item in _as_list(value):
        key, sep, rest = str(item).partition("=")
        result[key] = rest if sep else None
    return result


def _depends_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return {str(name): {"condition": "service_started"} for name in _as_list(value)}


def _target(item: Any, key: str) -> str:
    """The container path of a volume or secret entry: an override replaces the entry on the same path."""
    if isinstance(item, dict):
        return str(item.get("target") or item.get("source", ""))
    text = str(item)
    if key == "secrets":
        return text
    parts = text.split(":")
    return parts[0] if len(parts) == 1 else parts[1]


def _interpolation_variables(
    base: Path, env_file: str | Path | None, environ: Mapping[str, str]
) -> dict[str, str]:
    if env_file is not None:
        variables = read_env_file(Path(env_file))
    elif (base / ".env").is_file():
        variables = read_env_file(base / ".env")
    else:
        variables = {}
    variables.update(environ)
    return variables


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; matching outer quotes removed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ComposeError(f"env file {path}: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise ComposeError(f"env file {path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def interpolate(text: str, variables: Mapping[str, str], where: str = "") -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = variables.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in ("-", ":-") and unset:
            return arg
        if op in ("?", ":?") and unset:
            raise ComposeError(f"{where}: {name} is required: {arg or 'not set'}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, variables: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables, where)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, variables, f"{where}.{k}".lstrip(".")) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, variables, where) for v in node]
    return node


def parse_duration(text: str | int | float, where: str) -> float:
    """Compose durations: '10s', '1m30s', '500ms'; a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ComposeError(f"{where}: {text!r} is not a duration like 5s, 1m30s or 500ms")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


# --- one service -------------------------------------------------------------------------------


def _service(name: str, spec: dict[str, Any], base: Path, variables: Mapping[str, str]) -> Service:
    where = f"service {name}"
    built = _built_image(spec["build"], base, where) if "build" in spec else None
    environment: dict[str, str] = {}
    for env_path in _as_list(spec.get("env_file")):
        environment.update(read_env_file(_host_path(base, str(env_path), f"{where} env_file")))
    environment.update(_environment(spec.get("environment"), variables, where))
    return Service(
        name=name,
        image=str(spec.get("image", "")),
        built=built,
        entrypoint=_argv(spec["entrypoint"], f"{where} entrypoint") if "entrypoint" in spec else None,
        command=_argv(spec["command"], f"{where} command") if "command" in spec else None,
        environment=environment,
        mounts=tuple(_mount(v, base, where) for v in _as_list(spec.get("volumes"))),
        secrets=tuple(_secret(v, where) for v in _as_list(spec.get("secrets"))),
        depends_on=_depends_on(spec.get("depends_on"), where, _network_of(spec.get("network_mode"), where)),
        healthcheck=_healthcheck(spec.get("healthcheck"), where),
        profiles=tuple(str(p) for p in _as_list(spec.get("profiles"))),
        hostname=str(spec.get("hostname", "")),
        ports=tuple(str(p) for p in _as_list(spec.get("ports"))),
        user=str(spec.get("user", "")),
        network_of=_network_of(spec.get("network_mode"), where),
        unsupported=tuple(key for key in _UNSUPPORTED if key in spec),
    )


def _network_of(value: Any, where: str) -> str:
    """Only `service:NAME` is run (sharing NAME's namespace); host, none and container:ID are not."""
    if value is None:
        return ""
    text = str(value)
    if not text.startswith("service:") or not text.removeprefix("service:"):
        raise ComposeError(f"{where} network_mode: {text!r}: only service:NAME can be run as a process")
    return text.removeprefix("service:")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise ComposeError(f"{where}: expected a list of strings or a string")


def _environment(value: Any, variables: Mapping[str, str], where: str) -> dict[str, str]:
    pairs: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            key, sep, rest = str(item).partition("=")
            pairs.append((key, rest if sep else None))
    elif value is not None:
        raise ComposeError(f"{where} environment: expected a map or a list")
    result: dict[str, str] = {}
    for key, item in pairs:
        if item is None:  # `KEY` alone: passed through from the environment of `up`
            if key in variables:
                result[key] = variables[key]
        elif isinstance(item, bool):
            raise ComposeError(f"{where} environment {key}: quote true/false, compose needs strings")
        else:
            result[key] = str(item)
    return result


def _host_path(base: Path, text: str, where: str) -> Path:
    if not text:
        raise ComposeError(f"{where}: no file given")
    return (base / os.path.expanduser(text)).resolve()


def _mount(value: Any, base: Path, where: str) -> Mount:
    if isinstance(value, dict):
        kind, source = value.get("type", "volume"), str(value.get("source", ""))
        target, read_only = str(value.get("target", "")), bool(value.get("read_only", False))
    else:
        parts = str(value).split(":")
        if len(parts) == 1:
            kind, source, target, read_only = "volume", "", parts[0], False
        else:
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
    if not target.startswith("/"):
        raise ComposeError(f"{where} volumes: {value!r} has no absolute container path")
    if kind == "bind":
        return Mount(target, source=_host_path(base, source, f"{where} volumes"), read_only=read_only)
    if kind != "volume" or not source:
        raise ComposeError(f"{where} volumes: {value!r}: only named volumes and bind mounts are run")
    return Mount(target, volume=source, read_only=read_only)


def _secret(value: Any, where: str) -> tuple[str, str]:
    if isinstance(value, dict):
        name = str(value.get("source", ""))
        target = str(value.get("target", name))
    else:
        name = target = str(value)
    if not name:
        raise ComposeError(f"{where} secrets: {value!r} names no secret")
    return name, target if target.startswith("/") else f"/run/secrets/{target}"


def _depends_on(value: Any, where: str, network_of: str = "") -> dict[str, Condition]:
    """A service in another's network namespace depends on it, as compose makes it."""
    result: dict[str, Condition] = {network_of: "service_started"} if network_of else {}
    if isinstance(value, list):
        return result | {str(name): "service_started" for name in value}
    for name, spec in (value or {}).items():
        condition = (spec or {}).get("condition", "service_started")
        if condition not in CONDITIONS:
            raise ComposeError(f"{where} depends_on {name}: unknown condition {condition!r}")
        result[str(name)] = condition
    return result


def _healthcheck(value: Any, where: str) -> Healthcheck | None:
    if not value or value.get("disable"):
        return None
    test = value.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not isinstance(test, list) or not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise ComposeError(f"{where} healthcheck: test must be [CMD, ...], [CMD-SHELL, ...] or a string")
    if test[0] == "NONE":
        return None
    argv = tuple(str(t) for t in test[1:]) if test[0] == "CMD" else ("sh", "-c", " ".join(test[1:]))
    return Healthcheck(
        test=argv,
        interval=parse_duration(value.get("interval", "30s"), f"{where} healthcheck interval"),
        timeout=parse_duration(value.get("timeout", "30s"), f"{where} healthcheck timeout"),
        retries=int(value.get("retries", 3)),
        start_period=parse_duration(value.get("start_period", "0s"), f"{where} healthcheck start_period"),
    )


def _check_references(project: Project) -> None:
    for service in project.services.values():
        for dependency in service.depends_on:
            if dependency not in project.services:
                raise ComposeError(f"service {service.name}: depends on unknown service {dependency!r}")
        if service.network_of and service.network_of not in project.services:
            raise ComposeError(
                f"service {service.name}: network_mode names unknown service {service.network_of!r}"
            )
        for mount in service.mounts:
            if mount.volume is not None and mount.volume not in project.volumes:
                raise ComposeError(f"service {service.name}: volume {mount.volume!r} is not declared")
        for secret, _target in service.secrets:
            if secret not in project.secrets:
                raise ComposeError(f"service {service.name}: secret {secret!r} is not declared")


# --- the Dockerfile of a built service -------------------------------------------------------


def _built_image(build: Any, base: Path, where: str) -> ImageSpec:
    spec = {"context": build} if isinstance(build, str) else dict(build)
    context = _host_path(base, str(spec.get("context", ".")), f"{where} build")
    target = spec.get("target")
    return read_dockerfile(
        context / str(spec.get("dockerfile", "Dockerfile")), context, str(target) if target else None
    )


def read_dockerfile(path: Path, context: Path, target: str | None = None) -> ImageSpec:
    """ENV, ENTRYPOINT, CMD and COPY into /usr/local/bin of the final stage (after the last FROM),
    or of the stage named `target`; a stage built FROM an earlier stage starts with what it had."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ComposeError(f"Dockerfile {path}: {exc.strerror}") from None
    stages: dict[str, ImageSpec] = {}
    current = ImageSpec(path, {}, (), (), {})
    name = ""
    for instruction, argument in _instructions(text):
        if instruction == "FROM":
            if name:
                stages[name] = current
            parts = [w for w in argument.split() if not w.startswith("--")]
            parent = stages.get(parts[0].lower()) if parts else None
            name = parts[2].lower() if len(parts) == 3 and parts[1].upper() == "AS" else ""
            current = ImageSpec(
                path,
                dict(parent.env) if parent else {},
                parent.entrypoint if parent else (),
                parent.cmd if parent else (),
                dict(parent.bin_files) if parent else {},
            )
        elif instruction == "ENV":
            current.env.update(_dockerfile_env(argument))
        elif instruction in ("ENTRYPOINT", "CMD"):
            words = _exec_form(argument, f"{path} {instruction}")
            if instruction == "ENTRYPOINT":
                current = replace(current, entrypoint=words, cmd=())  # a new ENTRYPOINT resets CMD
            else:
                current = replace(current, cmd=words)
        elif instruction == "COPY" and not argument.startswith("--from"):
            paths = [w for w in shlex.split(argument) if not w.startswith("--")]
            if len(paths) == 2 and paths[1].startswith("/usr/local/bin/"):
                current.bin_files[os.path.basename(paths[1])] = (context / paths[0]).resolve()
    if name:
        stages[name] = current
    if target is None:
        return current
    if target.lower() not in stages:
        raise ComposeError(f"Dockerfile {path}: no stage named {target!r}")
    return stages[target.lower()]


def _instructions(text: str) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        instruction, _, argument = whole.partition(" ")
        result.append((instruction.upper(), argument.strip()))
    return result


def _dockerfile_env(argument: str) -> dict[str, str]:
    words = shlex.split(argument)
    if words and "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def _exec_form(argument: str, where: str) -> tuple[str, ...]:
    if not argument.startswith("["):
        return ("/bin/sh", "-c", argument)
    try:
        words = json.loads(argument)
    except ValueError:
        raise ComposeError(f"{where}: not a JSON list") from None
    return tuple(str(w) for w in words)
