"""Run the services of a compose file as plain processes, without Docker.

`make up`, `make down` and `make demo` use this, and so does tests/cluster/. Each selected
service (default: those of compose/docker-compose.yml enabled by the active profiles) runs once,
as root, as the process its compose entry describes:

- argv: the service's entrypoint and command; for a service with `build:`, what the compose file
  leaves out comes from its Dockerfile (ENTRYPOINT, CMD, ENV), and files the Dockerfile copies
  into /usr/local/bin are linked into a folder on the service's PATH, followed by this
  virtualenv's bin folder (where `hotstandby` and `python` are) and the system folders;
- environment: the image's ENV, then env_file and environment, nothing from the caller's;
- volumes: each named volume is a folder under WORKDIR/volumes/, shared by the services that
  mount it; bind-mounted folders are used in place; bind-mounted files are copied; secrets are
  their files (a missing secret file is generated under WORKDIR/secrets/ and reported). Container
  paths under a mount, in the environment, the argv and the copied files, become host paths;
- network: one namespace per service with an address on a private bridge and a hosts file naming
  every service (harness/netns.py), or where namespaces are not permitted, a 127.a.b.n address
  each, with service names (`name:port`), 0.0.0.0 and 127.0.0.1 rewritten to addresses;
- depends_on: started in dependency order, waiting for service_healthy (the healthcheck, run
  in the service's namespace with its environment) and service_completed_successfully.

Several files merge as `docker compose -f A -f B` merges them (harness/compose_file.py), and a
service with `network_mode: service:NAME` runs in NAME's namespace (at its address). An image that
is not built here cannot be run; `--image-file CONTAINER_PATH=HOST_PATH` supplies the files of it
that a service's command names (the Dify plugin daemon's /app/entrypoint.sh).

With `image=` (`demo --image`), services built from compose/Dockerfile run from the built image's
own root filesystem instead (harness/image.py builds it; harness/rootfs_exec.py runs a command in
it): the image's ENTRYPOINT, CMD, ENV, WORKDIR and USER (or the service's user:), its volumes and
secrets bind-mounted at their container paths, an overlay per service for its own changes, in the
service's network namespace (namespaces are required then). Healthchecks run in the image too.

Not emulated: `restart:` (nothing restarts a process that exits), `user:` (everything runs as
the caller, except from an image), `ports:` (reach services from the client namespace: `exec`),
image entrypoints of services that are not built here. State (pids, namespaces, addresses) is kept in
WORKDIR/state.json so that `down` can stop everything from another process.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import netns
from harness.compose_file import Project, Service, load
from harness.sessions import Process, proc_stat

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILE = REPO / "compose" / "docker-compose.yml"
DEFAULT_WORKDIR = REPO / "compose" / ".run"
STATE_FILE = "state.json"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 60.0
Printer = Callable[[str], None]


def is_root() -> bool:
    return os.geteuid() == 0


class RunnerError(RuntimeError):
    """A service did not start, pass its healthcheck or complete; the message has its log tail."""


# --- container paths and names to host paths and addresses ----------------------------------


@dataclass(frozen=True)
class Translator:
    """One pass over a text: container paths at or under a mount target become host paths; in
    loopback mode also `service:port` becomes `address:port`, and 0.0.0.0 and 127.0.0.1 (the
    container itself) become the service's own address."""

    paths: Mapping[str, str] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)
    own_address: str = ""

    def __call__(self, text: str) -> str:
        return self._pattern.sub(self._replace, text) if self._pattern is not None else text

    def variable(self, name: str, value: str) -> str:
        """An environment value; a *_HOST variable naming a service (`REDIS_HOST: redis`) also
        becomes its address (only there: `ELECTION: redis` is a word, not the service)."""
        return (self.hosts.get(value) if name.endswith("_HOST") else None) or self(value)

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        def choice(words: Sequence[str]) -> str:
            return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))

        parts = []
        if self.paths:
            parts.append(rf"(?P<path>(?<![\w./-])(?:{choice(list(self.paths))})(?![\w.-]))")
        if self.hosts:
            parts.append(rf"(?P<host>(?<![\w.-])(?:{choice(list(self.hosts))})(?=:\d))")
        if self.own_address:
            parts.append(r"(?P<own>(?<![\w.])(?:0\.0\.0\.0|127\.0\.0\.1)(?![\w.]))")
        return re.compile("|".join(parts)) if parts else None

    def _replace(self, match: re.Match[str]) -> str:
        if match.lastgroup == "path":
            return self.paths[match.group(0)]
        if match.lastgroup == "host":
            return self.hosts[match.group(0)]
        return self.own_address


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (connection refused, timeout); body holds the error
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Launch:
    """How one service is started: argv (before the namespace wrapper), environment, folders."""

    argv: list[str]
    env: dict[str, str]
    home: Path
    log: Path
    translate: Translator
    spec: dict[str, Any] | None = None  # from the image (harness/rootfs_exec.py's SPEC); None: on the host


@dataclass(frozen=True)
class ImageRun:
    """A built image to run the built services from: its root filesystem (a mounted folder) and
    its config as `buildah inspect` / `docker image inspect` give it (Entrypoint, Cmd, Env, ...)."""

    root: Path
    config: Mapping[str, Any]

    def argv(self, service: Service) -> list[str]:
        """Entrypoint and command, combined as Docker does."""
        entrypoint = (
            list(service.entrypoint) if service.entrypoint is not None else self.config_list("Entrypoint")
        )
        if service.command is not None:
            command = list(service.command)
        else:
            command = self.config_list("Cmd") if service.entrypoint is None else []
        return entrypoint + command

    def config_list(self, key: str) -> list[str]:
        return [str(word) for word in self.config.get(key) or []]

    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config_list("Env"))

    def home(self, user: str) -> str:
        """The user's home in the image's /etc/passwd, as Docker sets HOME; / when unknown."""
        name = user.partition(":")[0]
        try:
            lines = (self.root / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
        except OSError:
            return "/"
        for line in lines:
            fields = line.split(":")
            if len(fields) > 5 and name in (fields[0], fields[2]):
                return fields[5] or "/"
        return "/"


ROOTFS_EXEC = Path(__file__).resolve().parent / "rootfs_exec.py"


class Cluster:
    """The selected services of one compose project running as processes under `workdir`."""

    def __init__(
        self,
        project: Project,
        services: list[Service],
        workdir: Path,
        *,
        network_mode: str = "auto",
        image_files: Mapping[str, Path] | None = None,
        image: ImageRun | None = None,
        out: Printer = print,
    ) -> None:
        self.project = project
        self.image = image
        # Container path -> host file, for services whose image is not built here (the runner
        # cannot run a pulled image; e.g. the plugin daemon's /app/entrypoint.sh).
        self.image_files = {k: Path(v).resolve() for k, v in (image_files or {}).items()}
        self.services = {s.name: s for s in services}
        self.workdir = workdir.resolve()
        self.network_mode = network_mode
        self.out = out
        self.run_id = secrets.token_hex(3)
        self.network: netns.Network | None = None
        self.processes: dict[str, Process] = {}
        self.secret_files: dict[str, Path] = {}
        self.launches: dict[str, Launch] = {}
        self.env_file: Path | None = None
        self.compose_files: list[Path] = [project.path]
        self.completed: set[str] = set()
        self.skipped: set[str] = set()

    @classmethod
    def from_file(
        cls,
        compose_file: str | Path | Sequence[str | Path] = DEFAULT_FILE,
        workdir: str | Path = DEFAULT_WORKDIR,
        *,
        env_file: str | Path | None = None,
        profiles: tuple[str, ...] = (),
        services: tuple[str, ...] = (),
        network_mode: str = "auto",
        image_files: Mapping[str, Path] | None = None,
        image: ImageRun | None = None,
        out: Printer = print,
    ) -> Cluster:
        project = load(compose_file, env_file=env_file, profiles=profiles)
        cluster = cls(
            project,
            project.selected(services),
            Path(workdir),
            network_mode=network_mode,
            image_files=image_files,
            image=image,
            out=out,
        )
        cluster.compose_files = _as_paths(compose_file)
        cluster.env_file = Path(env_file).resolve() if env_file else None
        return cluster

    def host(self, name: str) -> str:
        """The network host a service runs on: its own, or the one its network_mode names."""
        return self.services[name].network_of or name

    # -- bringing it up -------------------------------------------------------------------------

    def up(self) -> None:
        """Create the network, then start every service in dependency order. On failure whatever
        was started is left recorded in the state file for `down` (the context manager calls it)."""
        for sub in ("volumes", "logs", "secrets", "files", "bin", "home"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._resolve_secrets()
        names = [name for name, service in self.services.items() if not service.network_of]
        aliases = {
            s.name: (s.hostname,)
            for s in self.services.values()
            if s.hostname not in ("", s.name) and not s.network_of
        }
        self.network, reason = netns.create(self.run_id, names, aliases, self.network_mode)
        if reason and self.image is not None:
            raise RunnerError(f"running from the image needs network namespaces: {reason}")
        if reason:
            self.out(f"note: network namespaces are not permitted here ({reason});")
            self.out("      falling back to distinct 127.x.y.n loopback addresses, same ports")
        self.save_state()
        for service in self.services.values():
            self._wait_for_dependencies(service)
            if self._needs_root(service):
                continue
            self.start(service.name)
            self.out(f"  started {service.name:<22} {self.describe(service.name)}")
        for service in self.services.values():
            if service.healthcheck is not None and not self._one_shot(service.name):
                self.wait_healthy(service.name)

    def _needs_root(self, service: Service) -> bool:
        """A one-shot service that runs as root (`user: 0:0`) is skipped when the runner is not
        root: it would fail, and what it prepares (volume ownership) is moot when every service
        runs as the caller."""
        if service.user.split(":")[0] not in ("0", "root") or is_root() or not self._one_shot(service.name):
            return False
        self.skipped.add(service.name)
        self.out(f"note: skipped {service.name}: it runs as root (user {service.user}), this runner does not")
        return True

    def _one_shot(self, name: str) -> bool:
        """A service others wait on to complete (an init job)."""
        return any(
            condition == "service_completed_successfully"
            for other in self.services.values()
            for dependency, condition in other.depends_on.items()
            if dependency == name
        )

    def _resolve_secrets(self) -> None:
        for name in sorted({secret for s in self.services.values() for secret, _ in s.secrets}):
            declared = self.project.secrets[name]
            if declared.is_file():
                self.secret_files[name] = declared
                continue
            generated = self.workdir / "secrets" / name
            if not generated.exists():
                generated.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
                generated.chmod(0o600)
                self.out(f"note: secret {name}: {declared} does not exist; generated {generated}")
            self.secret_files[name] = generated

    def secret(self, name: str) -> str:
        return self.secret_files[name].read_text(encoding="utf-8").strip()

    def _wait_for_dependencies(self, service: Service) -> None:
        for dependency, condition in service.depends_on.items():
            if condition == "service_healthy":
                self.wait_healthy(dependency)
            elif condition == "service_completed_successfully":
                self.wait_completed(dependency)

    # -- one service ------------------------------------------------------------------------------

    def launch(self, name: str) -> Launch:
        """The argv, environment and folders of a service (computed once, reused by restarts)."""
        if name not in self.launches:
            self.launches[name] = self._plan(self.services[name])
        return self.launches[name]

    def _plan(self, service: Service) -> Launch:
        assert self.network is not None
        if self.image is not None and service.built is not None:
            return self._plan_in_image(service, self.image)
        translate = self._translator(service)
        image_env = service.built.env if service.built is not None else {}
        env = {
            k: translate.variable(k, v)
            for k, v in {**image_env, **service.environment}.items()
            if k != "PATH"
        }
        bin_dir = self.workdir / "bin" / service.name
        bin_dir.mkdir(parents=True, exist_ok=True)
        for command, source in (service.built.bin_files if service.built else {}).items():
            link = bin_dir / command
            if not link.is_symlink():
                link.symlink_to(source)
        home = self.workdir / "home" / service.name
        home.mkdir(parents=True, exist_ok=True)
        argv = [translate(word) for word in service.argv]
        env.update(
            PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), SYSTEM_PATH]),
            HOSTNAME=service.hostname or service.name,
            HOME=str(home),
        )
        if argv[0] == "tini":  # not PID 1 here: let it reap as a subreaper instead of warning
            env["TINI_SUBREAPER"] = "1"
        return Launch(argv, env, home, self.workdir / "logs" / f"{service.name}.log", translate)

    def _plan_in_image(self, service: Service, image: ImageRun) -> Launch:
        """The service from the image's own files (harness/rootfs_exec.py): container paths stay
        container paths; the spec file holds what the runtime needs, the argv starts it."""
        user = service.user or str(image.config.get("User") or "0")
        env = {
            **image.env(),
            **service.environment,
            "HOSTNAME": service.hostname or service.name,
            "HOME": image.home(user),
        }
        home = self.workdir / "home" / service.name
        home.mkdir(parents=True, exist_ok=True)
        container = self.workdir / "containers" / service.name
        argv = image.argv(service)
        if argv[:1] == ["tini"]:  # not PID 1 in its namespace: reap as a subreaper instead
            env["TINI_SUBREAPER"] = "1"
        spec: dict[str, Any] = {
            "root": str(image.root),
            "upper": str(container / "upper"),
            "work": str(container / "work"),
            "merged": str(container / "merged"),
            "mounts": self._image_mounts(service),
            "user": user,
            "workdir": str(image.config.get("WorkingDir") or "/"),
            "env": env,
            "argv": argv,
        }
        path = container / "spec.json"
        container.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
        runner = [sys.executable, "-I", str(ROOTFS_EXEC), str(path)]
        log = self.workdir / "logs" / f"{service.name}.log"
        return Launch(runner, {"PATH": SYSTEM_PATH}, home, log, Translator(), spec)

    def _image_mounts(self, service: Service) -> list[tuple[str, str]]:
        """Volumes (folders under WORKDIR/volumes), bind mounts and secrets at their container paths.
        Secret files are copied readable by the image's user, as Docker's file secrets are."""
        mounts: list[tuple[str, str]] = []
        for mount in service.mounts:
            if mount.volume is not None:
                host = self.workdir / "volumes" / mount.volume
                host.mkdir(parents=True, exist_ok=True)
            else:
                assert mount.source is not None
                host = mount.source
            mounts.append((str(host), mount.target))
        for secret, target in service.secrets:
            copy = self.workdir / "secrets-image" / service.name / secret
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.secret_files[secret], copy)
            copy.chmod(0o444)
            mounts.append((str(copy), target))
        return mounts

    def run_in_image(
        self, name: str, argv: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[bytes]:
        """A one-off command in the image as the service would run it (its namespace, env, user,
        mounts), on a throwaway layer: how healthchecks run. Raises subprocess.TimeoutExpired."""
        assert self.network is not None
        spec = dict(self.launch(name).spec or {})
        if not spec:
            raise RunnerError(f"{name} does not run from the image")
        for key in ("upper", "work", "merged"):
            spec.pop(key, None)
        spec.update(scratch=str(self.workdir / "scratch"), argv=list(argv))
        path = self.workdir / "containers" / name / f"exec-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        try:
            return subprocess.run(
                self.network.wrap(self.host(name), [sys.executable, "-I", str(ROOTFS_EXEC), str(path)]),
                env={"PATH": SYSTEM_PATH},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        finally:
            path.unlink(missing_ok=True)

    def environment(self, name: str) -> dict[str, str]:
        """The service's environment as its process sees it (container paths when from the image)."""
        launch = self.launch(name)
        return dict(launch.spec["env"]) if launch.spec is not None else dict(launch.env)

    def host_path(self, name: str, container_path: str) -> Path:
        """Where a container path of the service is on this host (under one of its mounts)."""
        if self.launch(name).spec is None:
            return Path(container_path)  # already translated
        for source, target in sorted(self._image_mounts(self.services[name]), key=lambda m: -len(m[1])):
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return Path(source) / container_path[len(target) :].lstrip("/")
        raise RunnerError(f"{name}: {container_path} is not under a volume")

    def _translator(self, service: Service) -> Translator:
        assert self.network is not None
        paths: dict[str, str] = {}
        copies: list[tuple[Path, Path]] = []
        for mount in service.mounts:
            if mount.volume is not None:
                host = self.workdir / "volumes" / mount.volume
                host.mkdir(parents=True, exist_ok=True)
            elif mount.source is not None and mount.source.is_file():
                host = self.workdir / "files" / service.name / mount.source.name
                copies.append((mount.source, host))
            else:
                assert mount.source is not None
                host = mount.source
            paths[mount.target] = str(host)
        for secret, target in service.secrets:
            paths[target] = str(self.secret_files[secret])
        if service.built is None:
            paths.update({target: str(host) for target, host in self.image_files.items()})
        translator = Translator(paths)
        if isinstance(self.network, netns.LoopbackNetwork):
            addresses = self.network.addresses
            hosts = {name: addresses[self.host(name)] for name in self.services}
            hosts.update(
                {s.hostname: addresses[self.host(s.name)] for s in self.services.values() if s.hostname}
            )
            translator = Translator(paths, hosts, addresses[self.host(service.name)])
        for source, copy in copies:
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(translator(source.read_text(encoding="utf-8")), encoding="utf-8")
        return translator

    def start(self, name: str) -> Process:
        assert self.network is not None
        if name in self.processes and self.processes[name].alive():
            raise RunnerError(f"{name} is already running")
        launch = self.launch(name)
        with open(launch.log, "ab") as log:
            popen = subprocess.Popen(
                self.network.wrap(self.host(name), launch.argv),
                env=launch.env,
                cwd=launch.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stat = proc_stat(popen.pid)
        process = Process(popen.pid, stat[2] if stat else 0, popen)
        self.processes[name] = process
        self.save_state()
        return process

    def describe(self, name: str) -> str:
        assert self.network is not None
        shared = self.services[name].network_of
        return (
            f"{self.network.describe(shared)} (network of {shared})"
            if shared
            else self.network.describe(name)
        )

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self.processes[name].stop(timeout)

    def running(self, name: str) -> bool:
        return name in self.processes and self.processes[name].alive()

    def healthy(self, name: str) -> bool:
        """Run the service's healthcheck once, as Docker would: in its namespace, with its env."""
        service = self.services[name]
        check = service.healthcheck
        if check is None:
            return self.running(name)
        assert self.network is not None
        launch = self.launch(name)
        if launch.spec is not None:
            try:
                return self.run_in_image(name, check.test, check.timeout).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        argv = [launch.translate(word) for word in check.test]
        try:
            done = subprocess.run(
                self.network.wrap(self.host(name), argv),
                env=launch.env,
                cwd=launch.home,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=check.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def wait_healthy(self, name: str, timeout: float = START_TIMEOUT) -> float:
        """Poll the healthcheck every 0.25 s (Docker waits `interval` between checks; a start
        need not). Returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.running(name):
                raise RunnerError(
                    f"{name} exited with {self._exit(name)} before it was healthy{self.tail(name)}"
                )
            if self.healthy(name):
                return time.monotonic() - started
            time.sleep(0.25)
        raise RunnerError(f"{name} was not healthy within {timeout:g}s{self.tail(name)}")

    def wait_completed(self, name: str, timeout: float = START_TIMEOUT) -> None:
        if name in self.skipped:
            return
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        code = self._exit(name)
        if code != 0:
            raise RunnerError(f"{name} did not complete successfully (exit {code}){self.tail(name)}")
        if name not in self.completed:
            self.completed.add(name)
            self.out(f"  {name} completed")

    def _exit(self, name: str) -> int | None:
        process = self.processes[name]
        if process.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(1.0)
        return process.exit_code()

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.launch(name).log.read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- last lines of {name}'s log\n" + "\n".join(text.splitlines()[-lines:])

    # -- talking to it ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Reply:
        """An HTTP request from the client host: its own namespace, where service names resolve;
        in loopback mode, from here, with the service name replaced by its address."""
        assert self.network is not None
        query = {
            "method": method,
            "url": url,
            "body": base64.b64encode(body).decode() if body is not None else None,
            "headers": dict(headers or {}),
            "timeout": timeout,
        }
        if isinstance(self.network, netns.LoopbackNetwork):  # no hosts file: use the address
            query["url"] = Translator(hosts=self.network.addresses)(url)
        argv = self.network.wrap(netns.CLIENT, [sys.executable, "-I", "-c", _CLIENT])
        done = subprocess.run(
            argv,
            input=json.dumps(query).encode(),
            capture_output=True,
            timeout=timeout + 10,
            env={"PATH": SYSTEM_PATH},
            check=False,
        )
        if done.returncode != 0:
            return Reply(0, done.stderr)
        answer = json.loads(done.stdout)
        return Reply(int(answer["status"]), base64.b64decode(answer["body"]))

    def exec(self, argv: Sequence[str], host: str = netns.CLIENT) -> int:
        assert self.network is not None
        return subprocess.call(self.network.wrap(host, argv))

    # -- state and teardown ------------------------------------------------------------------------

    def save_state(self) -> None:
        assert self.network is not None
        state = {
            "compose_file": str(self.project.path),
            "compose_files": [str(path) for path in self.compose_files],
            "image_files": {target: str(host) for target, host in self.image_files.items()},
            "env_file": str(self.env_file) if self.env_file else None,
            "profiles": list(self.project.profiles),
            "run_id": self.run_id,
            "network": self.network.to_json(),
            "services": {name: p.to_json() for name, p in self.processes.items()},
            "secrets": {name: str(path) for name, path in self.secret_files.items()},
        }
        path = self.workdir / STATE_FILE
        path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def down(self) -> list[str]:
        """Stop every process (SIGTERM, then SIGKILL), remove the namespaces and the state file.
        Volumes stay. Returns the problems met."""
        for process in reversed(list(self.processes.values())):
            process.stop()
        problems = self.network.teardown() if self.network is not None else []
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()
        return problems

    def __enter__(self) -> Cluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def down(workdir: str | Path = DEFAULT_WORKDIR, *, volumes: bool = False, out: Printer = print) -> int:
    """Stop what `up` recorded in workdir/state.json (from any process). 0: done or nothing to do."""
    workdir = Path(workdir)
    path = workdir / STATE_FILE
    if not path.exists():
        out(f"nothing is up (no {path})")
    else:
        state = json.loads(path.read_text(encoding="utf-8"))
        for name, info in state.get("services", {}).items():
            process = Process(int(info["pid"]), int(info["start_time"]))
            if process.alive():
                process.stop()
                out(f"  stopped {name}")
        problems = netns.from_json(state["network"]).teardown()
        for problem in problems:
            out(f"  problem: {problem}")
        path.unlink()
        out(f"down: {len(state.get('services', {}))} services stopped, network removed")
    if volumes and workdir.exists():
        shutil.rmtree(workdir)
        out(f"removed {workdir} (volumes, logs, generated secrets)")
    return 0


def attach(workdir: str | Path = DEFAULT_WORKDIR, *, out: Printer = print) -> Cluster:
    """The cluster `up` left running in workdir, to inspect it or run commands in it."""
    workdir = Path(workdir)
    try:
        state = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunnerError(f"nothing is up (no {workdir / STATE_FILE}): run `make up` first") from None
    files = state.get("compose_files") or [state["compose_file"]]
    project = load(files, env_file=state.get("env_file"), profiles=tuple(state.get("profiles", ())))
    names = tuple(state["services"])
    image_files = {k: Path(v) for k, v in state.get("image_files", {}).items()}
    cluster = Cluster(
        project, [project.services[n] for n in names], workdir, image_files=image_files, out=out
    )
    cluster.compose_files = [Path(f) for f in files]
    cluster.run_id = state["run_id"]
    cluster.network = netns.from_json(state["network"])
    cluster.secret_files = {k: Path(v) for k, v in state.get("secrets", {}).items()}
    cluster.processes = {
        n: Process(int(i["pid"]), int(i["start_time"])) for n, i in state["services"].items()
    }
    return cluster


_CLIENT = """
import base64, json, sys, urllib.error, urllib.request
q = json.load(sys.stdin)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
data = base64.b64decode(q["body"]) if q["body"] is not None else None
req = urllib.request.Request(q["url"], data=data, method=q["method"], headers=q["headers"])
try:
    with opener.open(req, timeout=q["timeout"]) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError as e:
    status, body = 0, str(e).encode()
json.dump({"status": status, "body": base64.b64encode(body).decode()}, sys.stdout)
"""


def _as_paths(compose_file: str | Path | Sequence[str | Path]) -> list[Path]:
    files = [compose_file] if isinstance(compose_file, str | Path) else list(compose_file)
    return [Path(f).resolve() for f in files]


@contextlib.contextmanager
def running(
    compose_file: str | Path | Sequence[str | Path] = DEFAULT_FILE,
    workdir: str | Path = DEFAULT_WORKDIR,
    **kwargs: Any,
) -> Iterator[Cluster]:
    """Up on entry, down on exit, whatever happens in between."""
    with Cluster.from_file(compose_file, workdir, **kwargs) as cluster:
        yield cluster
