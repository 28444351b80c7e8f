"""Usage from every upstream response shape, whole or split at any byte."""

from __future__ import annotations

import gzip

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


def _big_chat_json(content: str, usage: dict[str, int] | None) -> bytes:
    body: dict[str, object] = {"object": "chat.completion", "choices": [{"message": {"content": content}}]}
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_json_over_the_cap_keeps_only_its_tail_and_reads_the_usage_there(chunk: int) -> None:
    """Long outputs, ``n > 1`` or logprobs push JSON answers past the cap; their usage (after the output) is still
    read, and memory stays bounded by the tail."""
    body = _big_chat_json("x" * (3 << 20), {"prompt_tokens": 12, "completion_tokens": 7})
    scanner = UsageScanner()
    for i in range(0, len(body), chunk):
        scanner.feed(body[i : i + chunk])
        assert len(scanner._buffer) <= 1 << 20 and len(scanner._tail or b"") <= 64 * 1024
    assert scanner.finish() == Usage(12, 7)
    assert scanner.unreadable, "read from the tail: the body itself was never whole"


@pytest.mark.parametrize(
    "content",
    [
        'the text says "usage": {"prompt_tokens": 99, "completion_tokens": 99} in quotes',  # escaped in JSON
        "usage",
    ],
)
def test_usage_in_the_output_text_is_not_mistaken_for_the_key(content: str) -> None:
    with_usage = _big_chat_json(content + "y" * 5000, {"prompt_tokens": 12, "completion_tokens": 7})
    assert _feed(with_usage, 999, UsageScanner(max_json_bytes=1024)) == Usage(12, 7)
    scanner = UsageScanner(max_json_bytes=1024)
    assert _feed(_big_chat_json("y" * 5000 + content, None), 999, scanner) is None
    assert scanner.unreadable, "no usage in an oversized body: the caller counts it"
    value_not_key = orjson.dumps({"pad": "y" * 5000, "kind": "usage", "n": 1})
    assert _feed(value_not_key, 999, UsageScanner(max_json_bytes=1024)) is None


def _feed(body: bytes, chunk: int, scanner: UsageScanner | None = None) -> Usage | None:
    scanner = scanner or UsageScanner()
    for i in range(0, len(body), chunk):
        scanner.feed(body[i : i + chunk])
    return scanner.finish()


@pytest.mark.parametrize(
    "body",
    [
        b"\n \r\n" + CHAT_JSON,  # whitespace first
        b"\xef\xbb\xbf" + CHAT_JSON,  # BOM
        b"id: 1\n" + CHAT_SSE,  # SSE may start with any field
        b"retry: 1000\n" + CHAT_SSE,
        b"\xef\xbb\xbf" + CHAT_SSE,
        CHAT_SSE.replace(b"\n", b"\r"),  # CR-only line ends
        CHAT_SSE.replace(b"\n", b"\r\n"),
        gzip.compress(CHAT_JSON),  # what the OpenAI SDK's Accept-Encoding: gzip gets back
        gzip.compress(ANTHROPIC_SSE),
    ],
    ids=["whitespace", "bom-json", "sse-id", "sse-retry", "bom-sse", "cr", "crlf", "gzip-json", "gzip-sse"],
)
@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_every_legal_shape_of_the_response(body: bytes, chunk: int) -> None:
    assert _feed(body, chunk) == Usage(12, 7)


def test_a_line_over_the_cap_is_dropped_whole_and_the_next_one_read() -> None:
    huge = b'data: {"usage":{"prompt_tokens":99,"completion_tokens":99},"pad":"' + b"x" * 5000 + b'"}\n'
    assert _feed(huge + CHAT_SSE, 700, UsageScanner(max_json_bytes=1024)) == Usage(12, 7)
    cut = b'data: {"usage":{"prompt_tokens":12,"completion_tokens":7}, "x":' + b"1" * 5000 + b"}\n"
    assert _feed(cut, 700, UsageScanner(max_json_bytes=1024)) is None, "never parsed from a cut line"


def test_a_gzip_bomb_gives_no_usage_and_holds_no_memory() -> None:
    bomb = gzip.compress(b"{" + b" " * (64 << 20) + b'"usage":{"prompt_tokens":1,"completion_tokens":1}}')
    scanner = UsageScanner()
    for i in range(0, len(bomb), 16384):
        scanner.feed(bomb[i : i + 16384])
        assert len(scanner._buffer) <= 1 << 20
    assert scanner.finish() is None
    assert scanner.unreadable


def test_corrupt_gzip_gives_no_usage() -> None:
    scanner = UsageScanner()
    assert _feed(b"\x1f\x8b" + b"not gzip at all" * 10, 4, scanner) is None
    assert scanner.unreadable


@pytest.mark.parametrize("body", [CHAT_JSON, b'{"object":"chat.completion"}', CHAT_SSE, b"data: [DONE]\n\n"])
def test_a_body_read_whole_is_not_unreadable(body: bytes) -> None:
    scanner = UsageScanner()
    _feed(body, 5, scanner)
    assert not scanner.unreadable


def test_megabytes_of_leading_whitespace_are_not_buffered() -> None:
    scanner = UsageScanner()
    for _ in range(256):
        scanner.feed(b"\n" * 65536)
        assert len(scanner._head) == len(scanner._buffer) == 0
    scanner.feed(CHAT_JSON)
    assert scanner.finish() == Usage(12, 7)
