"""Usage from every upstream response shape, whole or split at any byte."""

from __future__ import annotations

import orjson
import pytest

from extproc.usage import Usage, UsageScanner

CHAT_JSON = orjson.dumps({"object": "chat.completion", "usage": {"prompt_tokens": 12, "completion_tokens": 7}})
CHAT_SSE = (
    b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"hi"}}]}\n\n'
    b'data: {"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}\n\n'
    b"data: [DONE]\n\n"
)
ANTHROPIC_SSE = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"x"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n'
)
RESPONSES_SSE = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"x"}\n\n'
    b'event: response.completed\r\ndata: {"type":"response.completed","response":{"usage":'
    b'{"input_tokens":12,"output_tokens":7,"total_tokens":19}}}\r\n\r\n'
)


@pytest.mark.parametrize(
    "body", [CHAT_JSON, CHAT_SSE, ANTHROPIC_SSE, RESPONSES_SSE], ids=["json", "sse", "anthropic", "responses"]
)
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_usage_found_whatever_the_chunking(body: bytes, chunk: int) -> None:
    scanner = UsageScanner()
    for i in range(0, len(body), chunk):
        scanner.feed(body[i : i + chunk])
    assert scanner.finish() == Usage(12, 7)


@pytest.mark.parametrize(
    "body",
    [b'{"object":"chat.completion"}', b"data: [DONE]\n\n", b"not json", b'{"usage":{"prompt_tokens":"many"}}', b""],
)
def test_no_usage(body: bytes) -> None:
    scanner = UsageScanner()
    scanner.feed(body)
    assert scanner.finish() is None


def test_json_over_cap_is_dropped_not_buffered() -> None:
    scanner = UsageScanner(max_json_bytes=16)
    scanner.feed(CHAT_JSON)
    assert scanner.finish() is None
