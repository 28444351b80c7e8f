"""Conversation stickiness: once a conversation was escalated to a stronger model, later turns stay at least as strong.

Switching a conversation to a weaker model mid-way changes the voice, the formatting and often the quality of the
answers the user has been building on. The memory maps a conversation key (the session header if the config names
one, else a hash of the conversation's first messages, always prefixed by the tenant) to the strongest ability used
so far. It is bounded (LRU) and entries expire after a TTL. It lives in one router process: with several workers, a
conversation is sticky per worker (a session header with consistent hashing in Envoy keeps it on one worker).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

__all__ = ["ConversationMemory", "Floors", "ReadOnlyMemory", "conversation_key"]


def conversation_key(tenant: str | None, session: str | None, seed: str, shadow: bool = False) -> str | None:
    """A fixed-size key from the session id if there is one, else the conversation seed; None if neither.

    ``shadow`` decisions get keys of their own: their floors are choices nobody was served, and must not hold a
    conversation once shadow mode is switched off (the memory outlives a reload)."""
    if session:
        material = "s\x00" + session
    elif seed:
        material = "c\x00" + seed
    else:
        return None
    mode = "shadow\x00" if shadow else ""
    return hashlib.blake2b(f"{mode}{tenant or ''}\x00{material}".encode(), digest_size=16).hexdigest()


class Floors(Protocol):
    """What a request handler needs of the memory: read a conversation's floor, record a decision's model."""

    def floor(self, key: str) -> float | None: ...

    def remember(self, key: str, ability: float, ttl_seconds: float | None = None) -> None: ...


class ConversationMemory:
    """LRU map of conversation key -> the strongest ability used, with a time-to-live."""

    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def floor(self, key: str) -> float | None:
        """The strongest ability this conversation used, unless it expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        ability, expires = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        return ability

    def remember(self, key: str, ability: float, ttl_seconds: float | None = None) -> None:
        """Record that the conversation used a model of ``ability`` (only ever raises the floor).

        ``ttl_seconds`` (default: the one given at construction) is the running config's, so a reloaded
        ``stickiness.ttl_seconds`` applies from the next turn of every conversation; only the size needs a restart.
        """
        previous = self.floor(key)
        ttl = self._ttl if ttl_seconds is None else ttl_seconds
        self._entries[key] = (max(ability, previous) if previous is not None else ability, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class ReadOnlyMemory:
    """Reads floors from ``memory`` and records nothing: a dry-run decision (``explain``) shows what the live path
    would do for a conversation without raising that conversation's later turns."""

    def __init__(self, memory: Floors) -> None:
        self._memory = memory

    def floor(self, key: str) -> float | None:
        """The conversation's floor in the wrapped memory."""
        return self._memory.floor(key)

    def remember(self, key: str, ability: float, ttl_seconds: float | None = None) -> None:
        """Record nothing."""
