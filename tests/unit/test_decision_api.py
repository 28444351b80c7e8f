"""The decision API: RoutingDecision mapping, and Decide against the live ext_proc path (golden cases, bad input)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc
from extproc.decide import DECIDE_SERVICE, DecisionService, decide
from extproc.decision_proto import (
    SCHEMA_NAMES,
    decision_dict,
    envoy_metadata,
    from_legacy_dict,
    label,
    response_headers,
    to_proto,
)
from extproc.explain import render
from extproc.feedback import DecisionEntry, DecisionStore
from extproc.feedback_token import TokenSigner
from extproc.policy import Reason, estimate_cost
from extproc.record import Outcome, record_json
from extproc.request import PassReason
from extproc.schemas import SCHEMAS_BY_PATH
from extproc.snapshot import SnapshotRef
from extproc.stream import StreamHandler
from extproc.tap import LearningTap
from tests.fakes import (
    SAMPLE_ROUTED,
    RecordingSink,
    demo_settings,
    fixed_clock,
    inline_classify,
    sequential_ids,
    snapshot,
)
from tests.protocol import chat_headers, replay

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(p for p in GOLDEN.glob("*/*") if (p / "request.json").exists())
WALL_NS = 1_700_000_000_000_000_000

ROUTED = dataclasses.replace(SAMPLE_ROUTED, tenant="acme", started_unix_ns=WALL_NS)


async def _live(headers: dict[str, str], body: bytes) -> api.RoutingDecision | None:
    sink = RecordingSink()
    handler = StreamHandler(
        snapshot(), inline_classify, sink, sequential_ids(), fixed_clock(), wall_clock_ns=lambda: WALL_NS
    )
    await replay(handler, headers, body)
    assert len(sink.records) <= 1
    return to_proto(sink.records[0]) if sink.records else None


async def _decide(request: api.DecideRequest) -> tuple[api.DecideResponse, RecordingSink]:
    sink = RecordingSink()
    response = await decide(
        request, snapshot(), inline_classify, sink, sequential_ids(), clock=fixed_clock(), wall_clock_ns=lambda: WALL_NS
    )
    return response, sink


def _request(headers: dict[str, str], body: bytes) -> api.DecideRequest:
    return api.DecideRequest(
        path=headers[":path"], headers={k: v for k, v in headers.items() if not k.startswith(":")}, body=body
    )


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
async def test_decide_equals_the_live_path(case: Path) -> None:
    headers = json.loads((case / "headers.json").read_text())
    body = (case / "request.json").read_bytes()
    live = await _live(headers, body)
    assert live is not None, "every golden case records a decision on the live path"
    response, sink = await _decide(_request(headers, body))
    assert response.decision == live
    assert [to_proto(r) for r in sink.records] == [live], "Decide records exactly what the live path records"


async def test_decide_marks_its_log_lines_and_the_live_path_does_not() -> None:
    """No Envoy applies a Decide decision: ``report --envoy-log`` must not find it "not applied" there."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a medium question"}]}).encode()
    _, sink = await _decide(_request(chat_headers(), body))
    assert [json.loads(record_json(r)).get("via_decide") for r in sink.records] == [True]
    assert "via_decide" not in json.loads(record_json(ROUTED))


@pytest.mark.parametrize(
    ("path", "headers", "body", "reason"),
    [
        pytest.param("/v1/chat/completions", {}, b'{"model": "auto", "messages": [', "invalid_json", id="malformed"),
        pytest.param("/v1/embeddings", {}, b'{"model": "auto", "input": "x"}', "unknown_path", id="unknown-path"),
        pytest.param(
            "/v1/chat/completions",
            {},
            b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"a" * (4 << 20) + b'"}]}',
            "body_too_large",
            id="oversized",
        ),
        pytest.param("/v1/chat/completions", {}, b"[1, 2]", "not_an_object", id="not-an-object"),
        pytest.param(
            "/v1/chat/completions", {}, b'{"model": "gpt-4o", "messages": []}', "model_not_routable", id="not-routable"
        ),
        pytest.param(
            "/v1/chat/completions", {"Content-Type": "text/plain"}, b"{}", "not_json_content_type", id="text-plain"
        ),
    ],
)
async def test_bad_input_is_a_passthrough_decision(
    path: str, headers: dict[str, str], body: bytes, reason: str
) -> None:
    response, _ = await _decide(api.DecideRequest(path=path, headers=headers, body=body))
    assert response.decision.outcome == api.OUTCOME_PASSTHROUGH
    assert label("reason", response.decision.reason) == reason
    assert response.decision.decision_id
    assert not response.models
    if reason != "unknown_path":  # the live path keeps no record for a foreign API: neither does Decide
        live = await _live(chat_headers(path, **{k.lower(): v for k, v in headers.items()}), body)
        assert response.decision == live


async def test_decide_prices_every_catalog_model() -> None:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a medium question"}]}).encode()
    response, _ = await _decide(api.DecideRequest(path="/v1/chat/completions", body=body))
    d = response.decision
    assert label("outcome", d.outcome) == "routed" and d.selected_model == "gpt-4o-mini"
    names = [m.name for m in response.models]
    assert names == [m.name for m in snapshot().catalog]
    chosen = response.models[names.index(d.selected_model)]
    assert chosen.estimated_cost == pytest.approx(d.estimated_cost_selected)
    assert chosen.success_probability == pytest.approx(d.success_probability)


async def test_decide_prices_every_choice() -> None:
    """With ``n`` choices each model's price counts every choice's output, as the live path's decision does."""
    one, four = (
        json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a medium question"}], **n}).encode()
        for n in ({}, {"n": 4})
    )
    (single, _), (multiple, _) = [
        await _decide(api.DecideRequest(path="/v1/chat/completions", body=b)) for b in (one, four)
    ]
    tokens = single.decision.estimated_input_tokens
    for m, a, b in zip(snapshot().catalog, single.models, multiple.models, strict=True):
        assert a.estimated_cost == pytest.approx(estimate_cost(m, tokens, 300))
        assert b.estimated_cost == pytest.approx(estimate_cost(m, tokens, 300, 4))
    assert multiple.decision.estimated_cost_selected > single.decision.estimated_cost_selected


async def test_decide_is_not_bound_by_envoys_header_limits() -> None:
    """The live path answers 431 when Envoy's header limits leave no room for its cluster header; a Decide caller's
    headers go through no Envoy, so 120 of them are no reason to refuse."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a medium question"}]}).encode()
    headers = {f"x-h{i}": "v" for i in range(120)}
    response, _ = await _decide(api.DecideRequest(path="/v1/chat/completions", headers=headers, body=body))
    assert label("outcome", response.decision.outcome) == "routed"


async def test_decide_says_which_models_a_cost_cap_left_out() -> None:
    """``explain`` shows why the policy never considered a model; here gpt-4o is over the request's cap."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a hard question"}]}).encode()
    headers = {"x-model-router-max-cost": "0.001"}
    response, _ = await _decide(api.DecideRequest(path="/v1/chat/completions", headers=headers, body=body))
    excluded = {m.name: m.excluded_by for m in response.models if m.excluded_by}
    assert excluded == {"gpt-4o": "max_cost"}
    assert response.decision.selected_model != "gpt-4o"
    row = next(line.split() for line in render(response).splitlines() if line.split()[:1] == ["gpt-4o"])
    assert row[4] == "cost", "explain's meets column says why gpt-4o was left out"


@pytest.mark.parametrize(
    ("model", "headers", "ignored"),
    [
        pytest.param("auto", {"X-Model-Router-Max-Cost": "lots"}, ["x-model-router-max-cost"], id="malformed"),
        pytest.param("auto", {"x-model-router-max-cost": "0.5"}, [], id="honoured"),
        pytest.param("gpt-4o", {"x-model-router-max-cost": "lots"}, [], id="passthrough-reads-no-constraint"),
    ],
)
async def test_decide_names_the_constraint_headers_the_router_ignored(
    model: str, headers: dict[str, str], ignored: list[str]
) -> None:
    """The live path counts an ignored constraint and tells the client nothing: Decide (and explain --target, and
    --json) says which, by name."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "a medium question"}]}).encode()
    response, _ = await _decide(api.DecideRequest(path="/v1/chat/completions", headers=headers, body=body))
    assert list(response.ignored_constraints) == ignored
    shown = [line for line in render(response, headers).splitlines() if line.startswith("ignored")]
    assert shown == [
        f"ignored    {name}: 'lots' (malformed, or a constraint the tenant may not set)" for name in ignored
    ]


@pytest.mark.parametrize("signing", [True, False], ids=["signing", "no-key"])
async def test_decide_returns_the_feedback_token(signing: bool) -> None:
    """A gateway that routes with Decide gets the token the live path puts in x-model-router-feedback-token."""
    signer = TokenSigner([b"k" * 32])
    store = DecisionStore(10, 60.0)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a medium question"}]}).encode()
    response = await decide(
        api.DecideRequest(path="/v1/chat/completions", body=body),
        snapshot(),
        inline_classify,
        RecordingSink(),
        sequential_ids(),
        tap=LearningTap(store, None, signer=signer if signing else None),
    )
    if not signing:
        assert response.feedback_token == ""
        return
    decision_id, entry = DecisionEntry.from_token_fields(signer.verify(response.feedback_token))
    assert decision_id == response.decision.decision_id
    assert entry == store.get(decision_id) and entry.selected_model == response.decision.selected_model


def test_every_reason_outcome_and_schema_has_an_enum_value() -> None:
    reasons = {r.value for r in Reason} | {r.value for r in PassReason} | {"invalid_constraint"}
    for reason in reasons:
        msg = to_proto(dataclasses.replace(ROUTED, reason=reason))
        assert msg.reason != api.REASON_UNSPECIFIED, reason
        assert label("reason", msg.reason) == reason
    for outcome in Outcome:
        msg = to_proto(dataclasses.replace(ROUTED, outcome=outcome))
        assert label("outcome", msg.outcome) == outcome.value
        assert msg.shadow is (outcome is Outcome.SHADOW)
    assert {s.name for s in SCHEMAS_BY_PATH.values()} == set(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        assert label("api_schema", to_proto(dataclasses.replace(ROUTED, schema=name)).api_schema) == name


def test_decision_log_line_is_the_canonical_json_of_the_message() -> None:
    line = json.loads(record_json(ROUTED))
    assert line.pop("event") == "decision"
    msg = json_format.ParseDict(line, api.RoutingDecision())
    assert msg == to_proto(ROUTED)
    assert line["outcome"] == "OUTCOME_ROUTED" and line["estimated_cost_selected"] == 0.0002
    assert line["decided_at"] == "2023-11-14T22:13:20Z"
    assert "prompt_excerpt" not in line
    with_prompt = json.loads(record_json(dataclasses.replace(ROUTED, prompt_excerpt="hello")))
    assert with_prompt["prompt_excerpt"] == "hello"


def test_old_and_new_log_lines_read_as_the_same_message() -> None:
    new = json.loads(record_json(ROUTED))
    old = {  # a line as written before RoutingDecision existed
        "ts": "2023-11-14T22:13:20Z",
        "level": "info",
        "event": "decision",
        **{k: v for k, v in dataclasses.asdict(ROUTED).items() if v is not None and k != "started_unix_ns"},
    }
    old["outcome"] = "routed"
    parse = lambda d: json_format.ParseDict(from_legacy_dict(d), api.RoutingDecision())  # noqa: E731
    assert parse(old) == parse(new) == to_proto(ROUTED)


def test_headers_and_metadata_match_the_stream_handler() -> None:
    """The live handler still builds these itself; this pins them equal to the proto mapping."""
    msg = to_proto(ROUTED)
    assert envoy_metadata(msg) == StreamHandler._metadata(ROUTED)
    assert response_headers(msg) == StreamHandler._decision_headers(ROUTED)


@pytest.fixture
async def decide_channel() -> AsyncIterator[grpc.aio.Channel]:
    snaps = SnapshotRef(snapshot(settings=demo_settings()))
    server = grpc.aio.server()
    api_grpc.add_ModelRouterServiceServicer_to_server(DecisionService(snaps, inline_classify, RecordingSink()), server)
    reflection.enable_server_reflection([DECIDE_SERVICE, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


async def test_decide_over_grpc(decide_channel: grpc.aio.Channel) -> None:
    stub = api_grpc.ModelRouterServiceStub(decide_channel)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a hard proof"}]}).encode()
    response = await stub.Decide(api.DecideRequest(path="/v1/chat/completions", body=body), timeout=10)
    assert response.decision.selected_model == "gpt-4o"
    assert decision_dict(response.decision)["reason"] == "REASON_NONE_MEETS_TARGET_MOST_ABLE"
    bad = await stub.Decide(api.DecideRequest(path="/v1/chat/completions", body=b"{nope"), timeout=10)
    assert bad.decision.outcome == api.OUTCOME_PASSTHROUGH


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        pytest.param(api.DecideRequest(body=b"{}"), "path: required", id="no-path"),
        pytest.param(api.DecideRequest(path="/v1/chat/completions"), "body: required", id="no-body"),
    ],
)
async def test_missing_field_is_invalid_argument(
    decide_channel: grpc.aio.Channel, request_: api.DecideRequest, named: str
) -> None:
    stub = api_grpc.ModelRouterServiceStub(decide_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Decide(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == named


async def test_reflection_lists_the_decision_service(decide_channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(decide_channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = [s.name async for r in stub.ServerReflectionInfo(ask()) for s in r.list_services_response.service]
    assert DECIDE_SERVICE in names


async def test_a_dry_run_decides_the_same_and_records_nothing() -> None:
    """``explain`` sets dry_run: the same decision, but no record, no stored decision or token, and the conversation
    memory is read (a sticky conversation still shows as sticky) but never raised by the test prompt."""
    from extproc.conversations import ConversationMemory

    base = demo_settings()
    sticky = base.policy.stickiness.model_copy(update={"session_header": "x-session-id"})
    snap = snapshot(None, base.model_copy(update={"policy": base.policy.model_copy(update={"stickiness": sticky})}))
    memory, store, signer = ConversationMemory(100, 3600.0), DecisionStore(10, 60.0), TokenSigner([b"k" * 32])
    ids = sequential_ids()

    async def ask(text: str, session: str, dry_run: bool) -> tuple[api.DecideResponse, RecordingSink]:
        sink = RecordingSink()
        body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()
        request = api.DecideRequest(
            path="/v1/chat/completions", headers={"x-session-id": session}, body=body, dry_run=dry_run
        )
        tap = LearningTap(store, None, signer=signer)
        return await decide(request, snap, inline_classify, sink, ids, memory, tap=tap), sink

    dry, dry_sink = await ask("a hard question", "a", dry_run=True)
    real, real_sink = await ask("a hard question", "b", dry_run=False)
    assert dry.decision.selected_model == real.decision.selected_model == "gpt-4o"
    assert dry.models == real.models
    assert not dry_sink.records and len(real_sink.records) == 1
    assert dry.feedback_token == "" and real.feedback_token != ""
    assert store.get(dry.decision.decision_id) is None and store.get(real.decision.decision_id) is not None
    after_dry, _ = await ask("easy", "a", dry_run=False)
    assert label("reason", after_dry.decision.reason) == "cheapest_meeting_target", "the dry run raised no floor"
    read, _ = await ask("easy", "b", dry_run=True)
    assert label("reason", read.decision.reason) == "sticky_conversation", "a dry run reads the floor"
