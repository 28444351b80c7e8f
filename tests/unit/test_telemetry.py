"""Telemetry: metric exposition against a golden text, spans via an in-memory exporter."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from extproc.config import TelemetrySettings
from extproc.record import DecisionRecord, Outcome
from extproc.telemetry import Telemetry, span_attributes
from tests.fakes import SAMPLE_ROUTED

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "metrics" / "three_records.prom"
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

ROUTED = dataclasses.replace(SAMPLE_ROUTED, traceparent=PARENT)
FALLBACK = DecisionRecord(
    decision_id="00000000000000bb",
    outcome=Outcome.FALLBACK,
    reason="classifier_failed",
    schema="openai.chat",
    requested_model="auto",
    selected_model="gpt-4o",
    cluster="frontier",
    tier="frontier",
    classify_seconds=0.05,
    total_seconds=0.051,
    cost_requested=0.003,
    cost_selected=0.003,
    started_unix_ns=1_700_000_000_000_000_000,
)
PASS = DecisionRecord(decision_id="00000000000000cc", outcome=Outcome.PASSTHROUGH, reason="invalid_json")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Telemetry:
    return Telemetry(TelemetrySettings(), logging.getLogger("test.decisions"), SimpleSpanProcessor(spans))


def test_exposition_matches_golden(telemetry: Telemetry, request: pytest.FixtureRequest) -> None:
    for rec in (ROUTED, FALLBACK, PASS):
        telemetry.record(rec)
    telemetry.error("handler_exception")
    telemetry.config_reloaded(False)
    text = generate_latest(telemetry.registry).decode()
    text = "\n".join(line for line in text.splitlines() if "_created" not in line) + "\n"  # creation timestamps vary
    if request.config.getoption("--update-golden"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_span_is_child_of_envoy_parent(telemetry: Telemetry, spans: InMemorySpanExporter) -> None:
    telemetry.record(ROUTED)
    (span,) = spans.get_finished_spans()
    assert span.name == "model_router.decide"
    assert span.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert span.parent is not None and span.parent.span_id == int("b7ad6b7169203331", 16)
    assert span.start_time == ROUTED.started_unix_ns
    assert span.end_time == ROUTED.started_unix_ns + 400_000
    assert span.attributes is not None and span.attributes["model_router.selected_model"] == "gpt-4o-mini"


def test_fallback_span_has_error_status(telemetry: Telemetry, spans: InMemorySpanExporter) -> None:
    telemetry.record(FALLBACK)
    (span,) = spans.get_finished_spans()
    assert span.status.description == "classifier_failed"
    assert span.parent is None


def test_unsampled_parent_is_respected(telemetry: Telemetry, spans: InMemorySpanExporter) -> None:
    unsampled = PARENT[:-2] + "00"
    telemetry.record(dataclasses.replace(ROUTED, traceparent=unsampled))
    assert spans.get_finished_spans() == ()


def test_attributes_hold_no_prompt_unless_enabled() -> None:
    assert "model_router.prompt_excerpt" not in span_attributes(ROUTED)
    with_prompt = DecisionRecord(decision_id="x", outcome=Outcome.ROUTED, reason="r", prompt_excerpt="hello")
    assert span_attributes(with_prompt)["model_router.prompt_excerpt"] == "hello"


def test_no_tracing_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    quiet = Telemetry(TelemetrySettings(), logging.getLogger("test"))
    assert not quiet.tracing
    quiet.record(ROUTED)  # metrics only; must not raise


def test_otlp_proto_files_are_opentelemetry_protos_own() -> None:
    """xds-protos ships an older copy of these files; the install must leave opentelemetry-proto's in place."""
    from opentelemetry.proto.common.v1 import common_pb2

    assert hasattr(common_pb2, "InstrumentationScope"), "run the Makefile's OTEL_PROTO_FIX step"
