"""The Responses API and Anthropic Messages through the real Envoy: routed by the last user turn, only ``model`` changed
at the upstream, streaming through the official SDKs, image parts intact, and the fake upstream's shapes accepted by
the SDKs' own (strict) models."""

from __future__ import annotations

import base64

import anthropic
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from devstack.stack import Stack
from tests.integration.test_routing import EASY, HARD, last_received, post, received_body

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "test-key"}
IMAGE_B64 = base64.b64encode(bytes(range(256)) * 1024).decode()  # 256 KiB, every byte value
"""Stands in for a real image: the router never decodes it, and every byte must arrive."""


def only_model_changed(sent: bytes, got: bytes, new_model: str) -> bool:
    """``got`` is ``sent`` with the top-level ``"model":"auto"`` replaced by ``new_model`` and nothing else."""
    assert sent.count(b'"model":"auto"') == 1
    return got == sent.replace(b'"model":"auto"', b'"model":' + orjson.dumps(new_model))


def openai_client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="test-key", max_retries=0)


def anthropic_client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key="test-key", max_retries=0)


# --- OpenAI Responses API -----------------------------------------------------------------------------------------


def test_responses_easy_prompt_routed_with_only_model_changed(stack: Stack) -> None:
    sent = (
        b'{"model":"auto","instructions":"You are terse.","input":[{"role":"user","content":"earlier turn"},'
        b'{"type":"message","role":"assistant","content":[{"type":"output_text","text":"ok","annotations":[]}]},'
        b'{"role":"user","content":[{"type":"input_text","text":' + orjson.dumps(EASY) + b"}]}],"
        b'"temperature":1.0,"x_vendor":{"model":"keep","n":[1e5,-0.0]},"seed":12345678901234567,'
        b'"max_output_tokens":64}'
    )
    r = post(stack, sent, RESPONSES)
    assert r.status_code == 200, r.text
    cluster, model = r.headers["x-upstream-cluster"], r.headers["x-upstream-model"]
    assert cluster in ("small", "cheap")
    assert only_model_changed(sent, received_body(stack, cluster), model)
    assert last_received(stack, cluster)["path"] == RESPONSES
    assert (r.headers["x-model-router-model"], r.headers["x-model-router-tier"]) == (model, cluster)
    response = Response.model_validate(r.json(), strict=True)
    assert response.object == "response" and response.model == model
    assert response.output_text == f"answer from {model} on cluster {cluster}"
    assert response.usage is not None and response.usage.total_tokens > 0


def test_responses_sdk_hard_prompt_goes_frontier(stack: Stack) -> None:
    with openai_client(stack) as client:
        raw = client.responses.with_raw_response.create(model="auto", instructions="Be rigorous.", input=HARD)
    response = raw.parse()
    assert (raw.headers["x-upstream-cluster"], response.model) == ("frontier", "gpt-4o")
    assert response.output_text == "answer from gpt-4o on cluster frontier"


def test_responses_sdk_streaming(stack: Stack) -> None:
    with openai_client(stack) as client:
        events = list(client.responses.create(model="auto", input=EASY, stream=True))
    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event.model_dump(mode="json", exclude_unset=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.model in ("llama-3.1-8b-instruct", "gpt-4o-mini")
    assert deltas == final.response.output_text
    assert deltas.startswith(f"answer from {final.response.model} on cluster ")


def test_responses_tool_turn_is_classified_by_its_output(stack: Stack) -> None:
    """An agent continuing by previous_response_id sends only the tool's output: classified by it, not sent to the
    default (frontier) model as a turn with nothing to classify."""
    with openai_client(stack) as client:
        raw = client.responses.with_raw_response.create(
            model="auto",
            previous_response_id="resp_1",
            input=[{"type": "function_call_output", "call_id": "call_1", "output": EASY}],
        )
    assert raw.headers["x-upstream-cluster"] in ("small", "cheap")
    assert raw.parse().model == raw.headers["x-model-router-model"]


def test_responses_image_part_arrives_intact(stack: Stack) -> None:
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{IMAGE_B64}", "detail": "auto"}
    sent = orjson.dumps(
        {"model": "auto", "input": [{"role": "user", "content": [{"type": "input_text", "text": EASY}, image]}]}
    )
    r = post(stack, sent, RESPONSES)
    assert r.status_code == 200, r.text
    got = received_body(stack, r.headers["x-upstream-cluster"])
    assert only_model_changed(sent, got, r.headers["x-upstream-model"])
    assert orjson.loads(got)["input"][0]["content"][1] == image


def test_responses_non_routable_model_is_untouched(stack: Stack) -> None:
    sent = orjson.dumps({"model": "gpt-4o-mini", "input": HARD})
    r = post(stack, sent, RESPONSES)
    assert r.status_code == 200
    assert r.headers["x-upstream-cluster"] == "cheap"  # the catalog model's own cluster, not the router's choice
    assert received_body(stack, "cheap") == sent
    assert "x-model-router-decision-id" not in r.headers


# --- Anthropic Messages -------------------------------------------------------------------------------------------


def test_messages_easy_prompt_routed_with_only_model_changed(stack: Stack) -> None:
    sent = (
        b'{"model":"auto","max_tokens":1024,"system":[{"type":"text","text":"You are terse.",'
        b'"cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"earlier turn"},'
        b'{"role":"assistant","content":[{"type":"text","text":"ok"}]},'
        b'{"role":"user","content":[{"type":"text","text":' + orjson.dumps(EASY) + b"}]}],"
        b'"temperature":1.0,"top_k":40,"metadata":{"user_id":"u-1"},"x_vendor":{"model":"keep","n":[1e5,-0.0]}}'
    )
    r = post(stack, sent, MESSAGES, **ANTHROPIC_HEADERS)
    assert r.status_code == 200, r.text
    cluster, model = r.headers["x-upstream-cluster"], r.headers["x-upstream-model"]
    assert cluster in ("small", "cheap")
    assert only_model_changed(sent, received_body(stack, cluster), model)
    received = last_received(stack, cluster)
    assert received["path"] == MESSAGES
    assert received["headers"]["anthropic-version"] == "2023-06-01"  # type: ignore[index]
    message = Message.model_validate(r.json(), strict=True)
    assert (message.type, message.role, message.model, message.stop_reason) == (
        "message",
        "assistant",
        model,
        "end_turn",
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == f"answer from {model} on cluster {cluster}"


def test_anthropic_sdk_hard_prompt_goes_frontier(stack: Stack) -> None:
    with anthropic_client(stack) as client:
        raw = client.messages.with_raw_response.create(
            model="auto", max_tokens=512, system="Be rigorous.", messages=[{"role": "user", "content": HARD}]
        )
    message = raw.parse()
    assert (raw.headers["x-upstream-cluster"], message.model) == ("frontier", "gpt-4o")
    assert message.content[0].type == "text"
    assert message.content[0].text == "answer from gpt-4o on cluster frontier"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_anthropic_sdk_streaming(stack: Stack) -> None:
    with anthropic_client(stack) as client:
        events = list(
            client.messages.create(
                model="auto", max_tokens=512, messages=[{"role": "user", "content": EASY}], stream=True
            )
        )
        with client.messages.stream(
            model="auto", max_tokens=512, messages=[{"role": "user", "content": EASY}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    for event in events:
        adapter.validate_python(event.model_dump(mode="json", exclude_unset=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert final.model in ("llama-3.1-8b-instruct", "gpt-4o-mini")
    cluster = "small" if final.model == "llama-3.1-8b-instruct" else "cheap"
    block = final.content[0]
    assert block.type == "text"
    assert text == block.text == f"answer from {final.model} on cluster {cluster}"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_messages_image_block_arrives_intact(stack: Stack) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_B64}}
    sent = orjson.dumps(
        {
            "model": "auto",
            "max_tokens": 256,
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": EASY}]}],
        }
    )
    r = post(stack, sent, MESSAGES, **ANTHROPIC_HEADERS)
    assert r.status_code == 200, r.text
    got = received_body(stack, r.headers["x-upstream-cluster"])
    assert only_model_changed(sent, got, r.headers["x-upstream-model"])
    assert orjson.loads(got)["messages"][0]["content"][0] == image


@pytest.mark.parametrize(
    ("question", "result", "clusters"),
    [
        pytest.param(EASY, EASY, {"small", "cheap"}, id="easy-tool-result-after-easy-question"),
        pytest.param(EASY, HARD, {"frontier"}, id="hard-tool-result-after-easy-question"),
        pytest.param(HARD, EASY, {"frontier"}, id="easy-tool-result-after-hard-question-keeps-its-floor"),
        pytest.param(HARD, "", {"frontier"}, id="empty-tool-result-reads-previous-user-turn"),
    ],
)
def test_anthropic_sdk_tool_result_turn_is_routed_by_its_text(
    stack: Stack, question: str, result: str, clusters: set[str]
) -> None:
    """The tool result's text is classified; the task (the first user turn) is the conversation's floor."""
    with anthropic_client(stack) as client:
        raw = client.messages.with_raw_response.create(
            model="auto",
            max_tokens=256,
            messages=[
                {"role": "user", "content": question},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]},
            ],
        )
    assert raw.headers["x-upstream-cluster"] in clusters


def test_anthropic_errors_keep_the_anthropic_shape(stack: Stack) -> None:
    with anthropic_client(stack) as client, pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="claude-x", max_tokens=0, messages=[], extra_body={"model": None})
    assert err.value.status_code == 400
    assert err.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "you must provide a model parameter"},
    }


def test_messages_non_routable_model_is_untouched(stack: Stack) -> None:
    sent = orjson.dumps(
        {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": HARD}]}
    )
    r = post(stack, sent, MESSAGES, **ANTHROPIC_HEADERS)
    assert r.status_code == 404  # not in the catalog: the default route, whose provider does not serve it
    assert r.json()["error"] == {"type": "not_found_error", "message": "model: claude-sonnet-4-5"}
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert received_body(stack, "frontier") == sent
    assert "x-model-router-model" not in r.headers


def test_anthropic_sdk_counts_tokens_with_the_alias(stack: Stack) -> None:
    """A client set to "auto" counts tokens with it too (agents such as Claude Code call it): the count reaches the
    default model's provider as that model, not as "auto" (a 404 there), and nothing is decided."""
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": HARD}]
    with anthropic_client(stack) as client:
        raw = client.messages.with_raw_response.count_tokens(model="auto", system="Be rigorous.", messages=messages)
    assert raw.parse().input_tokens > 0
    assert (raw.headers["x-upstream-cluster"], raw.headers["x-upstream-model"]) == ("frontier", "gpt-4o")
    assert last_received(stack, "frontier")["path"] == "/v1/messages/count_tokens"
    assert "x-model-router-decision-id" not in raw.headers  # nothing to give feedback on


def test_openai_sdk_counts_input_tokens_with_the_alias(stack: Stack) -> None:
    with openai_client(stack) as client:
        raw = client.responses.input_tokens.with_raw_response.count(model="auto", input=EASY)
    count = raw.parse()
    assert count.object == "response.input_tokens" and count.input_tokens > 0
    assert (raw.headers["x-upstream-cluster"], raw.headers["x-upstream-model"]) == ("frontier", "gpt-4o")
    sent = orjson.loads(received_body(stack, "frontier"))
    assert sent == {"model": "gpt-4o", "input": EASY}


def test_a_token_count_for_a_catalog_model_goes_to_its_cluster(stack: Stack) -> None:
    sent = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": EASY}]})
    r = post(stack, sent, "/v1/messages/count_tokens", **ANTHROPIC_HEADERS)
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream-cluster"] == "cheap" and received_body(stack, "cheap") == sent


def test_other_subpaths_pass_through(stack: Stack) -> None:
    sent = orjson.dumps({"requests": [{"custom_id": "a", "params": {"model": "auto", "max_tokens": 9}}]})
    r = post(stack, sent, "/v1/messages/batches", **ANTHROPIC_HEADERS)
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert received_body(stack, "frontier") == sent
