"""A fake OpenAI-compatible upstream LLM for one Envoy cluster.

It speaks the real response shapes (chat.completion, text_completion, SSE chunks ending in ``data: [DONE]``,
error objects), answers with which cluster and model it received, and keeps what it received so tests can check
every byte: each response carries ``x-upstream-cluster``, ``x-upstream-model`` and ``x-upstream-body-sha256``,
and ``GET /_received`` returns the last bodies (base64) with their headers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import time
from collections import deque
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


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return web.json_response(body, status=status)


def _usage(prompt_chars: int, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = prompt_chars // 4 + 1
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _llm(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    cluster = request.app[_CLUSTER]
    request.app[_RECEIVED].append(
        {"path": request.path, "headers": dict(request.headers), "body_b64": base64.b64encode(raw).decode()}
    )
    digest = hashlib.sha256(raw).hexdigest()
    fail = request.app[_FAIL].get("status", 0)
    if fail:
        return _error(fail, f"fake upstream {cluster} configured to fail", "upstream_failure")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.", "invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(400, "you must provide a model parameter", "missing_model")
    expected = request.headers.get(EXPECT_HEADER)
    if expected is not None and digest_without_model(raw) != expected:
        return _error(422, "body bytes outside `model` differ from what the client sent", "body_corrupted")
    model = body["model"]
    headers = {"x-upstream-cluster": cluster, "x-upstream-model": model, "x-upstream-body-sha256": digest}
    text = f"answer from {model} on cluster {cluster}"
    created = int(time.time())
    chat = request.path.endswith("/chat/completions")
    if body.get("stream") is True:
        return await _stream(request, body, headers, text, created, chat, len(raw))
    usage = _usage(len(raw), len(text.split()))
    if chat:
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{digest[:24]}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    else:
        payload = {
            "id": f"cmpl-{digest[:24]}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        }
    return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=headers)


async def _stream(
    request: web.Request,
    body: dict[str, Any],
    headers: dict[str, str],
    text: str,
    created: int,
    chat: bool,
    raw_len: int,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    model = body["model"]
    words = text.split(" ")
    ident = f"chatcmpl-{headers['x-upstream-body-sha256'][:24]}"

    def chunk(delta: dict[str, Any] | None, finish: str | None, piece: str = "") -> bytes:
        if chat:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
            }
        else:
            payload = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}],
            }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    await response.write(chunk({"role": "assistant", "content": ""}, None))
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        await response.write(chunk({"content": piece}, None, piece))
        await asyncio.sleep(0)
    await response.write(chunk({}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        usage_chunk = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(raw_len, len(words)),
        }
        await response.write(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _received(request: web.Request) -> web.Response:
    received: deque[dict[str, Any]] = request.app[_RECEIVED]
    return web.json_response(list(received))


async def _set_fail(request: web.Request) -> web.Response:
    request.app[_FAIL]["status"] = int(request.query.get("status", "0"))
    return web.json_response({"status": request.app[_FAIL]["status"]})


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


@web.middleware
async def _tag_cluster(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer, errors included, says which cluster gave it (streams set it before preparing)."""
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers["x-upstream-cluster"] = request.app[_CLUSTER]
    return response


def make_app(cluster: str, keep: int = 256) -> web.Application:
    """The fake upstream for ``cluster``, remembering the last ``keep`` requests."""
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_tag_cluster])
    app[_CLUSTER] = cluster
    app[_RECEIVED] = deque(maxlen=keep)
    app[_FAIL] = {}
    app.router.add_post("/v1/chat/completions", _llm)
    app.router.add_post("/v1/completions", _llm)
    app.router.add_post("/{tail:.*}", _llm)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_received", _received)
    app.router.add_post("/_fail", _set_fail)
    return app


def main() -> None:
    """``python -m devstack.upstream --cluster NAME --port N``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.cluster), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
