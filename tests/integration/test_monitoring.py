"""k8s/monitoring's alert rules and dashboard select series that exist: every selector of every expression, with each
label value it accepts, is looked for in a real scrape of the router's /metrics (and its probe port's) and of Envoy's
/stats/prometheus (the gateway's Envoy config; the k8s copy keeps its stat prefix and cluster names,
tests/unit/k8s/test_monitoring.py).
A misspelt metric, label or value would make its alert silently never fire, or its panel stay empty."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import httpx
import orjson
import pytest

from devstack.otlp import OtlpReceiver
from devstack.stack import Stack
from tests.integration.test_routing import EASY, chat_body, post
from tests.integration.test_telemetry import run_traced
from tests.monitoring_queries import PROMETHEUS_SERIES, alert_rules, dashboard_queries, selectors

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Series = dict[str, list[dict[str, str]]]


def _series(text: str) -> Series:
    """Metric name -> the label sets of its samples, from the Prometheus text format."""
    out: Series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = _SAMPLE.fullmatch(line)
            assert m, line
            out.setdefault(m[1], []).append(dict(_LABEL.findall(m[2] or "")))
    return out


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OtlpReceiver]]:
    """The router with everything the rules and panels watch turned on: span export, feedback, rejections."""
    workdir = tmp_path_factory.mktemp("monitored")
    stack = Stack(workdir=workdir)
    stack.router_overrides = {
        "classifier": {"kind": "heuristic"},
        "telemetry": {"otlp_endpoint": f"http://127.0.0.1:{stack.collector_port}"},
        "feedback": {"enabled": True, "path": str(workdir / "feedback.jsonl")},
        "policy": {"invalid_constraint": "reject", "tenant_header": "x-tenant-id"},
        "tenants": {"evaluating": {"shadow": True}},
    }
    yield from run_traced(stack)


def test_every_series_an_alert_or_panel_selects_exists(monitored: tuple[Stack, OtlpReceiver]) -> None:
    stack, _ = monitored
    image_only = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    for body in (
        chat_body(EASY),
        orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": image_only}]}),
    ):
        assert post(stack, body).status_code == 200  # a decision on the merits, and a fallback (no text)
    assert post(stack, chat_body(EASY), **{"x-tenant-id": "evaluating"}).status_code == 200  # a shadow decision
    assert post(stack, chat_body(EASY, model="gpt-4o-mini")).status_code == 200  # a pass-through
    assert post(stack, chat_body(EASY), **{"x-model-router-quality": "high"}).status_code == 400
    scraped = _series(httpx.get(stack.metrics_url, timeout=5).text)
    scraped.update(_series(httpx.get(f"{stack.health_url}/metrics", timeout=5).text))  # the probe port's state
    envoy = _series(httpx.get(f"http://127.0.0.1:{stack.admin_port}/stats/prometheus", timeout=5).text)
    assert not scraped.keys() & envoy.keys()
    scraped.update(envoy)
    missing = []
    queries = [(rule["alert"], rule["expr"]) for rule in alert_rules()] + dashboard_queries()
    for title, expr in queries:
        for selector in selectors(expr):
            if selector.name in PROMETHEUS_SERIES:
                continue
            names, values = list(selector.labels), list(selector.labels.values())
            for combination in itertools.product(*values):
                want = dict(zip(names, combination, strict=True))
                if not any(want.items() <= labels.items() for labels in scraped.get(selector.name, [])):
                    missing.append(f"{title}: {selector.name}{want}")
    assert not missing
