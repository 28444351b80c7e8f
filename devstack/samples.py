"""Sample values shared by tests and benchmarks, so both exercise the same realistic decision."""

from __future__ import annotations

from extproc.record import DecisionRecord, Outcome

__all__ = ["SAMPLE_ROUTED"]

SAMPLE_ROUTED = DecisionRecord(
    decision_id="00000000000000aa",
    outcome=Outcome.ROUTED,
    reason="cheapest_meeting_target",
    schema="openai.chat",
    requested_model="auto",
    selected_model="gpt-4o-mini",
    cluster="cheap",
    tier="cheap",
    difficulty=-1.0,
    confidence=0.5,
    success_probability=0.88,
    quality_target=0.8,
    input_tokens=100,
    cost_requested=0.003,
    cost_selected=0.0002,
    classify_seconds=0.0003,
    total_seconds=0.0004,
    started_unix_ns=1_700_000_000_000_000_000,
)
"""A routed decision with every field a real one has; tests vary it with ``dataclasses.replace``."""
