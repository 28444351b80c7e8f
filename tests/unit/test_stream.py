"""StreamHandler behaviour outside the golden cases: phases, limits, failures, headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from classifier.model import Prediction
from extproc.classify import ClassifierThreads
from extproc.config import PolicySettings, ServerSettings, Settings, TenantPolicy
from extproc.policy import estimate_cost
from extproc.record import DecisionRecord, Outcome
from extproc.stream import Classify, ProtocolError, Stage, StreamHandler, add_header
from tests.fakes import (
    FakeDifficultyModel,
    RecordingSink,
    demo_settings,
    fixed_clock,
    inline_classify,
    sequential_ids,
    snapshot,
    with_section,
)
from tests.protocol import body_msg, chat_headers, forwards_unchanged, headers_msg, replay, router_metadata

CHAT = b'{"model":"auto","messages":[{"role":"user","content":"medium question"}]}'


def make(
    model: FakeDifficultyModel | None = None,
    classify: Classify = inline_classify,
    **policy: object,
) -> tuple[StreamHandler, RecordingSink]:
    sink = RecordingSink()
    snap = snapshot(model, demo_settings(**policy) if policy else None)
    return StreamHandler(snap, classify, sink, sequential_ids(), fixed_clock()), sink


def cluster_of(response: pb.ProcessingResponse) -> str | None:
    for opt in response.request_body.response.header_mutation.set_headers:
        if opt.header.key == "x-model-router-cluster":
            return opt.header.raw_value.decode()
    return None


def skips_body(response: pb.ProcessingResponse) -> bool:
    return response.HasField("mode_override")


@pytest.mark.parametrize(
    ("content_type", "body", "want", "cluster"),
    [
        pytest.param("text/plain", CHAT, CHAT.replace(b'"auto"', b'"gpt-4o"'), "frontier", id="alias-renamed"),
        pytest.param(None, CHAT.replace(b'"auto"', b'"gpt-4o-mini"'), None, "cheap", id="catalog-model-to-its-cluster"),
        pytest.param("application/x-www-form-urlencoded", b"model=auto&prompt=hi", None, None, id="form-unchanged"),
    ],
)
async def test_a_body_not_declared_as_json_goes_where_it_would_without_the_router(
    content_type: str | None, body: bytes, want: bytes | None, cluster: str | None
) -> None:
    """``curl -d`` sends JSON as a form: not classified, but "auto" must not reach an upstream that serves no such
    model (Envoy's fail-open filter renames it whatever the content type, and so does the router)."""
    headers = {k: v for k, v in chat_headers().items() if k != "content-type"}
    if content_type is not None:
        headers["content-type"] = content_type
    handler, sink = make()
    responses = await replay(handler, headers, body)
    assert not skips_body(responses[0])
    (record,) = sink.records
    assert (record.outcome.value, record.reason) == ("passthrough", "not_json_content_type")
    assert cluster_of(responses[1]) == cluster
    if want is None:
        assert not responses[1].request_body.response.HasField("body_mutation")
    else:
        assert responses[1].request_body.response.body_mutation.body == want


def _filled(extra: int, **headers: str) -> dict[str, str]:
    """A chat request's headers (as Envoy sends them: pseudo-headers, content-length) plus ``extra`` more."""
    return {**chat_headers(**headers), "content-length": "80", **{f"x-h{i}": "v" for i in range(extra)}}


def _repeated(times: int) -> pb.HttpHeaders:
    """A chat request's headers with one name repeated ``times`` times (Envoy counts each line)."""
    lines = [*_filled(0).items(), *[("x-h", "v")] * times]
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in lines])
    )


@pytest.mark.parametrize(
    ("headers", "full", "cluster"),
    [
        pytest.param(_filled(95), False, "cheap", id="room-for-the-header"),  # 100 with it: Envoy's limit
        pytest.param(_filled(96), True, None, id="no-room"),
        pytest.param(_filled(120), True, None, id="past-the-limit-already"),  # Envoy adds 5 to the client's 100
        pytest.param(_filled(95, **{"x-model-router-quality": "0.1"}), False, "small", id="its-own-headers-go"),
        pytest.param(_filled(96, **{"content-length": ""}), True, None, id="content-length-to-add"),
        pytest.param({**_filled(0), "x-big": "v" * (60 * 1024 - 200)}, False, "cheap", id="size-under"),
        pytest.param({**_filled(0), "x-big": "v" * (60 * 1024 - 100)}, True, None, id="size-limit"),
        pytest.param({**_filled(0), "x-big": "é" * (30 * 1024 - 50)}, True, None, id="size-in-bytes"),
        pytest.param(_repeated(95), False, "cheap", id="repeated-name-room"),
        pytest.param(_repeated(96), True, None, id="repeated-name-counts-each-line"),
    ],
)
async def test_a_request_without_room_for_the_cluster_header_gets_a_431(
    headers: dict[str, str] | pb.HttpHeaders, full: bool, cluster: str | None
) -> None:
    """Envoy refuses a header change past its limits (100 headers, 60 KiB) with a bare 500. Handing the request to
    its fail-open filter instead would let junk headers shed a tenant's models and constraints: a 431 says why, with
    no header change at all."""
    handler, sink = make()
    if isinstance(headers, pb.HttpHeaders):
        responses = await handler.handle(pb.ProcessingRequest(request_headers=headers))
        responses += await handler.handle(body_msg(CHAT))
    else:
        responses = await replay(handler, {k: v for k, v in headers.items() if v}, CHAT)
    (record,) = sink.records
    assert (record.outcome.value == "rejected" and record.reason == "headers_full") is full
    if full:
        reply = responses[0].immediate_response
        assert reply.status.code == 431 and b"request_headers_too_large" in reply.body
        assert not responses[0].request_headers.HasField("response"), "no header change at all"
    else:
        assert cluster_of(responses[1]) == cluster


@pytest.mark.parametrize(
    ("path", "anthropic"),
    [
        ("/v1/chat/completions", False),
        ("/v1/messages?beta=true", True),
        ("/v1/messages/count_tokens?beta=true", True),
        ("/v1/responses/input_tokens", False),
    ],
)
async def test_the_431_is_in_the_error_shape_of_the_requests_api(path: str, anthropic: bool) -> None:
    handler, _ = make()
    (response,) = await handler.handle(headers_msg(_filled(96, **{":path": path})))
    error = orjson.loads(response.immediate_response.body)
    assert response.immediate_response.status.code == 431
    assert (error.get("type") == "error") is anthropic and "100 headers" in error["error"]["message"]


@pytest.mark.parametrize(("extra", "removed"), [(95, True), (101, False)], ids=["room", "past-the-limit"])
async def test_a_pass_through_removes_the_clients_router_headers_only_within_envoys_limits(
    extra: int, removed: bool
) -> None:
    """Past the limits Envoy refuses even a removal (a bare 500); the route strips them on its way anyway."""
    handler, _ = make()
    headers = {**_filled(extra, **{"x-model-router-quality": "0.1"}), ":method": "GET"}
    (response,) = await handler.handle(headers_msg(headers))
    assert skips_body(response)
    assert list(response.request_headers.response.header_mutation.remove_headers) == (
        ["x-model-router-quality"] if removed else []
    )


_COUNT = b'{"model":"auto","messages":[{"role":"user","content":"Prove the Riemann hypothesis."}]}'


@pytest.mark.parametrize(
    ("path", "body", "headers", "want", "cluster"),
    [
        pytest.param("/v1/messages/count_tokens", _COUNT, {}, b'"gpt-4o"', "frontier", id="alias-default-model"),
        pytest.param(
            "/v1/responses/input_tokens?x=1", b'{"model":"auto","input":"hi"}', {}, b'"gpt-4o"', "frontier", id="openai"
        ),
        pytest.param(
            "/v1/messages/count_tokens",
            _COUNT,
            {"x-tenant-id": "frugal"},
            b'"gpt-4o-mini"',
            "cheap",
            id="the-tenants-default",
        ),
        pytest.param(
            "/v1/messages/count_tokens",
            _COUNT,
            {"x-model-router-quality": "high"},
            b'"gpt-4o"',
            "frontier",
            id="a-malformed-constraint-is-no-reason-to-refuse",
        ),
        pytest.param(
            "/v1/messages/count_tokens", _COUNT.replace(b'"auto"', b'"gpt-4o-mini"'), {}, None, "cheap", id="catalog"
        ),
        pytest.param(
            "/v1/messages/count_tokens", _COUNT.replace(b'"auto"', b'"claude-x"'), {}, None, None, id="other-model"
        ),
        pytest.param("/v1/responses/input_tokens", b'{"input":"hi"}', {}, None, None, id="no-model"),
    ],
)
@pytest.mark.parametrize("shadow", [False, True], ids=["live", "shadow"])
async def test_a_token_count_is_not_decided_but_reaches_a_model_that_exists(
    path: str, body: bytes, headers: dict[str, str], want: bytes | None, cluster: str | None, shadow: bool
) -> None:
    """A client set to "auto" counts tokens with "auto" too (agents such as Claude Code call ``count_tokens``): no
    provider serves that name, so the router gives it the default model (the tenant's), as for a body it does not
    classify; nothing is classified or recorded as a decision, and nothing is refused."""
    base = demo_settings(tenant_header="x-tenant-id", invalid_constraint="reject", shadow=shadow)
    tenant = TenantPolicy(models=("gpt-4o-mini", "gpt-4o"), default_model="gpt-4o-mini")
    model = FakeDifficultyModel()
    sink = RecordingSink()
    snap = snapshot(model, base.model_copy(update={"tenants": {"frugal": tenant}}))
    handler = StreamHandler(snap, inline_classify, sink, sequential_ids(), fixed_clock())
    responses = await replay(handler, chat_headers(path, **headers), body)
    assert not skips_body(responses[0]) and responses[1].WhichOneof("response") == "request_body"
    (record,) = sink.records
    assert (record.outcome, record.reason, model.seen) == (Outcome.PASSTHROUGH, "token_count", [])
    assert cluster_of(responses[1]) == cluster
    sent = responses[1].request_body.response.body_mutation.body
    assert sent == (body.replace(b'"auto"', want) if want else b"")
    assert "decision_id" not in router_metadata(responses[1])


DEEP = b'{"model":"auto","messages":[],"metadata":' + b"[" * 1030 + b"]" * 1030 + b"}"


@pytest.mark.parametrize(
    ("content_type", "body", "reason", "served"),
    [
        # JSON that orjson refuses and other parsers read: served as without the router, not sent on as "auto".
        pytest.param(None, CHAT.replace(b"medium", b"\\ud83d"), "invalid_json", "gpt-4o", id="lone-surrogate"),
        pytest.param(None, b"\xef\xbb\xbf" + CHAT, "invalid_json", "gpt-4o", id="byte-order-mark"),
        pytest.param(None, CHAT[:-1] + b',"temperature":1e400}', "invalid_json", "gpt-4o", id="number-past-double"),
        pytest.param(None, DEEP, "json_too_deep", "gpt-4o", id="deeper-than-the-parser-goes"),
        pytest.param(None, b"\xef\xbb\xbf" + CHAT.replace(b"auto", b"gpt-4o-mini"), "invalid_json", None, id="catalog"),
        # Not one whole object: no byte changes, whatever the model.
        pytest.param(None, CHAT[:-3], "invalid_json", None, id="cut-short"),
        pytest.param(None, CHAT + b"{}", "invalid_json", None, id="two-values"),
        pytest.param(None, CHAT.replace(b'"medium', b"medium"), "invalid_json", None, id="string-left-open"),
        pytest.param(
            "text/plain",
            b'{"messages":[],"metadata":{"model":"auto"}}',
            "not_json_content_type",
            None,
            id="only-a-nested-model",
        ),
        pytest.param("text/plain", b'[{"model":"auto"}]', "not_json_content_type", None, id="an-array"),
    ],
)
async def test_a_body_the_parser_did_not_read(
    content_type: str | None, body: bytes, reason: str, served: str | None
) -> None:
    """Only the top-level model of one whole object is renamed (every other byte as sent) or sent to its cluster:
    a nested "model" or a body cut short is left as the client sent it."""
    handler, sink = make()
    headers = chat_headers() if content_type is None else chat_headers(**{"content-type": content_type})
    responses = await replay(handler, headers, body)
    (record,) = sink.records
    assert (record.outcome.value, record.reason) == ("passthrough", reason)
    mutation = responses[1].request_body.response
    if served is None and b"gpt-4o-mini" in body:
        assert cluster_of(responses[1]) == "cheap" and not mutation.HasField("body_mutation")
    elif served is None:
        assert forwards_unchanged(responses[1])
    else:
        assert mutation.body_mutation.body == body.replace(b'"auto"', orjson.dumps(served), 1)
        assert (cluster_of(responses[1]), record.selected_model) == ("frontier", served)


@pytest.mark.parametrize(
    ("headers", "end_of_stream", "reason"),
    [
        pytest.param(chat_headers(path="/v1/embeddings"), False, None, id="unknown-path-no-record"),
        pytest.param({**chat_headers(), ":method": "GET"}, True, "not_post", id="get"),
        pytest.param(chat_headers(), True, "no_body", id="headers-only-post"),
        pytest.param(chat_headers(**{"content-encoding": "gzip"}), False, "content_encoded", id="gzip-body"),
    ],
)
async def test_header_time_passthrough_skips_body(
    headers: dict[str, str], end_of_stream: bool, reason: str | None
) -> None:
    handler, sink = make()
    (response,) = await handler.handle(headers_msg(headers, end_of_stream))
    assert skips_body(response)
    assert handler.stage is Stage.FINISHED
    assert [r.reason for r in sink.records] == ([reason] if reason else [])
    # Envoy may still send a body (if it ignores the override): it is continued unchanged.
    assert router_metadata(response)["outcome"] == "passthrough"
    assert router_metadata(response)["reason"] == (reason or "unknown_path")
    (again,) = await handler.handle(body_msg(CHAT))
    assert again == pb.ProcessingResponse(request_body=pb.BodyResponse())


async def test_json_with_charset_is_routed() -> None:
    handler, _ = make()
    responses = await replay(handler, chat_headers(**{"content-type": "application/json; charset=utf-8"}), CHAT)
    assert cluster_of(responses[1]) == "cheap"


@pytest.mark.parametrize(
    ("quality", "want"),
    [
        pytest.param(None, "cheap", id="default-target"),
        pytest.param("0.99", "frontier", id="strict-target-escalates"),
        pytest.param("0.1", "small", id="lax-target-saves"),
        pytest.param("banana", "cheap", id="invalid-ignored"),
        pytest.param("1.5", "cheap", id="out-of-range-ignored"),
    ],
)
async def test_quality_header_moves_threshold(quality: str | None, want: str) -> None:
    handler, _sink = make()
    extra = {"x-model-router-quality": quality} if quality else {}
    responses = await replay(handler, chat_headers(**extra), CHAT)
    assert cluster_of(responses[1]) == want
    assert "x-model-router-quality" in responses[0].request_headers.response.header_mutation.remove_headers or not extra


async def test_quality_header_ignored_when_disabled() -> None:
    handler, _ = make(quality_header=False)
    responses = await replay(handler, chat_headers(**{"x-model-router-quality": "0.99"}), CHAT)
    assert cluster_of(responses[1]) == "cheap"


@pytest.mark.parametrize(
    ("limit", "want_output_tokens"),
    [
        ({}, 300),
        ({"max_tokens": 2000}, 2000),
        ({"max_completion_tokens": 50, "max_tokens": 2000}, 50),
        ({"max_tokens": 2**63 - 1}, 128_000),
    ],
    ids=["policy-estimate", "max-tokens", "max-completion-tokens-first", "capped-at-the-largest-context-window"],
)
async def test_the_cost_estimate_uses_the_requests_output_limit(limit: dict[str, int], want_output_tokens: int) -> None:
    """The request's own output limit, else ``policy.expected_output_tokens`` (300): what the cost and the context
    fit are computed for. A limit past every model's window counts as the largest window (128,000 in the demo
    catalog): one client's 2**63-1 priced as asked would swamp the estimated-cost counters."""
    handler, sink = make(expected_output_tokens=300)
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "medium question"}], **limit})
    await replay(handler, chat_headers(), body)
    rec = sink.records[0]
    model = handler._snap.by_name[rec.selected_model or ""]
    assert rec.input_tokens is not None
    assert rec.cost_selected == pytest.approx(estimate_cost(model, rec.input_tokens, want_output_tokens))


async def test_the_cost_estimate_counts_every_choice() -> None:
    """``n`` choices are each billed their output: the record's costs (and the counters fed from them) say so."""
    handler, sink = make(expected_output_tokens=300)
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "medium question"}], "n": 4})
    await replay(handler, chat_headers(), body)
    rec = sink.records[0]
    selected, requested = handler._snap.by_name[rec.selected_model or ""], handler._snap.default_model
    assert rec.input_tokens is not None
    assert rec.cost_selected == pytest.approx(estimate_cost(selected, rec.input_tokens, 300, 4))
    assert rec.cost_requested == pytest.approx(estimate_cost(requested, rec.input_tokens, 300, 4))


@pytest.mark.parametrize(
    ("name", "want"),
    [
        pytest.param("X-Model-Router-Quality", "a, b", id="router-header-joined"),
        pytest.param("x-tenant-id", "b", id="tenant-last-copy"),  # a gateway appending its own after a client's
        pytest.param("x-session-id", "b", id="other-last-copy"),
    ],
)
def test_a_repeated_header_is_joined_only_in_the_routers_namespace(name: str, want: str) -> None:
    headers: dict[str, str] = {}
    add_header(headers, name, "a")
    add_header(headers, name, "b")
    assert headers == {name.lower(): want}


@pytest.mark.parametrize("values", [("0.99", "0.1"), ("0.1", "0.99")], ids=["strict-first", "lax-first"])
async def test_a_constraint_header_sent_twice_is_malformed_whatever_the_order(values: tuple[str, str]) -> None:
    """Envoy passes each copy as its own entry: the router reads them joined (as HTTP does), not the last copy."""
    handler, sink = make()
    message = headers_msg(chat_headers())
    for value in values:
        message.request_headers.headers.headers.add(key="x-model-router-quality", raw_value=value.encode())
    responses = await handler.handle(message)
    responses += await handler.handle(body_msg(CHAT))
    assert cluster_of(responses[1]) == "cheap"  # the config's target, as for a malformed value
    assert sink.errors == ["constraint_ignored"]


async def test_classifier_error_falls_back_to_default_model() -> None:
    handler, sink = make(FakeDifficultyModel(error=RuntimeError("onnx exploded")))
    responses = await replay(handler, chat_headers(), CHAT)
    assert cluster_of(responses[1]) == "frontier"
    assert b'"model":"gpt-4o"' in responses[1].request_body.response.body_mutation.body
    assert (sink.records[0].outcome, sink.records[0].reason) == (Outcome.FALLBACK, "classifier_failed")


async def test_classifier_deadline_falls_back_within_budget() -> None:
    threads = ClassifierThreads(1)
    try:
        settings = demo_settings()
        settings = settings.model_copy(update={"server": ServerSettings(classifier_timeout_ms=20)})
        sink = RecordingSink()
        handler = StreamHandler(snapshot(FakeDifficultyModel(delay=0.5), settings), threads, sink, sequential_ids())
        loop = asyncio.get_running_loop()
        start = loop.time()
        responses = await replay(handler, chat_headers(), CHAT)
        assert loop.time() - start < 0.4
    finally:
        threads.close(timeout=0)
    assert cluster_of(responses[1]) == "frontier"
    assert sink.records[0].reason == "classifier_failed"


async def test_routable_real_model_falls_back_to_itself() -> None:
    handler, _sink = make(FakeDifficultyModel(error=RuntimeError()), routable_models=["gpt-4o-mini"])
    body = CHAT.replace(b'"auto"', b'"gpt-4o-mini"')
    responses = await replay(handler, chat_headers(), body)
    assert cluster_of(responses[1]) == "cheap"


async def test_body_over_limit_passes_through() -> None:
    handler, sink = make()
    limit = handler._snap.settings.limits.max_body_bytes
    big = b'{"model":"auto","messages":[{"role":"user","content":"' + b"x" * limit + b'"}]}'
    responses = await replay(handler, chat_headers(), big)
    assert forwards_unchanged(responses[1])
    assert sink.records[0].reason == "body_too_large"


@pytest.mark.parametrize(
    ("over", "served"), [(-1, "gpt-4o-mini"), (0, "gpt-4o-mini"), (1, "gpt-4o"), (5, "gpt-4o"), (6, None)]
)
async def test_a_rewrite_never_grows_a_body_over_the_limit(over: int, served: str | None) -> None:
    """ "auto" -> "gpt-4o-mini" adds 7 bytes: a body within the limit must stay within it. When the choice does not
    fit, "auto" becomes the default model (+2 bytes) if that fits, as when the router is down: sent as "auto", no
    upstream would serve it. Otherwise the body goes unchanged."""
    handler, sink = make()
    limit = handler._snap.settings.limits.max_body_bytes
    # Padded with JSON whitespace, so the prompt (and so the choice, gpt-4o-mini) stays that of CHAT.
    body = CHAT[:-1] + b" " * (limit - 7 + over - len(CHAT)) + b"}"
    assert len(body) < limit
    responses = await replay(handler, chat_headers(), body)
    (record,) = sink.records
    if served is None:
        assert forwards_unchanged(responses[1])
        assert (record.reason, record.selected_model) == ("body_too_large", None)
        return
    sent = responses[1].request_body.response.body_mutation.body
    assert sent == body.replace(b'"auto"', orjson.dumps(served)) and len(sent) <= limit
    assert cluster_of(responses[1]) == ("cheap" if served == "gpt-4o-mini" else "frontier")
    assert record.selected_model == served
    if served == "gpt-4o":
        assert (record.outcome, record.reason, record.requested_model) == ("passthrough", "body_too_large", "auto")
        metadata = router_metadata(responses[1])
        assert "decision_id" not in metadata and metadata["selected_model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("body_mode", "whole"),
    [
        pytest.param(None, False, id="mode-unannounced"),
        pytest.param(ProcessingMode.STREAMED, False, id="streamed"),
        pytest.param(ProcessingMode.BUFFERED_PARTIAL, False, id="buffered-partial"),
        pytest.param(ProcessingMode.BUFFERED, True, id="buffered-trailers-follow"),
    ],
)
async def test_a_body_that_does_not_end_the_stream(body_mode: int | None, whole: bool) -> None:
    """A body message without end_of_stream is a chunk, unless Envoy announced BUFFERED: then it is the whole body
    with trailers to follow (Envoy's request decompressor adds them to every body it inflates), to be routed."""
    handler, sink = make()
    await handler.handle(headers_msg(chat_headers(), body_mode=body_mode))
    (response,) = await handler.handle(body_msg(CHAT if whole else CHAT[:20], end_of_stream=False))
    if whole:
        assert cluster_of(response) == "cheap" and sink.records[0].outcome == "routed"
    else:
        assert forwards_unchanged(response)
        assert sink.records[0].reason == "streamed_body"


@pytest.mark.parametrize(
    "message",
    [
        pb.ProcessingRequest(request_trailers=pb.HttpTrailers()),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x")),
        pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders()),
        body_msg(CHAT),  # a body before any headers
    ],
    ids=[
        "request-trailers",
        "response-body",
        "response-trailers",
        "response-headers-no-decision",
        "body-first",
    ],
)
async def test_unexpected_known_messages_get_plain_continue(message: pb.ProcessingRequest) -> None:
    handler, _ = make()
    (response,) = await handler.handle(message)
    kind = message.WhichOneof("request")
    assert response.WhichOneof("response") == kind
    assert not response.ListFields()[0][1].ListFields()


async def test_empty_message_is_a_protocol_error() -> None:
    handler, _ = make()
    with pytest.raises(ProtocolError):
        await handler.handle(pb.ProcessingRequest())


async def test_response_headers_after_decision_carry_decision() -> None:
    handler, sink = make()
    await replay(handler, chat_headers(), CHAT)
    (response,) = await handler.handle(pb.ProcessingRequest(response_headers=pb.HttpHeaders()))
    got = {
        o.header.key: o.header.raw_value.decode()
        for o in response.response_headers.response.header_mutation.set_headers
    }
    assert got == {
        "x-model-router-model": "gpt-4o-mini",
        "x-model-router-tier": "cheap",
        "x-model-router-decision-id": sink.records[0].decision_id,
    }


async def test_record_has_costs_and_no_prompt_text() -> None:
    handler, sink = make()
    await replay(handler, chat_headers(), CHAT)
    rec = sink.records[0]
    assert rec.outcome is Outcome.ROUTED and rec.selected_model == "gpt-4o-mini"
    assert rec.cost_selected is not None and rec.cost_requested is not None
    assert rec.cost_selected < rec.cost_requested
    assert "medium question" not in repr(rec)


async def test_handler_bug_degrades_to_continue() -> None:
    handler, _ = make()
    handler._snap = None  # type: ignore[assignment]  # any internal error must not fail the request
    await handler.handle(headers_msg(chat_headers()))
    (response,) = await handler.handle(body_msg(CHAT))
    assert forwards_unchanged(response, outcome=None)  # no metadata: Envoy's fail-open filter takes over


def _with_session_header(policy: PolicySettings, header: str | None = "x-session-id") -> PolicySettings:
    return policy.model_copy(update={"stickiness": policy.stickiness.model_copy(update={"session_header": header})})


def _conversation(
    clock: Callable[[], float] = time.monotonic, **settings_changes: object
) -> Callable[..., Awaitable[DecisionRecord]]:
    """One snapshot and conversation memory (on ``clock``); each call sends one turn and returns its record. The
    session header is ``x-session-id`` unless ``policy`` says otherwise."""
    from extproc.conversations import ConversationMemory

    base = demo_settings()
    base = base.model_copy(update={"policy": _with_session_header(base.policy)})
    settings = base.model_copy(update=settings_changes) if settings_changes else base
    memory = ConversationMemory(100, 3600, clock=clock)
    broken = FakeDifficultyModel(error=RuntimeError("down"))

    async def turn(text: str, classifier_down: bool = False, **headers: str) -> DecisionRecord:
        sink = RecordingSink()
        snap = snapshot(broken if classifier_down else None, settings)
        handler = StreamHandler(snap, inline_classify, sink, sequential_ids(), fixed_clock(), memory=memory)
        body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})
        if text == "":
            body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
        await replay(handler, chat_headers(**headers), body)
        return sink.records[0]

    return turn


async def test_a_conversation_never_falls_back_to_a_weaker_model() -> None:
    """Once a turn used gpt-4o, a turn the classifier cannot decide (it fails, or there is no text) stays there,
    although the default model (the fallback) is gpt-4o-mini."""
    turn = _conversation(policy=_with_session_header(demo_settings(default_model="gpt-4o-mini").policy))
    first = await turn("a hard question", **{"x-session-id": "s1"})
    assert first.selected_model == "gpt-4o"
    down = await turn("easy", classifier_down=True, **{"x-session-id": "s1"})
    no_text = await turn("", **{"x-session-id": "s1"})
    assert [(r.reason, r.selected_model) for r in (down, no_text)] == [
        ("classifier_failed", "gpt-4o"),
        ("no_prompt_text", "gpt-4o"),
    ]
    other = await turn("easy", classifier_down=True, **{"x-session-id": "s2"})
    assert other.selected_model == "gpt-4o-mini", "another conversation: the default model"


@pytest.mark.parametrize(
    ("session_header", "shared"),
    [(None, False), ("x-session-id", True)],
    ids=["default", "configured"],
)
async def test_a_client_session_header_is_honoured_only_when_configured(
    session_header: str | None, shared: bool
) -> None:
    """Off by default: a client sending another conversation's id must not inherit its floor (non-negotiable 6)."""
    policy = demo_settings().policy  # the default stickiness settings
    turn = _conversation(policy=_with_session_header(policy, session_header) if session_header else policy)
    assert (await turn("a hard question", **{"x-session-id": "victim"})).selected_model == "gpt-4o"
    other = await turn("easy", **{"x-session-id": "victim"})  # a different conversation (its own first message)
    assert (other.reason == "sticky_conversation") is shared
    assert (other.selected_model == "gpt-4o") is shared


@pytest.mark.parametrize("undecided", ["classifier_down", "no_text"])
async def test_a_fallback_turn_does_not_raise_the_conversation_floor(undecided: str) -> None:
    """The default model is gpt-4o (the dearest): a first turn the router could not decide on its merits goes there,
    but must not keep the conversation's later, easy turns there."""
    turn = _conversation(policy=_with_session_header(demo_settings(default_model="gpt-4o").policy))
    if undecided == "no_text":
        first = await turn("", **{"x-session-id": "s1"})
    else:
        first = await turn("a hard question", classifier_down=True, **{"x-session-id": "s1"})
    assert (first.selected_model, first.outcome) == ("gpt-4o", Outcome.FALLBACK)
    later = await turn("easy", **{"x-session-id": "s1"})
    assert (later.reason, later.selected_model) == ("cheapest_meeting_target", "llama-3.1-8b-instruct")


async def test_a_fallback_turn_keeps_an_existing_floor_alive() -> None:
    """The floor's TTL (10 s here) counts from the conversation's last turn, fallback turns included."""
    now = [0.0]
    policy = _with_session_header(demo_settings(default_model="gpt-4o-mini").policy)
    policy = policy.model_copy(update={"stickiness": policy.stickiness.model_copy(update={"ttl_seconds": 10.0})})
    turn = _conversation(clock=lambda: now[0], policy=policy)
    assert (await turn("a hard question", **{"x-session-id": "s1"})).selected_model == "gpt-4o"
    now[0] = 9.0
    assert (await turn("easy", classifier_down=True, **{"x-session-id": "s1"})).selected_model == "gpt-4o"
    now[0] = 18.0  # 18 s after the floor was set, 9 s after the fallback turn
    later = await turn("easy", **{"x-session-id": "s1"})
    assert (later.reason, later.selected_model) == ("sticky_conversation", "gpt-4o")


async def test_a_pinned_turn_does_not_raise_the_conversation_floor() -> None:
    """``model-router label`` replays captured conversations pinned to each model: a replay pinned to gpt-4o must not
    move the live user's later turns to gpt-4o."""
    import hashlib

    from extproc.config import OverrideSettings, SecuritySettings

    secret = "s3cret-token"
    trusted = SecuritySettings(override=OverrideSettings(token_sha256=hashlib.sha256(secret.encode()).hexdigest()))
    turn = _conversation(security=trusted)
    pin = {"x-model-router-override": "gpt-4o", "x-model-router-override-token": secret}
    pinned = await turn("easy", **{"x-session-id": "s1"}, **pin)
    assert (pinned.reason, pinned.selected_model) == ("trusted_override", "gpt-4o")
    later = await turn("easy", **{"x-session-id": "s1"})
    assert (later.reason, later.selected_model) == ("cheapest_meeting_target", "llama-3.1-8b-instruct")


async def test_a_reloaded_stickiness_ttl_applies_to_the_next_turn() -> None:
    """The memory was built at start with a one-hour TTL; the running (reloaded) config says 10 s, and wins."""
    from extproc.conversations import ConversationMemory

    now = [0.0]
    memory = ConversationMemory(100, 3600, clock=lambda: now[0])
    base = demo_settings()
    sticky = base.policy.stickiness.model_copy(update={"ttl_seconds": 10.0, "session_header": "x-session-id"})
    snap = snapshot(None, base.model_copy(update={"policy": base.policy.model_copy(update={"stickiness": sticky})}))

    async def turn(text: str) -> DecisionRecord:
        sink = RecordingSink()
        handler = StreamHandler(snap, inline_classify, sink, sequential_ids(), fixed_clock(), memory=memory)
        body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})
        await replay(handler, chat_headers(**{"x-session-id": "s1"}), body)
        return sink.records[0]

    assert (await turn("a hard question")).selected_model == "gpt-4o"
    now[0] = 9.0
    assert (await turn("easy")).reason == "sticky_conversation"
    now[0] = 9.0 + 11.0  # the sticky turn refreshed the entry at 9 s, for the running config's 10 s
    assert (await turn("easy")).selected_model == "llama-3.1-8b-instruct"


async def test_a_reload_that_recalibrates_abilities_keeps_a_conversation_on_its_model() -> None:
    """Found by review: floors were kept as ability numbers, so lowering gpt-4o-mini's ability by 0.01 sent every
    live conversation held on it to gpt-4o (17x the price) for the floor's TTL."""
    from extproc.conversations import ConversationMemory

    memory = ConversationMemory(100, 3600)
    base = demo_settings()
    base = base.model_copy(update={"policy": _with_session_header(base.policy)})
    mini = snapshot(None, base).by_name["gpt-4o-mini"].ability
    lowered = [m.model_copy(update={"ability": mini - 0.01}) if m.name == "gpt-4o-mini" else m for m in base.catalog]
    reloaded = base.model_copy(update={"catalog": lowered})

    async def turn(settings: Settings, text: str) -> DecisionRecord:
        sink = RecordingSink()
        handler = StreamHandler(
            snapshot(None, settings), inline_classify, sink, sequential_ids(), fixed_clock(), memory=memory
        )
        body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})
        await replay(handler, chat_headers(**{"x-session-id": "s1"}), body)
        return sink.records[0]

    assert (await turn(base, "a medium question")).selected_model == "gpt-4o-mini"
    later = await turn(reloaded, "easy")
    assert (later.reason, later.selected_model) == ("sticky_conversation", "gpt-4o-mini")


async def test_tenants_without_a_view_of_their_own_do_not_share_conversations() -> None:
    policy = _with_session_header(demo_settings().policy).model_copy(update={"tenant_header": "x-tenant-id"})
    turn = _conversation(policy=policy)
    assert (await turn("a hard question", **{"x-tenant-id": "acme", "x-session-id": "1"})).selected_model == "gpt-4o"
    later = await turn("easy", **{"x-tenant-id": "globex", "x-session-id": "1"})
    assert (later.reason, later.selected_model) == ("cheapest_meeting_target", "llama-3.1-8b-instruct")
    same = await turn("easy", **{"x-tenant-id": "acme", "x-session-id": "1"})
    assert (same.reason, same.selected_model) == ("sticky_conversation", "gpt-4o")


async def test_a_nan_difficulty_is_a_classifier_failure() -> None:
    class NaNModel(FakeDifficultyModel):
        def predict(self, text: str) -> Prediction:
            return Prediction(float("nan"), 0.5)

    handler, sink = make(NaNModel())
    await replay(handler, chat_headers(), CHAT)
    assert (sink.records[0].reason, sink.records[0].selected_model) == ("classifier_failed", "gpt-4o")


async def test_shadow_mode_never_rejects_a_request() -> None:
    settings = demo_settings(shadow=True, invalid_constraint="reject")
    sink = RecordingSink()
    handler = StreamHandler(snapshot(settings=settings), inline_classify, sink, sequential_ids(), fixed_clock())
    responses = await replay(handler, chat_headers(**{"x-model-router-quality": "2"}), CHAT)
    assert responses[0].WhichOneof("response") == "request_headers"
    assert responses[1].WhichOneof("response") == "request_body"
    assert sink.records[0].outcome is Outcome.SHADOW


_MESSAGES = b'{"model":"auto","max_tokens":9,"messages":[{"role":"user","content":"medium question"}]}'


@pytest.mark.parametrize(
    ("path", "body", "content_type", "error"),
    [
        pytest.param("/v1/chat/completions", CHAT, "application/json", {"code", "message", "param", "type"}, id="chat"),
        pytest.param("/v1/messages", _MESSAGES, "application/json", {"message", "type"}, id="anthropic-shape"),
        pytest.param("/v1/chat/completions", CHAT.replace(b"auto", b"gpt-4o-mini"), None, None, id="catalog-model"),
        pytest.param("/v1/chat/completions", CHAT.replace(b"auto", b"my-model"), None, None, id="unknown-model"),
        pytest.param("/v1/chat/completions", CHAT, "text/plain", None, id="not-classified"),
        pytest.param("/v1/chat/completions", b"{not json", None, None, id="not-json"),
    ],
)
async def test_reject_mode_refuses_only_requests_the_router_decides(
    path: str, body: bytes, content_type: str | None, error: set[str] | None
) -> None:
    """``invalid_constraint: reject`` answers 400 in the request's API shape once the body shows the router would
    decide it; a request it only forwards (a model it does not route, a body it does not classify) goes on."""
    handler, sink = make(invalid_constraint="reject")
    headers = chat_headers(path, **{"x-model-router-quality": "high"})
    if content_type:
        headers["content-type"] = content_type
    responses = await replay(handler, headers, body)
    assert responses[0].WhichOneof("response") == "request_headers"
    if error is None:
        assert responses[1].WhichOneof("response") == "request_body"
        assert sink.records[0].outcome is Outcome.PASSTHROUGH
        return
    answer = responses[1].immediate_response
    assert answer.status.code == 400
    payload = orjson.loads(answer.body)
    assert set(payload["error"]) == error and "x-model-router-quality" in payload["error"]["message"]
    assert (payload.get("type") == "error") is path.endswith("messages")
    assert (sink.records[0].outcome, sink.records[0].reason) == (Outcome.REJECTED, "invalid_constraint")


@pytest.mark.parametrize(
    ("body", "shadow", "cluster"),
    [
        pytest.param(b'{"model":"llama-3.1-8b-instruct","messages":[]}', False, "small", id="catalog-model"),
        pytest.param(b'{"model":"gpt-4o-mini","messages":[]}', False, "cheap", id="another-catalog-model"),
        pytest.param(b'{"model":"text-embedding-3-small","input":"x"}', False, None, id="not-in-catalog"),
        pytest.param(b'{"model":"gpt-4o-mini","messages":[]}', True, "cheap", id="shadow-too"),
        pytest.param(b'{"model":"gpt-4o-mini","model":"gpt-4o","messages":[]}', False, None, id="duplicate-key"),
        pytest.param(b'{"model":"gpt\\u002d4o-mini","messages":[]}', False, "cheap", id="escaped-name-no-fallback"),
    ],
)
async def test_a_catalog_model_named_by_the_client_goes_to_its_own_cluster(
    body: bytes, shadow: bool, cluster: str | None
) -> None:
    """Not routed, body untouched: but the default route may be another provider that does not serve the model."""
    sink = RecordingSink()
    snap = snapshot(settings=demo_settings(shadow=shadow))
    handler = StreamHandler(snap, inline_classify, sink, sequential_ids(), fixed_clock())
    responses = await replay(handler, chat_headers(), body)
    assert (sink.records[0].outcome, sink.records[0].reason) == (Outcome.PASSTHROUGH, "model_not_routable")
    if cluster is None:
        assert forwards_unchanged(responses[1])
        return
    answer = responses[1].request_body.response
    assert not answer.HasField("body_mutation") and answer.clear_route_cache
    assert cluster_of(responses[1]) == cluster
    meta = router_metadata(responses[1])
    assert (meta["selected_model"], meta["cluster"], meta["outcome"]) == (
        orjson.loads(body)["model"],
        cluster,
        "passthrough",
    )
    assert "decision_id" not in meta
    if b"\\u" in body:  # Envoy's fallback filter would not recognise the value: no rename on a retry, no error log
        assert "model_span" not in meta and "fallback_models" not in meta
    else:
        start, end = (int(x) for x in meta["model_span"].split("-"))
        assert body[start:end] == orjson.dumps(orjson.loads(body)["model"])
    assert (sink.records[0].selected_model, sink.records[0].cluster) == (meta["selected_model"], cluster)


@pytest.mark.parametrize(
    ("requested", "served", "cluster"),
    [
        pytest.param("gpt-4o-mini", "gpt-4o-mini", "cheap", id="catalog-model-untouched-to-its-cluster"),
        pytest.param("auto", "gpt-4o", "frontier", id="alias-becomes-the-default-model"),
    ],
)
async def test_shadow_mode_sends_the_request_where_it_would_go_without_the_router(
    requested: str, served: str, cluster: str
) -> None:
    """Shadow decides (the record says what the router would have chosen) and applies nothing: "auto" is served
    by no upstream, so it goes as the default model, the baseline the record's costs assume."""
    settings = demo_settings(shadow=True, routable_models=["auto", "gpt-4o-mini"])
    sink = RecordingSink()
    handler = StreamHandler(snapshot(settings=settings), inline_classify, sink, sequential_ids(), fixed_clock())
    body = CHAT.replace(b'"auto"', orjson.dumps(requested))
    responses = await replay(handler, chat_headers(), body)
    rec = sink.records[0]
    assert (rec.outcome, rec.requested_model, rec.selected_model) == (Outcome.SHADOW, requested, "gpt-4o-mini")
    assert cluster_of(responses[1]) == cluster
    sent = responses[1].request_body.response.body_mutation.body or body
    assert sent == body.replace(orjson.dumps(requested), orjson.dumps(served))
    meta = router_metadata(responses[1])
    assert (meta["outcome"], meta["cluster"]) == ("shadow", cluster)
    assert "selected_model" not in meta  # the client must not read the shadow choice as the served model
    assert meta["decision_id"] == rec.decision_id  # feedback on shadow decisions (for the served model)
    # Envoy's fallback filter can rename it on a retry: the span is the served name's, in the body sent.
    start, end = (int(x) for x in meta["model_span"].split("-"))
    assert sent[start:end] == orjson.dumps(served) and meta["fallback_models"]


async def test_a_tenant_is_not_sent_to_a_catalog_model_outside_its_subset_by_naming_it() -> None:
    """A tenant's catalog subset is what it may be routed to; naming another model is a plain pass-through."""
    base = demo_settings(tenant_header="x-tenant-id")
    settings = base.model_copy(update={"tenants": {"frugal": TenantPolicy(models=("gpt-4o-mini",))}})
    sink = RecordingSink()
    handler = StreamHandler(snapshot(settings=settings), inline_classify, sink, sequential_ids(), fixed_clock())
    body = b'{"model":"llama-3.1-8b-instruct","messages":[]}'
    outside = await replay(handler, chat_headers(**{"x-tenant-id": "frugal"}), body)
    assert forwards_unchanged(outside[1])
    handler = StreamHandler(snapshot(settings=settings), inline_classify, sink, sequential_ids(), fixed_clock())
    inside = await replay(
        handler, chat_headers(**{"x-tenant-id": "frugal"}), body.replace(b"llama-3.1-8b-instruct", b"gpt-4o-mini")
    )
    assert cluster_of(inside[1]) == "cheap"


async def test_an_error_after_the_decision_leaves_no_decision_to_announce() -> None:
    """The body answer after an internal error is a plain continue, so the request goes on unrouted: its response
    must not get the discarded decision's headers, and the stream must not wait for them."""

    class FailingSink(RecordingSink):
        def record(self, rec: DecisionRecord) -> None:
            raise RuntimeError("sink failed")

    snap = snapshot(settings=with_section(demo_settings(), "server", decision_headers_on_response=True))
    handler = StreamHandler(snap, inline_classify, FailingSink(), sequential_ids(), fixed_clock())
    (_, body_answer) = await replay(handler, chat_headers(), CHAT)
    assert forwards_unchanged(body_answer, outcome=None)
    assert handler.done and handler.record is None
    (response,) = await handler.handle(pb.ProcessingRequest(response_headers=pb.HttpHeaders()))
    assert not response.response_headers.ListFields()
