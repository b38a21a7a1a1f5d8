"""The compose files and the image, without running anything long: Debian's docker-compose (v1,
which parses without a Docker engine) accepts them, the image keeps its promises, every variable
given to hotstandby is one it reads and valid, and the runner reads the files as Docker would."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import Config
from harness.compose_file import ComposeError, interpolate, load, read_dockerfile
from harness.compose_runner import Translator

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
BASE = COMPOSE / "docker-compose.yml"
DIFY = COMPOSE / "docker-compose.dify.yml"
UV_CACHES = ("cwd/.uv-cache", "cwd/*/.uv-cache", "cwd/*/*/.uv-cache")
"""uv's cache: cwd/.uv-cache from plugin daemon 0.5.9, inside each plugin's folder in 0.5.4-0.5.8."""
NODES = ("hotstandby-master", "hotstandby-slave")


def compose_config(*files: Path, env_file: Path | None = None) -> dict[str, Any]:
    """`docker-compose config`: the files merged, interpolated and validated, as YAML."""
    args = ["docker-compose"]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    for path in files:
        args += ["-f", str(path)]
    done = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.mark.parametrize("env_file", [None, "election-redis.env", "election-postgres.env"])
def test_docker_compose_accepts_the_base_file(env_file: str | None) -> None:
    config = compose_config(BASE, env_file=COMPOSE / env_file if env_file else None)
    services = config["services"]
    assert {"storage-permissions", *NODES, "haproxy", "lease-redis", "lease-postgres"} <= set(services)
    expected = {None: "static", "election-redis.env": "redis", "election-postgres.env": "postgres"}[env_file]
    for node in NODES:
        assert services[node]["environment"]["ELECTION"] == expected
        assert services[node]["restart"] == "always"
    assert services["lease-redis"]["profiles"] == ["redis"]
    assert services["lease-postgres"]["profiles"] == ["postgres"]


def test_docker_compose_accepts_the_dify_override() -> None:
    services = compose_config(BASE, DIFY)["services"]
    for node, daemon in ((NODES[0], "plugin-daemon-master"), (NODES[1], "plugin-daemon-slave")):
        assert services[daemon]["image"].startswith("langgenius/dify-plugin-daemon:")
        assert services[daemon]["network_mode"] == f"service:{node}"
        volume = "master-storage" if node == NODES[0] else "slave-storage"
        assert f"{volume}:/app/storage:rw" in services[daemon]["volumes"]
        assert f"{volume}:/app/storage:rw" in services[node]["volumes"]
        assert services[node]["environment"]["SERVER_PORT"] == "5003"
        assert services[node]["environment"]["STORAGE_PATH"] == "/app/storage"
        assert services[node]["environment"]["EXCLUDE"] == ",".join(UV_CACHES)
        assert services[node]["environment"]["PLUGIN_DAEMON_GATE"] == "true"
        assert services[node]["environment"]["DIFY_REDIS_URL"].startswith("redis://")
        # The pair elects through Dify's own Redis, with the password from the existing secret.
        environment = services[node]["environment"]
        assert (environment["ELECTION"], environment["FAILOVER"]) == ("redis", "manual")
        assert environment["REDIS_URL"] == environment["DIFY_REDIS_URL"]
        assert environment["REDIS_PASSWORD_FILE"] == "/run/secrets/dify_redis_password"
        assert "REDIS_PASSWORD" in environment["SECRET_VARS"].split()
        assert environment["CLUSTER_NAME"] == "dify-plugin-daemon"
        assert {"source": "dify_redis_password"} in services[node]["secrets"]
        command = services[daemon]["command"]
        assert command[:2] == ["python3", "/usr/local/bin/plugin-gate"], "the daemon runs under its gate"
        assert command[command.index("--") + 1 :] == ["/bin/bash", "-c", "/app/entrypoint.sh"]
        gate = next(v for v in services[daemon]["volumes"] if v.endswith(":/usr/local/bin/plugin-gate:ro"))
        assert Path(gate.split(":")[0]).resolve() == (COMPOSE.parent / "daemon" / "plugin_gate.py").resolve()
        assert "--healthcheck" in services[daemon]["healthcheck"]["test"]
    assert any(v.endswith(":/usr/local/etc/haproxy/haproxy.cfg:ro") for v in services["haproxy"]["volumes"])
    haproxy_cfg = next(v for v in services["haproxy"]["volumes"] if v.endswith("haproxy.cfg:ro")).split(":")[
        0
    ]
    assert haproxy_cfg.endswith("haproxy/examples/dify-plugin-daemon.cfg")
    text = Path(haproxy_cfg).read_text()
    assert "http-check send meth HEAD uri /primary" in text and "check port 5003" in text


def _services(*files: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in files:
        yield from yaml.safe_load(path.read_text())["services"].items()


def test_keys_and_passwords_never_appear_inline() -> None:
    secret_names = {"SERVER_KEY", "DB_PASSWORD", "REDIS_PASSWORD", "DIFY_INNER_API_KEY", "PGPASSWORD"}
    for name, service in _services(BASE, DIFY):
        environment = service.get("environment") or {}
        assert not secret_names & set(environment), f"{name} sets a secret inline"
        for variable, value in environment.items():
            if variable.endswith("_FILE") and variable.removesuffix("_FILE") in secret_names:
                assert str(value).startswith("/run/secrets/"), f"{name}: {variable}={value}"
    secrets_dir = yaml.safe_load(BASE.read_text())["secrets"]["server_key"]["file"]
    assert secrets_dir == "./secrets/server_key"
    assert "/secrets/" in (COMPOSE / ".gitignore").read_text().split()


def test_every_long_running_service_restarts_and_has_a_healthcheck() -> None:
    config = compose_config(BASE, DIFY)
    for name, service in config["services"].items():
        if name == "storage-permissions":
            assert service["restart"] == "no" and service["user"] == "0:0"
            continue
        assert service["restart"] == "always", name
        assert service["healthcheck"]["test"][0] == "CMD", name
    assert {"published": 5002, "target": 5002} in config["services"]["haproxy"]["ports"]
    assert set(config["volumes"]) >= {"master-storage", "master-state", "slave-storage", "slave-state"}
    assert all(not spec or "driver" not in spec for spec in config["volumes"].values())


def test_the_image_runs_as_1000_under_tini_with_a_healthcheck_and_no_build_tools() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    final = text[text.index(" AS runtime\n") :]  # what the daemon and drill targets share
    assert text.rstrip().endswith("FROM runtime AS daemon\nCOPY --from=venv /opt/venv /opt/venv")
    assert "USER 1000:1000" in final
    assert 'VOLUME ["/app/storage", "/app/state"]' in final
    assert "HEALTHCHECK" in final and "/health" in final
    assert "--uid 1000 --gid 1000" in final
    for tool in ("build-essential", "gcc", "make ", "python3-dev"):
        assert tool not in text
    assert "pip uninstall --yes setuptools wheel pip" in text
    image = read_dockerfile(COMPOSE / "Dockerfile", REPO)
    assert image.entrypoint == ("tini", "--", "hotstandby-entrypoint", "hotstandby")
    assert image.cmd == ("serve",)
    assert image.env["STORAGE_PATH"] == "/app/storage" and image.env["STATE_PATH"] == "/app/state"
    assert image.bin_files == {"hotstandby-entrypoint": COMPOSE / "hotstandby-entrypoint"}
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and "!daemon/" in ignore and "!compose/hotstandby-entrypoint" in ignore


def test_storage_permissions_chowns_every_node_volume_to_1000() -> None:
    service = load(BASE, environ={}).services["storage-permissions"]
    script = " ".join(service.argv)
    for mount in service.mounts:
        assert mount.target in script
    node_volumes = {m.volume for n in NODES for m in load(BASE, environ={}).services[n].mounts}
    assert node_volumes == {m.volume for m in service.mounts if m.volume != "haproxy-run"}
    assert "chown -R 1000:1000" in script


class _Recording(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


@pytest.mark.parametrize("env_file", [None, "election-redis.env", "election-postgres.env"])
@pytest.mark.parametrize("node", NODES)
def test_hotstandby_reads_every_variable_the_compose_file_gives_it(node: str, env_file: str | None) -> None:
    project = load(BASE, env_file=COMPOSE / env_file if env_file else None, environ={})
    service = project.services[node]
    assert service.built is not None
    environment = {**service.built.env, **service.environment}
    entrypoint_only = {"SERVER_KEY_FILE", "PGPASSWORD_FILE", "PATH", "PYTHONUNBUFFERED"}
    env = _Recording({k: v for k, v in environment.items() if k not in entrypoint_only})
    env["SERVER_KEY"] = "a-key-of-32-characters-0123456789"
    config = Config.from_env(env)  # raises ConfigError naming a bad variable
    unknown = set(environment) - env.asked - entrypoint_only
    assert not unknown, f"{node}: variables hotstandby never reads: {sorted(unknown)}"
    assert config.storage_path == "/app/storage" and config.exclude == UV_CACHES
    assert config.sync_mode == "sync"
    if env_file is None:
        assert (config.election, config.failover) == ("static", "auto")
        assert config.failover_timeout <= 6


@pytest.mark.parametrize("node", NODES)
def test_the_dify_override_elects_through_difys_redis_with_a_key_prefix_per_pair(node: str) -> None:
    services = compose_config(BASE, DIFY)["services"]
    environment = {k: str(v) for k, v in services[node]["environment"].items()}
    entrypoint_only = {
        "SERVER_KEY_FILE",
        "PGPASSWORD_FILE",
        "DIFY_REDIS_PASSWORD_FILE",
        "REDIS_PASSWORD_FILE",
    }
    env = {k: v for k, v in environment.items() if k not in entrypoint_only}
    # What hotstandby-entrypoint loads from the secrets named in SECRET_VARS.
    env.update(SERVER_KEY="a-key-of-32-characters-0123456789", REDIS_PASSWORD="dify-redis-password")
    config = Config.from_env(env)
    assert (config.election, config.failover) == ("redis", "manual")
    assert config.redis_url == "redis://redis:6379/0" and config.redis_password == "dify-redis-password"
    assert config.cluster_name == "dify-plugin-daemon"
    assert "dify-redis-password" not in repr(config)
    other_pair = compose_config_with(BASE, DIFY, HOTSTANDBY_CLUSTER_NAME="second-pair")["services"]
    assert other_pair[node]["environment"]["CLUSTER_NAME"] == "second-pair"


def compose_config_with(*files: Path, **variables: str) -> dict[str, Any]:
    args = ["docker-compose", *(a for path in files for a in ("-f", str(path))), "config"]
    env = {**os.environ, **variables}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_plain_pair_keeps_static_auto_only_with_the_readme_saying_why_and_the_risk() -> None:
    comments = "\n".join(line for line in BASE.read_text().splitlines() if line.startswith("#"))
    assert "ELECTION=static with FAILOVER=auto" in comments and 'README "Failover"' in comments
    assert "partition" in comments and "conflicts" in comments
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Which election", 1)[1].split("\n## ", 1)[0]
    assert "compose/docker-compose.yml" in section and "static" in section and "FAILOVER=auto" in section
    assert "why" in section.lower() and "risk" in section.lower() and "partition" in section
    assert "docker-compose.dify.yml" in section and "Redis" in section


def test_interpolation_follows_compose() -> None:
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET}-${UNSET:-d}-${EMPTY:-e}-${EMPTY-f}-$$SET-$SET", variables) == "x-d-e--$SET-x"
    with pytest.raises(ComposeError, match="NEEDED is required: say so"):
        interpolate("${NEEDED:?say so}", variables, "here")


def test_the_runner_reads_the_services_as_docker_would(tmp_path: Path) -> None:
    project = load(BASE, environ={})
    master = project.services["hotstandby-master"]
    assert master.argv == ("tini", "--", "hotstandby-entrypoint", "hotstandby", "serve")
    assert master.environment["SYNC_TARGET"] == "http://hotstandby-slave:5002"
    assert master.depends_on == {"storage-permissions": "service_completed_successfully"}
    assert master.secrets == (("server_key", "/run/secrets/server_key"),)
    assert project.services["haproxy"].argv[:2] == ("haproxy", "-W")
    names = [s.name for s in project.selected()]
    assert names.index("storage-permissions") < names.index("hotstandby-master") < names.index("haproxy")
    assert "lease-redis" not in names
    assert "lease-redis" in [s.name for s in load(BASE, profiles=("redis",), environ={}).selected()]
    shared = tmp_path / "compose.yml"
    shared.write_text(
        "services:\n  a: {image: x, command: [x]}\n  b: {image: y, network_mode: 'service:a'}\n"
    )
    assert [s.name for s in load(shared, environ={}).selected(("a",))] == ["a"]
    shared_b = load(shared, environ={}).services["b"]
    assert shared_b.network_of == "a" and shared_b.depends_on == {"a": "service_started"}
    assert [s.name for s in load(shared, environ={}).selected(("b",))] == ["a", "b"]
    shared.write_text("services:\n  a: {image: x, command: [x], network_mode: host}\n")
    with pytest.raises(ComposeError, match="service a network_mode: 'host': only service:NAME"):
        load(shared, environ={})


def test_override_files_merge_as_docker_compose_merges_them(tmp_path: Path) -> None:
    """The rules docker-compose.dify.yml relies on: environment merged by name, volumes and secrets
    by container path, command replaced, lists such as ports appended, new services added."""
    base, override = tmp_path / "base.yml", tmp_path / "override.yml"
    base.write_text(
        "services:\n"
        "  a:\n"
        "    image: x\n"
        "    command: [serve, --old]\n"
        "    environment: [KEEP=1, PORT=5002]\n"
        "    volumes: [data:/app/storage, ./one.cfg:/etc/app.cfg:ro]\n"
        "    ports: ['5002:5002']\n"
        "    depends_on: [b]\n"
        "  b: {image: y, command: [y]}\n"
        "volumes: {data: {}}\n"
    )
    (tmp_path / "one.cfg").write_text("one")
    (tmp_path / "two.cfg").write_text("two")
    override.write_text(
        "services:\n"
        "  a:\n"
        "    command: [serve]\n"
        "    environment: {PORT: '5003', NEW: x}\n"
        "    volumes: [./two.cfg:/etc/app.cfg:ro]\n"
        "    ports: ['8404:8404']\n"
        "    depends_on: {c: {condition: service_healthy}}\n"
        "  c: {image: z, command: [z]}\n"
    )
    project = load([base, override], environ={})
    a = project.services["a"]
    assert a.command == ("serve",)
    assert a.environment == {"KEEP": "1", "PORT": "5003", "NEW": "x"}
    assert {m.target: (m.volume or m.source) for m in a.mounts} == {
        "/app/storage": "data",
        "/etc/app.cfg": (tmp_path / "two.cfg").resolve(),
    }
    assert a.ports == ("5002:5002", "8404:8404")
    assert a.depends_on == {"b": "service_started", "c": "service_healthy"}
    assert set(project.services) == {"a", "b", "c"}


def test_the_dify_override_merges_onto_the_pair() -> None:
    project = load([BASE, BASE.parent / "docker-compose.dify.yml"], environ={})
    master = project.services["hotstandby-master"]
    assert master.environment["SERVER_PORT"] == "5003" and master.environment["ELECTION"] == "redis"
    assert master.environment["STORAGE_PATH"] == "/app/storage"  # kept from the base file
    daemon = project.services["plugin-daemon-master"]
    assert daemon.network_of == "hotstandby-master"
    haproxy_cfg = [m for m in project.services["haproxy"].mounts if m.target.endswith("haproxy.cfg")]
    assert len(haproxy_cfg) == 1 and haproxy_cfg[0].source is not None
    assert haproxy_cfg[0].source.name == "dify-plugin-daemon.cfg"


def test_container_paths_and_names_are_translated_on_boundaries_only() -> None:
    paths = Translator({"/app/storage": "/h/st", "/app/storage/cwd": "/h/cwd", "/run/haproxy": "/h/run"})
    assert paths("/app/storage") == "/h/st"
    assert paths("/app/storage/cwd/x") == "/h/cwd/x"
    assert paths("/app/storage/plugin") == "/h/st/plugin"
    assert paths("/app/storages /x/app/storage") == "/app/storages /x/app/storage"
    assert paths("stats socket /run/haproxy/admin.sock mode 600") == "stats socket /h/run/admin.sock mode 600"
    hosts = Translator(
        hosts={"haproxy": "127.9.9.2", "hotstandby-slave": "127.9.9.3"}, own_address="127.9.9.4"
    )
    assert hosts("http://hotstandby-slave:5002") == "http://127.9.9.3:5002"
    assert (
        hosts("haproxy -f /usr/local/etc/haproxy/haproxy.cfg")
        == "haproxy -f /usr/local/etc/haproxy/haproxy.cfg"
    )
    assert hosts("bind 0.0.0.0:5002") == "bind 127.9.9.4:5002"
    assert hosts("http://127.0.0.1:5002/health") == "http://127.9.9.4:5002/health"
