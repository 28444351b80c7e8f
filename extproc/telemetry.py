"""Metrics, spans and decision logs; every metric, span and attribute name lives here.

Nothing is global: one :class:`Telemetry` owns its Prometheus registry and its tracer provider, built from settings
and passed to the servicer. A :class:`~extproc.record.DecisionRecord` becomes one span (a child of Envoy's span when
Envoy sent a trace context), metric updates and, at debug level, one JSON log line — never prompt text unless
``telemetry.log_prompts`` is on.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import os
import platform
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from extproc.config import TelemetrySettings, check_otlp_endpoint
from extproc.decision_proto import OPTIONAL_NUMBERS, SCHEMA_NAMES, known_reason
from extproc.errors import ConfigError
from extproc.observe import RESULTS as USAGE_RESULTS
from extproc.otlp import (
    ExporterOptions,
    FinishedSpan,
    OtlpSpanExporter,
    encode_attribute,
    encode_double_attribute,
    exporter_options,
)
from extproc.policy import Reason
from extproc.record import DecisionRecord, LogSink, Outcome

__all__ = [
    "ALERTED_ERRORS",
    "SPAN_NAME",
    "SpanSink",
    "Telemetry",
    "TraceParent",
    "parse_traceparent",
    "span_attributes",
    "span_export_options",
]

SPAN_NAME = "model_router.decide"
_ERROR_REASONS = frozenset({Reason.CLASSIFIER_FAILED.value})
"""Fallbacks whose span status is ERROR: the router failed at its own work. The other fallbacks (no prompt text, no
model that fits the context) are how a request is, not failures, and would inflate error-rate alerts."""

ALERTED_ERRORS = ("classifier_failed", "handler_exception", "protocol_error", "tap_exception")
"""``model_router_errors_total`` reasons that ``k8s/monitoring`` alerts on. Exported at 0 from the start: a series
first scraped at 1 has no increase for ``rate()`` to see, so the first failures after a restart would not alert."""

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_LOW64 = (1 << 64) - 1
_SCOPE = "model_router"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_TRACESTATE_MEMBER = re.compile(
    r"[ \t]*(?:[a-z0-9][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e][ \t]*\Z"
)
"""One ``key=value`` of W3C tracestate (the value may not end in a space)."""
_DIGEST_HEX = 12
"""Hex digits of the config file's SHA-256 in ``model_router_config_info{digest}``: enough to tell versions apart,
short enough to read on a dashboard (``sha256sum FILE`` shows the same prefix)."""


def _version() -> str:
    try:
        return importlib.metadata.version("model-router")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _valid_tracestate(tracestate: str | None) -> str:
    """``tracestate`` if it follows the W3C grammar and limits (at most 32 members, 512 characters); else "".

    It can come from the client's own header (when Envoy sent no trace context) and is copied into every span.
    """
    if not tracestate or len(tracestate) > 512:
        return ""
    members = [m for m in tracestate.split(",") if m.strip()]
    if len(members) > 32 or not all(_TRACESTATE_MEMBER.match(m) for m in members):
        return ""
    return tracestate.strip()


@dataclass(frozen=True, slots=True)
class TraceParent:
    """The W3C trace context of the span a decision belongs under (Envoy's)."""

    trace_id: int
    span_id: int
    sampled: bool
    trace_state: str


def parse_traceparent(traceparent: str | None, tracestate: str | None = None) -> TraceParent | None:
    """The W3C trace context of a parent span; None if absent or invalid (then the decision starts a trace).

    Version 00 has exactly four fields; a later version may append more, which are ignored.
    """
    match = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if match is None or match.group(1) == "ff" or (match.group(1) == "00" and match.group(5)):
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    return TraceParent(trace_id, span_id, bool(int(match.group(4), 16) & 1), _valid_tracestate(tracestate))


class SpanSink(Protocol):
    """Where finished spans go: the OTLP exporter in production, a list in tests."""

    def submit(self, span: FinishedSpan) -> None:
        """Take one span; must not block or raise."""
        ...

    def shutdown(self) -> None:
        """Flush and stop."""
        ...


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
    "candidate_selected_model": "model_router.candidate.selected_model",
    "candidate_tier": "model_router.candidate.tier",
    "candidate_difficulty": "model_router.candidate.difficulty",
    "candidate_success_probability": "model_router.candidate.predicted_success",
    "estimated_cost_candidate": "model_router.candidate.estimated_cost",
}
_OPERATIONS = {
    "openai.chat": "chat",
    "openai.completions": "text_completion",
    "openai.responses": "chat",
    "anthropic.messages": "chat",
}


_STRINGS = (
    "requested_model",
    "selected_model",
    "cluster",
    "tier",
    "tenant",
    "candidate_selected_model",
    "candidate_tier",
)
_NUMBERS = tuple((src, _ATTRIBUTES[dst]) for src, dst in OPTIONAL_NUMBERS)
_DECISION_ID = _ATTRIBUTES["decision_id"]
_PER_DECISION = frozenset({_DECISION_ID, _ATTRIBUTES["prompt_excerpt"], *(attr for _, attr in _NUMBERS)})
_SHARED_FIELDS = (*_STRINGS, "schema", "outcome", "reason", "stream")
"""The record fields every attribute outside :data:`_PER_DECISION` is derived from (the shared cache's key)."""
_SHARED_CACHE_SIZE = 4096


def span_attributes(rec: DecisionRecord) -> dict[str, Any]:
    """The span attributes of a decision record: its ``RoutingDecision`` fields under :data:`_ATTRIBUTES` names.

    Read straight from the record rather than through :func:`~extproc.decision_proto.to_proto` (which costs 16 µs
    of the 50 µs telemetry budget); a unit test holds the two paths equal on generated records.
    """
    attrs: dict[str, Any] = {}
    for name in _STRINGS:
        value = getattr(rec, name)
        if value:
            attrs[_ATTRIBUTES[name]] = value
    for src, attr in _NUMBERS:
        value = getattr(rec, src)
        if value is not None:
            attrs[attr] = value
    schema = rec.schema
    if schema is not None and schema in SCHEMA_NAMES:
        attrs[_ATTRIBUTES["api_schema"]] = schema
        operation = _OPERATIONS.get(schema)
        if operation:
            attrs["gen_ai.operation.name"] = operation
    attrs[_ATTRIBUTES["outcome"]] = rec.outcome.value
    if known_reason(rec.reason):
        attrs[_ATTRIBUTES["reason"]] = rec.reason
    attrs[_ATTRIBUTES["decision_id"]] = rec.decision_id
    attrs[_ATTRIBUTES["stream"]] = rec.stream
    if rec.prompt_excerpt is not None:
        attrs[_ATTRIBUTES["prompt_excerpt"]] = rec.prompt_excerpt
    return attrs


def span_export_options(settings: TelemetrySettings, environ: Mapping[str, str]) -> ExporterOptions | None:
    """Where spans go: ``telemetry.otlp_endpoint``, else the standard variables (None: nowhere). A
    :class:`ConfigError` names whichever of them gave the bad value: the file or the environment. ``check-config``
    runs this too, so a bad variable fails there and not only at ``serve``."""
    sources = (
        ("telemetry.otlp_endpoint", settings.otlp_endpoint),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (environment)", environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT (environment)", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")),
    )
    for source, endpoint in sources:
        if endpoint:
            try:
                return exporter_options(check_otlp_endpoint(endpoint), environ)  # the file's rules for variables too
            except ValueError as exc:
                raise ConfigError([f"{source}: {exc}"]) from None
    return None


class Telemetry:
    """A :class:`~extproc.record.DecisionSink` that feeds Prometheus metrics, OpenTelemetry spans and logs."""

    def __init__(
        self,
        settings: TelemetrySettings,
        logger: logging.Logger,
        span_sink: SpanSink | None = None,
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
            "Classifier time per prompt, including the hop to its thread.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Two counters, not one of savings: a counter cannot go down, and a router choosing a dearer model (a
        # conversation's floor, nothing cheaper meeting the target) must show as spending more, not as zero saved.
        self.cost_baseline = Counter(
            "model_router_estimated_cost_baseline",
            "Estimated cost of the decided requests had each gone to its requested (or default) model, in the "
            "catalog's currency; estimated savings = baseline - selected (mode=shadow: what shadow mode would have "
            "saved). Pinned requests are not counted.",
            ["mode"],
            registry=r,
        )
        self.cost_selected = Counter(
            "model_router_estimated_cost_selected",
            "Estimated cost of the decided requests at the model the router chose, in the catalog's currency "
            "(mode=shadow: the model it would have chosen). Pinned requests are not counted.",
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
        self.candidate_decisions = Counter(
            "model_router_candidate_decisions",
            "Decisions of the candidate model (classifier.candidate_model_dir) beside the live one, by both choices.",
            ["selected_model", "candidate_model"],
            registry=r,
        )
        self.feedback = Counter(
            "model_router_feedback",
            "Feedback submissions by result (recorded, invalid_argument, not_found, unavailable, resource_exhausted) "
            "and source.",
            ["result", "source"],
            registry=r,
        )
        self.usage_responses = Counter(
            "model_router_usage_responses",
            "Decided responses whose copy the router read (telemetry.response_usage), by result.",
            ["result"],
            registry=r,
        )
        for result in USAGE_RESULTS:  # present at 0: usage on with no copies arriving shows as a flat line
            self.usage_responses.labels(result=result)
        self.streams_in_flight = Gauge(
            "model_router_streams_in_flight",
            "ext_proc decision streams currently open (not the usage observer's copies).",
            registry=r,
        )
        self.config_reloads = Counter(
            "model_router_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result=result)
        self.config_valid = Gauge(
            "model_router_config_last_reload_successful",
            "0 while the config file holds a version a reload rejected (the previous config stays in force), else 1.",
            registry=r,
        )
        self.config_valid.set(1)
        self.config_info = Gauge(
            "model_router_config_info",
            "1, labelled with the first 12 hex digits of the SHA-256 of the config file in force (sha256sum FILE):"
            " pods that show different digests run different configs.",
            ["digest"],
            registry=r,
        )
        self.config_applied_at = Gauge(
            "model_router_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (at start or by a reload), in Unix seconds.",
            registry=r,
        )
        self.config_readable = Gauge(
            "model_router_config_file_readable",
            "0 once the config file could not be read on several polls in a row (deleted, unmounted or no"
            " permission: the running config stays in force), else 1.",
            registry=r,
        )
        self.config_readable.set(1)
        self._config_digest: str | None = None
        Gauge(
            "model_router_build_info", "1, labelled with the router's version.", ["version", "python"], registry=r
        ).labels(version=_version(), python=platform.python_version()).set(1)
        ProcessCollector(registry=r)  # process_*: CPU, resident memory, open files, start time
        PlatformCollector(registry=r)  # python_info
        for reason in ALERTED_ERRORS:
            self.errors.labels(reason=reason)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.spans = Counter(
            "model_router_spans",
            "Decision spans by export result (dropped: the export queue was full or the exporter stopped).",
            ["result"],
            registry=r,
        )
        # The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the config wins, our name is the default.
        resource = Resource.create({"service.name": settings.service_name} if settings.service_name else {})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "model-router"}))
        self._resource = [(k, v) for k, v in resource.attributes.items() if isinstance(v, str | bool | int | float)]
        self._spans = span_sink if span_sink is not None else self._exporter()
        self._shared_attributes: dict[tuple[object, ...], bytes] = {}
        self._rng = random.Random()
        self._ratio_bound = int(settings.sampling_ratio * (1 << 64))

    def _exporter(self) -> OtlpSpanExporter | None:
        options = span_export_options(self.settings, os.environ)
        if options is None:
            return None
        for result in ("exported", "dropped", "failed"):
            self.spans.labels(result=result)
        return OtlpSpanExporter(options, self._resource, _SCOPE, self._count_spans)

    def _count_spans(self, result: str, n: int) -> None:
        self.spans.labels(result=result).inc(n)

    @property
    def tracing(self) -> bool:
        """Whether decisions become spans."""
        return self._spans is not None

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
            if rec.reason in _ERROR_REASONS:  # shadow decisions too: an evaluation must see the router failing
                self._child(self.errors, rec.reason).inc()
            if rec.total_seconds is not None:
                self.decision_seconds.observe(rec.total_seconds)
            if rec.classify_seconds is not None:
                self.classify_seconds.observe(rec.classify_seconds)
            if rec.candidate_selected_model:
                self._child(self.candidate_decisions, rec.selected_model or "", rec.candidate_selected_model).inc()
            pinned = rec.reason == Reason.TRUSTED_OVERRIDE  # not the router's choice (as model-router report)
            if rec.cost_requested is not None and rec.cost_selected is not None and not pinned:
                mode = "shadow" if rec.outcome is Outcome.SHADOW else "routed"
                self._child(self.cost_baseline, mode).inc(max(0.0, rec.cost_requested))  # prices are >= 0
                self._child(self.cost_selected, mode).inc(max(0.0, rec.cost_selected))
        self._span(rec)
        self._log.record(rec)

    def _span(self, rec: DecisionRecord) -> None:
        """Hand the decision's finished span to the sink.

        The decision's start and end are already known, so the span is built finished rather than driven live
        through a tracer. Sampling is the SDK's parent-based rule: a parent's sampled flag decides; without a
        parent, ``sampling_ratio`` on the trace id.
        """
        sink = self._spans
        if sink is None:
            return
        parent = parse_traceparent(rec.traceparent, rec.tracestate)
        if parent is not None:
            if not parent.sampled:
                return
            trace_id, parent_id, state = parent.trace_id, parent.span_id, parent.trace_state
        else:
            trace_id = self._rng.getrandbits(128) or 1
            if (trace_id & _LOW64) >= self._ratio_bound:
                return
            parent_id, state = 0, ""
        sink.submit(
            FinishedSpan(
                trace_id=trace_id,
                span_id=self._rng.getrandbits(64) or 1,
                parent_span_id=parent_id,
                name=SPAN_NAME,
                start_unix_ns=rec.started_unix_ns,
                end_unix_ns=rec.started_unix_ns + int(max(rec.total_seconds or 0.0, 0.0) * 1e9),
                attributes=self._encoded_attributes(rec),
                trace_state=state,
                error=rec.reason if rec.reason in _ERROR_REASONS else None,
            )
        )

    def _encoded_attributes(self, rec: DecisionRecord) -> bytes:
        """:func:`span_attributes` of ``rec``, encoded for OTLP at a fraction of the cost of mapping then encoding.

        The attributes that repeat across decisions (models, cluster, tier, tenant, schema, outcome, reason, stream)
        are encoded once per distinct combination, from :func:`span_attributes` itself, and cached (bounded); the
        numbers and the decision id are encoded per decision. A unit test decodes the bytes and compares them with
        :func:`span_attributes` on generated records.
        """
        key = tuple(getattr(rec, name) for name in _SHARED_FIELDS)
        shared = self._shared_attributes.get(key)
        if shared is None:
            every = span_attributes(rec)
            shared = b"".join(encode_attribute(k, v) for k, v in every.items() if k not in _PER_DECISION)
            if len(self._shared_attributes) >= _SHARED_CACHE_SIZE:
                self._shared_attributes.clear()
            self._shared_attributes[key] = shared
        parts = [shared, encode_attribute(_DECISION_ID, rec.decision_id)]
        for src, attr in _NUMBERS:
            value = getattr(rec, src)
            if value is None:
                continue
            parts.append(
                encode_double_attribute(attr, value) if type(value) is float else encode_attribute(attr, value)
            )
        if rec.prompt_excerpt is not None:
            parts.append(encode_attribute(_ATTRIBUTES["prompt_excerpt"], rec.prompt_excerpt))
        return b"".join(parts)

    def usage(self, decision_id: str, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Count the real usage of one routed request and log it."""
        self._child(self.usage_tokens, model, "input").inc(input_tokens)
        self._child(self.usage_tokens, model, "output").inc(output_tokens)
        self._child(self.usage_cost, model).inc(cost)
        self._log.usage(decision_id, model, input_tokens, output_tokens, cost)

    def error(self, reason: str) -> None:
        """Count an internal error."""
        self.errors.labels(reason=reason).inc()

    def feedback_result(self, result: str, source: str) -> None:
        """Count one feedback submission."""
        self._child(self.feedback, result, source).inc()

    def expect_feedback(self, results: Iterable[str], sources: Iterable[str]) -> None:
        """Export every (result, source) of feedback at 0, once feedback is on (see :data:`ALERTED_ERRORS`)."""
        for result, source in itertools.product(results, sources):
            self._child(self.feedback, result, source)

    def config_reloaded(self, applied: bool) -> None:
        """Count a config reload attempt; the file is then valid, or not, until it changes again."""
        self.config_reloads.labels(result="applied" if applied else "rejected").inc()
        self.config_file_state(applied)

    def config_file_state(self, valid: bool) -> None:
        """Whether the config file as it is now is one the router runs (or would): ``..._last_reload_successful``."""
        self.config_valid.set(1 if valid else 0)

    def config_in_force(self, digest: bytes | None) -> None:
        """The config now in force (at start, or after an applied reload): its digest and when it was loaded."""
        label = digest.hex()[:_DIGEST_HEX] if digest else "unknown"
        self.config_info.labels(digest=label).set(1)  # the new series first: a scrape never sees none
        if self._config_digest not in (None, label):
            self.config_info.remove(self._config_digest)
        self._config_digest = label
        self.config_applied_at.set(time.time())

    def config_file_readable(self, readable: bool) -> None:
        """Whether the config watcher can read the file (``model_router_config_file_readable``)."""
        self.config_readable.set(1 if readable else 0)

    def shutdown(self) -> None:
        """Flush and stop span export."""
        if self._spans is not None:
            self._spans.shutdown()
