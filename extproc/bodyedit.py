"""Replace the top-level ``"model"`` string of a JSON body and leave every other byte as it was.

Re-serialising the whole body would reorder keys, change number formatting (``1.0``, ``1e5``, ``-0.0``) and
escapes; clients and upstreams may sign or hash bodies, so only the model value's bytes change.

For a body that has been parsed as a JSON object whose top-level ``model`` is a string (``parse_request``
guarantees it), the fast path: when ``"model"`` occurs exactly
once and the body has no ``\\u`` escape, that occurrence must be the top-level key (no other spelling of the key
exists, a nested key or a value would be a second occurrence). Otherwise a small tokenizer walks the top level. A
body nobody parsed (a form content type, a limit checked before parsing, JSON the parser refuses) must first be one
whole object (:func:`_whole_object_model_span`): a nested ``"model"`` or a body cut short is left alone.
"""

from __future__ import annotations

import re

import numpy as np
import orjson

__all__ = ["JSON_STRING", "find_model_span", "replace_at", "replace_model", "rewrite_model"]

JSON_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
"""A JSON string, quotes included, in the unrolled form: one regex step per escape, not one per character."""

_KEY = b'"model"'
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
_QUOTE = ord('"')
_OPENERS = np.frombuffer(b"{[", dtype=np.uint8)
_BRACKETS = np.frombuffer(b"{[]}", dtype=np.uint8)
_LONGEST_MODEL_KEY = 2 + 5 * 6
"""Bytes from a key's opening quote to its closing one at most, for it to spell "model" (each letter ``\\uXXXX``)."""
_COLON = re.compile(rb"[ \t\r\n]*:")
_MODEL = np.frombuffer(b"model", dtype=np.uint8)
_MAX_KEY_CANDIDATES = 1_000
"""Top-level strings that may spell "model" read one by one at most; more is a body built to be slow: untouched."""
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


def _scan_top_level(raw: bytes) -> tuple[int, int] | None:
    """Walk the tokens of a valid JSON object; return the span of the single top-level model string value."""
    depth = 0
    spans: list[tuple[int, int]] = []
    expect_key = False
    for count, token in enumerate(_TOKEN.finditer(raw)):
        if count == _MAX_SCAN_TOKENS:
            return None
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
    return spans[0] if len(spans) == 1 else None


def _whole_object_model_span(raw: bytes) -> tuple[int, int] | None:
    """The top-level model value of a body nobody parsed, if the body is one whole object: from its first byte
    (after a byte order mark) to its last, brackets balanced outside strings, no string left open.

    numpy reads the strings and brackets in a few passes over the bytes, so the time is linear whatever the body (a
    token walk over unparsed bytes retries at every quote of an unterminated run: seconds for 32 KiB of ``\\"``).
    Escaped backslashes, then escaped quotes, are blanked first (two bytes for two, so positions hold), which is
    JSON's own left-to-right reading of escapes; a byte is then inside a string after an odd number of quotes. Of the
    top-level strings, only keys that spell "model" are read one by one: literally, or with ``\\u`` escapes."""
    plain = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b"\\" in raw else raw
    text = np.frombuffer(plain, dtype=np.uint8)
    is_quote = text == _QUOTE
    outside = (np.cumsum(is_quote, dtype=np.uint8) & 1) == 0  # uint8 wraps: the parity stays right
    quotes = np.flatnonzero(is_quote)
    if quotes.size % 2:
        return None  # a string left open
    brackets = np.flatnonzero(np.isin(text, _BRACKETS) & outside)
    if brackets.size == 0:
        return None
    depth = np.cumsum(np.where(np.isin(text[brackets], _OPENERS), 1, -1), dtype=np.int64)  # after each bracket
    first, last = int(brackets[0]), int(brackets[-1])
    lead = len(_BOM) if raw.startswith(_BOM) else 0
    if (
        raw[first : first + 1] != b"{"
        or raw[last : last + 1] != b"}"
        or raw[lead:first].strip(_WHITESPACE)
        or raw[last + 1 :].strip(_WHITESPACE)
        or depth.min() < 0
        or np.count_nonzero(depth == 0) != 1  # only the last bracket closes the object: one value, not two
    ):
        return None
    starts, ends = quotes[0::2], quotes[1::2]
    literal = ends - starts == len(_KEY) - 1
    escaped = (ends - starts <= _LONGEST_MODEL_KEY) & ~literal if b"\\u" in raw else np.zeros_like(literal)
    if literal.any():
        spelled = np.all(text[starts[literal, None] + np.arange(1, len(_KEY) - 1)] == _MODEL, axis=1)
        literal[np.flatnonzero(literal)[~spelled]] = False
    candidates = np.flatnonzero(literal | escaped)
    before = np.searchsorted(brackets, starts[candidates])  # brackets before each string: depth 1 is top level
    candidates = candidates[(before > 0) & (depth[np.maximum(before - 1, 0)] == 1)]
    if candidates.size > _MAX_KEY_CANDIDATES:
        return None
    spans: list[tuple[int, int]] = []
    for start, end in zip(starts[candidates].tolist(), ends[candidates].tolist(), strict=True):
        if _COLON.match(raw, end + 1) and _is_model_key(raw[start : end + 1]):
            span = _value_span_after(raw, end + 1)
            if span is None:
                return None  # the top-level model is not a string
            spans.append(span)
    return spans[0] if len(spans) == 1 else None


def find_model_span(raw: bytes, parsed: bool = True) -> tuple[int, int] | None:
    """Byte span of the top-level ``model`` string value, quotes included; None if absent, ambiguous, not a string,
    or too costly to find. ``parsed=False`` for a body that was not parsed as a JSON object (module docstring)."""
    if not parsed:
        return _whole_object_model_span(raw)
    if raw.count(_KEY) == 1 and b"\\u" not in raw:
        start = raw.index(_KEY)
        return _value_span_after(raw, start + len(_KEY))
    return _scan_top_level(raw)


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
