"""Conversation stickiness: once a conversation was escalated to a stronger model, later turns stay at least as strong.

Switching a conversation to a weaker model mid-way changes the voice, the formatting and often the quality of the
answers the user has been building on. The memory maps a conversation key (the session header if the config names
one, else a hash of the conversation's first messages, always prefixed by the tenant) to the strongest model used so
far, by name: a reload that recalibrates abilities then moves the floor with its model (a floor kept as a number
sent every live conversation on a model whose ability dropped by 0.01 to a dearer one). It is bounded (LRU) and
entries expire after a TTL. It lives in one router process: with several workers, a
conversation is sticky per worker (a session header with consistent hashing in Envoy keeps it on one worker).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = ["ConversationMemory", "Floor", "Floors", "ReadOnlyMemory", "conversation_key", "stronger"]


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


class Floor(NamedTuple):
    """The strongest model a conversation used, and its ability then: the floor is that model's ability in the running
    catalog, or this one if a reload removed the model."""

    model: str
    ability: float


def stronger(held: Floor | None, used: Floor) -> Floor:
    """The floor after a turn used ``used``: it, or ``held`` if that is more able. Both at their abilities in the
    running catalog (``held``'s as the handler resolved it): a remembered ability from before a reload would keep a
    model the reload made weaker over the stronger one just used, or drop a raised one for a capped turn's."""
    return held if held is not None and held.ability > used.ability else used


class Floors(Protocol):
    """What a request handler needs of the memory: read a conversation's floor, record a decision's model."""

    def floor(self, key: str) -> Floor | None: ...

    def remember(self, key: str, floor: Floor, ttl_seconds: float | None = None) -> None: ...


class ConversationMemory:
    """LRU map of conversation key -> the strongest model used, with a time-to-live."""

    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Floor, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def floor(self, key: str) -> Floor | None:
        """The strongest model this conversation used, unless it expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        floor, expires = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        return floor

    def remember(self, key: str, floor: Floor, ttl_seconds: float | None = None) -> None:
        """Record ``floor`` as the conversation's (see :func:`stronger`: only the caller knows the running abilities).

        ``ttl_seconds`` (default: the one given at construction) is the running config's, so a reloaded
        ``stickiness.ttl_seconds`` applies from the next turn of every conversation; only the size needs a restart.
        """
        ttl = self._ttl if ttl_seconds is None else ttl_seconds
        self._entries[key] = (floor, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class ReadOnlyMemory:
    """Reads floors from ``memory`` and records nothing: a dry-run decision (``explain``) shows what the live path
    would do for a conversation without raising that conversation's later turns."""

    def __init__(self, memory: Floors) -> None:
        self._memory = memory

    def floor(self, key: str) -> Floor | None:
        """The conversation's floor in the wrapped memory."""
        return self._memory.floor(key)

    def remember(self, key: str, floor: Floor, ttl_seconds: float | None = None) -> None:
        """Record nothing."""
