"""OpenAI Chat Completions (``/v1/chat/completions``) request reader.

The classifier reads the last user turn (what the model must answer now); string and content-part messages are
supported, system and earlier turns count toward the size estimate only, except the first user turn of a multi-turn
request, whose decision is the conversation's floor (``opening_text``). Tool results and assistant turns are
never classified. The size estimate also counts image, audio and file parts, assistant ``tool_calls``, and the
``tools`` (legacy ``functions``) and ``response_format`` the request sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from extproc.schemas._text import (
    ATTACHMENT_CHARS,
    choices,
    count_parts,
    json_chars,
    objects_in,
    positive_int,
    text_of_content,
)

__all__ = ["OpenAIChat"]

_ATTACHMENTS = ("image_url", "input_audio", "file")


class OpenAIChat:
    """Reader for the Chat Completions request body."""

    name: ClassVar[str] = "openai.chat"

    def prompt_body(self, prompt: str, model: str) -> dict[str, Any]:
        """The smallest request carrying ``prompt`` as the user's turn (``explain``): one user message."""
        return {"model": model, "messages": [{"role": "user", "content": prompt}]}

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        """Text of the last user message."""
        for message in reversed(objects_in(body, "messages")):
            if message.get("role") == "user":
                return text_of_content(message.get("content"))
        return ""

    def opening_text(self, body: Mapping[str, Any]) -> str:
        """Text of the first user message, if a later user message follows it."""
        users = [m for m in objects_in(body, "messages") if m.get("role") == "user"]
        return text_of_content(users[0].get("content")) if len(users) > 1 else ""

    def conversation_seed(self, body: Mapping[str, Any]) -> str:
        """The messages up to the first assistant reply to a user message, and that reply; empty before it.

        The opening alone ("Hi") is shared by countless conversations; the first reply makes it this one. An
        assistant greeting before any user message is the same in every conversation of an app: it is not a reply.
        """
        parts: list[str] = []
        asked = False
        for message in objects_in(body, "messages"):
            role = message.get("role")
            parts.append(text_of_content(message.get("content")))
            asked = asked or role == "user"
            if role == "assistant" and asked:
                return "\x1e".join(parts)
        return ""

    def input_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of every message's text and tool calls, an allowance per image, and the tool definitions."""
        chars = sum(json_chars(body.get(key)) for key in ("tools", "functions", "response_format"))
        for message in objects_in(body, "messages"):
            content = message.get("content")
            chars += len(text_of_content(content)) + ATTACHMENT_CHARS * count_parts(content, _ATTACHMENTS)
            chars += json_chars(message.get("tool_calls")) + json_chars(message.get("function_call"))
        return chars

    def message_count(self, body: Mapping[str, Any]) -> int:
        """Length of ``messages`` (0 if it is not a list)."""
        messages = body.get("messages")
        return len(messages) if isinstance(messages, list) else 0

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """``max_completion_tokens``, else the legacy ``max_tokens``."""
        return positive_int(body.get("max_completion_tokens")) or positive_int(body.get("max_tokens"))

    def completions(self, body: Mapping[str, Any]) -> int:
        """``n``: the choices generated, each billed its output."""
        return choices(body.get("n"))
