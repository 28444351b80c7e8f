"""A fake upstream LLM for one Envoy cluster, speaking the OpenAI and Anthropic wire formats.

It answers with the real response shapes of each API, JSON and SSE: Chat Completions (``chat.completion``, chunks
ending in ``data: [DONE]``), legacy Completions (``text_completion``), the Responses API (``object: "response"``,
``event: response.*`` SSE events) and Anthropic Messages (``type: "message"``, ``event: message_start`` ...
``message_stop``), and the token counts of the Responses API (``response.input_tokens``) and Anthropic
(``/v1/messages/count_tokens``), with each API's error object. It answers with which cluster and model it received,
and keeps what it received so tests can check every byte: each response carries ``x-upstream-cluster``,
``x-upstream-model`` and ``x-upstream-body-sha256``, and ``GET /_received`` returns the last bodies (base64) with
their headers. ``POST /_fail?status=N`` makes every API request fail with status N (``0`` heals); ``POST
/_cut?after=N`` makes every stream reset its connection after N events (``0`` heals); ``POST /_hold?after=N`` makes
every stream wait after N events until ``POST /_hold?after=0`` releases them (a response still streaming, for as long
as a test needs); ``POST /_headers`` with a JSON object adds those headers to every API answer (``{}`` heals: an
upstream that sends headers of the router's own names). Started with ``--models``, it serves only those names, as a
real provider does: any other model is a 404 (``model_not_found``), so a request that reaches the wrong cluster, or
the literal ``auto``, fails here as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import enum
import hashlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from extproc.bodyedit import find_model_span

__all__ = ["EXPECT_HEADER", "digest_without_model", "main", "make_app"]

EXPECT_HEADER = "x-expect-sha256-without-model"
"""A client may send the SHA-256 of its body with the model value blanked; the upstream then checks every other
byte arrived unchanged and answers 422 ``body_corrupted`` if not (used by the soak)."""


def digest_without_model(raw: bytes) -> str:
    """SHA-256 of ``raw`` with the top-level model string replaced by ``""`` (raw must be a routable JSON body)."""
    span = find_model_span(raw)
    if span is None:
        return hashlib.sha256(raw).hexdigest()
    return hashlib.sha256(raw[: span[0]] + b'""' + raw[span[1] :]).hexdigest()


_RECEIVED: web.AppKey[deque[dict[str, Any]]] = web.AppKey("received")
_CLUSTER: web.AppKey[str] = web.AppKey("cluster")
_FAIL: web.AppKey[dict[str, int]] = web.AppKey("fail")
_MODELS: web.AppKey[frozenset[str] | None] = web.AppKey("models")
_RELEASE: web.AppKey[asyncio.Event] = web.AppKey("release")
_EXTRA_HEADERS: web.AppKey[dict[str, str]] = web.AppKey("extra_headers")

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class Api(enum.Enum):
    """The wire format of a request, by path."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    RESPONSES = "responses"
    MESSAGES = "messages"
    INPUT_TOKENS = "input_tokens"
    COUNT_TOKENS = "count_tokens"

    @classmethod
    def of(cls, path: str) -> Api:
        """The API a path belongs to (anything unknown is answered as legacy Completions)."""
        for suffix, api in _SUFFIXES:
            if path.endswith(suffix):
                return api
        return cls.COMPLETIONS

    @property
    def anthropic(self) -> bool:
        """Answered in Anthropic's shapes (errors included)."""
        return self in (Api.MESSAGES, Api.COUNT_TOKENS)


_SUFFIXES = (
    ("/chat/completions", Api.CHAT),
    ("/responses", Api.RESPONSES),
    ("/messages", Api.MESSAGES),
    ("/responses/input_tokens", Api.INPUT_TOKENS),
    ("/messages/count_tokens", Api.COUNT_TOKENS),
)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the fake model answers to one request."""

    model: str
    text: str
    ident: str
    created: int
    input_tokens: int

    @property
    def words(self) -> list[str]:
        """The text in streaming pieces (a leading space on every piece but the first)."""
        parts = self.text.split(" ")
        return [p if i == 0 else " " + p for i, p in enumerate(parts)]

    @property
    def output_tokens(self) -> int:
        """One token per word."""
        return len(self.words)


_STREAMED = (Api.CHAT, Api.COMPLETIONS, Api.RESPONSES, Api.MESSAGES)
"""The APIs that answer ``"stream": true`` with SSE (a token count answers JSON whatever the body says)."""


def _error(api: Api, status: int, message: str, code: str) -> web.Response:
    if api.anthropic:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def _openai_usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _chat(answer: Answer) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{answer.ident}",
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _openai_usage(answer),
    }


def _completion(answer: Answer) -> dict[str, Any]:
    return {
        "id": f"cmpl-{answer.ident}",
        "object": "text_completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [{"index": 0, "text": answer.text, "logprobs": None, "finish_reason": "stop"}],
        "usage": _openai_usage(answer),
    }


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _response_message(answer: Answer, done: bool) -> dict[str, Any]:
    return {
        "id": f"msg_{answer.ident}",
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": [_output_text(answer.text)] if done else [],
    }


def _response(answer: Answer, body: dict[str, Any], done: bool) -> dict[str, Any]:
    """A Responses API ``response`` object, completed or (for the first stream events) in progress."""
    return {
        "id": f"resp_{answer.ident}",
        "object": "response",
        "created_at": answer.created,
        "status": "completed" if done else "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": answer.model,
        "output": [_response_message(answer, done)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": answer.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": answer.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.input_tokens + answer.output_tokens,
        }
        if done
        else None,
        "user": None,
        "metadata": {},
    }


def _message(answer: Answer, done: bool) -> dict[str, Any]:
    """An Anthropic ``message`` object, complete or (in ``message_start``) with no content yet."""
    return {
        "id": f"msg_{answer.ident}",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [{"type": "text", "text": answer.text}] if done else [],
        "stop_reason": "end_turn" if done else None,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens if done else 1},
    }


Event = tuple[str | None, dict[str, Any] | str]
"""One SSE event: its ``event:`` name (None for data-only streams) and its data (a JSON object or a raw string)."""


def _chat_events(answer: Answer, body: dict[str, Any], chat: bool) -> Iterator[Event]:
    def chunk(delta: dict[str, Any], finish: str | None, piece: str = "") -> dict[str, Any]:
        choice: dict[str, Any] = (
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if chat
            else {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        )
        return {
            "id": f"chatcmpl-{answer.ident}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [choice],
        }

    yield None, chunk({"role": "assistant", "content": ""}, None)
    for piece in answer.words:
        yield None, chunk({"content": piece}, None, piece)
    yield None, chunk({}, "stop")
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        yield None, {**chunk({}, None), "choices": [], "usage": _openai_usage(answer)}
    yield None, "[DONE]"


def _responses_events(answer: Answer, body: dict[str, Any]) -> Iterator[Event]:
    item = f"msg_{answer.ident}"
    at = {"item_id": item, "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response(answer, body, done=False)}),
        ("response.in_progress", {"response": _response(answer, body, done=False)}),
        ("response.output_item.added", {"output_index": 0, "item": _response_message(answer, done=False)}),
        ("response.content_part.added", {**at, "part": _output_text("")}),
        *(("response.output_text.delta", {**at, "delta": piece, "logprobs": []}) for piece in answer.words),
        ("response.output_text.done", {**at, "text": answer.text, "logprobs": []}),
        ("response.content_part.done", {**at, "part": _output_text(answer.text)}),
        ("response.output_item.done", {"output_index": 0, "item": _response_message(answer, done=True)}),
        ("response.completed", {"response": _response(answer, body, done=True)}),
    ]
    for sequence, (name, data) in enumerate(events):
        yield name, {"type": name, "sequence_number": sequence, **data}


def _messages_events(answer: Answer) -> Iterator[Event]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": _message(answer, done=False)}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
        *(
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
            for piece in answer.words
        ),
        ("content_block_stop", {"index": 0}),
        (
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": answer.output_tokens},
            },
        ),
        ("message_stop", {}),
    ]
    for name, data in events:
        yield name, {"type": name, **data}


async def _stream(request: web.Request, headers: dict[str, str], events: Iterator[Event]) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    cut_after, hold_after = request.app[_FAIL].get("cut_after", 0), request.app[_FAIL].get("hold_after", 0)
    for i, (name, data) in enumerate(events):
        if cut_after and i == cut_after and request.transport is not None:
            request.transport.abort()  # a provider that crashes mid-answer: a reset, no end of stream
            return response
        if hold_after and i == hold_after:
            await request.app[_RELEASE].wait()
        payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
        line = b"data: " + payload + b"\n\n"
        await response.write(line if name is None else b"event: " + name.encode() + b"\n" + line)
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def _llm(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    cluster = request.app[_CLUSTER]
    api = Api.of(request.path)
    request.app[_RECEIVED].append(
        {
            "path": request.path,
            "raw_path": request.raw_path,  # as sent, escapes kept
            "headers": dict(request.headers),
            "body_b64": base64.b64encode(raw).decode(),
        }
    )
    digest = hashlib.sha256(raw).hexdigest()
    fail = request.app[_FAIL].get("status", 0)
    if fail:
        return _error(api, fail, f"fake upstream {cluster} configured to fail", "upstream_failure")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(api, 400, "We could not parse the JSON body of your request.", "invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(api, 400, "you must provide a model parameter", "missing_model")
    expected = request.headers.get(EXPECT_HEADER)
    if expected is not None and digest_without_model(raw) != expected:
        return _error(api, 422, "body bytes outside `model` differ from what the client sent", "body_corrupted")
    model = body["model"]
    served = request.app[_MODELS]
    if served is not None and model not in served:
        message = (
            f"model: {model}"
            if api.anthropic
            else f"The model `{model}` does not exist or you do not have access to it."
        )
        return _error(api, 404, message, "model_not_found")
    headers = {"x-upstream-cluster": cluster, "x-upstream-model": model, "x-upstream-body-sha256": digest}
    extra: dict[str, str] = request.app[_EXTRA_HEADERS]
    headers.update(extra)
    answer = Answer(
        model=model,
        text=f"answer from {model} on cluster {cluster}",
        ident=digest[:24],
        created=int(time.time()),
        input_tokens=len(raw) // 4 + 1,
    )
    if body.get("stream") is True and api in _STREAMED:
        match api:
            case Api.RESPONSES:
                events = _responses_events(answer, body)
            case Api.MESSAGES:
                events = _messages_events(answer)
            case _:
                events = _chat_events(answer, body, chat=api is Api.CHAT)
        return await _stream(request, headers, events)
    match api:
        case Api.CHAT:
            payload = _chat(answer)
        case Api.COMPLETIONS:
            payload = _completion(answer)
        case Api.RESPONSES:
            payload = _response(answer, body, done=True)
        case Api.MESSAGES:
            payload = _message(answer, done=True)
        case Api.COUNT_TOKENS:
            payload = {"input_tokens": answer.input_tokens}
        case Api.INPUT_TOKENS:
            payload = {"object": "response.input_tokens", "input_tokens": answer.input_tokens}
    return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=headers)


async def _received(request: web.Request) -> web.Response:
    received: deque[dict[str, Any]] = request.app[_RECEIVED]
    return web.json_response(list(received))


async def _set_fail(request: web.Request) -> web.Response:
    request.app[_FAIL]["status"] = int(request.query.get("status", "0"))
    return web.json_response({"status": request.app[_FAIL]["status"]})


async def _set_cut(request: web.Request) -> web.Response:
    request.app[_FAIL]["cut_after"] = int(request.query.get("after", "0"))
    return web.json_response({"cut_after": request.app[_FAIL]["cut_after"]})


async def _set_headers(request: web.Request) -> web.Response:
    extra = await request.json()
    request.app[_EXTRA_HEADERS] = {str(k): str(v) for k, v in extra.items()}
    return web.json_response(request.app[_EXTRA_HEADERS])


async def _set_hold(request: web.Request) -> web.Response:
    hold_after = request.app[_FAIL]["hold_after"] = int(request.query.get("after", "0"))
    release = request.app[_RELEASE]
    release.clear() if hold_after else release.set()
    return web.json_response({"hold_after": hold_after})


async def _models(request: web.Request) -> web.Response:
    served = sorted(request.app[_MODELS] or ())
    owner = request.app[_CLUSTER]
    data = [{"id": m, "object": "model", "created": 0, "owned_by": owner} for m in served]
    return web.json_response({"object": "list", "data": data})


@web.middleware
async def _tag_cluster(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer, errors included, says which cluster gave it (streams set it before preparing)."""
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers["x-upstream-cluster"] = request.app[_CLUSTER]
        if not request.path.startswith("/_"):
            response.headers.update(request.app[_EXTRA_HEADERS])
    return response


def make_app(cluster: str, keep: int = 256, models: frozenset[str] | None = None) -> web.Application:
    """The fake upstream for ``cluster``, remembering the last ``keep`` requests; ``models``: the only names it
    serves (None: any)."""
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_tag_cluster])
    app[_CLUSTER] = cluster
    app[_MODELS] = models
    app[_RECEIVED] = deque(maxlen=keep)
    app[_FAIL] = {}
    app[_RELEASE] = asyncio.Event()
    app[_EXTRA_HEADERS] = {}
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_received", _received)
    app.router.add_post("/_fail", _set_fail)
    app.router.add_post("/_cut", _set_cut)
    app.router.add_post("/_hold", _set_hold)
    app.router.add_post("/_headers", _set_headers)
    app.router.add_post("/{tail:.*}", _llm)
    return app


def main() -> None:
    """``python -m devstack.upstream --cluster NAME --port N [--models A,B]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", default=None, help="comma-separated model names served (default: any)")
    args = parser.parse_args()
    models = frozenset(args.models.split(",")) if args.models is not None else None
    app = make_app(args.cluster, models=models)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
