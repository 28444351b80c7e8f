"""Conversation memory: raises only, expires, stays bounded; keys separate tenants."""

from __future__ import annotations

from extproc.conversations import ConversationMemory, Floor, conversation_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_floor_only_rises_and_expires() -> None:
    clock = Clock()
    memory = ConversationMemory(max_entries=10, ttl_seconds=60, clock=clock)
    memory.remember("k", Floor("strong", 3.0))
    memory.remember("k", Floor("weak", 1.0))
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
