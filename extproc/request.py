"""Turns one request (path + raw body) into what the policy needs, or a pass-through reason.

This is the one code path shared by the live stream handler and ``model-router eval``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from extproc.config import LimitSettings
from extproc.schemas import ApiSchema, HasConversation, schema_for_path

_DEFAULT_LIMITS = LimitSettings()
_QUOTE, _OPEN_ARRAY, _OPEN_OBJECT = ord('"'), ord("["), ord("{")
_NO_BODY: Mapping[str, Any] = MappingProxyType({})

__all__ = [
    "MAX_ESTIMATED_TOKENS",
    "ParsedRequest",
    "PassReason",
    "Passthrough",
    "estimate_tokens",
    "json_depth_exceeds",
    "parse_request",
]


class PassReason(enum.StrEnum):
    """Why a request is forwarded untouched; a closed set, safe as a metric label."""

    UNKNOWN_PATH = "unknown_path"
    NOT_POST = "not_post"
    NO_BODY = "no_body"
    NOT_JSON_CONTENT_TYPE = "not_json_content_type"
    CONTENT_ENCODED = "content_encoded"
    BODY_TOO_LARGE = "body_too_large"
    STREAMED_BODY = "streamed_body"
    INVALID_JSON = "invalid_json"
    """Not JSON to orjson: malformed, or JSON it refuses where other parsers may not (a lone surrogate escape such as
    a JavaScript client's cut emoji, a byte order mark, a number beyond a double)."""
    TOO_DEEP = "json_too_deep"
    TOO_COMPLEX = "json_too_complex"
    TOO_MANY_MESSAGES = "too_many_messages"
    NOT_AN_OBJECT = "not_an_object"
    NO_MODEL = "no_model"
    AMBIGUOUS_MODEL = "ambiguous_model"
    """The top-level ``model`` cannot be located for a byte-exact rewrite (e.g. a duplicate key)."""
    MODEL_NOT_ROUTABLE = "model_not_routable"
    TOKEN_COUNT = "token_count"
    """A token-counting endpoint (``schemas.TOKEN_COUNT_PATHS``): an alias gets the default model; nothing decided."""


@dataclass(frozen=True, slots=True)
class Passthrough:
    """The request is forwarded exactly as received."""

    reason: PassReason
    model: str | None = None
    """The requested model where it is known: ``MODEL_NOT_ROUTABLE`` (a catalog model named by the client goes to its
    cluster) and the limits checked after parsing (a routable alias is renamed to the default model)."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A routable request: its schema, requested model and the text to classify."""

    schema: ApiSchema
    body: Mapping[str, Any]
    requested_model: str
    prompt_text: str
    input_tokens: int
    max_output_tokens: int | None
    completions: int = 1
    """Completions the request is billed for (``ApiSchema.completions``)."""
    stream: bool = False
    """The request asks for a streamed answer (``"stream": true``)."""
    opening_text: str = ""
    """The conversation's first user turn if the classified turn is a later one (``HasConversation.opening_text``)."""

    def without_body(self) -> ParsedRequest:
        """This request without its parsed body, which can take tens of MB (a 2.6 MB body of short strings: 29
        MiB): what stays held while the classifier runs, once nothing later needs the body (prompt capture)."""
        return dataclasses.replace(self, body=_NO_BODY)


MAX_ESTIMATED_TOKENS = 2**31 - 1
"""Past any context window; the decision record's int32 holds it (a body of millions of attachment parts, which the
limits allow when raised, overflowed it and went out unrouted)."""


def estimate_tokens(chars: int) -> int:
    """Rough token count from characters (about 4 per token for English; errs high for code), capped."""
    return min(chars // 4 + 1, MAX_ESTIMATED_TOKENS)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests containers deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


def json_containers(raw: bytes, limit: int) -> int:
    """How many arrays and objects the JSON text ``raw`` has, without parsing it; an upper bound when at most
    ``limit``.

    Counting brackets runs at memory speed, and that count (which includes brackets inside strings) is the answer
    when it is at most ``limit``. Only above it are brackets inside strings left out, for an exact count: escaped
    backslashes and quotes are dropped, after which a byte is inside a string when an odd number of quotes precede
    it (JSON's own left-to-right reading of escapes). numpy does that in one pass over the bytes: 23 ms and 12 MiB
    for a crafted 4 MiB body of 1.3 million strings, where splitting at every quote took 141 ms and 114 MiB. An
    unterminated string runs to the end; text after a first syntax error may be counted differently from a
    parser's reading, but the parser stops there.
    """
    count = raw.count(b"[") + raw.count(b"{")
    if count <= limit:
        return count
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = np.frombuffer(raw, dtype=np.uint8)
    outside = (np.cumsum(text == _QUOTE, dtype=np.uint8) & 1) == 0  # uint8 wraps: the parity stays right
    return int(np.count_nonzero(((text == _OPEN_ARRAY) | (text == _OPEN_OBJECT)) & outside))


def parse_request(
    path: str, raw: bytes, routable: Collection[str], limits: LimitSettings = _DEFAULT_LIMITS
) -> ParsedRequest | Passthrough:
    """Parse ``raw`` for ``path``; anything the router should not touch becomes a :class:`Passthrough`."""
    schema = schema_for_path(path)
    if schema is None:
        return Passthrough(PassReason.UNKNOWN_PATH)
    containers = json_containers(raw, limits.max_json_containers)
    if containers > limits.max_json_containers:
        return Passthrough(PassReason.TOO_COMPLEX)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # orjson stops at depth 1,024, whatever the configured limit
        return Passthrough(PassReason.TOO_DEEP if str(exc).startswith("depth limit") else PassReason.INVALID_JSON)
    if not isinstance(body, dict):
        return Passthrough(PassReason.NOT_AN_OBJECT)
    model = body.get("model")
    if not isinstance(model, str):
        return Passthrough(PassReason.NO_MODEL)
    if model not in routable:
        return Passthrough(PassReason.MODEL_NOT_ROUTABLE, model)
    if containers > limits.max_json_depth and json_depth_exceeds(body, limits.max_json_depth):  # depth <= count
        return Passthrough(PassReason.TOO_DEEP, model)
    if schema.message_count(body) > limits.max_messages:
        return Passthrough(PassReason.TOO_MANY_MESSAGES, model)
    return ParsedRequest(
        schema=schema,
        body=body,
        requested_model=model,
        prompt_text=schema.prompt_text(body),
        input_tokens=estimate_tokens(schema.input_chars(body)),
        max_output_tokens=schema.max_output_tokens(body),
        completions=schema.completions(body),
        stream=body.get("stream") is True,
        opening_text=schema.opening_text(body) if isinstance(schema, HasConversation) else "",
    )
