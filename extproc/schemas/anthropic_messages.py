"""Anthropic Messages API (``/v1/messages``) request reader.

The classifier reads the last user turn: its string ``content`` or its ``text`` blocks. A user turn with no text
but ``tool_result`` blocks (the client answering a tool call) is read through the text inside those results, and if
they hold none, through the previous user turn. Image and document blocks are skipped (the body keeps them).
``system`` (a string or text blocks), earlier turns, ``tool_use`` inputs, tool results, the ``tools`` definitions,
a document's inline text and an allowance per image or other document (in tool results too) count toward the size
estimate only, except the first user turn's text when a later user turn follows (an agent's task, before its tool
results): its decision is the conversation's floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from extproc.schemas._text import ATTACHMENT_CHARS, compact_json, json_chars, objects_in, positive_int

__all__ = ["AnthropicMessages"]


def _blocks(content: Any) -> list[Mapping[str, Any]]:
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def _text(content: Any) -> str:
    """A string ``content``, or the text of its ``text`` blocks joined by newlines."""
    if isinstance(content, str):
        return content
    return "\n".join(
        block["text"]
        for block in _blocks(content)
        if block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def _tool_results_text(content: Any) -> str:
    """The text inside the ``tool_result`` blocks of ``content``."""
    texts = [_text(block.get("content")) for block in _blocks(content) if block.get("type") == "tool_result"]
    return "\n".join(t for t in texts if t)


def _has_tool_result(content: Any) -> bool:
    return any(block.get("type") == "tool_result" for block in _blocks(content))


def _document_chars(block: Mapping[str, Any]) -> int:
    """A document block's size: its text, when the source is inline text (``text``: a string; ``content``: blocks),
    which can be far larger than an attachment's allowance; else the allowance (a PDF or a file by reference)."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
        return len(source["data"])
    if isinstance(source, dict) and source.get("type") == "content":
        content = source.get("content")
        return len(_text(content)) + _attachment_chars(content)
    return ATTACHMENT_CHARS


def _attachment_chars(content: Any) -> int:
    """Images and documents of ``content``, also inside its ``tool_result`` blocks (a tool may return either)."""
    chars = 0
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "image":
            chars += ATTACHMENT_CHARS
        elif kind == "document":
            chars += _document_chars(block)
        elif kind == "tool_result":
            chars += _attachment_chars(block.get("content"))
    return chars


def _tool_use_chars(content: Any) -> int:
    """Characters of the JSON ``input`` of the ``tool_use`` blocks of ``content``."""
    return sum(
        json_chars(block.get("input"))
        for block in _blocks(content)
        if block.get("type") == "tool_use" and "input" in block
    )


class AnthropicMessages:
    """Reader for the Messages API request body."""

    name: ClassVar[str] = "anthropic.messages"

    def prompt_body(self, prompt: str, model: str) -> dict[str, Any]:
        """The smallest request carrying ``prompt`` as the user's turn (``explain``). No ``max_tokens``, which the API
        requires but no value of which would be the caller's: the output-token estimate is then the policy's own."""
        return {"model": model, "messages": [{"role": "user", "content": prompt}]}

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        """Text of the last user turn; for a tool-result-only turn, the results' text or the previous user text."""
        for message in reversed(objects_in(body, "messages")):
            if message.get("role") != "user":
                continue
            content = message.get("content")
            text = _text(content)
            if text:
                return text
            if not _has_tool_result(content):
                return ""  # e.g. image-only: nothing to classify
            results = _tool_results_text(content)
            if results:
                return results
        return ""

    def opening_text(self, body: Mapping[str, Any]) -> str:
        """Text of the first user turn (its text blocks, not tool results), if a later user turn follows it."""
        users = [m for m in objects_in(body, "messages") if m.get("role") == "user"]
        return _text(users[0].get("content")) if len(users) > 1 else ""

    def conversation_seed(self, body: Mapping[str, Any]) -> str:
        """``system``, the messages up to the first assistant reply to a user turn and that reply; empty before it (an
        assistant turn before any user turn, the same in every conversation of an app, is not a reply)."""
        parts = [_text(body.get("system"))]
        asked = False
        for message in objects_in(body, "messages"):
            content = message.get("content")
            parts.append(_text(content) or _tool_results_text(content))
            asked = asked or message.get("role") == "user"
            if message.get("role") == "assistant" and asked:
                for block in _blocks(content):
                    if block.get("type") == "tool_use":
                        parts.append(str(block.get("name")) + "\x1f" + compact_json(block.get("input")))
                return "\x1e".join(parts)
        return ""

    def input_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of ``system``, of every message's text, tool results and tool-use inputs, and of the ``tools``;
        a document's inline text; an allowance per image or other document (in tool results too)."""
        chars = len(_text(body.get("system"))) + json_chars(body.get("tools"))
        for message in objects_in(body, "messages"):
            content = message.get("content")
            chars += len(_text(content)) + len(_tool_results_text(content)) + _tool_use_chars(content)
            chars += _attachment_chars(content)
        return chars

    def message_count(self, body: Mapping[str, Any]) -> int:
        """Length of ``messages`` (0 if it is not a list)."""
        messages = body.get("messages")
        return len(messages) if isinstance(messages, list) else 0

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """``max_tokens`` (required by the API)."""
        return positive_int(body.get("max_tokens"))

    def completions(self, body: Mapping[str, Any]) -> int:
        """One: Messages has no ``n``."""
        return 1
