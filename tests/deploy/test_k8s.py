"""The Kubernetes manifests: valid for the pinned Kubernetes version, and consistent with each other
and with the daemon (selectors and labels, ports, probe paths, environment variable names)."""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from daemon.config import Config
from replication.exclude import PathMatcher
from tests.support.recording_env import RecordingEnv

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.31"
"""Validated against this version's schemas, shipped offline with kubernetes-validate."""

Doc = dict[str, Any]


def manifests() -> list[tuple[str, Doc]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def kind(name: str) -> list[Doc]:
    return [doc for _file, doc in manifests() if doc["kind"] == name]


def one(kind_name: str, name: str) -> Doc:
    [doc] = [doc for doc in kind(kind_name) if doc["metadata"]["name"] == name]
    return doc


def statefulset() -> Doc:
    [sts] = kind("StatefulSet")
    return sts


def node_container() -> Doc:
    [container] = statefulset()["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def wrapper_script() -> str:
    container = node_container()
    assert container["command"] == ["/bin/sh", "-c"], "the node's wrapper script is expected in args[0]"
    return str(container["args"][0])


def cronjob_pod(name: str) -> Doc:
    spec: Doc = one("CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]
    return spec


def pod_templates() -> Iterator[tuple[str, Doc]]:
    yield "StatefulSet", statefulset()["spec"]["template"]
    for cronjob in kind("CronJob"):
        yield f"CronJob {cronjob['metadata']['name']}", cronjob["spec"]["jobTemplate"]["spec"]["template"]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# -- the daemon's side of the cross-references ----------------------------------------------------
def config_variables() -> set[str]:
    """Names daemon/config.py reads: self.<reader or helper>("NAME", ...), self.env.get("NAME"),
    and "NAME" in self.env (checked against what the reader really asks for, below)."""
    tree = ast.parse((REPO / "daemon" / "config.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if _is_name(owner, "self") or _is_self_env(owner):
                names.add(_variable_name(node.args[0]))
        if isinstance(node, ast.Compare) and any(_is_self_env(c) for c in node.comparators):
            names.add(_variable_name(node.left))
    return names - {""}


def _variable_name(node: ast.expr) -> str:
    """The string constant if it looks like an environment variable's name, else ""."""
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.match(r"^[A-Z][A-Z0-9_]*$", node.value)
    ):
        return node.value
    return ""


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_self_env(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "env" and _is_name(node.value, "self")

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


def operator_variables() -> set[str]:
    """Names the operator commands (daemon/ctl.py) read from the environment."""
    return set(re.findall(r'environ\.get\(\s*"([A-Z0-9_]+)"', (REPO / "daemon" / "ctl.py").read_text()))


def api_paths() -> set[str]:
    """Every path-like string in daemon/api.py (its routes are registered from literals)."""
    tree = ast.parse((REPO / "daemon" / "api.py").read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"/[\w/-]+", node.value)
    }


# -- schemas ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("file", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_for_the_pinned_kubernetes_version(file: str, doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{file}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_schema_check_rejects_a_misspelt_field_and_a_wrong_type() -> None:
    misspelt = copy.deepcopy(statefulset())
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(statefulset())
    wrong_type["spec"]["replicas"] = "2"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_sets_the_namespace_the_manifests_assume() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    for binding in kind("RoleBinding"):
        assert {s["namespace"] for s in binding["subjects"]} == {kustomization["namespace"]}
    assert all("namespace" not in doc["metadata"] for _file, doc in manifests())


# -- selectors and labels --------------------------------------------------------------------------
def test_selectors_match_the_node_pods_and_nothing_else() -> None:
    sts = statefulset()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    selectors = {"StatefulSet": sts["spec"]["selector"]["matchLabels"]}
    for service in kind("Service"):
        selectors[f"Service {service['metadata']['name']}"] = service["spec"]["selector"]
    for pdb in kind("PodDisruptionBudget"):
        selectors[f"PodDisruptionBudget {pdb['metadata']['name']}"] = pdb["spec"]["selector"]["matchLabels"]
    affinity = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    for term in affinity["requiredDuringSchedulingIgnoredDuringExecution"]:
        selectors["pod anti-affinity"] = term["labelSelector"]["matchLabels"]
    assert len(selectors) == 5
    for owner, selector in selectors.items():
        assert selector, f"{owner} has an empty selector"
        assert selects(selector, labels), f"{owner} selects {selector}, the pods are labelled {labels}"
        for where, template in pod_templates():
            if where != "StatefulSet":
                assert not selects(selector, template["metadata"]["labels"]), f"{owner} also selects {where}"


def test_the_headless_service_names_every_pod_and_the_leader_service_only_ready_ones() -> None:
    sts = statefulset()
    headless = one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True, "replicas are never Ready: peers need DNS"
    leader = one("Service", "hotstandby-leader")
    assert leader["spec"].get("clusterIP") != "None"
    assert not leader["spec"].get("publishNotReadyAddresses", False)
    assert node_container()["readinessProbe"]["httpGet"]["path"] == "/primary"


def test_rollouts_and_scaling_do_not_wait_for_replicas_to_become_ready() -> None:
    spec = statefulset()["spec"]
    assert spec["updateStrategy"]["type"] == "OnDelete"
    assert spec["podManagementPolicy"] == "Parallel"
    [pdb] = kind("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


# -- ports and paths -------------------------------------------------------------------------------
def test_services_probes_and_peer_urls_use_the_container_port() -> None:
    container = node_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    number = int(env_of(container)["SERVER_PORT"]["value"])
    assert set(ports.values()) == {number}, "the container port must be the port the daemon listens on"
    for service in kind("Service"):
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target == number, f"{service['metadata']['name']}: {target}"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    urls = re.findall(r"https?://[^\s\",]+", wrapper_script())
    for container in (node_container(), cronjob_pod("hotstandby-drill")["spec"]["containers"][0]):
        urls += env_of(container)["HOTSTANDBY_NODES"]["value"].split(",")
    sts = statefulset()
    pod_names = {f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])}
    replicas = sts["spec"]["replicas"]
    assert len(urls) == replicas * (replicas - 1) + 2 * replicas  # each pod's peers, then two node lists
    for url in urls:
        match = re.fullmatch(r"http://([\w-]+)\.([\w-]+):(\d+)", url)
        assert match, url
        assert match.group(1) in pod_names, f"{url}: no such pod"
        assert match.group(2) == sts["spec"]["serviceName"], f"{url}: not the headless Service"
        assert int(match.group(3)) == number, f"{url}: not the daemon's port"


def test_probe_paths_are_endpoints_of_the_daemon() -> None:
    container = node_container()
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {"startupProbe": "/liveness", "livenessProbe": "/liveness", "readinessProbe": "/primary"}
    assert set(paths.values()) <= api_paths()


# -- environment -----------------------------------------------------------------------------------
def test_the_config_variable_list_is_complete() -> None:
    parsed = config_variables()
    assert {"ROLE", "SERVER_KEY", "REDIS_URL", "STATE_PATH", "EXCLUDE"} <= parsed
    env = RecordingEnv({"SERVER_HOST": "127.0.0.1"})  # the defaults need a key beyond loopback
    Config.from_env(env)
    assert env.asked <= parsed, f"read by Config but missed by the parser: {env.asked - parsed}"


def test_every_variable_the_node_gets_is_read_by_config_or_the_operator_commands() -> None:
    script = wrapper_script()
    container = node_container()
    given = set(env_of(container)) | set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", script))
    wrapper_only = {"POD_NAME"}
    for name in wrapper_only:
        assert "${" + name in script, f"{name} is set for the wrapper script, which does not use it"
    unknown = given - wrapper_only - config_variables() - operator_variables()
    assert not unknown, f"read neither by daemon/config.py nor daemon/ctl.py: {sorted(unknown)}"
    [init] = statefulset()["spec"]["template"]["spec"]["initContainers"]
    assert not init.get("env")


def test_every_variable_the_drill_gets_is_read_by_config_or_the_operator_commands() -> None:
    [container] = cronjob_pod("hotstandby-drill")["spec"]["containers"]
    unknown = set(env_of(container)) - config_variables() - operator_variables()
    assert not unknown, f"read neither by daemon/config.py nor daemon/ctl.py: {sorted(unknown)}"


def test_the_wrapper_gives_each_pod_one_role_and_every_other_pod_as_peer() -> None:
    script = wrapper_script()
    arms = dict(re.findall(r"^\s*(\d+)\)\s*(.*?);;", script, re.MULTILINE))
    sts = statefulset()
    replicas = sts["spec"]["replicas"]
    assert replicas == 3, "one leader and two replicas (the issue's shape)"
    assert sorted(arms) == [str(i) for i in range(replicas)], (
        f"replicas={replicas} but the wrapper handles pods {sorted(arms)}"
    )
    roles = {ordinal: re.search(r"ROLE=(\w+)", arm).group(1) for ordinal, arm in arms.items()}  # type: ignore[union-attr]
    assert roles == {"0": "master", **{str(i): "slave" for i in range(1, replicas)}}
    for ordinal, arm in arms.items():
        peer = "SYNC_TARGET" if roles[ordinal] == "master" else "SYNC_SOURCE"
        listed = re.search(rf'{peer}="([^"]+)"', arm)
        assert listed, arm
        hosts = [re.match(r"http://([\w-]+)\.", url).group(1) for url in listed.group(1).split(",")]  # type: ignore[union-attr]
        others = [f"{sts['metadata']['name']}-{i}" for i in range(replicas) if str(i) != ordinal]
        assert hosts == others, f"pod {ordinal} must list every other pod as its peers: {hosts}"
    assert script.rstrip().endswith("exec hotstandby serve")


SECRET_STAND_INS = {"server-key": "k" * 32, "redis-url": "redis://redis:6379/0"}


def test_each_pods_environment_is_a_configuration_the_daemon_accepts() -> None:
    env = {}
    for name, item in env_of(node_container()).items():
        if "value" in item:
            env[name] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[name] = SECRET_STAND_INS[item["valueFrom"]["secretKeyRef"]["key"]]
    arms = re.findall(r"^\s*\d+\)\s*(.*?);;", wrapper_script(), re.MULTILINE)
    assert arms
    for arm in arms:
        exported = {name: value.strip('"') for name, value in re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", arm)}
        config = Config.from_env({**env, **exported})
        listed = exported.get("SYNC_TARGET", exported.get("SYNC_SOURCE", ""))
        assert config.election == env["ELECTION"] and config.peer_urls == tuple(listed.split(","))
        assert config.storage_path == "/app/storage" and config.state_path == "/app/state"
        assert PathMatcher(config.exclude).matches("cwd/.uv-cache/wheels/x.whl"), "uv's cache is not copied"


def test_a_lease_backend_elects_the_leader() -> None:
    env = env_of(node_container())
    election = env["ELECTION"]["value"]
    assert election in ("redis", "postgres"), "no static election on Kubernetes: nothing fences a partition"
    assert "FAILOVER" not in env
    url = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}[election]
    assert "secretKeyRef" in env[url]["valueFrom"], f"{url} carries a password: it comes from the Secret"
    assert "secretKeyRef" in env["SERVER_KEY"]["valueFrom"]


def test_secret_keys_are_the_ones_the_readme_creates() -> None:
    readme = (K8S / "README.md").read_text()
    command = re.search(r"kubectl create secret generic (\S+)((?:\\\n|[^\n])*)", readme)
    assert command, "k8s/README.md shows the kubectl command that creates the Secret"
    created = set(re.findall(r"--from-literal=([\w-]+)=", command.group(2)))
    for where, template in pod_templates():
        for container in template["spec"]["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == command.group(1), f"{where}: secret {ref['name']}"
                    assert ref["key"] in created, f"{where}: key {ref['key']} is not created in the README"


# -- storage and security --------------------------------------------------------------------------
def test_storage_and_state_live_on_the_claimed_volume_owned_by_the_daemon_user() -> None:
    sts = statefulset()
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    container = node_container()
    env = env_of(container)
    on_claim = {
        m["mountPath"]: m.get("subPath", "") for m in container["volumeMounts"] if m["name"] == "data"
    }
    assert on_claim.keys() == {env["STORAGE_PATH"]["value"], env["STATE_PATH"]["value"]}
    [init] = sts["spec"]["template"]["spec"]["initContainers"]
    [init_mount] = [m for m in init["volumeMounts"] if m["name"] == "data"]
    script = " ".join(init["args"])
    user = container["securityContext"]["runAsUser"]
    group = container["securityContext"]["runAsGroup"]
    assert (user, group) == (1000, 1000)
    assert f"chown -h {user}:{group}" in script
    for sub in on_claim.values():
        assert f"{init_mount['mountPath']}/{sub}" in script, f"the init container does not create {sub}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_every_container_requests_resources() -> None:
    for where, template in pod_templates():
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= requests.keys(), f"{where}: {container['name']}"


def test_every_mount_names_a_volume() -> None:
    for where, template in pod_templates():
        spec = template["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        if where == "StatefulSet":
            volumes |= {c["metadata"]["name"] for c in statefulset()["spec"]["volumeClaimTemplates"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: {container['name']} mounts {mount['name']}"


# -- the CronJobs ----------------------------------------------------------------------------------
def test_the_preload_job_runs_the_preload_command_in_the_leaders_pod() -> None:
    pod = cronjob_pod("hotstandby-preload")
    [container] = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["exec", "svc/hotstandby-leader"]
    assert f"--container={node_container()['name']}" in args
    script_path = args[-1]
    config_mount = next(m for m in node_container()["volumeMounts"] if m["mountPath"] == "/config")
    volume = next(
        v for v in statefulset()["spec"]["template"]["spec"]["volumes"] if v["name"] == config_mount["name"]
    )
    configmap = one("ConfigMap", volume["configMap"]["name"])
    assert script_path.startswith("/config/") and script_path.removeprefix("/config/") in configmap["data"]
    script = configmap["data"][script_path.removeprefix("/config/")]
    assert "/primary" in script, "the script checks it runs on the writable leader"
    assert script.rstrip().endswith("exec hotstandby preload --from /config/plugins.txt")
    assert "plugins.txt" in configmap["data"]


def test_the_preload_job_may_exec_into_pods_and_nothing_more() -> None:
    pod = cronjob_pod("hotstandby-preload")
    account = pod["spec"]["serviceAccountName"]
    assert one("ServiceAccount", account)
    [binding] = [b for b in kind("RoleBinding") if any(s["name"] == account for s in b["subjects"])]
    assert {"kind": "ServiceAccount", "name": account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]
    ]
    role = one("Role", binding["roleRef"]["name"])
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert ("pods/exec", "create") in granted and ("pods", "list") in granted
    assert all(verb in ("get", "list", "create") for _res, verb in granted)


def test_the_drill_runs_quarterly_once_and_never_retries() -> None:
    cronjob = one("CronJob", "hotstandby-drill")
    _minute, _hour, day, months, weekday = cronjob["spec"]["schedule"].split()
    assert (day, months, weekday) == ("1", "1,4,7,10", "*")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    [container] = cronjob_pod("hotstandby-drill")["spec"]["containers"]
    assert container["command"] == ["hotstandby", "drill"]
    assert "hotstandby drill" in (K8S / "cronjob-drill.yaml").read_text().split("apiVersion")[0]
