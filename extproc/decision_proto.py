"""The one mapping from a :class:`~extproc.record.DecisionRecord` to ``model_router.v1.RoutingDecision``.

Every place that records a decision goes through here: span attributes, the JSON decision log (the message's
canonical proto3 JSON mapping), the decision response headers and Envoy's dynamic metadata, ``Decide`` and the
report. Prompt text is mapped only if the record holds it (``telemetry.log_prompts: true``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.record import DecisionRecord, Outcome

__all__ = [
    "OPTIONAL_NUMBERS",
    "SCHEMA_NAMES",
    "decision_dict",
    "decision_labels",
    "envoy_metadata",
    "from_legacy_dict",
    "known_reason",
    "label",
    "response_headers",
    "to_proto",
]

SCHEMA_NAMES: Mapping[str, int] = {
    "openai.chat": api.API_SCHEMA_OPENAI_CHAT,
    "openai.completions": api.API_SCHEMA_OPENAI_COMPLETIONS,
    "openai.responses": api.API_SCHEMA_OPENAI_RESPONSES,
    "anthropic.messages": api.API_SCHEMA_ANTHROPIC_MESSAGES,
}
"""``ApiSchema.name`` -> the ``ApiSchema`` enum value."""
_ENUM_PREFIXES = {"outcome": "OUTCOME_", "reason": "REASON_", "api_schema": "API_SCHEMA_"}
OPTIONAL_NUMBERS = (
    ("difficulty", "difficulty"),
    ("confidence", "confidence"),
    ("success_probability", "success_probability"),
    ("quality_target", "quality_target"),
    ("input_tokens", "estimated_input_tokens"),
    ("cost_requested", "estimated_cost_requested"),
    ("cost_selected", "estimated_cost_selected"),
    ("classify_seconds", "classify_seconds"),
    ("total_seconds", "total_seconds"),
    ("candidate_difficulty", "candidate_difficulty"),
    ("candidate_success_probability", "candidate_success_probability"),
    ("cost_candidate", "estimated_cost_candidate"),
)
"""Record field -> message field, for the fields with explicit presence."""


def _reason(reason: str) -> int:
    value = api.Reason.DESCRIPTOR.values_by_name.get("REASON_" + reason.upper())
    return value.number if value is not None else 0


def known_reason(reason: str) -> bool:
    """Whether ``reason`` has its own ``Reason`` value (others map to ``REASON_UNSPECIFIED``)."""
    return _reason(reason) != 0


def to_proto(rec: DecisionRecord) -> api.RoutingDecision:
    """The record as a ``RoutingDecision``; unknown reason or schema names become ``*_UNSPECIFIED``."""
    msg = api.RoutingDecision(
        decision_id=rec.decision_id,
        outcome=api.Outcome.Value("OUTCOME_" + rec.outcome.name),
        reason=cast(api.Reason.ValueType, _reason(rec.reason)),
        api_schema=cast(api.ApiSchema.ValueType, SCHEMA_NAMES.get(rec.schema or "", 0)),
        requested_model=rec.requested_model or "",
        selected_model=rec.selected_model or "",
        cluster=rec.cluster or "",
        tier=rec.tier or "",
        tenant=rec.tenant or "",
        candidate_selected_model=rec.candidate_selected_model or "",
        candidate_tier=rec.candidate_tier or "",
        shadow=rec.outcome is Outcome.SHADOW,
        stream=rec.stream,
    )
    for src, dst in OPTIONAL_NUMBERS:
        value = getattr(rec, src)
        if value is not None:
            setattr(msg, dst, value)
    if rec.started_unix_ns:
        msg.decided_at.FromNanoseconds(rec.started_unix_ns)
    if rec.prompt_excerpt is not None:
        msg.prompt_excerpt = rec.prompt_excerpt
    return msg


def decision_dict(msg: api.RoutingDecision) -> dict[str, Any]:
    """The canonical proto3 JSON mapping of ``msg``, with the .proto field names (the decision log's form)."""
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def _labels(field: str) -> dict[int, str]:
    if field == "api_schema":
        return {v: k for k, v in SCHEMA_NAMES.items()}
    enum = api.RoutingDecision.DESCRIPTOR.fields_by_name[field].enum_type
    assert enum is not None
    return {v.number: v.name.removeprefix(_ENUM_PREFIXES[field]).lower() for v in enum.values}


_LABELS = {field: _labels(field) for field in _ENUM_PREFIXES}
_BOOL_FIELDS = tuple(f.name for f in api.RoutingDecision.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_BOOL)


def label(field: str, value: int) -> str:
    """The short, lower-case label of an enum value (``OUTCOME_ROUTED`` -> ``routed``), as metrics and logs use."""
    return _LABELS[field].get(value, "")


def decision_labels(msg: api.RoutingDecision) -> dict[str, Any]:
    """Field name -> plain value for every field that is set: enums as short labels, bools always present;
    unspecified enums, empty strings and the timestamp left out."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        name = field.name
        labels = _LABELS.get(name)
        if labels is not None:
            out[name] = labels.get(value, "")
        elif field.message_type is None:
            out[name] = value
    for name in _BOOL_FIELDS:
        out[name] = getattr(msg, name)
    return out


def envoy_metadata(msg: api.RoutingDecision) -> dict[str, str]:
    """The ``model_router`` dynamic metadata Envoy turns into response headers and access-log fields."""
    return {
        "outcome": label("outcome", msg.outcome),
        "selected_model": msg.selected_model,
        "tier": msg.tier,
        "cluster": msg.cluster,
        "decision_id": msg.decision_id,
        "reason": label("reason", msg.reason) if msg.reason else "",
    }


def response_headers(msg: api.RoutingDecision, prefix: str = "x-model-router-") -> dict[str, str]:
    """The ``x-model-router-*`` decision headers sent to the client."""
    return {
        prefix + "model": msg.selected_model,
        prefix + "tier": msg.tier,
        prefix + "decision-id": msg.decision_id,
    }


_LEGACY_KEYS = {
    "schema": "api_schema",
    "input_tokens": "estimated_input_tokens",
    "cost_requested": "estimated_cost_requested",
    "cost_selected": "estimated_cost_selected",
}


def from_legacy_dict(event: Mapping[str, Any]) -> dict[str, Any]:
    """A decision log line of either form (before or after ``RoutingDecision``) as ``RoutingDecision`` JSON.

    Old lines used the record's field names and lower-case labels (``"outcome": "routed"``); the log formatter's
    ``ts`` stands in for ``decided_at`` when a line has none. Keys the message does not know are dropped.
    """
    fields = api.RoutingDecision.DESCRIPTOR.fields_by_name
    out: dict[str, Any] = {}
    for key, value in event.items():
        name = _LEGACY_KEYS.get(key, key)
        if name not in fields:
            continue
        if name == "api_schema" and isinstance(value, str) and value in SCHEMA_NAMES:
            value = api.ApiSchema.Name(SCHEMA_NAMES[value])  # type: ignore[arg-type]
        elif name in _ENUM_PREFIXES and isinstance(value, str) and not value.startswith(_ENUM_PREFIXES[name]):
            value = _ENUM_PREFIXES[name] + value.upper()
        out[name] = value
    if "decided_at" not in out and isinstance(event.get("ts"), str):
        out["decided_at"] = event["ts"]
    return out
