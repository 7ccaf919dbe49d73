"""deploy/prometheus and deploy/grafana checked statically: promtool accepts the rules, the configuration and every
dashboard query; each alert is complete and documented in README; the checker of metric names finds the names in
PromQL and reports a name nobody exports. Whether the names are exported is tested against real processes in
tests/e2e/test_observability.py.

promtool comes with Debian's ``prometheus`` package, which CI installs (.ci/run); without it these tests fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.deployment.compose import compose
from tests.deployment.observability import (
    ALERTS_FILE,
    DASHBOARD_FILE,
    PROJECT_DIR,
    PROMETHEUS_CONFIG,
    alert_expressions,
    dashboard_expressions,
    gateway_names,
    label_problems,
    labels_used,
    metric_names,
    names_used,
    relay_names,
    unexported,
)

SEVERITIES = {"critical", "warning", "info"}
GRAFANA_RANGE = "5m"  # what $__rate_interval stands for when a dashboard query is checked by promtool


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_alert_rules():
    result = promtool("check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_scrape_configuration(tmp_path):
    """The token file the configuration names is the operator's (never committed): a stand-in beside it."""
    for path in (PROMETHEUS_CONFIG, ALERTS_FILE):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "metrics_token").write_text("a-token\n")
    result = promtool("check", "config", str(tmp_path / PROMETHEUS_CONFIG.name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_every_dashboard_query(tmp_path):
    """Each panel's PromQL, its Grafana variables given values, as a recording rule: promtool parses it."""
    expressions = dashboard_expressions()
    rules = [
        {"record": f"dashboard:query_{number}",
         "expr": expression.replace("$__rate_interval", GRAFANA_RANGE).replace("$market", ".*")}
        for number, expression in enumerate(expressions.values())
    ]
    rules_file = tmp_path / "dashboard.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_every_alert_has_its_severity_duration_and_words():
    with open(ALERTS_FILE) as file:
        groups = yaml.safe_load(file)["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def readme_alerts_section() -> str:
    readme = (PROJECT_DIR / "README.md").read_text()
    start = readme.index("### Alerts")
    return readme[start:readme.index("\n## ", start)]


def test_readme_says_what_each_alert_means_and_what_to_do():
    documented = set(re.findall(r"^- \*\*(\w+)\*\*", readme_alerts_section(), re.MULTILINE))
    assert documented == set(alert_expressions())


def test_the_dashboard_takes_its_prometheus_as_an_input_and_every_panel_queries_it():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["schemaVersion"] == 39
    assert [entry["name"] for entry in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in (panel["datasource"], *(target["datasource"] for target in panel["targets"])):
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]


def test_the_scrape_configuration_names_the_compose_services_and_the_jobs_the_alerts_use():
    with open(PROMETHEUS_CONFIG) as file:
        jobs = {job["job_name"]: job for job in yaml.safe_load(file)["scrape_configs"]}
    services = compose()["services"]
    gateway = jobs["cutemarkets-gateway"]
    targets = gateway["static_configs"][0]["targets"]
    assert targets == ["gateway:8000", "gateway-2:8000"]
    assert {target.split(":")[0] for target in targets} <= set(services)
    assert gateway["authorization"]["type"] == "Bearer"
    relays = jobs["cutemarkets-relay"]["dns_sd_configs"][0]
    assert relays["port"] == 9108
    assert set(relays["names"]) == {name for name in services if name.startswith("relay-")}
    jobs_in_alerts = set(re.findall(r'job="([^"]+)"', " ".join(alert_expressions().values())))
    assert jobs_in_alerts == set(jobs)


@pytest.mark.parametrize(("expression", "names"), [
    ("up == 0", {"up"}),
    ('sum by (market, code) (rate(cutemarkets_stream_rejections_total{code="4401", market=~"a|b"}[5m])) > 2',
     {"cutemarkets_stream_rejections_total"}),
    ("histogram_quantile(0.99, sum by (instance, le) (rate(x_seconds_bucket[$__rate_interval]))) > 0.25",
     {"x_seconds_bucket"}),
    ("(a == 0) and on (instance, market) (b > 0) or absent(c) unless ignoring (code) d offset 5m",
     {"a", "b", "c", "d"}),
    ('max without (pid) (e{job="rate(f)", name="g"}) / on () group_left (market) h > bool 1e3',
     {"e", "h"}),
    ('sum(rate(i[5m:1m])) * inf + NaN - 0x1F + j{market=~"$market"}', {"i", "j"}),
])
def test_metric_names_are_told_from_functions_labels_keywords_and_strings(expression, names):
    assert metric_names(expression) == names


def test_a_name_nobody_exports_is_reported_with_where_it_is_used(tmp_path):
    """The checker proven on a dashboard with a made-up name: in a collapsed row's panel, beside exported ones."""
    dashboard = {
        "panels": [{"type": "row", "title": "collapsed", "id": 1, "panels": [{
            "type": "timeseries", "title": "Made up", "id": 2,
            "targets": [{"refId": "A", "expr": "sum(rate(cutemarkets_stream_imaginary_total[5m]))"},
                        {"refId": "B", "expr": "cutemarkets_stream_connections + cutemarkets_relay_lease_held"}],
        }]}],
        "templating": {"list": [{"name": "market", "type": "query",
                                 "query": {"query": "label_values(cutemarkets_relay_imaginary, market)"}}]},
    }
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard))
    used = names_used(dashboard_expressions(path))
    exported = {"cutemarkets_stream_connections", "cutemarkets_relay_lease_held", "up"}
    assert unexported(gateway_names(used), exported) == ["cutemarkets_stream_imaginary_total"]
    assert unexported(relay_names(used), exported) == ["cutemarkets_relay_imaginary"]
    assert used["cutemarkets_stream_imaginary_total"] == {"Made up/A"}


def test_the_files_use_the_gateway_and_the_relay_metrics_they_are_about():
    """A guard on the checker's input: the parts the e2e test compares with /metrics are not empty."""
    used = names_used({**alert_expressions(), **dashboard_expressions()})
    assert "cutemarkets_stream_send_delay_seconds_bucket" in gateway_names(used)
    assert len(relay_names(used)) == 6


def test_labels_are_told_from_values_and_grouping():
    assert labels_used(
        'sum by (market, le) (rate(x_bucket{code="4401", market=~"$market"}[5m])) and on (instance) up{job="a"}'
    ) == ({"x_bucket": {"code", "market"}, "up": {"job"}}, {"market", "le", "instance"})


def test_a_label_its_metrics_do_not_carry_is_reported():
    """Rejections carry a close code, refusals a reason: grouping one by the other's label is a silent mistake."""
    exported = {"cutemarkets_stream_rejections_total": {"market", "code"},
                "cutemarkets_stream_refusals_total": {"market", "reason"}}
    expressions = {
        "right": 'sum by (instance, reason) (rate(cutemarkets_stream_refusals_total{market="stocks"}[5m]))',
        "wrong grouping": "sum by (reason) (rate(cutemarkets_stream_rejections_total[5m]))",
        "wrong matcher": 'rate(cutemarkets_stream_refusals_total{code="4401"}[5m])',
        "another process's": 'sum by (lease) (cutemarkets_relay_lease_held{holder="a"})',
        "prometheus's own": 'up{job="cutemarkets-gateway"} == 0',
    }
    assert label_problems(expressions, exported) == [
        "wrong grouping: no metric of it has the label ['reason']",
        "wrong matcher: cutemarkets_stream_refusals_total has no label ['code']",
    ]
