"""The PromQL of ``k8s/monitoring`` (alert rules and dashboard panels): which series each expression selects.

Shared by the manifest tests (the expressions parse; the router's alerted error reasons are exported from the start)
and the integration test (every selected series exists in a real scrape of the router and of Envoy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

MONITORING = Path(__file__).resolve().parent.parent / "k8s" / "monitoring"
RULES_FILE = MONITORING / "prometheusrule.yaml"
DASHBOARD_FILE = MONITORING / "dashboard.json"
TARGET_LABELS = frozenset({"namespace", "pod", "job"})
"""Labels Prometheus adds when it scrapes (the PodMonitor's targets): in no exposition, so not looked for."""
PROMETHEUS_SERIES = frozenset({"up"})
"""Series Prometheus makes itself for each target, in no exposition."""
_GRAFANA = {"$__rate_interval": "5m"}
_ALTERNATIVES = re.compile(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*")


@dataclass(frozen=True)
class Selector:
    """One vector selector: a metric name and, per label, the values it accepts (a ``=~"a|b"`` is two)."""

    name: str
    labels: dict[str, tuple[str, ...]]


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of every group, in file order."""
    spec = yaml.safe_load(RULES_FILE.read_text())["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every dashboard query, Grafana's interval variable replaced by a duration."""
    panels = json.loads(DASHBOARD_FILE.read_text())["panels"]
    out = []
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in _GRAFANA.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def selectors(expr: str) -> list[Selector]:
    """The vector selectors in ``expr`` (raises ``ValueError`` if it is not PromQL). Only ``=`` and ``=~`` over plain
    alternatives are allowed, so that each accepted value can be looked for in a scrape."""
    return list(_walk(promql_parser.parse(expr)))


def _walk(node: Any) -> Iterator[Selector]:
    if isinstance(node, promql_parser.MatrixSelector):
        yield from _walk(node.vector_selector)
    elif isinstance(node, promql_parser.VectorSelector):
        labels: dict[str, tuple[str, ...]] = {}
        for m in node.matchers.matchers:
            if m.name in TARGET_LABELS:
                continue
            if m.op == promql_parser.MatchOp.Equal:
                labels[m.name] = (m.value,)
            else:
                assert _ALTERNATIVES.fullmatch(m.value), f"{node.name}: {m.name} matches {m.value!r}"
                labels[m.name] = tuple(m.value.split("|"))
        assert node.name, "a selector without a metric name"
        yield Selector(node.name, labels)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _walk(node.lhs)
        yield from _walk(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _walk(arg)
    elif isinstance(node, promql_parser.AggregateExpr | promql_parser.ParenExpr | promql_parser.UnaryExpr):
        yield from _walk(node.expr)
    else:
        assert isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral), type(node)
