"""Prompt capture: sampling (injected RNG), what a line holds per API schema, and the stream handler's tap."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from devstack.stack import ENVOY_DIR
from extproc.capture import PromptCapture, capture_line, capture_messages
from extproc.config import CaptureSettings, Settings, parse_config
from extproc.errors import ConfigError
from extproc.feedback import DecisionEntry, DecisionStore
from extproc.feedback_token import TokenSigner
from extproc.record import DecisionRecord, Outcome
from extproc.request import ParsedRequest, parse_request
from extproc.spool import Spool
from extproc.stream import StreamHandler
from extproc.tap import LearningTap
from tests.fakes import RecordingSink, fixed_clock, inline_classify, sequential_ids, snapshot
from tests.protocol import chat_headers, replay

WALL_NS = 1_700_000_000_123_000_000
SECRET = "capture-me-orange-giraffe"


def _settings(**sections: dict[str, Any]) -> Settings:
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


def _rng(values: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def _parsed(path: str, body: dict[str, Any]) -> ParsedRequest:
    parsed = parse_request(path, orjson.dumps(body), frozenset({"auto"}))
    assert isinstance(parsed, ParsedRequest)
    return parsed


def _record(
    outcome: Outcome = Outcome.ROUTED, decision_id: str = "00000000000000aa", started_ns: int | None = None
) -> DecisionRecord:
    """A decision; by default decided now (a line from long ago would be expired by the capture's TTL at once)."""
    return DecisionRecord(
        decision_id=decision_id,
        outcome=outcome,
        reason="cheapest_meeting_target",
        schema="openai.chat",
        requested_model="auto",
        selected_model="gpt-4o-mini",
        tenant="acme",
        started_unix_ns=time.time_ns() if started_ns is None else started_ns,
    )


CHAT = _parsed(
    "/v1/chat/completions",
    {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": SECRET}]},
        ],
    },
)


def _spool(tmp_path: Path) -> tuple[Spool, Path]:
    path = tmp_path / "capture.jsonl"
    return Spool("capture", "captured_unix", lambda _r: None, start=False), path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sampling_uses_the_injected_rng(tmp_path: Path) -> None:
    spool, path = _spool(tmp_path)
    capture = PromptCapture(spool, rng=_rng([0.05, 0.5, 0.0999, 0.1]))
    settings = CaptureSettings(enabled=True, sample_rate=0.1, path=path)
    capture.configure(settings)
    taken = [capture.offer(settings, _record(decision_id=f"{i:016x}"), CHAT) for i in range(4)]
    assert taken == [True, False, True, False]  # a draw equal to the rate is not sampled: rate 0 takes nothing
    capture.close()
    assert [line["id"] for line in _lines(path)] == [f"{0:016x}", f"{2:016x}"]


@pytest.mark.parametrize(
    ("settings_kw", "outcome", "prompt"),
    [
        pytest.param({"enabled": False}, Outcome.ROUTED, CHAT, id="disabled"),
        pytest.param({"enabled": True, "sample_rate": 0.0}, Outcome.ROUTED, CHAT, id="rate-zero"),
        pytest.param({"enabled": True}, Outcome.PASSTHROUGH, CHAT, id="passthrough-not-captured"),
        pytest.param({"enabled": True}, Outcome.REJECTED, CHAT, id="rejected-not-captured"),
        pytest.param(
            {"enabled": True},
            Outcome.FALLBACK,
            _parsed("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "  "}]}),
            id="no-text-not-captured",
        ),
    ],
)
def test_what_is_not_captured(
    tmp_path: Path, settings_kw: dict[str, Any], outcome: Outcome, prompt: ParsedRequest
) -> None:
    spool, path = _spool(tmp_path)
    capture = PromptCapture(spool, rng=lambda: 0.0)
    settings = CaptureSettings(path=path, **{"sample_rate": 1.0, **settings_kw})
    capture.configure(settings)
    assert not capture.offer(settings, _record(outcome), prompt)
    capture.close()
    assert _lines(path) == []


def test_a_pinned_decision_is_not_captured(tmp_path: Path) -> None:
    """``model-router label`` replays captured prompts pinned to each model: capturing those would label the same
    prompt again under new ids (and put it on both sides of adapt's folds)."""
    spool, path = _spool(tmp_path)
    capture = PromptCapture(spool, rng=lambda: 0.0)
    settings = CaptureSettings(enabled=True, path=path, sample_rate=1.0)
    capture.configure(settings)
    assert not capture.offer(settings, dataclasses.replace(_record(), reason="trusted_override"), CHAT)
    assert capture.offer(settings, _record(), CHAT)
    capture.close()
    assert len(_lines(path)) == 1


@pytest.mark.parametrize(
    ("path", "body", "want"),
    [
        pytest.param(
            "/v1/chat/completions",
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}, 7, {"role": "user", "content": "q"}]},
            [{"role": "user", "content": "hi"}, {"role": "user", "content": "q"}],
            id="chat-keeps-its-messages",
        ),
        pytest.param(
            "/v1/completions",
            {"model": "auto", "prompt": ["first", "second"]},
            [{"role": "user", "content": "first\nsecond"}],
            id="completions-prompt-as-user-turn",
        ),
        pytest.param(
            "/v1/messages",
            {
                "model": "auto",
                "max_tokens": 10,
                "system": "sys",
                "messages": [
                    {"role": "user", "content": "earlier"},
                    {"role": "assistant", "content": "reply"},
                    {"role": "user", "content": [{"type": "text", "text": "last turn"}]},
                ],
            },
            [{"role": "user", "content": "last turn"}],
            id="anthropic-classified-text",
        ),
        pytest.param(
            "/v1/responses",
            {"model": "auto", "input": [{"role": "user", "content": [{"type": "input_text", "text": "resp q"}]}]},
            [{"role": "user", "content": "resp q"}],
            id="responses-classified-text",
        ),
    ],
)
def test_messages_per_schema(path: str, body: dict[str, Any], want: list[dict[str, Any]]) -> None:
    assert capture_messages(_parsed(path, body)) == want


def test_line_is_the_eval_format_plus_context() -> None:
    line = capture_line(_record(started_ns=WALL_NS), CHAT)
    assert line == {
        "id": "00000000000000aa",
        "messages": CHAT.body["messages"],
        "captured_unix": 1_700_000_000.123,
        "schema": "openai.chat",
        "outcome": "routed",
        "requested_model": "auto",
        "selected_model": "gpt-4o-mini",
        "tenant": "acme",
    }


def test_config_requires_a_path_when_enabled() -> None:
    with pytest.raises(ConfigError) as err:
        _settings(capture={"enabled": True, "sample_rate": 2})
    assert "capture.sample_rate: Input should be less than or equal to 1" in str(err.value)
    with pytest.raises(ConfigError, match=r"capture\.path: required when capture\.enabled is true"):
        _settings(capture={"enabled": True})
    with pytest.raises(ConfigError, match=r"feedback\.path: must differ from capture\.path"):
        _settings(capture={"path": "/tmp/x.jsonl"}, feedback={"path": "/tmp/x.jsonl"})
    with pytest.raises(ConfigError, match=r"feedback\.listen: must differ from telemetry\.metrics_listen"):
        _settings(feedback={"enabled": True, "path": "/tmp/f.jsonl", "listen": "127.0.0.1:9464"})
    assert _settings().capture.enabled is False and _settings().feedback.enabled is False


async def _run(handler: StreamHandler, body: dict[str, Any], **headers: str) -> None:
    await replay(handler, chat_headers(**headers), orjson.dumps(body))


def _capture_all(settings: Settings) -> PromptCapture:
    """A capture configured by ``settings`` whose sampling always keeps (the spool writes inline)."""
    capture = PromptCapture(Spool("capture", "captured_unix", lambda _r: None, start=False), rng=lambda: 0.0)
    capture.configure(settings.capture)
    return capture


async def test_the_stream_feeds_capture_and_decision_store(tmp_path: Path) -> None:
    settings = _settings(capture={"enabled": True, "sample_rate": 1.0, "path": str(tmp_path / "c.jsonl")})
    capture = _capture_all(settings)
    store = DecisionStore(100, 60.0)
    sink = RecordingSink()
    ids = sequential_ids()
    tap = LearningTap(store, capture)
    snap = snapshot(settings=settings)
    for body in (
        {"model": "auto", "messages": [{"role": "user", "content": f"{SECRET} easy"}]},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "not routable"}]},
    ):
        handler = StreamHandler(snap, inline_classify, sink, ids, fixed_clock(), tap=tap)
        await _run(handler, body)
    capture.close()
    routed, passthrough = sink.records
    assert routed.outcome is Outcome.ROUTED and passthrough.outcome is Outcome.PASSTHROUGH
    (line,) = _lines(tmp_path / "c.jsonl")
    assert line["id"] == routed.decision_id and SECRET in line["messages"][0]["content"]
    entry = store.get(routed.decision_id)
    assert entry is not None and entry.served_model == routed.selected_model == "llama-3.1-8b-instruct"
    assert store.get(passthrough.decision_id) is None


@pytest.mark.parametrize(
    ("via_decide", "include_decide", "captured"),
    [(False, False, True), (False, True, True), (True, True, True), (True, False, False)],
)
async def test_decide_prompts_are_captured_only_with_include_decide(
    tmp_path: Path, via_decide: bool, include_decide: bool, captured: bool
) -> None:
    """``capture.include_decide`` gates the Decide API's tap only; its decisions are remembered for feedback either
    way, and ext_proc's tap ignores the setting."""
    path = tmp_path / "c.jsonl"
    settings = _settings(
        capture={"enabled": True, "sample_rate": 1.0, "path": str(path), "include_decide": include_decide}
    )
    capture = _capture_all(settings)
    store = DecisionStore(100, 60.0)
    sink = RecordingSink()
    tap = LearningTap(store, capture, via_decide=via_decide)
    snap = snapshot(settings=settings)
    handler = StreamHandler(snap, inline_classify, sink, sequential_ids(), fixed_clock(), tap=tap)
    await _run(handler, {"model": "auto", "messages": [{"role": "user", "content": "easy"}]})
    capture.close()
    (rec,) = sink.records
    assert [line["id"] for line in _lines(path)] == ([rec.decision_id] if captured else [])
    assert store.get(rec.decision_id) is not None


async def test_a_signing_tap_hands_envoy_a_token_for_the_decision() -> None:
    """The token goes out as dynamic metadata (Envoy makes it the x-model-router-feedback-token header) and carries
    what the store remembered, so another replica can accept feedback on it."""
    store = DecisionStore(100, 60.0)
    signer = TokenSigner([b"k" * 32])
    sink = RecordingSink()
    handler = StreamHandler(
        snapshot(), inline_classify, sink, sequential_ids(), tap=LearningTap(store, None, signer=signer)
    )
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "easy"}]})
    out = await replay(handler, chat_headers(), body)
    metadata = out[-1].dynamic_metadata.fields["model_router"].struct_value.fields
    (rec,) = sink.records
    token_id, entry = DecisionEntry.from_token_fields(signer.verify(metadata["feedback_token"].string_value))
    assert (token_id, entry) == (rec.decision_id, store.get(rec.decision_id))
    unsigned = StreamHandler(snapshot(), inline_classify, sink, sequential_ids(), tap=LearningTap(store, None))
    out = await replay(unsigned, chat_headers(), body)
    assert "feedback_token" not in out[-1].dynamic_metadata.fields["model_router"].struct_value.fields


async def test_shadow_decisions_are_served_by_the_requested_model() -> None:
    settings = _settings(policy={"shadow": True})
    store = DecisionStore(100, 60.0)
    sink = RecordingSink()
    handler = StreamHandler(
        snapshot(settings=settings), inline_classify, sink, sequential_ids(), tap=LearningTap(store, None)
    )
    await _run(handler, {"model": "auto", "messages": [{"role": "user", "content": "easy"}]})
    (rec,) = sink.records
    entry = store.get(rec.decision_id)
    assert rec.outcome is Outcome.SHADOW and entry is not None
    assert entry.selected_model == "llama-3.1-8b-instruct"
    assert entry.served_model == "gpt-4o", "shadow forwards 'auto' untouched: the default route's model answers"


class _BrokenTap:
    def decided(self, *args: object) -> None:
        raise RuntimeError(SECRET)


async def test_a_failing_tap_never_touches_the_request() -> None:
    sink = RecordingSink()
    handler = StreamHandler(snapshot(), inline_classify, sink, sequential_ids(), tap=_BrokenTap())
    body_in = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}]})
    out = await replay(handler, chat_headers(), body_in)
    body = out[-1].request_body.response.body_mutation.body
    assert b'"model":"llama-3.1-8b-instruct"' in body, "the decision still applies"
    assert sink.errors == ["tap_exception"]
