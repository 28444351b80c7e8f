"""Conversation memory: raises only, expires, stays bounded; keys separate tenants."""

from __future__ import annotations

import pytest

from extproc.conversations import ConversationMemory, Floor, conversation_key, stronger


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("held", "used", "want"),
    [
        (None, Floor("b", 0.4), Floor("b", 0.4)),
        (Floor("a", 0.9), Floor("b", 0.4), Floor("a", 0.9)),  # only ever rises
        (Floor("a", 0.3), Floor("b", 0.4), Floor("b", 0.4)),  # a reload lowered a (0.5 -> 0.3): b holds now
        (Floor("a", 0.9), Floor("e", 0.6), Floor("a", 0.9)),  # raised by a reload (0.5 -> 0.9): a capped turn keeps it
    ],
)
def test_the_stronger_floor_at_running_abilities(held: Floor | None, used: Floor, want: Floor) -> None:
    """Found by review: comparing with the ability a model had when it was used kept a model a reload made weaker
    over the stronger one just used (the next turn could go weaker still)."""
    assert stronger(held, used) == want


def test_floor_expires() -> None:
    clock = Clock()
    memory = ConversationMemory(max_entries=10, ttl_seconds=60, clock=clock)
    memory.remember("k", Floor("strong", 3.0))
    assert memory.floor("k") == Floor("strong", 3.0)
    clock.now = 59.0
    assert memory.floor("k") == Floor("strong", 3.0)
    clock.now = 61.0
    assert memory.floor("k") is None and len(memory) == 0


def test_bounded_lru() -> None:
    memory = ConversationMemory(max_entries=2, ttl_seconds=60, clock=Clock())
    memory.remember("a", Floor("m", 1.0))
    memory.remember("b", Floor("m", 1.0))
    memory.remember("a", Floor("n", 2.0))  # refreshes a
    memory.remember("c", Floor("m", 1.0))  # evicts b, the least recently used
    assert memory.floor("b") is None and memory.floor("a") == Floor("n", 2.0) and len(memory) == 2


def test_keys() -> None:
    assert conversation_key("t1", "s", "x") != conversation_key("t2", "s", "x")
    assert conversation_key(None, "s", "x") == conversation_key(None, "s", "y")  # the session id wins
    assert conversation_key(None, None, "x") != conversation_key(None, None, "y")
    assert conversation_key(None, None, "") is None
