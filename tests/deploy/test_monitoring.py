"""The monitoring files: promtool checks the Prometheus configs and rules and runs the alerts' unit
tests; the dashboard's queries are checked as PromQL; the files agree with each other and with k8s/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    ALERTS,
    MONITORING,
    REPO,
    alert_rules,
    dashboard,
    dashboard_queries,
    metric_names,
    with_grafana_variables,
)

pytestmark = pytest.mark.timeout(30)

ALERT_TESTS = MONITORING / "tests" / "alerts.test.yml"
PROMETHEUS_CONFIGS = ("prometheus.yml", "prometheus-kubernetes.yml")


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make system-deps` installs it (Debian package prometheus)"
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MONITORING / name).read_text())
    return data


# -- promtool --------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS)
def test_promtool_accepts_the_prometheus_config_and_its_rule_files(config: str) -> None:
    output = promtool("check", "config", config)
    assert "SUCCESS: 1 rule files found" in output


def test_promtool_accepts_the_alert_rules() -> None:
    output = promtool("check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_every_alert_has_unit_tests_that_fire_and_that_stay_quiet_and_they_pass() -> None:
    promtool("test", "rules", str(ALERT_TESTS.relative_to(MONITORING)))
    cases = [
        case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"no test where {rule['alert']} fires"
        assert any(not case["exp_alerts"] for case in mine), f"no test where {rule['alert']} stays quiet"


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": with_grafana_variables(expr)}
        for i, expr in enumerate(queries.values())
    ]
    leftover = [rule["expr"] for rule in rules if "$" in rule["expr"]]
    assert not leftover, f"Grafana variables with no stand-in in tests/deploy/promql.py: {leftover}"
    (tmp_path / "dashboard.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    assert f"SUCCESS: {len(rules)} rules found" in promtool(
        "check", "rules", "dashboard.rules.yml", cwd=tmp_path
    )


def test_the_query_parser_finds_metrics_and_nothing_else() -> None:
    expr = (
        'increase(a_total{reason=~"x|y"}[1d]) > 0 or (b > 0 unless b offset 1d) - ignoring (le)'
        ' histogram_quantile(0.95, sum by (le) (rate(c_bucket{pair=~"$pair"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"a_total", "b", "c_bucket"}


# -- the alerts ------------------------------------------------------------------------------------
def test_every_alert_has_a_severity_the_alertmanager_routes_and_says_what_happened() -> None:
    routed = {"warning"} | {
        m.split("=", 1)[1].strip('"')
        for r in load("alertmanager.yml")["route"]["routes"]
        for m in r["matchers"]
    }
    for rule in alert_rules():
        assert rule["labels"]["severity"] in routed, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_the_scrape_configs_set_the_labels_the_alerts_use() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    jobs = set(re.findall(r'job="([^"]+)"', exprs))
    assert jobs == {"hotstandby"}
    assert "pair" in exprs
    for name in PROMETHEUS_CONFIGS:
        config = load(name)
        [job] = config["scrape_configs"]
        assert job["job_name"] in jobs, name
        assert config["rule_files"] == [ALERTS.name]
        static_labels = {k for group in job.get("static_configs", []) for k in group.get("labels", {})}
        relabelled = {
            step["target_label"] for step in job.get("relabel_configs", []) if "target_label" in step
        }
        assert "pair" in static_labels | relabelled, name


def test_the_kubernetes_scrape_config_finds_the_statefulset_pods() -> None:
    k8s = REPO / "k8s"
    [job] = load("prometheus-kubernetes.yml")["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    [name] = sd["names"]
    headless = yaml.safe_load((k8s / "service-headless.yaml").read_text())
    namespace = yaml.safe_load((k8s / "kustomization.yaml").read_text())["namespace"]
    [port] = headless["spec"]["ports"]
    assert name == f"_{port['name']}._tcp.{headless['metadata']['name']}.{namespace}.svc.cluster.local"
    assert headless["spec"]["publishNotReadyAddresses"] is True, "replicas must be scraped too"
    replacements = {step["target_label"]: step.get("replacement") for step in job["relabel_configs"]}
    assert replacements["namespace"] == namespace
    statefulset = yaml.safe_load((k8s / "statefulset.yaml").read_text())["metadata"]["name"]
    assert replacements["pair"] == f"{namespace}/{statefulset}"


# -- the dashboard ---------------------------------------------------------------------------------
def test_the_dashboard_shows_lag_pending_throughput_role_epoch_and_failovers() -> None:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    uses = {p["title"]: set().union(*(metric_names(t["expr"]) for t in p["targets"])) for p in panels}
    for metric in (
        "plugin_sync_lag_seconds",
        "plugin_sync_pending_changes",
        "plugin_sync_bytes_total",
        "plugin_sync_is_leader",
        "plugin_sync_epoch",
    ):
        assert any(metric in used for used in uses.values()), metric
    failovers = [title for title in uses if "failover" in title.lower()]
    assert failovers and all("plugin_sync_epoch" in uses[title] for title in failovers)


def test_the_dashboard_layout_and_data_source_are_consistent() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        xs, ys = range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        cells = {(x, y) for x in xs for y in ys}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert 'pair=~"$pair"' in target["expr"], f"{panel['title']}: not filtered by the pair variable"


# -- Alertmanager ----------------------------------------------------------------------------------
def test_alertmanager_sends_to_slack_with_the_webhook_url_kept_out_of_the_file() -> None:
    text = (MONITORING / "alertmanager.yml").read_text()
    config = yaml.safe_load(text)
    assert "hooks.slack.com" not in text and "slack_api_url" not in config.get("global", {})
    receivers = {r["name"]: r for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {r["receiver"] for r in routes} <= receivers.keys()
    for receiver in receivers.values():
        assert receiver["slack_configs"], receiver["name"]
        for slack in receiver["slack_configs"]:
            assert "api_url" not in slack
            assert slack["api_url_file"].startswith("/etc/alertmanager/secrets/")


def test_alertmanager_inhibitions_name_real_alerts_and_labels_they_carry() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    for rule in load("alertmanager.yml")["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname\s*(?:=~|!=|=)\s*"([^"]*)"', matcher)
            assert match, f"{matcher}: only alertname matchers are expected"
            assert [a for a in alerts if re.fullmatch(match.group(1), a)], f"{matcher} matches no alert"
        source = re.fullmatch(r'alertname="(\w+)"', rule["source_matchers"][0])
        assert source, rule
        grouped = re.search(r"by \(([^)]*)\)", alerts[source.group(1)]["expr"])
        carried = (
            {"job", "instance", "pair"} if not grouped else {g.strip() for g in grouped.group(1).split(",")}
        )
        assert set(rule["equal"]) <= carried, f"{source.group(1)} has no {set(rule['equal']) - carried}"
