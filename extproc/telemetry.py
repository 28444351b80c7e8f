"""Metrics, spans and decision logs; every metric, span and attribute name lives here.

Nothing is global: one :class:`Telemetry` owns its Prometheus registry and its tracer provider, built from settings
and passed to the servicer. A :class:`~extproc.record.DecisionRecord` becomes one span (a child of Envoy's span when
Envoy sent a trace context), metric updates and, at debug level, one JSON log line — never prompt text unless
``telemetry.log_prompts`` is on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extproc.config import TelemetrySettings
from extproc.record import DecisionRecord, LogSink, Outcome

__all__ = ["SPAN_NAME", "Telemetry", "span_attributes"]

SPAN_NAME = "model_router.decide"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_PROPAGATOR = TraceContextTextMapPropagator()

# Attribute names: the OpenTelemetry GenAI semantic conventions where one exists, model_router.* otherwise.
_ATTRIBUTES: Mapping[str, str] = {
    "requested_model": "gen_ai.request.model",
    "selected_model": "model_router.selected_model",
    "cluster": "model_router.cluster",
    "tier": "model_router.tier",
    "difficulty": "model_router.classifier.difficulty",
    "confidence": "model_router.classifier.confidence",
    "success_probability": "model_router.predicted_success",
    "quality_target": "model_router.quality_target",
    "input_tokens": "model_router.estimated_input_tokens",
    "cost_requested": "model_router.estimated_cost.requested",
    "cost_selected": "model_router.estimated_cost.selected",
    "schema": "model_router.api_schema",
    "classify_seconds": "model_router.classify_seconds",
    "total_seconds": "model_router.decide_seconds",
    "outcome": "model_router.outcome",
    "reason": "model_router.reason",
    "decision_id": "model_router.decision_id",
    "stream": "gen_ai.request.stream",
    "tenant": "model_router.tenant",
    "prompt_excerpt": "model_router.prompt_excerpt",
}
_OPERATIONS = {"openai.chat": "chat", "openai.completions": "text_completion"}


def span_attributes(rec: DecisionRecord) -> dict[str, Any]:
    """The span attributes of a decision record (the one mapping from record fields to attribute names)."""
    attrs: dict[str, Any] = {}
    for field_name, attr in _ATTRIBUTES.items():
        value = getattr(rec, field_name)
        if value is not None:
            attrs[attr] = str(value) if isinstance(value, Outcome) else value
    if rec.schema in _OPERATIONS:
        attrs["gen_ai.operation.name"] = _OPERATIONS[rec.schema]
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
        self.streams_in_flight = Gauge(
            "model_router_streams_in_flight", "ext_proc streams currently open.", registry=r
        )
        self.config_reloads = Counter(
            "model_router_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result=result)
        self.tracer_provider = self._tracer_provider(span_processor)
        self._tracer = self.tracer_provider.get_tracer("model_router") if self.tracer_provider else None

    def _tracer_provider(self, span_processor: SpanProcessor | None) -> TracerProvider | None:
        endpoint = self.settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        if span_processor is None and not endpoint:
            return None
        provider = TracerProvider(
            resource=Resource.create({"service.name": self.settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(self.settings.sampling_ratio)),
        )
        if span_processor is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            insecure = endpoint is not None and endpoint.startswith("http://")
            span_processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        provider.add_span_processor(span_processor)
        return provider

    def record(self, rec: DecisionRecord) -> None:
        """Count, trace and log one decision."""
        if rec.outcome is Outcome.PASSTHROUGH:
            self.passthroughs.labels(reason=rec.reason).inc()
        elif rec.outcome is Outcome.REJECTED:
            self.rejections.labels(reason=rec.reason).inc()
        else:
            self.decisions.labels(
                api_schema=rec.schema or "",
                requested_model=rec.requested_model or "",
                selected_model=rec.selected_model or "",
                tier=rec.tier or "",
                outcome=rec.outcome.value,
            ).inc()
            if rec.outcome is Outcome.FALLBACK and rec.reason == "classifier_failed":
                self.errors.labels(reason="classifier_failed").inc()
            if rec.total_seconds is not None:
                self.decision_seconds.observe(rec.total_seconds)
            if rec.classify_seconds is not None:
                self.classify_seconds.observe(rec.classify_seconds)
            if rec.cost_requested is not None and rec.cost_selected is not None:
                mode = "shadow" if rec.outcome is Outcome.SHADOW else "routed"
                self.cost_saved.labels(mode=mode).inc(max(0.0, rec.cost_requested - rec.cost_selected))
        self._span(rec)
        self._log.record(rec)

    def _span(self, rec: DecisionRecord) -> None:
        if self._tracer is None:
            return
        carrier = {k: v for k, v in (("traceparent", rec.traceparent), ("tracestate", rec.tracestate)) if v}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        duration_ns = int((rec.total_seconds or 0.0) * 1e9)
        span = self._tracer.start_span(
            SPAN_NAME,
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            start_time=rec.started_unix_ns,
            attributes=span_attributes(rec),
        )
        if rec.outcome is Outcome.FALLBACK:
            span.set_status(Status(StatusCode.ERROR, rec.reason))
        span.end(end_time=rec.started_unix_ns + duration_ns)

    def error(self, reason: str) -> None:
        """Count an internal error."""
        self.errors.labels(reason=reason).inc()

    def config_reloaded(self, applied: bool) -> None:
        """Count a config reload attempt."""
        self.config_reloads.labels(result="applied" if applied else "rejected").inc()

    def shutdown(self) -> None:
        """Flush and stop span export."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
