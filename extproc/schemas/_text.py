"""Helpers shared by schema modules for reading loosely-typed JSON safely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "ATTACHMENT_CHARS",
    "compact_json",
    "count_parts",
    "json_chars",
    "objects_in",
    "positive_int",
    "text_of_content",
]

ATTACHMENT_CHARS = 4_000
"""What one image, audio or file part adds to the size estimate, in characters (about 1,000 tokens at the estimate's
4 per token). The providers bill an image by its size, not its bytes: OpenAI 85 tokens at low detail and up to about
1,100 at high, Anthropic about 1,600 for a large one; a file's pages and audio's seconds vary more. Counting the
base64 bytes would be far too high, and counting nothing too low for a model with a small context window."""


def objects_in(body: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The JSON objects in the list ``body[key]``; anything else (not a list, non-object items) is skipped."""
    items = body.get(key)
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


def text_of_content(content: Any) -> str:
    """Text of an OpenAI-style ``content``: a string, or a list of parts of which only text parts count.

    Image, audio and unknown parts are skipped (routing reads the text; the body keeps every part).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") in ("text", "input_text")
            and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def compact_json(value: Any) -> str:
    """``value`` as compact JSON; empty if it cannot be written (nested deeper than orjson's limit of 255)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return ""


def json_chars(value: Any) -> int:
    """Characters of ``value`` as compact JSON (0 for an absent value): tool definitions, tool-call arguments and
    output schemas are input the model is billed for and that fills its context window."""
    return 0 if value is None else len(compact_json(value))


def count_parts(content: Any, kinds: tuple[str, ...]) -> int:
    """How many parts (blocks) of a list ``content`` have a ``type`` in ``kinds``."""
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") in kinds)


def positive_int(value: Any) -> int | None:
    """``value`` if it is a positive JSON integer (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


MAX_CHOICES = 128
"""The most choices per prompt the router prices (OpenAI's limit on ``n``, which providers refuse past): one client's
``n`` of 2**63-1 priced as asked would swamp the estimated-cost counters."""
MAX_COMPLETIONS = 2_048
"""The most completions one request is priced for, whatever its prompts times choices: 2,000 prompts at ``n`` 128
(an 8 KB body) put $327,680 on the estimated-cost counters through the stack."""


def choices(*counts: Any) -> int:
    """The largest of ``counts`` that are positive JSON integers (``n``, ``best_of``), at least 1, at most
    :data:`MAX_CHOICES`."""
    return min(MAX_CHOICES, max((positive_int(c) or 1 for c in counts), default=1))
