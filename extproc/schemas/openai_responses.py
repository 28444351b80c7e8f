"""OpenAI Responses API (``/v1/responses``) request reader.

``input`` is a string or a list of items. The classifier reads the string, or the text parts (``input_text``,
``text``) of the last ``role: user`` message item, or with none (a tool turn continuing by ``previous_response_id``)
the text of the tool outputs; image, file and audio parts are skipped (the body keeps them).
``instructions``, earlier turns, assistant ``output_text``, reasoning items' summary and text, function-call
arguments and function-call outputs, the
``tools`` definitions, the ``text`` output format and an allowance per image, file or audio part count toward the
size estimate only, except the first user message item's text when a later one follows: its decision is the
conversation's floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from extproc.schemas._text import ATTACHMENT_CHARS, count_parts, json_chars, objects_in, positive_int

__all__ = ["OpenAIResponses"]

_USER_TEXT_PARTS = ("input_text", "text")
_ANY_TEXT_PARTS = ("input_text", "text", "output_text", "refusal")
_ATTACHMENTS = ("input_image", "input_file", "input_audio")
_TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")


def _parts_text(content: Any, kinds: tuple[str, ...]) -> str:
    """A string ``content``, or the ``text`` (``refusal``) of its parts whose type is in ``kinds``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in kinds:
            continue
        value = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
        if isinstance(value, str):
            texts.append(value)
    return "\n".join(texts)


def _is_user_message(item: Mapping[str, Any]) -> bool:
    return item.get("role") == "user" and item.get("type", "message") == "message"


def _item_chars(item: Mapping[str, Any]) -> int:
    """Characters of one input item's text (messages, function calls and their outputs)."""
    kind = item.get("type")
    if kind == "function_call":
        arguments = item.get("arguments")
        return len(arguments) if isinstance(arguments, str) else 0
    if kind in _TOOL_OUTPUTS:  # a tool may return images and files too
        output = item.get("output")
        return len(_parts_text(output, _ANY_TEXT_PARTS)) + ATTACHMENT_CHARS * count_parts(output, _ATTACHMENTS)
    if kind == "reasoning":  # a reasoning model's earlier turn, sent back: its summary and text fill the window too
        summary = _parts_text(item.get("summary"), ("summary_text",))
        return len(summary) + len(_parts_text(item.get("content"), ("reasoning_text",)))
    content = item.get("content")
    return len(_parts_text(content, _ANY_TEXT_PARTS)) + ATTACHMENT_CHARS * count_parts(content, _ATTACHMENTS)


class OpenAIResponses:
    """Reader for the Responses API request body."""

    name: ClassVar[str] = "openai.responses"

    def prompt_body(self, prompt: str, model: str) -> dict[str, Any]:
        """The smallest request carrying ``prompt`` as the user's turn (``explain``): a string ``input``."""
        return {"model": model, "input": prompt}

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        """``input`` if it is a string, else the text of the last user message item; with no user message item (an
        agent's tool turn continuing by ``previous_response_id``), the text of the tool outputs, as Anthropic's tool
        results are read: without it every tool turn fell back to the default model, often the dearest."""
        items = body.get("input")
        if isinstance(items, str):
            return items
        for item in reversed(objects_in(body, "input")):
            if _is_user_message(item):
                return _parts_text(item.get("content"), _USER_TEXT_PARTS)
        outputs = [item for item in objects_in(body, "input") if item.get("type") in _TOOL_OUTPUTS]
        return "\n".join(text for item in outputs if (text := _parts_text(item.get("output"), _ANY_TEXT_PARTS)))

    def opening_text(self, body: Mapping[str, Any]) -> str:
        """Text of the first user message item, if a later user message item follows it (a string input has none)."""
        users = [item for item in objects_in(body, "input") if _is_user_message(item)]
        return _parts_text(users[0].get("content"), _USER_TEXT_PARTS) if len(users) > 1 else ""

    def conversation_seed(self, body: Mapping[str, Any]) -> str:
        """``instructions``, the items up to the first assistant reply to a user message and that reply; empty before
        it (an assistant item before any user message, the same in every conversation of an app, is not a reply).

        A request that continues by ``previous_response_id`` carries only the new turn: it has no seed.
        """
        instructions = body.get("instructions")
        parts = [instructions] if isinstance(instructions, str) else []
        asked = False
        for item in objects_in(body, "input"):
            if item.get("type") == "function_call":
                parts.append(str(item.get("name")) + "\x1f" + str(item.get("arguments")))
                if asked:
                    return "\x1e".join(parts)
                continue
            parts.append(_parts_text(item.get("content"), _ANY_TEXT_PARTS))
            asked = asked or _is_user_message(item)
            if item.get("role") == "assistant" and asked:
                return "\x1e".join(parts)
        return ""

    def input_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of ``instructions``, of every input item's text, of the ``tools`` and the ``text`` format; an
        allowance per image, file or audio part."""
        instructions = body.get("instructions")
        chars = len(instructions) if isinstance(instructions, str) else 0
        chars += json_chars(body.get("tools")) + json_chars(body.get("text"))
        items = body.get("input")
        if isinstance(items, str):
            return chars + len(items)
        return chars + sum(_item_chars(item) for item in objects_in(body, "input"))

    def message_count(self, body: Mapping[str, Any]) -> int:
        """Length of a list ``input``, 1 for a string input, else 0."""
        items = body.get("input")
        if isinstance(items, list):
            return len(items)
        return 1 if isinstance(items, str) else 0

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """``max_output_tokens``."""
        return positive_int(body.get("max_output_tokens"))

    def completions(self, body: Mapping[str, Any]) -> int:
        """One: Responses has no ``n``."""
        return 1
