"""StreamHandler: the per-stream state machine, and the one error boundary of the router.

Envoy sends request headers (SEND), then the whole request body (BUFFERED). The decision is made in the body
stage: parse once, classify, call the policy, then answer with a body mutation (new ``model``), the cluster
header, ``content-length`` and ``clear_route_cache`` so Envoy routes again. Anything unexpected is answered with
a plain "continue": a failure here degrades to pass-through, never to a dropped or corrupted request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from classifier.model import DifficultyModel, Prediction
from extproc import envoy
from extproc.bodyedit import replace_model
from extproc.policy import (
    Decision,
    Reason,
    RequestFacts,
    ResolvedModel,
    choose_model,
    estimate_cost,
    fallback_decision,
    pinned_decision,
)
from extproc.record import DecisionRecord, DecisionSink, Outcome
from extproc.request import ParsedRequest, PassReason, Passthrough, parse_request
from extproc.schemas import schema_for_path
from extproc.snapshot import Snapshot

__all__ = [
    "CLUSTER_HEADER",
    "HEADER_PREFIX",
    "QUALITY_HEADER",
    "Classify",
    "ProtocolError",
    "Stage",
    "StreamHandler",
]

HEADER_PREFIX = "x-model-router-"
CLUSTER_HEADER = HEADER_PREFIX + "cluster"
QUALITY_HEADER = HEADER_PREFIX + "quality"
OVERRIDE_HEADER = HEADER_PREFIX + "override"
OVERRIDE_TOKEN_HEADER = HEADER_PREFIX + "override-token"
RESPONSE_MODEL_HEADER = HEADER_PREFIX + "model"
RESPONSE_TIER_HEADER = HEADER_PREFIX + "tier"
RESPONSE_DECISION_HEADER = HEADER_PREFIX + "decision-id"

_TRACE_HEADERS = ("traceparent", "tracestate")

Classify = Callable[[DifficultyModel, str, float], Awaitable[Prediction]]
"""Runs the model on one text within a deadline in seconds; raises on failure or timeout."""

_log = logging.getLogger("model_router.stream")


class ProtocolError(Exception):
    """A message the handler cannot answer at all (unknown or empty kind): the stream ends with a gRPC status."""


class Stage(enum.Enum):
    """Where the stream is in Envoy's phases."""

    WAIT_HEADERS = enum.auto()
    WAIT_BODY = enum.auto()
    FINISHED = enum.auto()
    """Decision made or pass-through chosen; only "continue" (and decision headers) from here."""


@dataclass(frozen=True, slots=True)
class _Request:
    path: str
    method: str
    content_type: str
    content_encoding: str
    quality: str | None
    override: str | None
    override_token: str | None


def _header_map(headers: pb.HttpHeaders) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        out[h.key.lower()] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class StreamHandler:
    """Owns all state of one ext_proc stream; shares only the immutable snapshot with other streams."""

    def __init__(
        self,
        snapshot: Snapshot,
        classify: Classify,
        sink: DecisionSink,
        new_id: Callable[[], str],
        clock: Callable[[], float] = time.perf_counter,
        trace_headers: Mapping[str, str] | None = None,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._snap = snapshot
        self._classify = classify
        self._sink = sink
        self._new_id = new_id
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self.stage = Stage.WAIT_HEADERS
        self._request: _Request | None = None
        self._record: DecisionRecord | None = None
        # Envoy's ext_proc gRPC call carries the trace context of its span (a child of the request span) in
        # the call metadata; the request's own traceparent header is the fallback.
        self._trace = {k: v for k, v in (trace_headers or {}).items() if k in _TRACE_HEADERS}
        self._started_ns = 0

    @property
    def record(self) -> DecisionRecord | None:
        """The decision record of this stream, once there is one."""
        return self._record

    async def handle(self, msg: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        """Answer one message from Envoy; the only place that catches broad exceptions."""
        kind = msg.WhichOneof("request")
        if kind is None or envoy.continue_for(kind) is None:
            raise ProtocolError(f"cannot answer a message of kind {kind!r}")
        try:
            match kind, self.stage:
                case "request_headers", Stage.WAIT_HEADERS:
                    return self._on_headers(msg.request_headers)
                case "request_body", Stage.WAIT_BODY:
                    return await self._on_body(msg.request_body)
                case "response_headers", _ if self._record is not None and self._record.selected_model:
                    return [envoy.response_headers_set(self._decision_headers(self._record))]
                case _:
                    return [self._continue(kind)]
        except Exception:
            _log.exception("unexpected error in stream handler; forwarding %s unchanged", kind)
            self._sink.error("handler_exception")
            self.stage = Stage.FINISHED
            return [self._continue(kind)]

    @staticmethod
    def _continue(kind: str) -> pb.ProcessingResponse:
        response = envoy.continue_for(kind)
        assert response is not None  # checked in handle()
        return response

    def _context_fields(self) -> dict[str, Any]:
        return {
            "started_unix_ns": self._started_ns or self._wall_clock_ns(),
            "traceparent": self._trace.get("traceparent"),
            "tracestate": self._trace.get("tracestate"),
        }

    def _pass(self, reason: PassReason) -> None:
        self.stage = Stage.FINISHED
        self._record = DecisionRecord(
            decision_id=self._new_id(),
            outcome=Outcome.PASSTHROUGH,
            reason=reason.value,
            **self._context_fields(),
        )
        self._sink.record(self._record)

    def _on_headers(self, headers: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        h = _header_map(headers)
        if "traceparent" not in self._trace:
            self._trace = {k: h[k] for k in _TRACE_HEADERS if k in h}
        owned = sorted(k for k in h if k.startswith(HEADER_PREFIX))
        req = _Request(
            path=h.get(":path", ""),
            method=h.get(":method", ""),
            content_type=h.get("content-type", ""),
            content_encoding=h.get("content-encoding", "identity").strip().lower(),
            quality=h.get(QUALITY_HEADER),
            override=h.get(OVERRIDE_HEADER),
            override_token=h.get(OVERRIDE_TOKEN_HEADER),
        )
        self._request = req
        reason = None
        if schema_for_path(req.path) is None:
            reason = PassReason.UNKNOWN_PATH
        elif req.method != "POST":
            reason = PassReason.NOT_POST
        elif headers.end_of_stream:
            reason = PassReason.NO_BODY
        elif not _is_json(req.content_type):
            reason = PassReason.NOT_JSON_CONTENT_TYPE
        elif req.content_encoding not in ("", "identity"):
            reason = PassReason.CONTENT_ENCODED
        if reason is None:
            self.stage = Stage.WAIT_BODY
            return [envoy.headers_continue(owned, skip_body=False)]
        if reason is not PassReason.UNKNOWN_PATH:
            self._pass(reason)
        else:
            self.stage = Stage.FINISHED  # not our API: no record, no metrics noise
        return [envoy.headers_continue(owned, skip_body=True)]

    def _quality_target(self) -> float:
        policy = self._snap.settings.policy
        raw = self._request.quality if self._request else None
        if raw is not None and policy.quality_header:
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if 0.0 <= value <= 1.0:
                return value
        return policy.quality_target

    async def _on_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        start = self._clock()
        self._started_ns = self._wall_clock_ns()
        raw = body.body
        if not body.end_of_stream:
            self._pass(PassReason.STREAMED_BODY)
            return [self._continue("request_body")]
        if len(raw) > self._snap.settings.limits.max_body_bytes:
            self._pass(PassReason.BODY_TOO_LARGE)
            return [self._continue("request_body")]
        assert self._request is not None  # WAIT_BODY is only reached through the headers stage
        parsed = parse_request(self._request.path, raw, self._snap.routable, self._snap.settings.limits)
        if isinstance(parsed, Passthrough):
            self._pass(parsed.reason)
            return [self._continue("request_body")]
        decision, prediction, classify_seconds = await self._decide(parsed)
        new_body = replace_model(raw, decision.model.name)
        if new_body is None:  # duplicate or non-string top-level model: ambiguous, do not touch
            self._pass(PassReason.NO_MODEL)
            return [self._continue("request_body")]
        self._record = self._build_record(parsed, decision, prediction, classify_seconds, start)
        self._sink.record(self._record)
        self.stage = Stage.FINISHED
        headers = {CLUSTER_HEADER: decision.model.cluster}
        return [envoy.body_rewrite(new_body, headers, self._metadata(self._record))]

    def _trusted_pin(self) -> ResolvedModel | None:
        """The pinned model if the request carries one and proves it is trusted; every other case is ignored."""
        req = self._request
        if req is None or req.override is None:
            return None
        expected = self._snap.settings.security.override.token_sha256
        token = req.override_token
        if expected is None or token is None:
            self._sink.error("untrusted_override")
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not hmac.compare_digest(digest, expected):
            self._sink.error("untrusted_override")
            return None
        model = self._snap.by_name.get(req.override.strip())
        if model is None:
            self._sink.error("unknown_override_model")
        return model

    async def _decide(self, parsed: ParsedRequest) -> tuple[Decision, Prediction | None, float | None]:
        snap = self._snap
        pinned = self._trusted_pin()
        if pinned is not None:
            return pinned_decision(pinned), None, None
        fallback = snap.by_name.get(parsed.requested_model, snap.default_model)
        if not parsed.prompt_text.strip():
            return fallback_decision(fallback, Reason.NO_PROMPT_TEXT), None, None
        t0 = self._clock()
        try:
            timeout = snap.settings.server.classifier_timeout_ms / 1000.0
            prediction = await self._classify(snap.model, parsed.prompt_text, timeout)
        except Exception as exc:  # the classifier's failure is a fallback, never a failed request
            _log.warning("classifier failed (%s); using fallback model %s", type(exc).__name__, fallback.name)
            return fallback_decision(fallback, Reason.CLASSIFIER_FAILED), None, self._clock() - t0
        classify_seconds = self._clock() - t0
        facts = RequestFacts(
            requested_model=parsed.requested_model,
            input_tokens=parsed.input_tokens,
            output_tokens=parsed.max_output_tokens or snap.settings.policy.expected_output_tokens,
            quality_target=self._quality_target(),
        )
        return choose_model(prediction, facts, snap.catalog, fallback), prediction, classify_seconds

    def _build_record(
        self,
        parsed: ParsedRequest,
        decision: Decision,
        prediction: Prediction | None,
        classify_seconds: float | None,
        start: float,
    ) -> DecisionRecord:
        snap = self._snap
        out_tokens = parsed.max_output_tokens or snap.settings.policy.expected_output_tokens
        baseline = snap.by_name.get(parsed.requested_model, snap.default_model)
        excerpt = parsed.prompt_text[:200] if snap.settings.telemetry.log_prompts else None
        return DecisionRecord(
            decision_id=self._new_id(),
            outcome=Outcome.FALLBACK if decision.fallback else Outcome.ROUTED,
            reason=decision.reason.value,
            schema=parsed.schema.name,
            requested_model=parsed.requested_model,
            selected_model=decision.model.name,
            cluster=decision.model.cluster,
            tier=decision.model.tier,
            difficulty=prediction.difficulty if prediction else None,
            confidence=prediction.confidence if prediction else None,
            success_probability=decision.success_probability,
            quality_target=self._quality_target(),
            input_tokens=parsed.input_tokens,
            cost_requested=estimate_cost(baseline, parsed.input_tokens, out_tokens),
            cost_selected=estimate_cost(decision.model, parsed.input_tokens, out_tokens),
            classify_seconds=classify_seconds,
            total_seconds=self._clock() - start,
            stream=parsed.body.get("stream") is True,
            prompt_excerpt=excerpt,
            **self._context_fields(),
        )

    @staticmethod
    def _decision_headers(rec: DecisionRecord) -> dict[str, str]:
        return {
            RESPONSE_MODEL_HEADER: rec.selected_model or "",
            RESPONSE_TIER_HEADER: rec.tier or "",
            RESPONSE_DECISION_HEADER: rec.decision_id,
        }

    @staticmethod
    def _metadata(rec: DecisionRecord) -> dict[str, str]:
        """Dynamic metadata Envoy turns into response headers and access-log fields (no response phase needed)."""
        return {
            "selected_model": rec.selected_model or "",
            "tier": rec.tier or "",
            "cluster": rec.cluster or "",
            "decision_id": rec.decision_id,
            "reason": rec.reason,
        }
