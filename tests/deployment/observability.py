"""The PromQL of deploy/prometheus/alerts.yml and deploy/grafana/cutemarkets.json, and the metric names it uses.

A dashboard or an alert on a name nobody exports shows nothing and never fires, silently, and so does one that
matches or groups by a label its metric does not have; the tests compare the names and labels found here with what
a gateway's and a relay's ``/metrics`` really export (tests/e2e/test_observability.py).

``metric_names`` reads PromQL the way its grammar separates names from everything else: string literals, label
matchers (``{...}``), ranges and subqueries (``[...]``) and grouping clauses (``by (...)``, ``on (...)``, ...) hold
no metric name, an identifier followed by ``(`` is a function or an aggregation, and the rest are keywords,
numbers and durations, or metric names. Grafana's ``$variables`` are removed first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parents[2]
ALERTS_FILE = PROJECT_DIR / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = PROJECT_DIR / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD_FILE = PROJECT_DIR / "deploy" / "grafana" / "cutemarkets.json"

PROMETHEUS_OWN = frozenset({"up"})
"""Series Prometheus writes itself for each target, not exported by any process."""

TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds to every series it scrapes."""

RELAY_PREFIX = "cutemarkets_relay_"
"""Names of the feed relay's metrics (its probe port); every other ``cutemarkets_`` name is the gateway's."""

KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
    "atan2", "inf", "nan",
})

GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
BRACES = re.compile(r"\{[^{}]*\}")
BRACKETS = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING_LABELS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE)
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$")


def metric_names(expression: str) -> set[str]:
    """The metric names *expression* (PromQL, possibly with Grafana variables) selects."""
    text = GRAFANA_VARIABLE.sub("", expression)
    text = STRING.sub('""', text)
    text = BRACES.sub("", text)
    text = BRACKETS.sub("", text)
    text = GROUPING.sub("", text)
    return {
        name for name, call in IDENTIFIER.findall(text)
        if not call and name.lower() not in KEYWORDS
    }


def labels_used(expression: str) -> tuple[dict[str, set[str]], set[str]]:
    """The labels *expression* matches on, per metric name (``name{label="..."}``), and those it groups or joins by
    (``by (...)``, ``on (...)``, ...)."""
    text = STRING.sub('""', GRAFANA_VARIABLE.sub("", expression))
    matched: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(text):
        matched.setdefault(name, set()).update(MATCHER.findall(matchers))
    grouped = {
        label.strip() for labels in GROUPING_LABELS.findall(text) for label in labels.split(",") if label.strip()
    }
    return matched, grouped


def label_problems(expressions: dict[str, str], exported: dict[str, set[str]]) -> list[str]:
    """What the expressions match or group by that the metrics they use do not carry, given each exported series
    name's labels. Expressions on names *exported* does not know (another process's) are left to their own check."""
    problems = []
    known = {**exported, **{name: set() for name in PROMETHEUS_OWN}}
    for where, expression in expressions.items():
        names = metric_names(expression) & known.keys()
        if not names:
            continue
        matched, grouped = labels_used(expression)
        for name, labels in matched.items():
            if name in known and (missing := labels - known[name] - TARGET_LABELS):
                problems.append(f"{where}: {name} has no label {sorted(missing)}")
        available = set().union(*(known[name] for name in names)) | TARGET_LABELS
        if missing := grouped - available:
            problems.append(f"{where}: no metric of it has the label {sorted(missing)}")
    return problems


def alert_expressions(path: Path = ALERTS_FILE) -> dict[str, str]:
    """Each rule's name (alert or recording) and its ``expr``."""
    with open(path) as file:
        groups = yaml.safe_load(file)["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", ()))  # a collapsed row holds its panels


def dashboard_expressions(path: Path = DASHBOARD_FILE) -> dict[str, str]:
    """Each panel target's ``expr`` (named "panel title/refId"), and each template variable's query (its selector,
    for ``label_values(selector, label)``)."""
    dashboard = json.loads(path.read_text())
    expressions = {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", ())
    }
    for variable in dashboard.get("templating", {}).get("list", ()):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        selector = LABEL_VALUES.match(query)
        expressions[f"${variable['name']}"] = selector["selector"] if selector else query
    return expressions


def names_used(expressions: dict[str, str]) -> dict[str, set[str]]:
    """Each metric name the expressions use, and where (the expressions' names)."""
    used: dict[str, set[str]] = {}
    for where, expression in expressions.items():
        for name in metric_names(expression):
            used.setdefault(name, set()).add(where)
    return used


def gateway_names(used: Iterable[str]) -> set[str]:
    return {name for name in used if name not in PROMETHEUS_OWN and not name.startswith(RELAY_PREFIX)}


def relay_names(used: Iterable[str]) -> set[str]:
    return {name for name in used if name.startswith(RELAY_PREFIX)}


def unexported(names: Iterable[str], exported: set[str]) -> list[str]:
    """The *names* no process exports: compared with the exported series names, so a histogram is used as
    ``..._bucket``, ``..._count`` or ``..._sum`` and a counter as ``..._total``, as Prometheus stores them."""
    return sorted(set(names) - exported)
