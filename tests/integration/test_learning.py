"""Learning from traffic through the real Envoy: prompt capture, feedback over HTTP (via Envoy) and gRPC, the join.

The prompt must be in the capture file and nowhere else: not in the router's log (at debug level, with the
decision log on) and not in any exported span.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import yaml

from devstack.otlp import OtlpReceiver
from devstack.stack import Stack
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc
from extproc.cli import main
from extproc.feedback import IDEMPOTENCY_HASH_KEY, idempotency_key_hash
from tests.integration.conftest import router_metric, wait_until
from tests.integration.test_routing import HARD, chat_body, post
from tests.integration.test_telemetry import _fast_envoy_flush, run_traced

SECRET = "turquoise-walrus-private-question"
FEEDBACK = "/model-router/v1/feedback"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def learning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OtlpReceiver]]:
    workdir = tmp_path_factory.mktemp("learning")
    (workdir / "data").mkdir()  # the spools' directory (a missing one is refused, not made)
    stack = Stack(workdir=workdir, envoy_patch=_fast_envoy_flush)
    stack.router_overrides = {
        "classifier": {"kind": "heuristic"},
        "server": {"log_level": "debug", "config_poll_seconds": 0.5},
        "telemetry": {"decision_log": True, "otlp_endpoint": f"http://127.0.0.1:{stack.collector_port}"},
        "capture": {"enabled": True, "sample_rate": 1.0, "path": str(workdir / "data" / "capture.jsonl")},
        "feedback": {"enabled": True, "path": str(workdir / "data" / "feedback.jsonl")},
    }
    yield from run_traced(stack)


def _files(stack: Stack) -> tuple[Path, Path]:
    return stack.workdir / "data" / "capture.jsonl", stack.workdir / "data" / "feedback.jsonl"


def _ask(stack: Stack, prompt: str) -> tuple[str, str]:
    """One chat request with the openai SDK; the decision id and model from the response headers."""
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": prompt}])
    assert raw.http_response.status_code == 200
    return raw.headers["x-model-router-decision-id"], raw.headers["x-model-router-model"]


def test_capture_and_feedback_through_envoy_and_grpc(learning: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = learning
    capture, feedback = _files(stack)
    decision_id, served = _ask(stack, f"{SECRET}: {HARD}")
    assert served == "gpt-4o"

    score = {"decision_id": decision_id, "score": 1, "idempotency_key": "score-1"}
    for _attempt in range(2):  # a client retrying a score (after a 503 whose write landed): one line
        r = httpx.post(stack.base_url + FEEDBACK, json=score, timeout=5)
        assert r.status_code == 200, r.text
        assert r.json() == {"decision_id": decision_id, "model": served, "score": 1.0}
    assert "x-upstream-cluster" not in r.headers, "the feedback route must not reach an LLM upstream"
    unknown = httpx.post(stack.base_url + FEEDBACK, json={"decision_id": "0123456789abcdef", "score": 1}, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    bad = httpx.post(stack.base_url + FEEDBACK, json={"decision_id": decision_id, "score": 3}, timeout=5)
    assert bad.status_code == 400 and "score" in bad.json()["error"]["message"]

    with grpc.insecure_channel(f"127.0.0.1:{stack.router_port}") as channel:
        stub = api_grpc.ModelRouterServiceStub(channel)
        reply = stub.Feedback(api.FeedbackRequest(decision_id=decision_id, score=0, model="gpt-4o-mini"), timeout=5)
        assert (reply.model, reply.score) == ("gpt-4o-mini", 0.0)
        with pytest.raises(grpc.RpcError) as err:
            stub.Feedback(api.FeedbackRequest(decision_id="0123456789abcdef", score=1), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    assert wait_until(lambda: len(_jsonl(feedback)) == 2)
    lines = _jsonl(feedback)
    assert [(x["decision_id"], x["model"], x["score"], x["source"], x.get(IDEMPOTENCY_HASH_KEY)) for x in lines] == [
        (decision_id, "gpt-4o", 1.0, "http", idempotency_key_hash("score-1")),
        (decision_id, "gpt-4o-mini", 0.0, "grpc", None),
    ]
    assert all(x["requested_model"] == "auto" and x["selected_model"] == "gpt-4o" for x in lines)

    assert wait_until(lambda: any(x["id"] == decision_id for x in _jsonl(capture)))
    (line,) = [x for x in _jsonl(capture) if x["id"] == decision_id]
    assert line["messages"] == [{"role": "user", "content": f"{SECRET}: {HARD}"}]
    assert (line["schema"], line["requested_model"], line["selected_model"]) == ("openai.chat", "auto", "gpt-4o")
    for path in (capture, feedback):
        assert path.stat().st_mode & 0o777 == 0o600

    spans = receiver.wait_for(lambda got: any(s.attributes.get("model_router.decision_id") == decision_id for s in got))
    assert SECRET not in repr([s.attributes for s in spans])
    log = stack.log("router").read_text()
    assert decision_id in log, "the decision log line is there"
    assert SECRET not in log, "the prompt must be in the capture file only"
    assert SECRET not in feedback.read_text()


def test_outcomes_joins_what_the_router_wrote(
    learning: tuple[Stack, OtlpReceiver], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, _ = learning
    capture, feedback = _files(stack)
    other, _model = _ask(stack, "What is the capital of Peru?")  # captured, but nobody scores it
    assert wait_until(lambda: any(x["id"] == other for x in _jsonl(capture)))
    out = tmp_path / "outcomes.jsonl"
    assert main(["outcomes", "--capture", str(capture), "--feedback", str(feedback), "--out", str(out)]) == 0
    (record,) = _jsonl(out)
    assert record["scores"] == {"gpt-4o": 1.0, "gpt-4o-mini": 0.0}
    assert SECRET in record["messages"][0]["content"]
    assert "captured prompts without feedback (skipped)" in capsys.readouterr().out


def _rewrite_capture(stack: Stack, **capture: Any) -> None:
    data = yaml.safe_load(stack.router_config_path.read_text())
    data["capture"].update(capture)
    stack.router_config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _reloads(stack: Stack) -> float:
    return router_metric(stack, "model_router_config_reloads_total", result="applied")


def test_capture_follows_hot_reload(learning: tuple[Stack, OtlpReceiver]) -> None:
    stack, _ = learning
    capture, _feedback = _files(stack)
    before = _reloads(stack)
    _rewrite_capture(stack, enabled=False)
    assert wait_until(lambda: _reloads(stack) == before + 1)
    off, _ = _ask(stack, "Is this captured while capture is off?")
    _rewrite_capture(stack, enabled=True)
    assert wait_until(lambda: _reloads(stack) == before + 2)
    on, _ = _ask(stack, "And now that it is on again?")
    assert wait_until(lambda: any(x["id"] == on for x in _jsonl(capture)))
    assert all(x["id"] != off for x in _jsonl(capture))


def _decide(stack: Stack, prompt: str) -> str:
    """One ``Decide`` call over gRPC; its decision id."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": prompt}]}).encode()
    with grpc.insecure_channel(f"127.0.0.1:{stack.router_port}") as channel:
        reply = api_grpc.ModelRouterServiceStub(channel).Decide(
            api.DecideRequest(path="/v1/chat/completions", body=body), timeout=10
        )
    return reply.decision.decision_id


def test_decide_is_captured_unless_include_decide_is_off(learning: tuple[Stack, OtlpReceiver]) -> None:
    stack, _ = learning
    capture, _feedback = _files(stack)
    on = _decide(stack, "Captured through Decide?")
    assert wait_until(lambda: any(x["id"] == on for x in _jsonl(capture)))
    before = _reloads(stack)
    _rewrite_capture(stack, include_decide=False)
    try:
        assert wait_until(lambda: _reloads(stack) == before + 1)
        off = _decide(stack, "Not captured through Decide?")
        live, _ = _ask(stack, "Still captured through Envoy?")
        assert wait_until(lambda: any(x["id"] == live for x in _jsonl(capture)))
        assert all(x["id"] != off for x in _jsonl(capture))
        # The decision is still remembered: an application that acted on it can send feedback.
        r = httpx.post(stack.base_url + FEEDBACK, json={"decision_id": off, "score": 1}, timeout=5)
        assert r.status_code == 200, r.text
    finally:
        _rewrite_capture(stack, include_decide=True)
        assert wait_until(lambda: _reloads(stack) == before + 2)


def test_sigterm_flushes_every_queued_line(learning: tuple[Stack, OtlpReceiver]) -> None:
    stack, _ = learning
    capture, _feedback = _files(stack)
    with httpx.Client(timeout=10) as client:
        ids = [
            client.post(
                stack.base_url + "/v1/chat/completions",
                content=chat_body(f"flush check {i}"),
                headers={"content-type": "application/json"},
            ).headers["x-model-router-decision-id"]
            for i in range(30)
        ]
    assert stack.stop_router(signal.SIGTERM) == 0
    assert set(ids) <= {x["id"] for x in _jsonl(capture)}


@pytest.fixture(scope="module")
def capture_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """capture.enabled false (the default) with a path set, and feedback off (the default)."""
    workdir = tmp_path_factory.mktemp("capture-off")
    overrides = {"classifier": {"kind": "heuristic"}, "capture": {"path": str(workdir / "data" / "capture.jsonl")}}
    with Stack(workdir=workdir, router_overrides=overrides) as s:
        yield s


def test_capture_off_writes_nothing_and_feedback_off_is_refused(capture_off: Stack) -> None:
    before = sorted(p.name for p in capture_off.workdir.rglob("*"))
    r = post(capture_off, chat_body(f"{SECRET}: {HARD}"))
    assert r.status_code == 200 and r.headers["x-model-router-model"] == "gpt-4o"
    decision_id = r.headers["x-model-router-decision-id"]
    assert not (capture_off.workdir / "data").exists()
    assert sorted(p.name for p in capture_off.workdir.rglob("*")) == before
    with grpc.insecure_channel(f"127.0.0.1:{capture_off.router_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            api_grpc.ModelRouterServiceStub(channel).Feedback(
                api.FeedbackRequest(decision_id=decision_id, score=1), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    refused = httpx.post(capture_off.base_url + FEEDBACK, json={"decision_id": decision_id, "score": 1}, timeout=5)
    assert refused.status_code == 503, "no feedback endpoint is listening: Envoy cannot connect"
    assert SECRET not in capture_off.log("router").read_text()
