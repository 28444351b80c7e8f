"""The bench upstream's framing, the no-op server's splice and the workload's body shape."""

from __future__ import annotations

import orjson

from bench.noop_extproc import splice_model
from bench.upstream import _content_length
from bench.workload import chat_body


def test_content_length_is_read_case_insensitively() -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nContent-Length: 42\r\ncontent-type: application/json"
    assert _content_length(head) == 42


def test_chunked_bodies_are_refused() -> None:
    assert _content_length(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked") is None


def test_chat_body_is_one_compact_line_for_routable_model() -> None:
    body = chat_body('say "hi"\nthen leave')
    assert b"\n" not in body
    assert orjson.loads(body) == {"model": "auto", "messages": [{"role": "user", "content": 'say "hi"\nthen leave'}]}
    assert b'"model":"auto"' in body  # what the upstream counts as "not rewritten"


def test_splice_model_changes_only_the_model_value() -> None:
    body = chat_body('the text says "model":"auto" too')
    spliced = splice_model(body)
    assert orjson.loads(spliced)["model"] == "gpt-4o-mini"
    assert orjson.loads(spliced)["messages"] == orjson.loads(body)["messages"]
