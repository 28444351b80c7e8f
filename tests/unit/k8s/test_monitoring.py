"""k8s/monitoring: the PodMonitor scrapes the ports the deployments open, the alert rules are PromQL that names the
gateway's own stat prefixes and the router's error reasons exported from the start, and the dashboard's queries are
PromQL on the panels' Prometheus variable. (Whether every selected
series exists in a real scrape: tests/integration/test_monitoring.py.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from extproc.config import parse_config
from extproc.telemetry import ALERTED_ERRORS
from tests.monitoring_queries import DASHBOARD_FILE, alert_rules, dashboard_queries, selectors
from tests.unit.k8s.manifests import K8S, Objects

RULES = alert_rules()
ROUTER_CONFIG = yaml.safe_load((K8S / "base" / "router-config" / "model-router.yaml").read_text())


def _one(objects: Objects, kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def _envoy() -> dict[str, Any]:
    return yaml.safe_load((K8S / "base" / "envoy.yaml").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_every_alert_is_promql_with_a_severity_and_a_runbook(rule: dict[str, Any]) -> None:
    assert selectors(rule["expr"]), "selects nothing"
    assert rule["labels"]["severity"] in {"info", "warning", "critical"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook"}
    anchor = rule["annotations"]["runbook"].split("#", 1)[1]
    readme = (K8S / "README.md").read_text()
    assert f"## {anchor.capitalize()}" in readme and f"`{rule['alert']}`" in readme, "explained in k8s/README.md"


def test_a_rule_that_is_not_promql_is_refused() -> None:
    with pytest.raises(ValueError):
        selectors("sum by (pod) (rate(model_router_errors_total[5m]) > ")


def test_alerted_router_errors_are_exported_from_the_start() -> None:
    """A series first scraped at 1 gives rate() nothing: the reasons alerted on are created at 0."""
    alerted = {
        value
        for rule in RULES
        for s in selectors(rule["expr"])
        if s.name == "model_router_errors_total"
        for value in s.labels["reason"]
    }
    assert alerted and alerted <= set(ALERTED_ERRORS)


def test_gateway_alerts_name_the_k8s_envoys_own_prefix_and_router_cluster() -> None:
    envoy = _envoy()
    listener = next(li for li in envoy["static_resources"]["listeners"] if li["name"] == "llm_gateway")
    prefix = listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"]
    clusters = {c["name"] for c in envoy["static_resources"]["clusters"]}
    used = [s for rule in RULES for s in selectors(rule["expr"]) if s.name.startswith("envoy_")]
    assert {v for s in used for v in s.labels.get("envoy_http_conn_manager_prefix", ())} == {prefix}
    assert {v for s in used for v in s.labels.get("envoy_cluster_name", ())} <= clusters


@pytest.mark.parametrize(("directory", "name"), [("base", "model-router-gateway"), ("router", "model-router")])
def test_the_pod_monitor_scrapes_the_routers_metrics_port(
    builds: dict[str, Objects], directory: str, name: str
) -> None:
    monitor = _one(builds["monitoring"], "PodMonitor")["spec"]
    deployment = next(o for o in builds[directory] if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (expression,) = monitor["selector"]["matchExpressions"]
    assert expression["operator"] == "In" and labels[expression["key"]] in expression["values"]
    pod = deployment["spec"]["template"]["spec"]
    ports = {  # the router is a native sidecar (an init container) in base/
        p["name"]: p["containerPort"]
        for c in pod["containers"] + pod.get("initContainers", [])
        for p in c.get("ports", ())
    }
    metrics_port = int(ROUTER_CONFIG["telemetry"]["metrics_listen"].rsplit(":", 1)[1])
    endpoints = {e["port"]: e["path"] for e in monitor["podMetricsEndpoints"]}
    scraped = {port: endpoints[port] for port in ports if port in endpoints}
    # The gateway's router also says its state on the probe port, which is open before the config is valid.
    containers = pod["containers"] + pod.get("initContainers", [])
    (router,) = [c for c in containers if c["name"] in ("model-router", "router")]
    args = router.get("args", [])
    health = [int(args[i + 1].rsplit(":", 1)[1]) for i, a in enumerate(args) if a == "--health-listen"]
    assert sorted(ports[p] for p, path in scraped.items() if path == "/metrics") == sorted([metrics_port, *health])
    assert health == ([9466] if directory == "base" else [])
    parse_config(ROUTER_CONFIG)  # the port read above is a valid config's


def test_the_target_down_alert_watches_the_pod_monitors_job(builds: dict[str, Objects]) -> None:
    """Prometheus Operator names a PodMonitor's job ``<namespace>/<name>``."""
    name = _one(builds["monitoring"], "PodMonitor")["metadata"]["name"]
    (rule,) = [r for r in RULES if any(s.name == "up" for s in selectors(r["expr"]))]
    (job,) = re.findall(r'job=~"([^"]+)"', rule["expr"])
    assert re.fullmatch(job, f"llm-gateway/{name}") and not re.fullmatch(job, f"llm-gateway/{name}-other")


def test_the_pod_monitor_scrapes_envoys_stats_where_the_k8s_envoy_serves_them(builds: dict[str, Objects]) -> None:
    monitor = _one(builds["monitoring"], "PodMonitor")["spec"]
    (stats,) = [e for e in monitor["podMetricsEndpoints"] if e["path"] == "/stats/prometheus"]
    deployment = next(o for o in builds["base"] if o["kind"] == "Deployment")
    (envoy,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy"]
    port = next(p["containerPort"] for p in envoy["ports"] if p["name"] == stats["port"])
    (listener,) = [
        li for li in _envoy()["static_resources"]["listeners"] if li["address"]["socket_address"]["port_value"] == port
    ]
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {"path": "/stats/prometheus"} in [r["match"] for r in routes]
    assert re.fullmatch(r"/[a-z/]+", stats["path"])


QUERIES = dashboard_queries()


@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[f"{t[:40]}-{i}" for i, (t, _) in enumerate(QUERIES)])
def test_every_dashboard_query_is_promql(title: str, expr: str) -> None:
    assert selectors(expr), title


def test_the_dashboard_is_a_configmap_grafanas_sidecar_loads(builds: dict[str, Objects]) -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all('namespace=~"$namespace"' in t["expr"] for t in panel["targets"]), panel["title"]
    (namespaces,) = selectors(variables["namespace"]["definition"].removeprefix("label_values(").split(",")[0])
    assert namespaces.name in {s.name for _, expr in QUERIES for s in selectors(expr)}
    config_map = _one(builds["monitoring"], "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["model-router.json"]) == dashboard
