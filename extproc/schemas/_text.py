"""Helpers shared by schema modules for reading loosely-typed JSON safely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["objects_in", "positive_int", "text_of_content"]


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


def positive_int(value: Any) -> int | None:
    """``value`` if it is a positive JSON integer (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
