"""Replace the top-level ``"model"`` string of a JSON body and leave every other byte as it was.

Re-serialising the whole body would reorder keys, change number formatting (``1.0``, ``1e5``, ``-0.0``) and
escapes; clients and upstreams may sign or hash bodies, so only the model value's bytes change.

For a body that has been parsed as a JSON object whose top-level ``model`` is a string (``parse_request``
guarantees it), the fast path: when ``"model"`` occurs exactly once and the body has no ``\\u`` escape, that
occurrence must be the top-level key (no other spelling of the key exists, a nested key or a value would be a second
occurrence). Otherwise a small tokenizer walks the top level of a
body of a few KiB, and a numpy pass (:func:`_whole_object_model_span`) reads a larger one in linear time. A body
nobody parsed (a form content type, a limit checked before parsing, JSON the parser refuses) takes the numpy pass
whatever its size, which finds a model only in one whole object: a nested ``"model"``, a body cut short or a comment
leaves it alone.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ["JSON_STRING", "find_model_span", "replace_at", "replace_model", "rewrite_model"]

JSON_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
"""A JSON string, quotes included, in the unrolled form: one regex step per escape, not one per character."""

_KEY = b'"model"'
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"

# Byte classes for the numpy pass; the brackets are contiguous, openers first, so a range test finds them.
_OTHER, _SPACE, _LITERAL, _COMMA, _COLON_BYTE = range(5)
_OPEN_BRACE, _OPEN_BRACKET, _CLOSE_BRACE, _CLOSE_BRACKET, _QUOTE = range(5, 10)


def _class_table() -> bytes:
    """``bytes.translate`` table from byte to class: one C pass over the body instead of a search per byte. A literal
    is any byte of a number, ``true``, ``false``, ``null`` (and NaN, Infinity, which some parsers accept)."""
    table = bytearray([_OTHER]) * 256
    classes = {b" \t\r\n": _SPACE, b"0123456789+-.eEtruefalsnNaIiy": _LITERAL, b",": _COMMA, b":": _COLON_BYTE}
    classes |= {b"{": _OPEN_BRACE, b"[": _OPEN_BRACKET, b"}": _CLOSE_BRACE, b"]": _CLOSE_BRACKET, b'"': _QUOTE}
    for members, value in classes.items():
        for byte in members:
            table[byte] = value
    return bytes(table)


_CLASSES = _class_table()
_ESCAPED_KEY_LENGTHS = np.arange(len(_KEY) - 1 + 5, len(_KEY) - 1 + 5 * 5 + 1, 5)
"""From a key's opening quote to its closing one, for it to spell "model" with one to five letters ``\\uXXXX``."""
_COLON = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
"""After a key, up to its value: JSON's whitespace only (``\\s`` would take ``\\f`` and ``\\v``)."""
_MODEL = np.frombuffer(b"model", dtype=np.uint8)
_MAX_KEY_CANDIDATES = 1_000
"""Top-level strings that may spell "model" read one by one at most; more is a body built to be slow: untouched."""
_AFTER_KEY = re.compile(rb"\s*:\s*(" + JSON_STRING + rb")", re.DOTALL)
_TOKEN = re.compile(JSON_STRING + rb"|[{}\[\]:,]", re.DOTALL)
_MAX_WALKED_BYTES = 4 << 10
"""Bodies up to this size (2,000 tokens at most) take the token walk, ≈25 µs on a small body; larger ones the numpy
pass (≈0.2 ms, plus 7 to 30 ms a MiB whatever the body), which a walk of tokens costs past a few KiB (a token walk
over 4 MiB of ``1,1,1``, two million tokens, is seconds)."""
_MAX_UNPARSED_CONTAINERS = 100_000
"""Arrays and objects (outside strings) of a body nobody parsed past which its model is not looked for: the numpy
pass matches brackets with a sort, and 1.4 million of them (a 4 MiB body of ``[],``) held the event loop for 0.3 s,
past Envoy's 200 ms message timeout, stalling every other stream. The count comes before the sort (a few linear
passes); at 100,000 the whole pass takes ≈20 ms; a body that many containers is over ``limits.max_json_containers``
(50,000 by default) anyway. Brackets inside strings cost nothing and do not count."""
_MAX_MODEL_VALUE = 1 << 10
"""Bytes of a model value read at most: a model the router serves or renames has a short name, and a longer value is
read no further (a value of 4 MiB of escaped quotes took 0.2 s of regex steps)."""


def _value_span_after(raw: bytes, key_end: int) -> tuple[int, int] | None:
    match = _AFTER_KEY.match(raw, key_end, key_end + _MAX_MODEL_VALUE)
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
    for token in _TOKEN.finditer(raw):
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


def _classified(raw: bytes) -> tuple[bytes, npt.NDArray[np.uint8]]:
    """``raw`` with escaped backslashes, then escaped quotes, blanked (two bytes for two, so positions hold: JSON's
    own left-to-right reading of escapes), and each of its bytes' class."""
    plain = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b"\\" in raw else raw
    return plain, np.frombuffer(plain.translate(_CLASSES), dtype=np.uint8)


def _too_many_containers(raw: bytes, cap: int = _MAX_UNPARSED_CONTAINERS) -> bool:
    """More than ``cap`` openers outside strings, without the validation and matching passes
    (≈20 ms on 4 MiB of brackets; the raw count rules out most bodies before this). The openers inside each string
    are counted at its two quotes (an unterminated last string runs to the end)."""
    _, classes = _classified(raw)
    quotes = np.flatnonzero(classes == _QUOTE)
    openers = np.flatnonzero((classes == _OPEN_BRACE) | (classes == _OPEN_BRACKET))
    before = np.searchsorted(openers, quotes)  # openers before each quote
    if before.size % 2:
        before = np.append(before, openers.size)
    inside = int(np.sum(before[1::2] - before[0::2]))
    return openers.size - inside > cap


def _whole_object_model_span(raw: bytes) -> tuple[int, int] | None:
    """The top-level model value of a body, if the body is one whole object: from its first byte (after a byte order
    mark) to its last, brackets balanced and matched outside strings, no string left open, nothing outside strings
    but JSON's own bytes (no comment, no stray backslash), the key after ``{`` or ``,``, its value the next string.

    numpy reads the strings and brackets in a few passes over the bytes, so the time is linear whatever the body (a
    token walk over unparsed bytes retries at every quote of an unterminated run: seconds for 32 KiB of ``\\"``).
    Escaped backslashes, then escaped quotes, are blanked first (two bytes for two, so positions hold), which is
    JSON's own left-to-right reading of escapes; a byte is then inside a string after an odd number of quotes. Of the
    top-level strings, only keys that spell "model" are read one by one: literally, or with ``\\u`` escapes."""
    plain, classes = _classified(raw)
    is_quote = classes == _QUOTE
    quotes = np.flatnonzero(is_quote)
    if quotes.size % 2:
        return None  # a string left open
    outside = (np.cumsum(is_quote, dtype=np.uint8) & 1) == 0  # uint8 wraps: the parity stays right
    outside[: len(_BOM) if raw.startswith(_BOM) else 0] = False
    if np.any((classes == _OTHER) & outside):
        return None  # a comment, a backslash outside a string: not JSON, and what reads it would differ
    structural = np.flatnonzero((classes >= _COMMA) & (classes <= _CLOSE_BRACKET) & outside)
    brackets = structural[classes[structural] >= _OPEN_BRACE]
    if brackets.size == 0 or np.any(classes[: brackets[0]] > _SPACE) or np.any(classes[brackets[-1] + 1 :] > _SPACE):
        return None  # bytes before or after the object
    kinds = classes[brackets]
    opens = kinds <= _OPEN_BRACKET
    depth = np.cumsum(np.where(opens, 1, -1), dtype=np.int32)  # after each bracket
    if kinds[0] != _OPEN_BRACE or depth.min() < 0 or depth[-1] != 0 or np.count_nonzero(depth == 0) != 1:
        return None  # not one object: two values, or one left open
    order = np.argsort(np.where(opens, depth, depth + 1), kind="stable")  # each level: opener, closer, opener, ...
    if not np.array_equal(kinds[order[0::2]] == _OPEN_BRACE, kinds[order[1::2]] == _CLOSE_BRACE):
        return None  # a [ closed by } or a { by ]
    text = np.frombuffer(plain, dtype=np.uint8)
    starts, ends = quotes[0::2], quotes[1::2]
    lengths = ends - starts
    literal = lengths == len(_KEY) - 1
    escaped = np.isin(lengths, _ESCAPED_KEY_LENGTHS) if b"\\u" in raw else np.zeros_like(literal)
    if literal.any():
        spelled = np.all(text[starts[literal, None] + np.arange(1, len(_KEY) - 1)] == _MODEL, axis=1)
        literal[np.flatnonzero(literal)[~spelled]] = False
    candidates = np.flatnonzero(literal | escaped)
    before = np.searchsorted(brackets, starts[candidates])  # brackets before each string: depth 1 is top level
    candidates = candidates[(before > 0) & (depth[np.maximum(before - 1, 0)] == 1)]
    if candidates.size > _MAX_KEY_CANDIDATES:
        return None
    spans: list[tuple[int, int]] = []
    for index in candidates.tolist():
        start, end = int(starts[index]), int(ends[index])
        colon = _COLON.match(raw, end + 1)
        if not colon or not _is_model_key(raw[start : end + 1]):
            continue  # a value that spells "model", or another key
        before_key = int(structural[np.searchsorted(structural, start) - 1])
        if classes[before_key] not in (_OPEN_BRACE, _COMMA) or plain[before_key + 1 : start].strip(_WHITESPACE):
            return None  # a key where none can be
        if index + 1 == starts.size or starts[index + 1] != colon.end():
            return None  # the top-level model is not a string
        spans.append((int(starts[index + 1]), int(ends[index + 1]) + 1))
    return spans[0] if len(spans) == 1 else None


def find_model_span(raw: bytes, parsed: bool = True) -> tuple[int, int] | None:
    """Byte span of the top-level ``model`` string value, quotes included; None if absent, ambiguous, not a string,
    or too costly to find. ``parsed=False`` for a body that was not parsed as a JSON object (module docstring); one
    with over ``_MAX_UNPARSED_CONTAINERS`` arrays and objects is not read."""
    if not parsed:
        if raw.count(b"{") + raw.count(b"[") > _MAX_UNPARSED_CONTAINERS and _too_many_containers(raw):
            return None
        return _whole_object_model_span(raw)
    if raw.count(_KEY) == 1 and b"\\u" not in raw:
        start = raw.index(_KEY)
        return _value_span_after(raw, start + len(_KEY))
    return _scan_top_level(raw) if len(raw) <= _MAX_WALKED_BYTES else _whole_object_model_span(raw)


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
