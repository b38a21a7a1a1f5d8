"""k8s/dify/: the real plugin daemon in every pod, under its gate, valid once the patch is applied.

kustomize is not installed here, so the strategic merge the overlay relies on (containers,
init containers, env and volumes merged by name) is done by `merged_statefulset`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from daemon.config import Config
from replication.exclude import PathMatcher
from tests.deploy.test_k8s import KUBERNETES_VERSION, SECRET_STAND_INS, env_of, statefulset, wrapper_script

pytestmark = pytest.mark.timeout(30)

OVERLAY = Path(__file__).resolve().parents[2] / "k8s" / "dify"
Doc = dict[str, Any]
DIFY_STAND_INS = {"redis-url": "redis://:pw@dify-redis:6379/0"}


def load(name: str) -> Doc:
    doc: Doc = yaml.safe_load((OVERLAY / name).read_text())
    return doc


def merge_named(base: list[Doc], patch: list[Doc]) -> list[Doc]:
    merged = {item["name"]: item for item in base}
    for item in patch:
        merged[item["name"]] = merge(merged[item["name"]], item) if item["name"] in merged else item
    return list(merged.values())


def merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all("name" in i for i in base + patch):
        return merge_named(base, patch)
    return patch


def merged_statefulset() -> Doc:
    result: Doc = merge(statefulset(), load("plugin-daemon.yaml"))
    return result


def containers() -> dict[str, Doc]:
    return {c["name"]: c for c in merged_statefulset()["spec"]["template"]["spec"]["containers"]}


def test_the_overlay_lists_its_files_and_the_base() -> None:
    kustomization = load("kustomization.yaml")
    assert kustomization["resources"] == ["../", "service-plugin-daemon.yaml"]
    assert [p["path"] for p in kustomization["patches"]] == ["plugin-daemon.yaml"]


@pytest.mark.parametrize("doc", [merged_statefulset(), load("service-plugin-daemon.yaml")])
def test_the_patched_statefulset_and_the_service_are_valid(doc: Doc) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_daemon_runs_under_its_gate_asking_hotstandby_in_the_same_pod() -> None:
    node, daemon = containers()["hotstandby"], containers()["plugin-daemon"]
    command = daemon["command"]
    assert command[:2] == ["python3", "/gate/plugin-gate"]
    assert command[command.index("--") + 1 :] == ["/bin/bash", "-c", "/app/entrypoint.sh"]
    node_port = node["ports"][0]["containerPort"]
    assert command[command.index("--url") + 1] == f"http://127.0.0.1:{node_port}"
    key_file = Path(command[command.index("--key-file") + 1])
    mounts = {m["name"]: m["mountPath"] for m in daemon["volumeMounts"]}
    assert key_file.parent == Path(mounts["hotstandby-key"])
    volumes = {v["name"]: v for v in merged_statefulset()["spec"]["template"]["spec"]["volumes"]}
    assert volumes["hotstandby-key"]["secret"]["items"] == [{"key": "server-key", "path": key_file.name}]
    assert mounts["data"] == "/app/storage", "the daemon works on the replicated storage"


def test_the_init_container_copies_the_gate_from_the_installed_package(tmp_path: Path) -> None:
    [init] = [
        c
        for c in merged_statefulset()["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "plugin-gate"
    ]
    script = init["args"][0].replace("/gate/", f"{tmp_path}/").replace("python ", f"{sys.executable} ")
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=20)
    copied = tmp_path / "plugin-gate"
    help_text = subprocess.run(
        ["python3", str(copied), "--help"], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    assert "--orphan-timeout" in help_text, "the gate runs with a bare python3 (standard library only)"


def test_the_node_waits_for_its_daemon_and_is_gated() -> None:
    node, daemon = containers()["hotstandby"], containers()["plugin-daemon"]
    env = {}
    for name, item in env_of(node).items():
        if "value" in item:
            env[name] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[name] = (DIFY_STAND_INS if ref["name"] == "dify-plugin-daemon" else SECRET_STAND_INS)[
                ref["key"]
            ]
    env.update(ROLE="slave", SYNC_SOURCE="http://hotstandby-0.hotstandby:5002")
    assert "SYNC_SOURCE" in wrapper_script()
    config = Config.from_env(env)
    daemon_port = daemon["ports"][0]["containerPort"]
    assert config.plugin_daemon_gate and config.plugin_daemon_url == f"http://127.0.0.1:{daemon_port}"
    assert env_of(daemon)["SERVER_PORT"]["value"] == str(daemon_port)
    assert config.dify_redis_url.startswith("redis://")
    for cache in ("cwd/.uv-cache/x", "cwd/langgenius/openai-0.0.1@abc/.uv-cache/x"):
        assert PathMatcher(config.exclude).matches(cache), f"{cache}: uv's cache is not copied"
    service = load("service-plugin-daemon.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == daemon["ports"][0]["name"]
