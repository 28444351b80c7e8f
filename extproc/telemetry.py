"""Metrics, spans and decision logs; every metric, span and attribute name lives here.

Nothing is global: one :class:`Telemetry` owns its Prometheus registry and its tracer provider, built from settings
and passed to the servicer. A :class:`~extproc.record.DecisionRecord` becomes one span (a child of Envoy's span when
Envoy sent a trace context), metric updates and, at debug level, one JSON log line — never prompt text unless
``telemetry.log_prompts`` is on.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extproc.config import TelemetrySettings
from extproc.decision_proto import decision_labels, to_proto
from extproc.errors import ConfigError
from extproc.record import DecisionRecord, LogSink, Outcome

__all__ = ["SPAN_NAME", "Telemetry", "parse_traceparent", "span_attributes"]

SPAN_NAME = "model_router.decide"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_LOW64 = (1 << 64) - 1
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_SCOPE = InstrumentationScope("model_router")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The W3C trace context of a parent span; None if absent or invalid (then the decision starts a trace)."""
    match = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if match is None or match.group(1) == "ff":
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else TraceState()
    return SpanContext(trace_id, span_id, True, TraceFlags(int(match.group(4), 16) & 1), state)


# Attribute names, keyed by RoutingDecision field: the OpenTelemetry GenAI semantic conventions where one exists,
# model_router.* otherwise.
_ATTRIBUTES: Mapping[str, str] = {
    "requested_model": "gen_ai.request.model",
    "selected_model": "model_router.selected_model",
    "cluster": "model_router.cluster",
    "tier": "model_router.tier",
    "difficulty": "model_router.classifier.difficulty",
    "confidence": "model_router.classifier.confidence",
    "success_probability": "model_router.predicted_success",
    "quality_target": "model_router.quality_target",
    "estimated_input_tokens": "model_router.estimated_input_tokens",
    "estimated_cost_requested": "model_router.estimated_cost.requested",
    "estimated_cost_selected": "model_router.estimated_cost.selected",
    "api_schema": "model_router.api_schema",
    "classify_seconds": "model_router.classify_seconds",
    "total_seconds": "model_router.decide_seconds",
    "outcome": "model_router.outcome",
    "reason": "model_router.reason",
    "decision_id": "model_router.decision_id",
    "stream": "gen_ai.request.stream",
    "tenant": "model_router.tenant",
    "prompt_excerpt": "model_router.prompt_excerpt",
}
_OPERATIONS = {
    "openai.chat": "chat",
    "openai.completions": "text_completion",
    "openai.responses": "chat",
    "anthropic.messages": "chat",
}


def span_attributes(rec: DecisionRecord) -> dict[str, Any]:
    """The span attributes of a decision record, through its ``RoutingDecision`` (the one mapping)."""
    fields = decision_labels(to_proto(rec))
    attrs = {attr: fields[name] for name, attr in _ATTRIBUTES.items() if name in fields}
    operation = _OPERATIONS.get(fields.get("api_schema", ""))
    if operation:
        attrs["gen_ai.operation.name"] = operation
    return attrs


class Telemetry:
    """A :class:`~extproc.record.DecisionSink` that feeds Prometheus metrics, OpenTelemetry spans and logs."""

    def __init__(
        self,
        settings: TelemetrySettings,
        logger: logging.Logger,
        span_processor: SpanProcessor | None = None,
    ) -> None:
        self.settings = settings
        self._log = LogSink(logger, logging.INFO if settings.decision_log else logging.DEBUG)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "model_router_decisions",
            "Requests the router routed or sent to the fallback model.",
            ["api_schema", "requested_model", "selected_model", "tier", "outcome"],
            registry=r,
        )
        self.passthroughs = Counter(
            "model_router_passthroughs", "Requests forwarded untouched, by reason.", ["reason"], registry=r
        )
        self.errors = Counter(
            "model_router_errors",
            "Internal errors (the request still went on: fallback or unmodified).",
            ["reason"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "model_router_decision_seconds",
            "Time from the body's arrival to the router's answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.classify_seconds = Histogram(
            "model_router_classify_seconds",
            "Classifier time per prompt, including the executor hop.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cost_saved = Counter(
            "model_router_estimated_cost_saved",
            "Estimated cost saved versus sending each request to its requested (or default) model, in the "
            "catalog's currency; mode=shadow counts what shadow mode would have saved.",
            ["mode"],
            registry=r,
        )
        self.rejections = Counter(
            "model_router_rejections",
            "Requests the router answered with a 400 itself, by reason.",
            ["reason"],
            registry=r,
        )
        self.usage_tokens = Counter(
            "model_router_usage_tokens",
            "Tokens the upstream reported (telemetry.response_usage), by model and direction.",
            ["model", "direction"],
            registry=r,
        )
        self.usage_cost = Counter(
            "model_router_usage_cost",
            "Cost of the tokens the upstream reported, at catalog prices, in the catalog's currency.",
            ["model"],
            registry=r,
        )
        self.streams_in_flight = Gauge("model_router_streams_in_flight", "ext_proc streams currently open.", registry=r)
        self.config_reloads = Counter(
            "model_router_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result=result)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._processor = self._span_processor(span_processor)
        self._resource = Resource.create({"service.name": settings.service_name})
        self._rng = random.Random()
        self._ratio_bound = int(settings.sampling_ratio * (1 << 64))

    def _span_processor(self, span_processor: SpanProcessor | None) -> SpanProcessor | None:
        endpoint = (
            self.settings.otlp_endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        )
        if span_processor is None and endpoint:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise ConfigError(
                    [
                        f"telemetry.otlp_endpoint: the OTLP exporter cannot load ({exc}). xds-protos ships an older "
                        "copy of opentelemetry-proto's files; run `pip install --force-reinstall --no-deps "
                        "opentelemetry-proto==<the installed version>` (see the Makefile)"
                    ]
                ) from exc

            insecure = endpoint.startswith("http://")
            span_processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        return span_processor

    @property
    def tracing(self) -> bool:
        """Whether decisions become spans."""
        return self._processor is not None

    def _child(self, counter: Counter, *values: str) -> Any:
        """A labelled child, cached: ``labels()`` costs more than the increment."""
        key = (id(counter), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*values)
        return child

    def record(self, rec: DecisionRecord) -> None:
        """Count, trace and log one decision."""
        if rec.outcome is Outcome.PASSTHROUGH:
            self._child(self.passthroughs, rec.reason).inc()
        elif rec.outcome is Outcome.REJECTED:
            self._child(self.rejections, rec.reason).inc()
        else:
            labels = (rec.schema or "", rec.requested_model or "", rec.selected_model or "", rec.tier or "")
            self._child(self.decisions, *labels, rec.outcome.value).inc()
            if rec.outcome is Outcome.FALLBACK and rec.reason == "classifier_failed":
                self._child(self.errors, "classifier_failed").inc()
            if rec.total_seconds is not None:
                self.decision_seconds.observe(rec.total_seconds)
            if rec.classify_seconds is not None:
                self.classify_seconds.observe(rec.classify_seconds)
            if rec.cost_requested is not None and rec.cost_selected is not None:
                mode = "shadow" if rec.outcome is Outcome.SHADOW else "routed"
                self._child(self.cost_saved, mode).inc(max(0.0, rec.cost_requested - rec.cost_selected))
        self._span(rec)
        self._log.record(rec)

    def _span(self, rec: DecisionRecord) -> None:
        """Hand a finished span to the processor.

        The decision's start and end are already known, so the span is built finished (a ``ReadableSpan``) rather
        than driven live through the SDK's tracer, which costs several times more per span. Sampling is the SDK's
        parent-based rule: a parent's sampled flag decides; without a parent, ``sampling_ratio`` on the trace id.
        """
        processor = self._processor
        if processor is None:
            return
        parent = parse_traceparent(rec.traceparent, rec.tracestate)
        if parent is not None:
            if not parent.trace_flags.sampled:
                return
            trace_id, state = parent.trace_id, parent.trace_state
        else:
            trace_id = self._rng.getrandbits(128) or 1
            if (trace_id & _LOW64) >= self._ratio_bound:
                return
            state = TraceState()
        context = SpanContext(trace_id, self._rng.getrandbits(64) or 1, False, _SAMPLED, state)
        status = Status(StatusCode.ERROR, rec.reason) if rec.outcome is Outcome.FALLBACK else _UNSET
        processor.on_end(
            ReadableSpan(
                name=SPAN_NAME,
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=span_attributes(rec),
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=rec.started_unix_ns,
                end_time=rec.started_unix_ns + int((rec.total_seconds or 0.0) * 1e9),
                instrumentation_scope=_SCOPE,
            )
        )

    def usage(self, rec: DecisionRecord, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Count the real usage of one routed request and log it."""
        self._child(self.usage_tokens, model, "input").inc(input_tokens)
        self._child(self.usage_tokens, model, "output").inc(output_tokens)
        self._child(self.usage_cost, model).inc(cost)
        self._log.usage(rec, model, input_tokens, output_tokens, cost)

    def error(self, reason: str) -> None:
        """Count an internal error."""
        self.errors.labels(reason=reason).inc()

    def config_reloaded(self, applied: bool) -> None:
        """Count a config reload attempt."""
        self.config_reloads.labels(result="applied" if applied else "rejected").inc()

    def shutdown(self) -> None:
        """Flush and stop span export."""
        if self._processor is not None:
            self._processor.shutdown()
