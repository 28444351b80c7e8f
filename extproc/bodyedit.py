"""Replace the top-level ``"model"`` string of a JSON body and leave every other byte as it was.

Re-serialising the whole body would reorder keys, change number formatting (``1.0``, ``1e5``, ``-0.0``) and
escapes; clients and upstreams may sign or hash bodies, so only the model value's bytes change.

For a body that has been parsed as a JSON object whose top-level ``model`` is a string (``parse_request``
guarantees it), the fast path: when ``"model"`` occurs exactly
once and the body has no ``\\u`` escape, that occurrence must be the top-level key (no other spelling of the key
exists, a nested key or a value would be a second occurrence). Otherwise a small tokenizer walks the top level. A
body nobody parsed (a form content type, a limit checked before parsing, JSON the parser refuses) gets only the walk,
which then also checks that the body is one whole object: a nested ``"model"`` or a body cut short is left alone.
"""

from __future__ import annotations

import re

import orjson

__all__ = ["JSON_STRING", "find_model_span", "replace_at", "replace_model", "rewrite_model"]

JSON_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
"""A JSON string, quotes included, in the unrolled form: one regex step per escape, not one per character."""

_KEY = b'"model"'
_BOM = b"\xef\xbb\xbf"
_AFTER_KEY = re.compile(rb"\s*:\s*(" + JSON_STRING + rb")", re.DOTALL)
_TOKEN = re.compile(JSON_STRING + rb"|[{}\[\]:,]", re.DOTALL)
_MAX_SCAN_TOKENS = 200_000
"""The slow path gives up (the body is forwarded untouched) after this many tokens, ≈0.1 s of the event loop: only
bodies built to be slow get there (a chat body with 2,000 messages has a few tens of thousands)."""


def _value_span_after(raw: bytes, key_end: int) -> tuple[int, int] | None:
    match = _AFTER_KEY.match(raw, key_end)
    return match.span(1) if match else None


def _is_model_key(key: bytes) -> bool:
    """``key`` (a JSON string token) spells "model", escapes included; a key the parser would refuse does not."""
    try:
        return bool(orjson.loads(key) == "model")
    except orjson.JSONDecodeError:
        return False


def _scan_top_level(raw: bytes, whole: bool) -> tuple[int, int] | None:
    """Walk the tokens of a JSON object; return the span of the single top-level model string value. ``whole``: the
    body was not parsed, so the walk checks what the parser would have: one object from the first byte (after a
    byte order mark) to the last, brackets balanced, no string left open."""
    depth = 0
    spans: list[tuple[int, int]] = []
    expect_key = False
    end = raw.startswith(_BOM) * len(_BOM)
    for count, token in enumerate(_TOKEN.finditer(raw)):
        if count == _MAX_SCAN_TOKENS:
            return None
        if whole:
            if (count > 0 and depth == 0) or raw.find(b'"', end, token.start()) != -1:
                return None  # a second top-level value, or a quote that opens no whole string
            if count == 0 and (token.group() != b"{" or raw[end : token.start()].strip()):
                return None  # not an object
            end = token.end()
        text = token.group()
        first = text[:1]
        if first in (b"{", b"["):
            depth += 1
            expect_key = first == b"{" and depth == 1
        elif first in (b"}", b"]"):
            depth -= 1
        elif first == b",":
            expect_key = depth == 1
        elif first == b":":
            pass
        elif depth == 1 and expect_key:
            expect_key = False
            if _is_model_key(text):
                span = _value_span_after(raw, token.end())
                if span is None:
                    return None  # the top-level model is not a string
                spans.append(span)
    if whole and (depth != 0 or raw[end:].strip()):
        return None  # cut short, or something after the object
    return spans[0] if len(spans) == 1 else None


def find_model_span(raw: bytes, parsed: bool = True) -> tuple[int, int] | None:
    """Byte span of the top-level ``model`` string value, quotes included; None if absent, ambiguous, not a string,
    or too costly to find. ``parsed=False`` for a body that was not parsed as a JSON object (module docstring)."""
    if parsed and raw.count(_KEY) == 1 and b"\\u" not in raw:
        start = raw.index(_KEY)
        return _value_span_after(raw, start + len(_KEY))
    return _scan_top_level(raw, whole=not parsed)


def rewrite_model(raw: bytes, new_model: str) -> tuple[bytes, tuple[int, int]] | None:
    """``raw`` with the top-level model value replaced, and the new value's byte span (quotes included); None when
    it cannot be done unambiguously. The span lets Envoy's fallback filter swap the value again without a parser."""
    span = find_model_span(raw)
    return None if span is None else replace_at(raw, span, new_model)


def replace_at(raw: bytes, span: tuple[int, int], new_model: str) -> tuple[bytes, tuple[int, int]]:
    """``raw`` with the value at ``span`` (from :func:`find_model_span`) replaced, and the new value's span."""
    start, end = span
    value = orjson.dumps(new_model)
    return raw[:start] + value + raw[end:], (start, start + len(value))


def replace_model(raw: bytes, new_model: str) -> bytes | None:
    """``raw`` with the top-level model value replaced, or None when it cannot be done unambiguously."""
    rewritten = rewrite_model(raw, new_model)
    return rewritten[0] if rewritten else None
