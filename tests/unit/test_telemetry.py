"""Telemetry: metric exposition against a golden text, spans via an in-memory exporter."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import generate_latest

from devstack.stack import free_port
from extproc.config import TelemetrySettings
from extproc.decision_proto import decision_labels, to_proto
from extproc.errors import ConfigError
from extproc.otlp import FinishedSpan, encode_span
from extproc.policy import Reason
from extproc.record import DecisionRecord, Outcome
from extproc.server import metrics_app
from extproc.telemetry import (
    _ATTRIBUTES,
    _OPERATIONS,
    ALERTED_ERRORS,
    Telemetry,
    parse_traceparent,
    span_attributes,
    span_export_options,
)
from extproc.wsgi_server import serve_wsgi
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


class SpanList(list[FinishedSpan]):
    """A span sink that keeps what it is given."""

    def submit(self, span: FinishedSpan) -> None:
        self.append(span)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def spans() -> SpanList:
    return SpanList()


@pytest.fixture
def telemetry(spans: SpanList) -> Telemetry:
    return Telemetry(TelemetrySettings(), logging.getLogger("test.decisions"), spans)


def test_cost_counters_show_a_router_that_spends_more(telemetry: Telemetry) -> None:
    """A choice dearer than the baseline (a conversation's floor, say) must raise spend in the metrics, as
    ``model-router report`` nets it; a pinned request is not the router's choice and counts in neither."""
    dearer = dataclasses.replace(ROUTED, cost_requested=0.001, cost_selected=0.004)
    pinned = dataclasses.replace(ROUTED, reason="trusted_override", cost_requested=0.001, cost_selected=0.5)
    for rec in (ROUTED, dearer, pinned):
        telemetry.record(rec)
    baseline = telemetry.registry.get_sample_value("model_router_estimated_cost_baseline_total", {"mode": "routed"})
    selected = telemetry.registry.get_sample_value("model_router_estimated_cost_selected_total", {"mode": "routed"})
    assert ROUTED.cost_requested is not None and ROUTED.cost_selected is not None
    assert baseline == pytest.approx(ROUTED.cost_requested + 0.001)
    assert selected == pytest.approx(ROUTED.cost_selected + 0.004)


def test_alerted_errors_and_feedback_results_are_exported_before_the_first(telemetry: Telemetry) -> None:
    """k8s/monitoring alerts on rate() of these: a series first scraped at 1 would hide the first failures."""
    for reason in ALERTED_ERRORS:
        assert telemetry.registry.get_sample_value("model_router_errors_total", {"reason": reason}) == 0
    labels = {"result": "unavailable", "source": "http"}
    assert telemetry.registry.get_sample_value("model_router_feedback_total", labels) is None  # feedback may be off
    telemetry.expect_feedback(["recorded", "unavailable"], ["http"])
    assert telemetry.registry.get_sample_value("model_router_feedback_total", labels) == 0


def test_a_shadow_decision_whose_classifier_failed_counts_as_an_error(telemetry: Telemetry) -> None:
    """Shadow mode is how a deployment evaluates the router: a broken classifier must alert there too."""
    shadow = dataclasses.replace(FALLBACK, outcome=Outcome.SHADOW, reason="classifier_failed")
    telemetry.record(shadow)
    assert telemetry.registry.get_sample_value("model_router_errors_total", {"reason": "classifier_failed"}) == 1


def test_the_config_gauge_follows_reloads_and_the_file(telemetry: Telemetry) -> None:
    gauge = "model_router_config_last_reload_successful"
    assert telemetry.registry.get_sample_value(gauge) == 1
    telemetry.config_reloaded(False)
    assert telemetry.registry.get_sample_value(gauge) == 0
    telemetry.config_file_state(True)  # the file was put back
    assert telemetry.registry.get_sample_value(gauge) == 1


def test_the_config_in_force_is_named_by_its_digest_and_load_time(telemetry: Telemetry) -> None:
    """With sidecars reading one mutable ConfigMap, which pod runs which version is only visible this way."""
    registry = telemetry.registry
    old, new = hashlib.sha256(b"old").digest(), hashlib.sha256(b"new").digest()
    telemetry.config_in_force(old)
    first = registry.get_sample_value("model_router_config_last_reload_success_timestamp_seconds")
    assert first is not None and abs(first - time.time()) < 60
    telemetry.config_in_force(new)
    assert registry.get_sample_value("model_router_config_info", {"digest": old.hex()[:12]}) is None, "replaced"
    assert registry.get_sample_value("model_router_config_info", {"digest": new.hex()[:12]}) == 1
    telemetry.config_file_readable(False)
    assert registry.get_sample_value("model_router_config_file_readable") == 0
    telemetry.config_file_readable(True)
    assert registry.get_sample_value("model_router_config_file_readable") == 1


def test_the_process_and_the_build_are_exported(telemetry: Telemetry) -> None:
    """A custom registry has no default collectors: memory, CPU and the version must be registered explicitly."""
    text = generate_latest(telemetry.registry).decode()
    assert re.search(r"^process_resident_memory_bytes [0-9.e+]+$", text, re.M)
    assert re.search(r"^process_cpu_seconds_total [0-9.e+]+$", text, re.M)
    assert re.search(r'^model_router_build_info\{python="[0-9.]+",version="[^"]+"\} 1\.0$', text, re.M)


def test_the_metrics_port_serves_metrics_only_at_their_path(telemetry: Telemetry) -> None:
    listen = f"127.0.0.1:{free_port()}"
    stop = serve_wsgi(listen, metrics_app(telemetry.registry), "metrics-test")
    try:
        assert "model_router_build_info" in httpx.get(f"http://{listen}/metrics").text
        for path in ("/", "/healthz", "/metricsx", "/metrics/"):
            reply = httpx.get(f"http://{listen}{path}")
            assert (reply.status_code, reply.text) == (404, "not found: the metrics are at /metrics\n"), path
    finally:
        stop()


def test_alerted_error_reasons_are_ones_the_router_counts() -> None:
    """A reason renamed in the code would leave its alert watching a series that never moves."""
    counted = {Reason.CLASSIFIER_FAILED.value}  # counted by Telemetry.record itself
    for path in (Path(__file__).parents[2] / "extproc").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "error":
                counted.update(a.value for a in node.args[:1] if isinstance(a, ast.Constant))
    assert set(ALERTED_ERRORS) <= counted


def test_exposition_matches_golden(telemetry: Telemetry, request: pytest.FixtureRequest) -> None:
    for rec in (ROUTED, FALLBACK, PASS):
        telemetry.record(rec)
    telemetry.error("handler_exception")
    telemetry.config_reloaded(False)
    text = generate_latest(telemetry.registry).decode()
    varying = re.compile(r"_created|^(# (HELP|TYPE) )?(process_|python_info|model_router_build_info)")  # per host
    text = "\n".join(line for line in text.splitlines() if not varying.search(line)) + "\n"
    if request.config.getoption("--update-golden"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_span_is_child_of_envoy_parent(telemetry: Telemetry, spans: SpanList) -> None:
    telemetry.record(dataclasses.replace(ROUTED, tracestate="vendor=1"))
    (span,) = spans
    assert span.name == "model_router.decide"
    assert span.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert span.parent_span_id == int("b7ad6b7169203331", 16)
    assert span.span_id not in (0, span.parent_span_id)
    assert span.trace_state == "vendor=1"
    assert span.start_unix_ns == ROUTED.started_unix_ns
    assert span.end_unix_ns == ROUTED.started_unix_ns + 400_000
    assert decoded_attributes(span) == span_attributes(ROUTED)
    assert decoded_attributes(span)["model_router.selected_model"] == "gpt-4o-mini"
    assert span.error is None


def test_fallback_span_has_error_status(telemetry: Telemetry, spans: SpanList) -> None:
    telemetry.record(FALLBACK)
    (span,) = spans
    assert span.error == "classifier_failed"
    assert span.parent_span_id == 0 and span.trace_id != 0


@pytest.mark.parametrize("reason", ["no_prompt_text", "no_eligible_model"])
def test_a_fallback_that_is_not_a_failure_is_not_an_error(telemetry: Telemetry, spans: SpanList, reason: str) -> None:
    """An image-only prompt or one no model's window fits is how the request is: an ERROR span would page someone."""
    telemetry.record(dataclasses.replace(FALLBACK, reason=reason))
    (span,) = spans
    assert span.error is None


def test_unsampled_parent_is_respected(telemetry: Telemetry, spans: SpanList) -> None:
    unsampled = PARENT[:-2] + "00"
    telemetry.record(dataclasses.replace(ROUTED, traceparent=unsampled))
    assert spans == []


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (1.0, 200)])
def test_sampling_ratio_applies_to_root_spans(ratio: float, expected: int) -> None:
    spans = SpanList()
    telemetry = Telemetry(TelemetrySettings(sampling_ratio=ratio), logging.getLogger("test"), spans)
    for _ in range(200):
        telemetry.record(FALLBACK)  # no parent: the ratio decides
    assert len(spans) == expected


def test_invalid_otlp_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint: .*COMPRESSION"):
        Telemetry(TelemetrySettings(otlp_endpoint="http://127.0.0.1:4317"), logging.getLogger("test"))


def test_attributes_hold_no_prompt_unless_enabled() -> None:
    assert "model_router.prompt_excerpt" not in span_attributes(ROUTED)
    with_prompt = DecisionRecord(decision_id="x", outcome=Outcome.ROUTED, reason="r", prompt_excerpt="hello")
    assert span_attributes(with_prompt)["model_router.prompt_excerpt"] == "hello"


_text = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["openai.chat", "anthropic.messages", "x"]))
_number = st.one_of(st.none(), st.floats(allow_nan=False, min_value=-1e6, max_value=1e6))
_records = st.builds(
    DecisionRecord,
    decision_id=st.text(min_size=1, max_size=16),
    outcome=st.sampled_from(Outcome),
    reason=st.sampled_from(["cheapest_meeting_target", "classifier_failed", "invalid_json", "not_a_reason", ""]),
    schema=_text,
    requested_model=_text,
    selected_model=_text,
    cluster=_text,
    tier=_text,
    tenant=_text,
    difficulty=_number,
    confidence=_number,
    success_probability=_number,
    quality_target=_number,
    input_tokens=st.one_of(st.none(), st.integers(min_value=0, max_value=(1 << 31) - 1)),
    cost_requested=_number,
    cost_selected=_number,
    classify_seconds=_number,
    total_seconds=_number,
    stream=st.booleans(),
    prompt_excerpt=st.one_of(st.none(), st.text(max_size=5)),
    candidate_selected_model=_text,
    candidate_tier=_text,
    candidate_difficulty=_number,
    candidate_success_probability=_number,
    cost_candidate=_number,
)


def decoded_attributes(span: FinishedSpan) -> dict[str, Any]:
    """The span's attributes as a collector sees them: encoded, then parsed by opentelemetry-proto."""
    decoded = Span.FromString(encode_span(span))
    return {kv.key: getattr(kv.value, str(kv.value.WhichOneof("value"))) for kv in decoded.attributes}


@given(rec=_records)
def test_encoded_span_attributes_equal_span_attributes(rec: DecisionRecord) -> None:
    """The cached, pre-encoded attributes decode to exactly :func:`span_attributes` (the mapping), twice over."""
    spans = SpanList()
    telemetry = Telemetry(TelemetrySettings(), logging.getLogger("test"), spans)
    telemetry.record(dataclasses.replace(rec, traceparent=PARENT))
    telemetry.record(dataclasses.replace(rec, traceparent=PARENT, decision_id=rec.decision_id + "x"))  # cache hit
    first, second = spans
    assert decoded_attributes(first) == span_attributes(rec)
    assert decoded_attributes(second) == {**span_attributes(rec), "model_router.decision_id": rec.decision_id + "x"}


@given(rec=_records)
def test_span_attributes_equal_the_routing_decision_mapping(rec: DecisionRecord) -> None:
    """The fast path reads the record; the reference goes through ``RoutingDecision`` (the one mapping)."""
    fields = decision_labels(to_proto(rec))
    expected = {attr: fields[name] for name, attr in _ATTRIBUTES.items() if name in fields}
    if expected.get("model_router.api_schema"):
        expected["gen_ai.operation.name"] = _OPERATIONS[expected["model_router.api_schema"]]
    assert span_attributes(rec) == expected


@pytest.mark.parametrize(
    ("configured", "env", "attributes", "want"),
    [
        (None, None, None, "model-router"),
        (None, "from-env", None, "from-env"),
        ("from-config", "from-env", None, "from-config"),
        (None, None, "service.name=from-attributes,team=ml", "from-attributes"),
    ],
)
def test_service_name(
    monkeypatch: pytest.MonkeyPatch, configured: str | None, env: str | None, attributes: str | None, want: str
) -> None:
    for name, value in (("OTEL_SERVICE_NAME", env), ("OTEL_RESOURCE_ATTRIBUTES", attributes)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    telemetry = Telemetry(TelemetrySettings(service_name=configured), logging.getLogger("test"), SpanList())
    assert ("service.name", want) in telemetry._resource


def test_no_tracing_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    quiet = Telemetry(TelemetrySettings(), logging.getLogger("test"))
    assert not quiet.tracing
    quiet.record(ROUTED)  # metrics only; must not raise


@pytest.mark.parametrize(
    ("configured", "environ", "problem"),
    [
        pytest.param(
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector:4317/x"},
            "OTEL_EXPORTER_OTLP_ENDPOINT (environment): expected http(s)://host[:port] or host[:port], got "
            "'ftp://collector:4317/x'",
            id="generic-variable",
        ),
        pytest.param(
            None,
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c:1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ok:4317"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (environment): expected http(s)://host[:port] or host[:port], got "
            "'ftp://c:1'",
            id="traces-variable-first",
        ),
        pytest.param(
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318/v1/traces"},
            "OTEL_EXPORTER_OTLP_ENDPOINT (environment): expected http(s)://host[:port] or host[:port], got "
            "'collector:4318/v1/traces'",
            id="a-path-would-be-dropped",
        ),
        pytest.param(
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:secret@collector:4317"},
            "OTEL_EXPORTER_OTLP_ENDPOINT (environment): credentials in the URL would not be sent: use "
            "OTEL_EXPORTER_OTLP_HEADERS",
            id="credentials-not-echoed",
        ),
        pytest.param(
            "http://collector:4317",
            {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
            "telemetry.otlp_endpoint: OTEL_EXPORTER_OTLP_COMPRESSION='brotli': expected gzip or none",
            id="file",
        ),
    ],
)
def test_a_bad_span_exporter_setting_names_where_it_came_from(
    configured: str | None, environ: dict[str, str], problem: str
) -> None:
    """An operator told "telemetry.otlp_endpoint" looks in the YAML, where the value may be null."""
    with pytest.raises(ConfigError) as info:
        span_export_options(TelemetrySettings(otlp_endpoint=configured), environ)
    assert info.value.problems == [problem]


def test_check_config_reads_the_otlp_variables_serve_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack.stack import ENVOY_DIR
    from extproc.cli import main

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")
    assert main(["check-config", "--config", str(ENVOY_DIR / "model-router.yaml")]) == 2
    assert "  OTEL_EXPORTER_OTLP_ENDPOINT (environment): expected http" in capsys.readouterr().err
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert main(["check-config", "--config", str(ENVOY_DIR / "model-router.yaml")]) == 0


_TRACE = "0af7651916cd43dd8448eb211c80319c"
_SPAN = "b7ad6b7169203331"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{_TRACE}-{_SPAN}-01", (int(_TRACE, 16), int(_SPAN, 16), True)),
        (f"00-{_TRACE}-{_SPAN}-00", (int(_TRACE, 16), int(_SPAN, 16), False)),
        (f"  00-{_TRACE.upper()}-{_SPAN}-01 ", (int(_TRACE, 16), int(_SPAN, 16), True)),
        (f"01-{_TRACE}-{_SPAN}-01-future-field", (int(_TRACE, 16), int(_SPAN, 16), True)),
        (f"00-{_TRACE}-{_SPAN}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{_TRACE}-{_SPAN}-01", None),
        (f"00-{'0' * 32}-{_SPAN}-01", None),
        (f"00-{_TRACE}-{'0' * 16}-01", None),
        (f"00-{_TRACE[:-1]}g-{_SPAN}-01", None),
        (f"00-{_TRACE}-{_SPAN}-1", None),
        (f"00-{_TRACE}{_SPAN}-01", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(header: str | None, expected: tuple[int, int, bool] | None) -> None:
    parsed = parse_traceparent(header, "k=v")
    assert (None if parsed is None else (parsed.trace_id, parsed.span_id, parsed.sampled)) == expected


@pytest.mark.parametrize(
    ("tracestate", "kept"),
    [
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True),
        ("vendor@tenant=x y, other=1 ", True),
        (",".join(f"k{n}=v" for n in range(32)), True),
        (",".join(f"k{n}=v" for n in range(33)), False),  # more than 32 members
        ("k=" + "v" * 600, False),  # over 512 characters
        ("Upper=x", False),
        ("k=v=w", False),
        ("k=v\n", False),
        ("k=", False),
        ("prompt text, not a tracestate", False),
    ],
)
def test_tracestate_outside_the_w3c_grammar_is_dropped(tracestate: str, kept: bool) -> None:
    parent = parse_traceparent(f"00-{_TRACE}-{_SPAN}-01", tracestate)
    assert parent is not None, "the traceparent itself still counts"
    assert parent.trace_state == (tracestate.strip() if kept else "")
