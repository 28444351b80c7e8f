"""OpenAI legacy Completions (``/v1/completions``) request reader.

``prompt`` may be a string or a list of strings; token-id prompts carry no text, so they are not classified.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from extproc.schemas._text import MAX_COMPLETIONS, choices, positive_int

__all__ = ["OpenAICompletions"]


class OpenAICompletions:
    """Reader for the Completions request body."""

    name: ClassVar[str] = "openai.completions"

    def prompt_body(self, prompt: str, model: str) -> dict[str, Any]:
        """The smallest request carrying ``prompt`` (``explain``): the prompt string."""
        return {"model": model, "prompt": prompt}

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        """The prompt string, or the strings of a list prompt joined by newlines."""
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            return "\n".join(p for p in prompt if isinstance(p, str))
        return ""

    def input_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of the prompt text and of the ``suffix`` (text after the insertion point, also input)."""
        suffix = body.get("suffix")
        return len(self.prompt_text(body)) + (len(suffix) if isinstance(suffix, str) else 0)

    def message_count(self, body: Mapping[str, Any]) -> int:
        """Number of prompts in a list prompt, else 1 (a list of token ids is one prompt, not one per token)."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return len(prompt)
        return 1

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """``max_tokens`` (Completions defaults to 16 when unset; we use the policy's estimate instead)."""
        return positive_int(body.get("max_tokens"))

    def completions(self, body: Mapping[str, Any]) -> int:
        """``best_of`` (generated and billed, of which ``n`` are returned), else ``n``, for each prompt; at most
        ``MAX_COMPLETIONS`` in all."""
        return min(MAX_COMPLETIONS, self.message_count(body) * choices(body.get("n"), body.get("best_of")))
