"""A candidate model (``classifier.candidate_model_dir``) decides beside the live one; only the live one routes."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from classifier.model import DifficultyModel, Prediction
from extproc.config import Settings, TelemetrySettings
from extproc.errors import ConfigError
from extproc.record import DecisionRecord, Outcome, record_json
from extproc.reload import load_model_for
from extproc.report import write_report
from extproc.snapshot import build_snapshot
from extproc.stream import StreamHandler
from extproc.telemetry import Telemetry
from tests.fakes import (
    FAKE_ABILITIES,
    FakeDifficultyModel,
    RecordingSink,
    demo_settings,
    fixed_clock,
    inline_classify,
    sequential_ids,
)
from tests.protocol import chat_headers, replay

CANDIDATE_DIR = Path("/models/candidate")


class AlwaysHard:
    """A candidate that sends everything to the frontier tier."""

    name = "always-hard"
    default_abilities = FAKE_ABILITIES

    def predict(self, text: str) -> Prediction:
        return Prediction(3.0, 0.9)


class Broken:
    name = "broken"
    default_abilities = FAKE_ABILITIES

    def predict(self, text: str) -> Prediction:
        raise RuntimeError("candidate exploded")


def with_candidate(live: DifficultyModel, candidate: DifficultyModel) -> tuple[StreamHandler, RecordingSink]:
    settings = demo_settings()
    classifier = settings.classifier.model_copy(update={"candidate_model_dir": CANDIDATE_DIR})
    settings = settings.model_copy(update={"classifier": classifier})

    def load(s: Settings) -> DifficultyModel:
        return candidate if s.classifier.model_dir == CANDIDATE_DIR else live

    sink = RecordingSink()
    snap = build_snapshot(settings, load)
    assert snap.candidate is candidate
    return StreamHandler(snap, inline_classify, sink, sequential_ids(), fixed_clock()), sink


def chat(text: str) -> bytes:
    return json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()


def routed_model(responses: list) -> str:  # type: ignore[type-arg]
    body = responses[-1].request_body.response.body_mutation.body
    return str(json.loads(body)["model"])


async def test_candidate_choice_is_recorded_but_the_live_one_routes() -> None:
    handler, sink = with_candidate(FakeDifficultyModel(), AlwaysHard())
    responses = await replay(handler, chat_headers(), chat("an easy question"))
    assert routed_model(responses) == "llama-3.1-8b-instruct"
    (rec,) = sink.records
    assert (rec.outcome, rec.selected_model, rec.tier) == (Outcome.ROUTED, "llama-3.1-8b-instruct", "small")
    assert (rec.candidate_selected_model, rec.candidate_tier, rec.candidate_difficulty) == ("gpt-4o", "frontier", 3.0)
    assert rec.cost_candidate is not None and rec.cost_selected is not None
    assert rec.cost_candidate > rec.cost_selected
    assert rec.candidate_success_probability is not None and 0 < rec.candidate_success_probability < 1


class NaNCandidate(Broken):
    def predict(self, text: str) -> Prediction:
        return Prediction(float("nan"), 1.0)


@pytest.mark.parametrize("candidate", [Broken(), NaNCandidate()], ids=["raises", "nan"])
async def test_failing_candidate_leaves_the_live_decision_alone(candidate: Broken) -> None:
    """A NaN difficulty fails the candidate as it fails the live model (it was recorded as a 'most able' choice)."""
    handler, sink = with_candidate(FakeDifficultyModel(), candidate)
    responses = await replay(handler, chat_headers(), chat("a medium question"))
    assert routed_model(responses) == "gpt-4o-mini"
    (rec,) = sink.records
    assert rec.outcome is Outcome.ROUTED and rec.candidate_selected_model is None
    assert sink.errors == ["candidate_failed"]


async def test_failing_live_model_falls_back_even_with_a_healthy_candidate() -> None:
    handler, sink = with_candidate(FakeDifficultyModel(error=RuntimeError("live down")), AlwaysHard())
    await replay(handler, chat_headers(), chat("a medium question"))
    (rec,) = sink.records
    assert (rec.outcome, rec.reason, rec.candidate_selected_model) == (Outcome.FALLBACK, "classifier_failed", None)


def test_unloadable_candidate_is_a_config_error_naming_its_field(tmp_path: Path) -> None:
    settings = demo_settings()
    classifier = settings.classifier.model_copy(update={"candidate_model_dir": tmp_path / "missing"})
    with pytest.raises(ConfigError, match=r"classifier\.candidate_model_dir: cannot load onnx model"):
        build_snapshot(settings.model_copy(update={"classifier": classifier}), load_model_for)


def _record(i: int, selected: str, candidate: str, cost: float, cost_candidate: float) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"{i:016x}",
        outcome=Outcome.ROUTED,
        reason="cheapest_meeting_target",
        schema="openai.chat",
        requested_model="auto",
        selected_model=selected,
        tier="t",
        success_probability=0.8,
        cost_requested=1.0,
        cost_selected=cost,
        candidate_selected_model=candidate,
        candidate_tier="t",
        candidate_success_probability=0.9,
        cost_candidate=cost_candidate,
    )


def test_report_shows_where_the_candidate_disagrees_and_what_it_costs(tmp_path: Path) -> None:
    records = [_record(1, "small", "small", 0.1, 0.1), _record(2, "small", "frontier", 0.1, 0.5)]
    records += [_record(3, "cheap", "frontier", 0.2, 0.5)]
    log = tmp_path / "decisions.log"
    log.write_text("".join(record_json(r) + "\n" for r in records))
    out = io.StringIO()
    assert write_report([log], out, as_json=True) == 0
    candidate = json.loads(out.getvalue())["candidate"]
    assert candidate["requests"] == 3 and candidate["agree"] == 1
    assert candidate["moves"] == [
        {"live": "cheap", "candidate": "frontier", "requests": 1},
        {"live": "small", "candidate": "frontier", "requests": 1},
    ]
    assert candidate["cost_live"] == pytest.approx(0.4) and candidate["cost_candidate"] == pytest.approx(1.1)
    assert candidate["cost_change_pct"] == pytest.approx(175.0)
    assert candidate["predicted_success_candidate"] == pytest.approx(0.9)
    text = io.StringIO()
    write_report([log], text)
    assert "same choice on 1 (33.3%)" in text.getvalue() and "live small -> candidate frontier: 1" in text.getvalue()


def test_candidate_decisions_are_counted_by_both_choices() -> None:
    telemetry = Telemetry(TelemetrySettings(metrics_listen=None), logging.getLogger("test"), None)
    for rec in (_record(1, "small", "frontier", 0.1, 0.5), _record(2, "small", "frontier", 0.1, 0.5)):
        telemetry.record(rec)
    exposition = generate_latest(telemetry.registry).decode()
    assert 'model_router_candidate_decisions_total{candidate_model="frontier",selected_model="small"} 2.0' in exposition
