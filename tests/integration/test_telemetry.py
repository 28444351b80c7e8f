"""Spans to a real OTLP/gRPC receiver (Envoy's and the router's, one trace), and Prometheus counts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.otlp import OtlpReceiver, ReceivedSpan
from devstack.stack import Stack
from tests.integration.test_routing import EASY, HARD, JSON, chat_body, post

SECRET = "purple-elephant-confidential-prompt"


def _fast_envoy_flush(cfg: dict[str, Any]) -> None:
    cfg["layered_runtime"] = {
        "layers": [
            {
                "name": "static",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 100,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        ]
    }


def run_traced(stack: Stack) -> Iterator[tuple[Stack, OtlpReceiver]]:
    """Run ``stack`` with a real OTLP receiver on its collector port and a fast span export (for fixtures)."""
    stack.env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
    receiver = OtlpReceiver(stack.collector_port).start()
    try:
        with stack:
            yield stack, receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OtlpReceiver]]:
    stack = Stack(workdir=tmp_path_factory.mktemp("traced"), envoy_patch=_fast_envoy_flush)
    stack.router_overrides = {
        "classifier": {"kind": "heuristic"},
        "telemetry": {"otlp_endpoint": f"http://127.0.0.1:{stack.collector_port}"},
    }
    yield from run_traced(stack)


def _router_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.service == "model-router"]


def test_router_span_is_a_child_in_envoys_trace(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    r = post(stack, chat_body(f"{SECRET}: {HARD}"))
    assert r.status_code == 200
    decision_id = r.headers["x-model-router-decision-id"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in _router_spans(spans) if s.attributes.get("model_router.decision_id") == decision_id]
        return bool(mine) and any(s.service == "llm-gateway" and s.trace_id == mine[0].trace_id for s in spans)

    spans = receiver.wait_for(complete)
    (router_span,) = [s for s in _router_spans(spans) if s.attributes["model_router.decision_id"] == decision_id]
    envoy_spans = {s.span_id: s for s in spans if s.service == "llm-gateway" and s.trace_id == router_span.trace_id}
    assert router_span.name == "model_router.decide"
    assert router_span.parent_span_id in envoy_spans, "the router span's parent must be one of Envoy's spans"
    attrs = router_span.attributes
    assert attrs["gen_ai.request.model"] == "auto"
    assert attrs["model_router.selected_model"] == "gpt-4o" == r.headers["x-model-router-model"]
    assert attrs["model_router.cluster"] == "frontier"
    assert attrs["model_router.outcome"] == "routed"
    assert attrs["gen_ai.operation.name"] == "chat"
    for key in (
        "model_router.tier",
        "model_router.classifier.difficulty",
        "model_router.classifier.confidence",
        "model_router.quality_target",
        "model_router.estimated_input_tokens",
        "model_router.estimated_cost.requested",
        "model_router.estimated_cost.selected",
        "model_router.api_schema",
        "model_router.classify_seconds",
        "model_router.decide_seconds",
        "model_router.reason",
    ):
        assert key in attrs, key
    dumped = repr(spans)
    assert SECRET not in dumped
    assert SECRET not in stack.log("router").read_text()


def test_passthrough_is_traced_with_reason(traced: tuple[Stack, OtlpReceiver]) -> None:
    stack, receiver = traced
    post(stack, chat_body(EASY, model="gpt-4o-mini"))
    spans = receiver.wait_for(
        lambda sp: any(s.attributes.get("model_router.reason") == "model_not_routable" for s in _router_spans(sp))
    )
    span = next(s for s in _router_spans(spans) if s.attributes.get("model_router.reason") == "model_not_routable")
    assert span.attributes["model_router.outcome"] == "passthrough"


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_known_traffic(stack: Stack) -> None:
    before = httpx.get(stack.metrics_url).text
    for _ in range(3):
        post(stack, chat_body(HARD))
    for _ in range(2):
        post(stack, chat_body(EASY, model="gpt-4o-mini"))
    post(stack, b"{not json")
    after = httpx.get(stack.metrics_url).text

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("model_router_decisions_total", selected_model="gpt-4o", outcome="routed", tier="frontier") == 3
    assert delta("model_router_passthroughs_total", reason="model_not_routable") == 2
    assert delta("model_router_passthroughs_total", reason="invalid_json") == 1
    assert delta("model_router_decision_seconds_count") == 3
    assert delta("model_router_classify_seconds_count") == 3
    assert _metric(after, "model_router_streams_in_flight") == 0
    assert "model_router_estimated_cost_baseline_total" in after
    assert "model_router_estimated_cost_selected_total" in after
    assert "model_router_config_reloads_total" in after


@pytest.fixture(scope="module")
def usage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    overrides = {"classifier": {"kind": "heuristic"}, "telemetry": {"response_usage": True}}
    with Stack(workdir=tmp_path_factory.mktemp("usage"), router_overrides=overrides) as s:
        yield s


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_response_usage_is_recorded(usage_stack: Stack, stream: bool) -> None:
    import openai

    before = httpx.get(usage_stack.metrics_url).text
    client = openai.OpenAI(base_url=usage_stack.base_url + "/v1", api_key="k", max_retries=0)
    messages: Any = [{"role": "user", "content": HARD}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="auto", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        usage, model = chunks[-1].usage, chunks[-1].model
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("answer from"), "the stream must arrive intact through the response phase"
    else:
        completion = client.chat.completions.create(model="auto", messages=messages)
        usage, model = completion.usage, completion.model
    client.close()
    assert usage is not None
    after = receiver_free_metrics(usage_stack, before, model)
    assert after == (usage.prompt_tokens, usage.completion_tokens)


def test_the_usage_observer_leaves_a_json_answer_as_it_was(usage_stack: Stack) -> None:
    """Envoy sends the router a copy (observability mode), so the answer keeps its content-length: a filter that
    streamed the body through the router made it chunked."""
    before = httpx.get(usage_stack.metrics_url).text
    r = httpx.post(usage_stack.base_url + "/v1/chat/completions", content=chat_body(HARD), headers=JSON, timeout=10)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert r.headers.get("content-length") == str(len(r.content))
    assert "transfer-encoding" not in r.headers
    usage = r.json()["usage"]
    assert receiver_free_metrics(usage_stack, before, r.json()["model"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    ), "the router read the copy all the same"
    after = httpx.get(usage_stack.metrics_url).text
    read = [_metric(m, "model_router_usage_responses_total", result="read") for m in (before, after)]
    assert read[1] == read[0] + 1


def test_a_request_the_router_did_not_decide_is_answered_whole_with_usage_on(usage_stack: Stack) -> None:
    """The router ends the observer's copy of a pass-through at its response headers; Envoy, failing open, sends
    the client everything, and no usage is counted for it."""
    before = httpx.get(usage_stack.metrics_url).text
    body = chat_body(EASY, model="gpt-4o-mini")
    r = httpx.post(usage_stack.base_url + "/v1/chat/completions", content=body, headers=JSON, timeout=10)
    assert r.status_code == 200 and r.json()["model"] == "gpt-4o-mini"
    assert r.headers.get("content-length") == str(len(r.content))
    decided = httpx.post(usage_stack.base_url + "/v1/chat/completions", content=chat_body(HARD), headers=JSON)
    assert decided.json()["model"] != "gpt-4o-mini"
    assert receiver_free_metrics(usage_stack, before, decided.json()["model"]) != (0.0, 0.0)  # copies were read
    after = httpx.get(usage_stack.metrics_url).text
    counted = [
        _metric(m, "model_router_usage_tokens_total", model="gpt-4o-mini", direction="input") for m in (before, after)
    ]
    assert counted[0] == counted[1]


def test_a_stream_the_upstream_cuts_keeps_what_was_sent(usage_stack: Stack) -> None:
    """Chunks reach the client as the upstream sends them, not after the router read them: when the upstream
    resets mid-answer, the client has the events sent before the reset (the response-streaming filter lost them)."""
    received = b""
    for port in usage_stack.upstream_ports.values():
        httpx.post(f"http://127.0.0.1:{port}/_cut?after=2", timeout=5)
    try:
        url, body = usage_stack.base_url + "/v1/chat/completions", chat_body(HARD, stream=True)
        with httpx.stream("POST", url, content=body, headers=JSON, timeout=10) as r:
            assert r.status_code == 200
            with contextlib.suppress(httpx.RemoteProtocolError):  # the reset reaches the client as a cut stream
                for chunk in r.iter_raw():
                    received += chunk
    finally:
        for port in usage_stack.upstream_ports.values():
            httpx.post(f"http://127.0.0.1:{port}/_cut?after=0", timeout=5)
    events = [line for line in received.split(b"\n") if line.startswith(b"data: ")]
    assert len(events) == 2, received
    assert b"[DONE]" not in received


def receiver_free_metrics(stack: Stack, before: str, model: str) -> tuple[float, float]:
    """Deltas of the usage token counters for ``model`` (polled: the usage arrives after the response)."""
    import time

    for _ in range(200):  # 10 s: on a loaded machine the last response chunk can take a while to reach the router
        after = httpx.get(stack.metrics_url).text
        got = tuple(
            _metric(after, "model_router_usage_tokens_total", model=model, direction=d)
            - _metric(before, "model_router_usage_tokens_total", model=model, direction=d)
            for d in ("input", "output")
        )
        if got != (0.0, 0.0):
            return got  # type: ignore[return-value]
        time.sleep(0.05)
    return (0.0, 0.0)
