"""The hand-written OTLP encoder against opentelemetry-proto's own parser, and the exporter against a real receiver."""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from devstack.otlp import OtlpReceiver
from extproc.otlp import (
    AttributeValue,
    ExporterOptions,
    FinishedSpan,
    OtlpSpanExporter,
    encode_attribute,
    encode_request,
    encode_span,
    exporter_options,
)

_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
_values = st.one_of(
    st.text(max_size=300),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
)
_pairs = st.lists(st.tuples(st.text(min_size=1, max_size=60), _values), max_size=25)
Attributes = list[tuple[str, AttributeValue]]


@st.composite
def _spans(draw: st.DrawFn) -> tuple[FinishedSpan, Attributes]:
    """A span and the attribute pairs its encoded ``attributes`` hold."""
    pairs = draw(_pairs)
    span = FinishedSpan(
        trace_id=draw(st.integers(min_value=1, max_value=(1 << 128) - 1)),
        span_id=draw(_ids),
        parent_span_id=draw(st.one_of(st.just(0), _ids)),
        name=draw(st.text(min_size=1, max_size=40)),
        start_unix_ns=draw(st.integers(min_value=0, max_value=(1 << 64) - 1)),
        end_unix_ns=draw(st.integers(min_value=0, max_value=(1 << 64) - 1)),
        attributes=b"".join(encode_attribute(k, v) for k, v in pairs),
        trace_state=draw(st.text(alphabet="abc=,1", max_size=20)),
        error=draw(st.one_of(st.none(), st.text(max_size=50))),
    )
    return span, pairs


def _plain(value: object) -> object:
    """Floats compared by their bits, so NaN equals itself."""
    return struct.pack("<d", value) if isinstance(value, float) else value


def _any(v: object) -> AttributeValue:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    assert kind in ("string_value", "bool_value", "int_value", "double_value"), kind
    value: AttributeValue = getattr(v, kind)
    return value


def _check(decoded: Span, span: FinishedSpan, pairs: Attributes) -> None:
    assert int.from_bytes(decoded.trace_id, "big") == span.trace_id
    assert int.from_bytes(decoded.span_id, "big") == span.span_id
    assert int.from_bytes(decoded.parent_span_id or b"\0", "big") == span.parent_span_id
    assert decoded.trace_state == span.trace_state
    assert decoded.name == span.name
    assert decoded.kind == Span.SPAN_KIND_INTERNAL
    assert (decoded.start_time_unix_nano, decoded.end_time_unix_nano) == (span.start_unix_ns, span.end_unix_ns)
    got = [(kv.key, _plain(_any(kv.value)), type(_any(kv.value))) for kv in decoded.attributes]
    assert got == [(k, _plain(v), type(v)) for k, v in pairs]
    if span.error is None:
        assert not decoded.HasField("status")
    else:
        assert decoded.status.code == Status.STATUS_CODE_ERROR
        assert decoded.status.message == span.error
    assert decoded.flags & 0xFF == 1  # sampled
    assert bool(decoded.flags & 0x200) == bool(span.parent_span_id)  # parent is remote (Envoy's)


@given(spans=st.lists(_spans(), min_size=0, max_size=4))
def test_encoding_parses_back_with_opentelemetry_proto(spans: Sequence[tuple[FinishedSpan, Attributes]]) -> None:
    resource: list[tuple[str, AttributeValue]] = [
        ("service.name", "model-router"),
        ("cpus", 2),
        ("k8s", True),
        ("w", 0.5),
    ]
    encoded = [encode_span(s) for s, _ in spans]
    request = ExportTraceServiceRequest.FromString(encode_request(resource, "model_router", encoded))
    (rs,) = request.resource_spans
    assert [(kv.key, _any(kv.value)) for kv in rs.resource.attributes] == resource
    (ss,) = rs.scope_spans
    assert ss.scope.name == "model_router"
    assert len(ss.spans) == len(spans)
    for decoded, (span, pairs) in zip(ss.spans, spans, strict=True):
        _check(decoded, span, pairs)


_SPAN = FinishedSpan(1, 2, 3, "model_router.decide", 10, 20, encode_attribute("model_router.tier", "cheap"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _options(port: int, **changes: Any) -> ExporterOptions:
    return dataclasses.replace(exporter_options(f"http://127.0.0.1:{port}", {}), **changes)


def test_exporter_delivers_batches_and_flushes_on_shutdown() -> None:
    port = _free_port()
    receiver = OtlpReceiver(port).start()
    results: list[tuple[str, int]] = []
    try:
        exporter = OtlpSpanExporter(
            _options(port, max_batch_size=3, schedule_delay_seconds=60.0),
            [("service.name", "model-router")],
            "model_router",
            lambda result, n: results.append((result, n)),
        )
        for i in range(7):
            exporter.submit(FinishedSpan(5, 100 + i, 9, "model_router.decide", 10, 20, encode_attribute("i", i)))
        exporter.shutdown()
        spans = receiver.spans
    finally:
        receiver.stop()
    assert sorted(int(s.span_id, 16) for s in spans) == list(range(100, 107))
    assert {s.service for s in spans} == {"model-router"}
    assert sum(n for result, n in results if result == "exported") == 7


def test_full_queue_drops_and_counts_without_blocking() -> None:
    results: list[tuple[str, int]] = []
    exporter = OtlpSpanExporter(
        _options(_free_port(), max_queue_size=2, max_batch_size=10, schedule_delay_seconds=60.0, retry_delays=()),
        [],
        "model_router",
        lambda result, n: results.append((result, n)),
    )
    for _ in range(5):
        exporter.submit(_SPAN)
    assert results.count(("dropped", 1)) == 3
    exporter.shutdown()  # nothing listens: the 2 queued spans fail, once, without retries
    assert ("failed", 2) in results


def test_unavailable_collector_is_retried_then_counted_failed() -> None:
    slept: list[float] = []
    results: list[tuple[str, int]] = []
    exporter = OtlpSpanExporter(
        _options(_free_port(), schedule_delay_seconds=0.01, retry_delays=(0.1, 0.2), timeout_seconds=1.0),
        [],
        "model_router",
        lambda result, n: results.append((result, n)),
        sleep=slept.append,
    )
    exporter.submit(_SPAN)
    deadline = time.monotonic() + 10
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    exporter.shutdown()
    assert results[0] == ("failed", 1)
    assert slept == [0.1, 0.2]


@pytest.mark.parametrize(
    ("endpoint", "env", "expected"),
    [
        ("http://collector:4317", {}, {"endpoint": "collector:4317", "insecure": True}),
        ("https://collector", {}, {"endpoint": "collector:4317", "insecure": False}),
        ("collector:55680", {"OTEL_EXPORTER_OTLP_INSECURE": "true"}, {"endpoint": "collector:55680", "insecure": True}),
        ("collector:4317", {}, {"insecure": False}),
        ("http://[::1]:4317", {}, {"endpoint": "[::1]:4317"}),
        (
            "http://c:1",
            {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, X-Tenant=t1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": ""},
            {"headers": (("api-key", "a b"), ("x-tenant", "t1"))},
        ),
        (
            "http://c:1",
            {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_HEADERS": "b=2"},
            {"headers": (("a", "1"),)},
        ),
        ("http://c:1", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, {"compression": True}),
        ("http://c:1", {"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5"}, {"timeout_seconds": 2.5}),
        ("http://c:1", {"OTEL_BSP_SCHEDULE_DELAY": "250"}, {"schedule_delay_seconds": 0.25}),
        ("http://c:1", {"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, {"max_queue_size": 100, "max_batch_size": 100}),
    ],
)
def test_exporter_options_follow_the_otel_variables(
    endpoint: str, env: dict[str, str], expected: dict[str, object]
) -> None:
    options = exporter_options(endpoint, env)
    assert {k: getattr(options, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("endpoint", "env", "message"),
    [
        ("ftp://c:1", {}, "expected http"),
        ("http://c:1", {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "COMPRESSION"),
        ("http://c:1", {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "HEADERS"),
        ("http://c:1", {"OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ("http://c:1", {"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, "positive"),
        ("http://c:1", {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "CERTIFICATE"),
    ],
)
def test_bad_otel_variables_are_named(endpoint: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exporter_options(endpoint, env)
