"""The record of one stream's outcome, handed to whatever observes decisions (logs now; spans and metrics too)."""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DecisionRecord", "DecisionSink", "DiscardSink", "LogSink", "Outcome", "record_json"]


class Outcome(enum.StrEnum):
    """What happened to the request."""

    ROUTED = "routed"
    """The policy chose a model on the merits of the prompt."""
    FALLBACK = "fallback"
    """The router could not decide on the merits and sent the request to the fallback model."""
    PASSTHROUGH = "passthrough"
    """The request was forwarded untouched."""
    SHADOW = "shadow"
    """Shadow mode: decided and recorded, but the request was forwarded untouched."""
    REJECTED = "rejected"
    """The router answered 400 itself (a malformed constraint header, in ``reject`` mode)."""


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """Everything worth recording about one request's routing; never holds prompt text."""

    decision_id: str
    outcome: Outcome
    reason: str
    schema: str | None = None
    requested_model: str | None = None
    selected_model: str | None = None
    cluster: str | None = None
    tier: str | None = None
    difficulty: float | None = None
    confidence: float | None = None
    success_probability: float | None = None
    quality_target: float | None = None
    input_tokens: int | None = None
    cost_requested: float | None = None
    cost_selected: float | None = None
    classify_seconds: float | None = None
    total_seconds: float | None = None
    stream: bool = False
    tenant: str | None = None
    started_unix_ns: int = 0
    """Wall-clock start of the decision, for the span."""
    traceparent: str | None = None
    """W3C trace context of the parent span (Envoy's), if Envoy sent one."""
    tracestate: str | None = None
    prompt_excerpt: str | None = None
    """Only with ``telemetry.log_prompts: true``; otherwise never set."""
    via_decide: bool = False
    """Made through the ``Decide`` API: no Envoy applies it (the decision log says so, for ``report --envoy-log``)."""
    candidate_selected_model: str | None = None
    """With ``classifier.candidate_model_dir``: the candidate model's choice for the same request (not routed)."""
    candidate_tier: str | None = None
    candidate_difficulty: float | None = None
    candidate_success_probability: float | None = None
    cost_candidate: float | None = None


class DecisionSink(Protocol):
    """Receives one record per request that reached a decision or a pass-through, and internal errors."""

    def record(self, rec: DecisionRecord) -> None:
        """Observe ``rec``; must not raise and must not block."""
        ...

    def error(self, reason: str) -> None:
        """Count an internal error (``reason`` from a small closed set)."""
        ...

    def usage(self, decision_id: str, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Record the real usage the upstream reported for the request behind decision ``decision_id``."""
        ...


def record_json(rec: DecisionRecord) -> str:
    """The decision as one JSON object: ``RoutingDecision``'s canonical proto3 JSON (the form logs and reports read),
    and ``"via_decide": true`` for a decision made through ``Decide`` (not part of the message: where a decision was
    asked for is the log's business, not the caller's)."""
    from extproc.decision_proto import decision_dict, to_proto  # the mapping module imports this one

    via = {"via_decide": True} if rec.via_decide else {}
    return json.dumps({"event": "decision", **decision_dict(to_proto(rec)), **via})


class DiscardSink:
    """Explaining is not routing: nothing is counted, logged or traced (``explain``, and ``Decide`` with
    ``dry_run``)."""

    def record(self, rec: DecisionRecord) -> None:
        """Discard ``rec``."""

    def error(self, reason: str) -> None:
        """Discard ``reason``."""

    def usage(self, decision_id: str, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Discard the usage (nothing was sent upstream)."""


class LogSink:
    """Writes one JSON line per record (at debug level unless told otherwise)."""

    def __init__(self, logger: logging.Logger, level: int = logging.DEBUG) -> None:
        self._logger = logger
        self._level = level

    def record(self, rec: DecisionRecord) -> None:
        """Log ``rec`` as JSON if the logger is enabled for this sink's level."""
        if self._logger.isEnabledFor(self._level):
            self._logger.log(self._level, record_json(rec))

    def error(self, reason: str) -> None:
        """Errors are logged where they happen; nothing to add."""

    def usage(self, decision_id: str, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        """Log the real usage, joined to the decision by its id."""
        if self._logger.isEnabledFor(self._level):
            line = {
                "event": "usage",
                "decision_id": decision_id,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cost": cost,
            }
            self._logger.log(self._level, json.dumps(line))
