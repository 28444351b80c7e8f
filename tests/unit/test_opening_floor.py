"""The conversation's opening turn sets its floor when no floor is remembered (``StreamHandler._replays_opening``).

Without a session header the first turn's decision cannot be remembered (no reply identifies the conversation yet),
so the follow-up of a hard opening ("Are you sure?") used to go to the cheap model. The fake classifier reads
"hard" as gpt-4o, "medium" as gpt-4o-mini and anything else as llama-3.1-8b-instruct.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from classifier.model import DifficultyModel, Prediction
from extproc.conversations import ConversationMemory
from extproc.record import DecisionRecord, Outcome
from extproc.stream import StreamHandler
from tests.fakes import FakeDifficultyModel, RecordingSink, demo_settings, fixed_clock, inline_classify, snapshot
from tests.fakes import sequential_ids as ids
from tests.protocol import chat_headers, replay


class FailsOn(FakeDifficultyModel):
    """Fails on texts containing ``marker`` (or returns NaN for them), classifies the rest as the fake does."""

    def __init__(self, marker: str, nan: bool = False) -> None:
        super().__init__()
        self.marker, self.nan = marker, nan

    def predict(self, text: str) -> Prediction:
        if self.marker in text:
            self.seen.append(text)
            if self.nan:
                return Prediction(float("nan"), 0.5)
            raise RuntimeError("down")
        return super().predict(text)


def chat(*turns: Any, system: str | None = None) -> dict[str, Any]:
    """A chat body: user turns with a canned assistant reply between them."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, content in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": f"reply {i}"})
        messages.append({"role": "user", "content": content})
    return {"model": "auto", "messages": messages}


async def decide(
    body: dict[str, Any],
    model: FakeDifficultyModel | None = None,
    memory: ConversationMemory | None = None,
    path: str = "/v1/chat/completions",
    **policy: object,
) -> tuple[DecisionRecord, RecordingSink]:
    sink = RecordingSink()
    snap = snapshot(model, demo_settings(**policy) if policy else None)
    handler = StreamHandler(snap, inline_classify, sink, ids(), fixed_clock(), memory=memory)
    await replay(handler, chat_headers(path), orjson.dumps(body))
    return sink.records[0], sink


TOOL_LOOP = {
    "model": "auto",
    "max_tokens": 512,
    "messages": [
        {"role": "user", "content": "a hard refactoring task"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "read", "input": {"f": "a.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "def f(): pass"}]},
    ],
}
SPEC_THEN_GO = {
    "model": "auto",
    "messages": [{"role": "user", "content": "a hard spec"}, {"role": "user", "content": "go"}],
}
RESPONSES = {
    "model": "auto",
    "input": [
        {"role": "user", "content": "a hard proof"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "..."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "are you sure?"}]},
    ],
}


@pytest.mark.parametrize(
    ("body", "path", "want", "reason"),
    [
        pytest.param(chat("a hard question", "are you sure?"), "/v1/chat/completions", "gpt-4o", "sticky_conversation"),
        pytest.param(chat("hi", "are you sure?"), "/v1/chat/completions", "llama-3.1-8b-instruct", None, id="easy"),
        pytest.param(chat("a medium one", "a hard one"), "/v1/chat/completions", "gpt-4o", None, id="harder-later"),
        pytest.param(
            chat("hi", "thanks", system="a hard system prompt"),
            "/v1/chat/completions",
            "llama-3.1-8b-instruct",
            None,
            id="system-not-read",
        ),
        pytest.param(
            {
                "model": "auto",
                "messages": [{"role": "user", "content": "a hard spec"}, {"role": "user", "content": "ok"}],
            },
            "/v1/chat/completions",
            "gpt-4o",
            "sticky_conversation",
            id="two-user-messages-no-reply",
        ),
        pytest.param(TOOL_LOOP, "/v1/messages", "gpt-4o", "sticky_conversation", id="anthropic-tool-loop"),
        pytest.param(
            {**chat("hi", "thanks"), "system": "a hard system prompt", "max_tokens": 64},
            "/v1/messages",
            "llama-3.1-8b-instruct",
            None,
            id="anthropic-system-not-read",
        ),
        pytest.param(
            {"model": "auto", "instructions": "a hard task", "input": chat("hi", "thanks")["messages"]},
            "/v1/responses",
            "llama-3.1-8b-instruct",
            None,
            id="responses-instructions-not-read",
        ),
        pytest.param(RESPONSES, "/v1/responses", "gpt-4o", "sticky_conversation", id="responses"),
    ],
)
async def test_the_opening_turn_is_the_conversations_floor(
    body: dict[str, Any], path: str, want: str, reason: str | None
) -> None:
    """The classified turn stays the last one (its difficulty is the record's); the opening only raises the floor."""
    model = FakeDifficultyModel()
    record, _ = await decide(body, model, path=path)
    assert record.selected_model == want
    if reason is not None:
        assert record.reason == reason
        assert record.difficulty == -3.0, "the record shows the classified turn's difficulty, not the opening's"
    assert len(model.seen) == 2, "the opening and the last turn, nothing else (not the system prompt)"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(chat("a hard question"), id="one-turn"),
        pytest.param({"model": "auto", "messages": [{"role": "user", "content": "a hard question"}]}, id="no-reply"),
        pytest.param(chat([{"type": "image_url", "image_url": {"url": "x"}}], "easy"), id="opening-without-text"),
        pytest.param(chat("same text", "same text"), id="opening-equals-the-turn"),
    ],
)
async def test_nothing_to_replay_classifies_once(body: dict[str, Any]) -> None:
    model = FakeDifficultyModel()
    await decide(body, model)
    assert len(model.seen) == 1


async def test_stickiness_off_replays_nothing() -> None:
    model = FakeDifficultyModel()
    settings = demo_settings().policy.stickiness.model_copy(update={"enabled": False})
    record, _ = await decide(chat("a hard question", "are you sure?"), model, stickiness=settings.model_dump())
    assert (record.selected_model, record.reason) == ("llama-3.1-8b-instruct", "cheapest_meeting_target")
    assert model.seen == ["are you sure?"]


async def test_the_opening_is_replayed_once_per_conversation() -> None:
    """The second turn replays the opening and remembers the floor under the conversation's key; the third finds it."""
    model, memory = FakeDifficultyModel(), ConversationMemory(100, 3600)
    second, _ = await decide(chat("a hard question", "are you sure?"), model, memory)
    third, _ = await decide(chat("a hard question", "are you sure?", "thanks"), model, memory)
    assert (second.selected_model, third.selected_model) == ("gpt-4o", "gpt-4o")
    assert third.reason == "sticky_conversation"
    assert model.seen == ["are you sure?", "a hard question", "thanks"]


@pytest.mark.parametrize("nan", [False, True], ids=["raises", "nan"])
async def test_an_opening_the_classifier_fails_on_sets_no_floor_and_is_counted(nan: bool) -> None:
    """The turn itself is still decided on its merits (not a fallback): a floor is an addition, never a risk."""
    record, sink = await decide(chat("a hard opening", "are you sure?"), FailsOn("opening", nan=nan))
    assert (record.outcome, record.selected_model) == (Outcome.ROUTED, "llama-3.1-8b-instruct")
    assert sink.errors == ["opening_failed"]


async def test_a_turn_the_classifier_fails_on_falls_back_no_lower_than_the_opening() -> None:
    body = chat("a hard question", "the broken turn")
    record, sink = await decide(body, FailsOn("broken"), default_model="gpt-4o-mini")
    assert (record.outcome, record.reason, record.selected_model) == (Outcome.FALLBACK, "classifier_failed", "gpt-4o")
    assert sink.errors == []


async def test_a_turn_without_text_falls_back_no_lower_than_the_opening() -> None:
    image_only = [{"type": "image_url", "image_url": {"url": "x"}}]
    record, _ = await decide(chat("a hard question", image_only), default_model="gpt-4o-mini")
    assert (record.reason, record.selected_model) == ("no_prompt_text", "gpt-4o")


async def test_a_remembered_floor_is_not_replayed() -> None:
    """With a session header the first turn's floor is remembered: the later turn reads it and classifies once."""
    model, memory = FakeDifficultyModel(), ConversationMemory(100, 3600)
    sticky = demo_settings().policy.stickiness.model_copy(update={"session_header": "x-session-id"})
    sink = RecordingSink()
    snap = snapshot(model, demo_settings(stickiness=sticky.model_dump()))
    for body in (chat("a hard question"), chat("a hard question", "are you sure?")):
        handler = StreamHandler(snap, inline_classify, sink, ids(), fixed_clock(), memory=memory)
        await replay(handler, chat_headers(**{"x-session-id": "s1"}), orjson.dumps(body))
    assert [r.selected_model for r in sink.records] == ["gpt-4o", "gpt-4o"]
    assert model.seen == ["a hard question", "are you sure?"]


async def test_a_turn_whose_opening_failed_remembers_no_floor() -> None:
    """Its choice was made without the opening's floor: remembered, it would stand in for that floor for good. The
    next turn finds no floor and replays the opening again."""

    class FailsOnce(FakeDifficultyModel):
        def predict(self, text: str) -> Prediction:
            if text == "a hard question" and "a hard question" not in self.seen:
                self.seen.append(text)
                raise TimeoutError("missed the deadline")
            return super().predict(text)

    model, memory = FailsOnce(), ConversationMemory(100, 3600)
    second, sink = await decide(chat("a hard question", "are you sure?"), model, memory)
    third, _ = await decide(chat("a hard question", "are you sure?", "check again"), model, memory)
    assert (second.selected_model, sink.errors) == ("llama-3.1-8b-instruct", ["opening_failed"])
    assert (third.selected_model, third.reason) == ("gpt-4o", "sticky_conversation")
    assert model.seen == ["are you sure?", "a hard question", "check again", "a hard question"]


async def test_the_opening_and_the_turn_are_classified_at_once() -> None:
    """One deadline bounds the wait for both: neither classification waits for the other to finish. Each call here
    returns only once both have started, so classifying one after the other would stall (the guard then fails it)."""
    started: list[str] = []
    both = asyncio.Event()

    async def together(model: DifficultyModel, text: str, timeout: float) -> Prediction:
        started.append(text)
        if len(started) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 10.0)  # a guard against a hung test, not a timing
        return model.predict(text)

    sink = RecordingSink()
    handler = StreamHandler(snapshot(), together, sink, ids(), fixed_clock())
    await replay(handler, chat_headers(), orjson.dumps(chat("a hard question", "are you sure?")))
    assert sorted(started) == ["a hard question", "are you sure?"]
    assert (sink.records[0].reason, sink.errors) == ("sticky_conversation", [])


async def test_conversations_opened_by_the_same_assistant_greeting_do_not_share_a_floor() -> None:
    """An app's canned greeting before the user's first message is the same in all its conversations: the key
    is made from the first reply to a user turn, not from the greeting."""
    memory = ConversationMemory(100, 3600)
    greeting = [{"role": "system", "content": "Be kind."}, {"role": "assistant", "content": "Hi! How can I help?"}]

    def body(*turns: str) -> dict[str, Any]:
        return {"model": "auto", "messages": greeting + chat(*turns)["messages"]}

    hard, _ = await decide(body("a hard question", "are you sure?"), memory=memory)
    other, _ = await decide(body("hi", "thanks"), memory=memory)
    assert (hard.selected_model, other.selected_model) == ("gpt-4o", "llama-3.1-8b-instruct")


async def test_shadow_decisions_follow_a_conversation_as_live_ones_would() -> None:
    """Shadow mode applies nothing, but its decisions are the estimate of live routing: a turn it would have escalated
    keeps the conversation's later turns there, and the opening is replayed once, not on every turn."""
    model, memory = FakeDifficultyModel(), ConversationMemory(100, 3600)
    second, _ = await decide(chat("hi", "a hard question"), model, memory, shadow=True)
    third, _ = await decide(chat("hi", "a hard question", "thanks"), model, memory, shadow=True)
    assert (second.outcome, second.selected_model) == (Outcome.SHADOW, "gpt-4o")
    assert (third.outcome, third.selected_model, third.reason) == (Outcome.SHADOW, "gpt-4o", "sticky_conversation")
    assert model.seen == ["a hard question", "hi", "thanks"]


async def test_shadow_floors_do_not_hold_live_decisions() -> None:
    """The memory outlives a reload: once shadow mode is off, a conversation must not be held on a model that only a
    shadow decision chose (nobody was served it)."""
    memory = ConversationMemory(100, 3600)
    shadow, _ = await decide(chat("hi", "a hard question"), memory=memory, shadow=True)
    live, _ = await decide(chat("hi", "a hard question", "thanks"), memory=memory)
    assert (shadow.outcome, shadow.selected_model) == (Outcome.SHADOW, "gpt-4o")
    assert (live.outcome, live.selected_model, live.reason) == (
        Outcome.ROUTED,
        "llama-3.1-8b-instruct",
        "cheapest_meeting_target",
    )


def _tool_loop(*results: str) -> dict[str, Any]:
    """An Anthropic agent loop: the task, then one tool call and result per ``results``."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "refactor the module"}]
    for i, result in enumerate(results):
        use = {"type": "tool_use", "id": f"t{i}", "name": "run", "input": {"step": i}}
        messages.append({"role": "assistant", "content": [use]})
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": result}]}
        )
    return {"model": "auto", "max_tokens": 256, "messages": messages}


async def test_an_agent_that_rewrites_old_tool_results_keeps_its_floor() -> None:
    """Agent clients truncate or replace old tool results to fit the context window; the key ends at the first
    exchange (the task and the first tool call), so the floor a hard step raised survives the rewrite."""
    memory = ConversationMemory(100, 3600)
    hard, _ = await decide(_tool_loop("ok", "a hard stack trace"), memory=memory, path="/v1/messages")
    rewritten, _ = await decide(_tool_loop("[removed]", "[removed]", "done"), memory=memory, path="/v1/messages")
    assert hard.selected_model == "gpt-4o"
    assert (rewritten.selected_model, rewritten.reason) == ("gpt-4o", "sticky_conversation")
