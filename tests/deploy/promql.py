"""The PromQL of the alert rules and the Grafana dashboard, and the metric names it uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "atan2", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*")

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m", "$pair": ".*"}
"""What Grafana puts in place of its variables, for checking the dashboard's queries with promtool."""


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not functions, keywords, labels or durations."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> dict[str, str]:
    """Every panel query, keyed by "<panel title>/<refId>"."""
    return {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    }


def dashboard_variable_metrics() -> set[str]:
    """Metrics the template variables query with Grafana's label_values(metric, label)."""
    names = set()
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        names.update(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", text))
    return names


def used_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used ("alert X", "panel Y/A", "variable")."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for where, expr in dashboard_queries().items():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {where}")
    for name in dashboard_variable_metrics():
        used.setdefault(name, set()).add("dashboard variable")
    return used


def with_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr
