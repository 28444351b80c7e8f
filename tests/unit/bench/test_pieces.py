"""The bench upstream's framing, the no-op server's splice, the workload's body shape and the memory reading."""

from __future__ import annotations

import os

import orjson
import yaml

from bench.noop_extproc import splice_model
from bench.procstat import resident_kib
from bench.upload_burst import _patch
from bench.upstream import _content_length
from bench.workload import chat_body
from devstack.stack import ENVOY_DIR


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


def test_resident_memory_follows_what_the_process_touches() -> None:
    before = resident_kib(os.getpid())
    block = bytearray(b"\x01") * (64 << 20)  # every page written
    assert resident_kib(os.getpid()) - before >= 48 << 10
    del block


def test_the_burst_comparison_changes_only_what_it_says() -> None:
    shipped = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    for overload, buffer in [(True, None), (False, None), (True, 4 << 20)]:
        cfg = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
        _patch(overload, buffer)(cfg)
        listener = cfg["static_resources"]["listeners"][0]
        assert ("overload_manager" in cfg) is overload
        assert listener["per_connection_buffer_limit_bytes"] == (buffer or 256 << 10)
        listener["per_connection_buffer_limit_bytes"] = 256 << 10
        cfg.setdefault("overload_manager", shipped["overload_manager"])
        assert cfg == shipped
