"""One module per inbound API schema, behind the small :class:`ApiSchema` protocol, and the exact-path registry.

A schema reads its own wire format (and builds the smallest body carrying a prompt, for ``explain``); rewriting
``model`` is schema-independent (``bodyedit.py``).
An unknown path passes through untouched: we are a guest on someone else's gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from extproc.schemas.anthropic_messages import AnthropicMessages
from extproc.schemas.openai_chat import OpenAIChat
from extproc.schemas.openai_completions import OpenAICompletions
from extproc.schemas.openai_responses import OpenAIResponses

__all__ = ["ROUTER_PATHS", "SCHEMAS_BY_PATH", "TOKEN_COUNT_PATHS", "ApiSchema", "HasConversation", "schema_for_path"]


class ApiSchema(Protocol):
    """Reads what the router needs from one API's request body (already parsed JSON)."""

    name: ClassVar[str]

    def prompt_text(self, body: Mapping[str, Any]) -> str:
        """The text the classifier reads (empty if there is none)."""
        ...

    def input_chars(self, body: Mapping[str, Any]) -> int:
        """Characters of all input text, for token and cost estimates."""
        ...

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """The request's own output-token limit, if it sets a valid one."""
        ...

    def message_count(self, body: Mapping[str, Any]) -> int:
        """How many messages (or prompts) the request carries, for the ``limits.max_messages`` bound."""
        ...

    def completions(self, body: Mapping[str, Any]) -> int:
        """How many completions the request is billed for (``n``, a list prompt's prompts; at least 1)."""
        ...

    def prompt_body(self, prompt: str, model: str) -> dict[str, Any]:
        """The smallest request body of this API carrying ``prompt`` as the user's turn (``model-router explain``)."""
        ...


@runtime_checkable
class HasConversation(Protocol):
    """Schemas of multi-turn APIs: what identifies a conversation when no session header is sent."""

    def conversation_seed(self, body: Mapping[str, Any]) -> str:
        """Text that identifies the conversation across its turns; empty if it cannot yet be identified."""
        ...

    def opening_text(self, body: Mapping[str, Any]) -> str:
        """The first user turn's text when the request has a later user turn (the one classified), else empty: the
        conversation's opening task, whose decision sets the conversation's floor (``extproc/stream.py``)."""
        ...


SCHEMAS_BY_PATH: Mapping[str, ApiSchema] = {
    "/v1/chat/completions": OpenAIChat(),
    "/chat/completions": OpenAIChat(),
    "/v1/completions": OpenAICompletions(),
    "/completions": OpenAICompletions(),
    "/v1/responses": OpenAIResponses(),
    "/v1/messages": AnthropicMessages(),
}


TOKEN_COUNT_PATHS: frozenset[str] = frozenset({"/v1/messages/count_tokens", "/v1/responses/input_tokens"})
"""Token-counting endpoints of the routed APIs. They are not decided (nothing is generated), but a client that sends
"auto" to the generation endpoint sends it here too, and a provider serves no such model (a 404 for every token count
of an agent such as Claude Code set to the alias): the router renames the alias to the default model, as for a body it
does not classify, and sends a catalog model to its own cluster."""

ROUTER_PATHS: frozenset[str] = frozenset(SCHEMAS_BY_PATH) | TOKEN_COUNT_PATHS
"""Every path whose requests the router reads: the gateway sends these (and only these) through it."""


def schema_for_path(path: str) -> ApiSchema | None:
    """The schema for an exact request path (query string ignored), or None."""
    return SCHEMAS_BY_PATH.get(path.split("?", 1)[0])
