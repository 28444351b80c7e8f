"""Table tests of each API schema reader: what the classifier reads, the size, the output limit, the message count."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from extproc.request import MAX_ESTIMATED_TOKENS, ParsedRequest, estimate_tokens, parse_request
from extproc.schemas import SCHEMAS_BY_PATH, ApiSchema, HasConversation, schema_for_path
from extproc.schemas._text import ATTACHMENT_CHARS, MAX_CHOICES, MAX_COMPLETIONS
from extproc.schemas.anthropic_messages import AnthropicMessages
from extproc.schemas.openai_chat import OpenAIChat
from extproc.schemas.openai_completions import OpenAICompletions
from extproc.schemas.openai_responses import OpenAIResponses

IMAGE_PART = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
IMAGE_BLOCK = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def _user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    ("path", "name"),
    [
        pytest.param("/v1/chat/completions", "openai.chat", id="chat"),
        pytest.param("/v1/completions", "openai.completions", id="completions"),
        pytest.param("/v1/responses", "openai.responses", id="responses"),
        pytest.param("/v1/responses?stream=true", "openai.responses", id="responses-query-ignored"),
        pytest.param("/v1/messages", "anthropic.messages", id="messages"),
        pytest.param("/v1/messages/count_tokens", None, id="count-tokens-is-not-routed"),
        pytest.param("/v1/responses/resp_1", None, id="response-retrieval-is-not-routed"),
        pytest.param("/v1/messages/batches", None, id="batches-are-not-routed"),
    ],
)
def test_registry_matches_exact_paths(path: str, name: str | None) -> None:
    schema = schema_for_path(path)
    assert (schema.name if schema else None) == name


RESPONSES = OpenAIResponses()


@pytest.mark.parametrize(
    ("body", "text", "chars", "count"),
    [
        pytest.param({"input": "What is 2+2?"}, "What is 2+2?", 12, 1, id="string-input"),
        pytest.param({"instructions": "Be brief.", "input": "hi"}, "hi", 11, 1, id="instructions-count-for-size-only"),
        pytest.param(
            {"input": [_user([{"type": "input_text", "text": "a"}, IMAGE_PART, {"type": "text", "text": "b"}])]},
            "a\nb",
            3 + ATTACHMENT_CHARS,
            1,
            id="input-text-and-text-parts-image-skipped",
        ),
        pytest.param(
            {
                "input": [
                    _user("first question"),
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "follow-up"}]},
                ]
            },
            "follow-up",
            14 + 2 + 9,
            3,
            id="multi-turn-reads-last-user-item",
        ),
        pytest.param(
            {
                "input": [
                    _user("weather?"),
                    {"type": "function_call", "call_id": "c", "name": "w", "arguments": '{"c":1}'},
                    {"type": "function_call_output", "call_id": "c", "output": "sunny"},
                ]
            },
            "weather?",
            8 + 7 + 5,
            3,
            id="function-call-turns-count-for-size-only",
        ),
        pytest.param(
            {"input": [{"role": "developer", "content": "rules"}, {"role": "assistant", "content": "x"}]},
            "",
            6,
            2,
            id="no-user-item",
        ),
        pytest.param({"input": [_user([IMAGE_PART])]}, "", ATTACHMENT_CHARS, 1, id="image-only"),
        pytest.param(
            {
                "input": [
                    {"type": "function_call_output", "call_id": "a", "output": "sunny"},
                    {
                        "type": "custom_tool_call_output",
                        "call_id": "b",
                        "output": [{"type": "input_text", "text": "7"}],
                    },
                    {"type": "function_call_output", "call_id": "c", "output": [IMAGE_PART]},
                ]
            },
            "sunny\n7",
            5 + 1 + ATTACHMENT_CHARS,
            3,
            id="a-tool-turn-without-user-item-reads-the-outputs",
        ),
        pytest.param(
            {
                "input": [
                    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan it"}]},
                    {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "step"}], "summary": []},
                    _user("go"),
                ]
            },
            "go",
            7 + 4 + 2,
            3,
            id="reasoning-items-count-for-size",
        ),
        pytest.param(
            {"input": [{"type": "item_reference", "id": "msg_1", "role": "user"}]}, "", 0, 1, id="not-a-message"
        ),
        pytest.param({"input": [1, None, "x", _user("ok")]}, "ok", 2, 4, id="junk-items-skipped"),
        pytest.param({"input": {"role": "user"}}, "", 0, 0, id="input-object"),
        pytest.param({}, "", 0, 0, id="no-input"),
        pytest.param({"input": [_user(7)]}, "", 0, 1, id="content-not-text"),
    ],
)
def test_openai_responses_reader(body: dict[str, Any], text: str, chars: int, count: int) -> None:
    assert RESPONSES.prompt_text(body) == text
    assert RESPONSES.input_chars(body) == chars
    assert RESPONSES.message_count(body) == count


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param({"max_output_tokens": 256}, 256, id="set"),
        pytest.param({"max_tokens": 256}, None, id="chat-field-is-not-read"),
        pytest.param({"max_output_tokens": 0}, None, id="zero"),
        pytest.param({"max_output_tokens": True}, None, id="bool"),
        pytest.param({"max_output_tokens": "256"}, None, id="string"),
        pytest.param({}, None, id="unset"),
    ],
)
def test_openai_responses_max_output_tokens(body: dict[str, Any], want: int | None) -> None:
    assert RESPONSES.max_output_tokens(body) == want


MESSAGES = AnthropicMessages()


def _document(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "document", "source": source}


_q = {"type": "text", "text": "q"}


def _tool_result(content: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": "toolu_1", "content": content}


@pytest.mark.parametrize(
    ("body", "text", "chars", "count"),
    [
        pytest.param({"messages": [_user("What is 2+2?")]}, "What is 2+2?", 12, 1, id="string-content"),
        pytest.param({"system": "Be brief.", "messages": [_user("hi")]}, "hi", 11, 1, id="string-system-size-only"),
        pytest.param(
            {"system": [{"type": "text", "text": "Be brief."}, {"type": "x"}], "messages": [_user("hi")]},
            "hi",
            11,
            1,
            id="block-system-size-only",
        ),
        pytest.param(
            {"messages": [_user([IMAGE_BLOCK, {"type": "text", "text": "a"}, {"type": "text", "text": "b"}])]},
            "a\nb",
            3 + ATTACHMENT_CHARS,
            1,
            id="text-blocks-image-skipped",
        ),
        pytest.param(
            {
                "messages": [
                    _user("first"),
                    {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                    _user([{"type": "text", "text": "second"}]),
                ]
            },
            "second",
            5 + 2 + 6,
            3,
            id="multi-turn-reads-last-user-turn",
        ),
        pytest.param(
            {
                "messages": [
                    _user("weather?"),
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]},
                    _user([_tool_result("sunny")]),
                ]
            },
            "sunny",
            8 + 2 + 5,
            3,
            id="tool-result-string-content",
        ),
        pytest.param(
            {"messages": [_user("weather?"), _user([_tool_result([{"type": "text", "text": "rain"}, IMAGE_BLOCK])])]},
            "rain",
            12 + ATTACHMENT_CHARS,  # a tool may return an image: it fills the window as the user's would
            2,
            id="tool-result-text-blocks",
        ),
        pytest.param(
            {"messages": [_user("weather?"), _user([_tool_result([IMAGE_BLOCK]), _tool_result(None)])]},
            "weather?",
            8 + ATTACHMENT_CHARS,
            2,
            id="tool-result-without-text-reads-previous-user-turn",
        ),
        pytest.param(
            {
                "messages": [
                    _user("plan"),
                    _user([_tool_result("")]),
                    _user([_tool_result([])]),
                ]
            },
            "plan",
            4,
            3,
            id="several-empty-tool-results-walk-back",
        ),
        pytest.param(
            {"messages": [_user([_tool_result("42"), {"type": "text", "text": "explain"}])]},
            "explain",
            9,
            1,
            id="text-beside-tool-result-wins",
        ),
        pytest.param(
            {"messages": [_user("earlier"), _user([IMAGE_BLOCK])]},
            "",
            7 + ATTACHMENT_CHARS,
            2,
            id="image-only-has-no-text",
        ),
        pytest.param({"messages": [{"role": "assistant", "content": "hi"}]}, "", 2, 1, id="no-user-turn"),
        pytest.param(
            {"messages": [_user([_document({"type": "text", "media_type": "text/plain", "data": "x" * 9000}), _q])]},
            "q",
            9000 + 1,
            1,
            id="document-of-inline-text-counts-its-text",
        ),
        pytest.param(
            {"messages": [_user([_document({"type": "content", "content": [{"type": "text", "text": "abc"}]}), _q])]},
            "q",
            3 + 1,
            1,
            id="document-of-content-blocks",
        ),
        pytest.param(
            {"messages": [_user([_document({"type": "base64", "media_type": "application/pdf", "data": "JVBE"}), _q])]},
            "q",
            ATTACHMENT_CHARS + 1,
            1,
            id="pdf-document-gets-the-allowance",
        ),
        pytest.param({"messages": [1, _user("ok")]}, "ok", 2, 2, id="junk-messages-skipped"),
        pytest.param({"messages": "hi"}, "", 0, 0, id="messages-string"),
        pytest.param({}, "", 0, 0, id="no-messages"),
    ],
)
def test_anthropic_messages_reader(body: dict[str, Any], text: str, chars: int, count: int) -> None:
    assert MESSAGES.prompt_text(body) == text
    assert MESSAGES.input_chars(body) == chars
    assert MESSAGES.message_count(body) == count


def test_anthropic_tool_use_input_counts_for_size() -> None:
    tool_use = {"type": "tool_use", "id": "t", "name": "w", "input": {"city": "Paris"}}
    body = {"messages": [_user("weather?"), {"role": "assistant", "content": [tool_use]}]}
    assert MESSAGES.input_chars(body) == len("weather?") + len('{"city":"Paris"}')


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param({"max_tokens": 1024}, 1024, id="set"),
        pytest.param({"max_output_tokens": 1024}, None, id="responses-field-is-not-read"),
        pytest.param({"max_tokens": -1}, None, id="negative"),
        pytest.param({"max_tokens": 1.5}, None, id="float"),
        pytest.param({}, None, id="unset"),
    ],
)
def test_anthropic_messages_max_output_tokens(body: dict[str, Any], want: int | None) -> None:
    assert MESSAGES.max_output_tokens(body) == want


@pytest.mark.parametrize(
    ("schema", "body", "text", "chars", "count", "limit"),
    [
        pytest.param(
            OpenAIChat(),
            {
                "messages": [
                    {"role": "system", "content": "sys"},
                    _user([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]),
                ],
                "max_tokens": 9,
                "max_completion_tokens": 7,
            },
            "look",
            7 + ATTACHMENT_CHARS,
            2,
            7,
            id="chat",
        ),
        pytest.param(
            OpenAICompletions(), {"prompt": ["a", 1, "bc"], "max_tokens": 5}, "a\nbc", 4, 3, 5, id="completions"
        ),
        pytest.param(
            OpenAICompletions(),
            {"prompt": "def f(", "suffix": "    return x", "max_tokens": 5},
            "def f(",
            6 + 12,
            1,
            5,
            id="completions-suffix-counts-for-size",
        ),
    ],
)
def test_existing_readers(
    schema: ApiSchema, body: dict[str, Any], text: str, chars: int, count: int, limit: int
) -> None:
    assert schema.prompt_text(body) == text
    assert schema.input_chars(body) == chars
    assert schema.message_count(body) == count
    assert schema.max_output_tokens(body) == limit


@pytest.mark.parametrize(
    ("schema", "body", "want"),
    [
        pytest.param(OpenAIChat(), {"messages": []}, 1, id="chat-default"),
        pytest.param(OpenAIChat(), {"n": 4}, 4, id="chat-n"),
        pytest.param(OpenAIChat(), {"n": 2**63 - 1}, MAX_CHOICES, id="chat-n-capped"),
        pytest.param(OpenAIChat(), {"n": True}, 1, id="chat-n-bool-ignored"),
        pytest.param(OpenAIChat(), {"n": "3"}, 1, id="chat-n-string-ignored"),
        pytest.param(OpenAICompletions(), {"prompt": "a"}, 1, id="completions-default"),
        pytest.param(OpenAICompletions(), {"prompt": ["a", "b", "c"], "n": 2}, 6, id="completions-list-times-n"),
        pytest.param(OpenAICompletions(), {"prompt": "a", "n": 2, "best_of": 5}, 5, id="completions-best-of"),
        pytest.param(OpenAICompletions(), {"prompt": [1, 2, 3, 4], "n": 2}, 2, id="completions-token-ids-one-prompt"),
        pytest.param(OpenAICompletions(), {"prompt": [[1, 2], [3]]}, 2, id="completions-token-id-lists"),
        pytest.param(
            OpenAICompletions(), {"prompt": ["a"] * 2000, "n": 128}, MAX_COMPLETIONS, id="completions-capped-in-all"
        ),
        pytest.param(AnthropicMessages(), {"n": 4}, 1, id="messages-has-no-n"),
        pytest.param(OpenAIResponses(), {"n": 4}, 1, id="responses-has-no-n"),
    ],
)
def test_completions_billed(schema: ApiSchema, body: dict[str, Any], want: int) -> None:
    assert schema.completions(body) == want


def test_a_token_id_prompt_counts_as_one_message() -> None:
    """A list of token ids is one prompt: counted per token it passed ``limits.max_messages`` (2,000) unrouted."""
    assert OpenAICompletions().message_count({"prompt": list(range(5_000))}) == 1


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
TOOL_CALLS = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]


def _json_len(value: Any) -> int:
    return len(orjson.dumps(value))


@pytest.mark.parametrize(
    ("schema", "body", "chars"),
    [
        pytest.param(OpenAIChat(), {"messages": [_user("hi")], "tools": TOOLS}, 2 + _json_len(TOOLS), id="chat-tools"),
        pytest.param(
            OpenAIChat(),
            {"messages": [_user("hi"), {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}]},
            2 + _json_len(TOOL_CALLS),
            id="chat-tool-calls",
        ),
        pytest.param(
            OpenAIChat(),
            {"messages": [_user("hi")], "response_format": {"type": "json_object"}},
            2 + _json_len({"type": "json_object"}),
            id="chat-response-format",
        ),
        pytest.param(
            AnthropicMessages(), {"messages": [_user("hi")], "tools": TOOLS}, 2 + _json_len(TOOLS), id="messages-tools"
        ),
        pytest.param(
            AnthropicMessages(),
            {"messages": [_user([{"type": "document", "source": {}}, {"type": "text", "text": "hi"}])]},
            2 + ATTACHMENT_CHARS,
            id="messages-document",
        ),
        pytest.param(OpenAIResponses(), {"input": "hi", "tools": TOOLS}, 2 + _json_len(TOOLS), id="responses-tools"),
        pytest.param(
            OpenAIResponses(),
            {"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            2 + _json_len({"format": {"type": "json_schema", "schema": {"type": "object"}}}),
            id="responses-text-format",
        ),
        pytest.param(
            OpenAIResponses(),
            {"input": [_user([{"type": "input_file", "file_id": "f"}, {"type": "input_text", "text": "hi"}])]},
            2 + ATTACHMENT_CHARS,
            id="responses-file",
        ),
        pytest.param(
            OpenAIChat(),
            {"messages": [_user([{"type": "input_audio", "input_audio": {}}, {"type": "text", "text": "hi"}])]},
            2 + ATTACHMENT_CHARS,
            id="chat-audio",
        ),
    ],
)
def test_tools_and_tool_calls_count_for_size(schema: ApiSchema, body: dict[str, Any], chars: int) -> None:
    """Tool definitions and calls are billed input that fills the context window: an agent request of a few words
    and 50 KB of tools must not go to an 8k-window model (the context filter reads this estimate)."""
    assert schema.input_chars(body) == chars


HOSTILE: list[Any] = [
    {},
    {"input": None, "messages": None, "system": 5, "instructions": ["x"]},
    {"input": [[], {"content": {"text": "x"}}], "messages": [{"content": [None, 1, {"type": 2}]}]},
    {"messages": [_user([{"type": "tool_result", "content": {"type": "text"}}])]},
    {"input": [{"role": "user", "content": [{"type": "input_text", "text": None}]}]},
    {"input": [{"type": "function_call", "arguments": {"a": 1}}, {"type": "function_call_output", "output": 3}]},
]


ALL_SCHEMAS = sorted({s.name: s for s in SCHEMAS_BY_PATH.values()}.values(), key=lambda s: s.name)


@pytest.mark.parametrize("schema", ALL_SCHEMAS, ids=lambda s: s.name)
@pytest.mark.parametrize("body", HOSTILE)
def test_every_schema_reads_wrongly_typed_bodies_without_raising(schema: ApiSchema, body: dict[str, Any]) -> None:
    assert isinstance(schema.prompt_text(body), str)
    assert schema.input_chars(body) >= 0
    assert schema.message_count(body) >= 0
    assert schema.max_output_tokens(body) is None
    assert schema.completions(body) == 1
    if isinstance(schema, HasConversation):
        assert isinstance(schema.opening_text(body), str)


@pytest.mark.parametrize("schema", [OpenAIChat(), RESPONSES, MESSAGES], ids=lambda s: s.name)
def test_multi_turn_schemas_have_a_conversation_seed(schema: ApiSchema) -> None:
    assert isinstance(schema, HasConversation)


RESPONSES_TURNS: list[dict[str, Any]] = [
    _user("Name a cat."),
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Whiskers."}]},
    _user([{"type": "input_text", "text": "Another one."}]),
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Tom."}]},
    _user("And a dog?"),
]

_REPLY = {"role": "assistant", "content": "ok"}
_TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]}


@pytest.mark.parametrize(
    ("schema", "body", "want"),
    [
        pytest.param(OpenAIChat(), {"messages": [_user("task")]}, "", id="chat-one-turn"),
        pytest.param(OpenAIChat(), {"messages": [_user("task"), _REPLY, _user("more")]}, "task", id="chat-two-turns"),
        pytest.param(
            OpenAIChat(),
            {"messages": [{"role": "system", "content": "sys"}, _user([{"type": "text", "text": "a"}]), _user("b")]},
            "a",
            id="chat-content-parts-no-reply",
        ),
        pytest.param(
            OpenAIChat(),
            {"messages": [_user("task"), {"role": "tool", "content": "result"}, _REPLY]},
            "",
            id="chat-agent-loop-has-one-user-turn",
        ),
        pytest.param(
            MESSAGES, {"messages": [_user("task"), _TOOL_USE, _user([_tool_result("r")])]}, "task", id="messages-tools"
        ),
        pytest.param(
            MESSAGES, {"messages": [_user([_tool_result("r")]), _REPLY, _user("q")]}, "", id="messages-no-text"
        ),
        pytest.param(RESPONSES, {"input": "task"}, "", id="responses-string"),
        pytest.param(RESPONSES, {"input": RESPONSES_TURNS}, "Name a cat.", id="responses-turns"),
        pytest.param(
            RESPONSES,
            {"input": [_user("task"), {"type": "function_call", "name": "w"}, {"type": "function_call_output"}]},
            "",
            id="responses-agent-loop-has-one-user-turn",
        ),
    ],
)
def test_opening_text_is_the_first_user_turn_when_a_later_one_is_classified(
    schema: HasConversation, body: dict[str, Any], want: str
) -> None:
    assert schema.opening_text(body) == want


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param({"input": "Name a cat."}, "", id="string-input-has-no-reply-yet"),
        pytest.param({"input": RESPONSES_TURNS[:1]}, "", id="first-turn-has-no-reply-yet"),
        pytest.param({"input": RESPONSES_TURNS[:3]}, "Name a cat.\x1eWhiskers.", id="second-turn"),
        pytest.param({"input": RESPONSES_TURNS}, "Name a cat.\x1eWhiskers.", id="later-turns-keep-the-seed"),
        pytest.param(
            {"instructions": "Be brief.", "input": RESPONSES_TURNS[:3]},
            "Be brief.\x1eName a cat.\x1eWhiskers.",
            id="instructions-are-part-of-it",
        ),
        pytest.param(
            {"input": [_user("weather?"), {"type": "function_call", "name": "w", "arguments": "{}"}]},
            "weather?\x1ew\x1f{}",
            id="a-function-call-is-a-reply",
        ),
        pytest.param({"previous_response_id": "resp_1", "input": "And a dog?"}, "", id="continued-by-id"),
        pytest.param(
            {"input": [RESPONSES_TURNS[1], *RESPONSES_TURNS[:3]]},
            "Whiskers.\x1eName a cat.\x1eWhiskers.",
            id="an-assistant-greeting-is-not-a-reply",
        ),
    ],
)
def test_openai_responses_conversation_seed(body: dict[str, Any], want: str) -> None:
    assert RESPONSES.conversation_seed(body) == want


MESSAGES_TURNS: list[dict[str, Any]] = [
    _user("Name a cat."),
    {"role": "assistant", "content": [{"type": "text", "text": "Whiskers."}]},
    _user([{"type": "text", "text": "Another one."}]),
    {"role": "assistant", "content": "Tom."},
    _user("And a dog?"),
]


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param({"messages": MESSAGES_TURNS[:1]}, "", id="first-turn-has-no-reply-yet"),
        pytest.param({"messages": MESSAGES_TURNS[:3]}, "\x1eName a cat.\x1eWhiskers.", id="second-turn"),
        pytest.param({"messages": MESSAGES_TURNS}, "\x1eName a cat.\x1eWhiskers.", id="later-turns-keep-the-seed"),
        pytest.param(
            {"messages": [MESSAGES_TURNS[3], *MESSAGES_TURNS[:3]]},
            "\x1eTom.\x1eName a cat.\x1eWhiskers.",
            id="an-assistant-greeting-is-not-a-reply",
        ),
        pytest.param(
            {"system": [{"type": "text", "text": "Be brief."}], "messages": MESSAGES_TURNS[:3]},
            "Be brief.\x1eName a cat.\x1eWhiskers.",
            id="system-is-part-of-it",
        ),
        pytest.param(
            {
                "messages": [
                    _user("weather?"),
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {"c": 1}}]},
                    _user([_tool_result("sunny")]),
                ]
            },
            '\x1eweather?\x1e\x1ew\x1f{"c":1}',
            id="a-tool-use-is-a-reply",
        ),
    ],
)
def test_anthropic_messages_conversation_seed(body: dict[str, Any], want: str) -> None:
    assert MESSAGES.conversation_seed(body) == want


def test_anthropic_tool_use_input_deeper_than_orjson_can_write_counts_nothing() -> None:
    deep: Any = {}
    for _ in range(300):
        deep = {"a": deep}
    tool_use = {"type": "tool_use", "id": "t", "name": "w", "input": deep}
    body = {"messages": [_user("q"), {"role": "assistant", "content": [tool_use]}, _user("next")]}
    assert MESSAGES.input_chars(body) == len("q") + len("next")
    assert MESSAGES.conversation_seed(body) == "\x1eq\x1e\x1ew\x1f"


@pytest.mark.parametrize(("stream", "want"), [(True, True), (False, False), ("yes", False), (None, False)])
def test_what_a_decision_needs_outlives_the_parsed_body(stream: object, want: bool) -> None:
    """With capture off the handler drops the parsed body before classifying (it can take tens of MB while the
    classifier runs): the record's fields must not need it."""
    raw = orjson.dumps({"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "hi there"}]})
    parsed = parse_request("/v1/chat/completions", raw, {"auto"})
    assert isinstance(parsed, ParsedRequest)
    light = parsed.without_body()
    assert light.stream is want and not light.body
    assert dataclasses.replace(light, body=parsed.body) == parsed, "nothing but the body is dropped"


CHAT_TURNS: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    _user("Name a cat."),
    {"role": "assistant", "content": "Whiskers."},
    _user("Another one."),
]


@pytest.mark.parametrize(
    ("messages", "want"),
    [
        pytest.param(CHAT_TURNS[:2], "", id="first-turn-has-no-reply-yet"),
        pytest.param(CHAT_TURNS, "Be brief.\x1eName a cat.\x1eWhiskers.", id="second-turn"),
        pytest.param(
            [CHAT_TURNS[0], {"role": "assistant", "content": "Hi!"}, *CHAT_TURNS[1:]],
            "Be brief.\x1eHi!\x1eName a cat.\x1eWhiskers.",
            id="an-assistant-greeting-is-not-a-reply",
        ),
        pytest.param([CHAT_TURNS[0], {"role": "assistant", "content": "Hi!"}], "", id="only-a-greeting"),
    ],
)
def test_openai_chat_conversation_seed(messages: list[dict[str, Any]], want: str) -> None:
    assert OpenAIChat().conversation_seed({"messages": messages}) == want


def test_the_token_estimate_is_capped_where_the_decision_record_holds_it() -> None:
    """Millions of attachment parts (limits raised to what validation allows) overflowed the record's int32, and the
    request went out unrouted as "auto"; capped, it is past every window (no_eligible_model)."""
    assert estimate_tokens(4 * 2**40) == MAX_ESTIMATED_TOKENS == 2**31 - 1
    assert estimate_tokens(400) == 101
