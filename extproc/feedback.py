"""Feedback on recent decisions: a bounded store of what was decided, and the one validation + write path.

The gRPC ``Feedback`` method and ``POST /v1/feedback`` both call :meth:`FeedbackRecorder.submit`. A score is only
accepted for a decision this process made within ``feedback.decision_ttl_seconds``: the store is per process (with
several replicas, feedback must reach the replica that decided — the sidecar next to the Envoy that served the
request). Accepted feedback is appended to ``feedback.path`` through a :class:`~extproc.spool.Spool`; it holds ids,
model names, a number and times, never text from the request or the caller.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from classifier.jsonl import unit_score
from extproc.spool import Spool

__all__ = ["TIME_KEY", "DecisionEntry", "DecisionStore", "FeedbackRecorder", "FeedbackResult", "FeedbackStatus"]

TIME_KEY = "received_unix"
_DECISION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    """What feedback needs to know about one decision."""

    requested_model: str
    selected_model: str
    served_model: str
    """The model that answered: the selected one, or in shadow mode the requested (or default) one."""
    tenant: str | None
    decided_unix: float


class DecisionStore:
    """Decision id -> :class:`DecisionEntry`, bounded in size (oldest first out) and age; shared by all streams.

    Thread-safe: streams write on the event loop, the HTTP endpoint reads on its own threads. Every operation is
    a dict update under a lock held for microseconds.
    """

    def __init__(self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, DecisionEntry]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def remember(self, decision_id: str, entry: DecisionEntry) -> None:
        """Keep ``entry`` for the TTL; drops expired entries and, over the bound, the oldest ones."""
        now = self._clock()
        with self._lock:
            entries = self._entries
            entries[decision_id] = (now + self._ttl, entry)
            entries.move_to_end(decision_id)
            while entries:
                first_expires, _ = next(iter(entries.values()))
                if first_expires > now and len(entries) <= self._max:
                    break
                entries.popitem(last=False)

    def get(self, decision_id: str) -> DecisionEntry | None:
        """The entry, unless it is unknown or expired."""
        with self._lock:
            found = self._entries.get(decision_id)
            if found is None:
                return None
            expires, entry = found
            if expires <= self._clock():
                del self._entries[decision_id]
                return None
            return entry


class FeedbackStatus(enum.Enum):
    """How a submission ended; each maps to one gRPC status and one HTTP status."""

    RECORDED = "recorded"
    INVALID = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    """The writer's queue is full (or the router is stopping): retry later."""


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """The outcome of one submission; ``message`` names the field at fault, and never echoes the caller's input."""

    status: FeedbackStatus
    message: str = ""
    decision_id: str = ""
    model: str = ""
    score: float = 0.0


def _invalid(message: str) -> FeedbackResult:
    return FeedbackResult(FeedbackStatus.INVALID, message)


class FeedbackRecorder:
    """Validates one piece of feedback against the decision store and queues it for the feedback file."""

    def __init__(
        self,
        decisions: DecisionStore,
        spool: Spool,
        catalog: Callable[[], Collection[str]],
        wall_clock: Callable[[], float] = time.time,
        on_result: Callable[[str, str], None] = lambda result, source: None,
    ) -> None:
        """``on_result(status, source)`` counts every submission (``model_router_feedback_total``)."""
        self._decisions = decisions
        self._spool = spool
        self._catalog = catalog
        self._wall_clock = wall_clock
        self._on_result = on_result

    def submit(self, decision_id: Any, score: Any, model: Any = None, source: str = "grpc") -> FeedbackResult:
        """Record ``score`` for ``model`` (default: the model that served) of decision ``decision_id``.

        Values come straight from the caller (JSON or protobuf) and are type-checked here, in one place.
        """
        result = self._submit(decision_id, score, model, source)
        self._on_result(result.status.value, source)
        return result

    def _submit(self, decision_id: Any, score: Any, model: Any, source: str) -> FeedbackResult:
        if not isinstance(decision_id, str) or not decision_id:
            return _invalid("decision_id: required")
        if not _DECISION_ID.match(decision_id):
            return _invalid("decision_id: not a decision id")
        if score is None:
            return _invalid("score: required")
        checked = unit_score(score)
        if checked is None:
            return _invalid("score: must be a number in [0, 1]")
        if model is not None and not isinstance(model, str):
            return _invalid("model: must be a string")
        if model is not None and model not in self._catalog():
            return _invalid("model: not a catalog model")
        entry = self._decisions.get(decision_id)
        if entry is None:
            return FeedbackResult(
                FeedbackStatus.NOT_FOUND,
                "decision_id: no recent decision with this id on this router (unknown, expired, or another replica's)",
            )
        chosen = model or entry.served_model
        line = {
            "decision_id": decision_id,
            "model": chosen,
            "score": checked,
            TIME_KEY: round(self._wall_clock(), 3),
            "decided_unix": entry.decided_unix,
            "requested_model": entry.requested_model,
            "selected_model": entry.selected_model,
            "tenant": entry.tenant,
            "source": source,
        }
        if not self._spool.offer(line):
            return FeedbackResult(FeedbackStatus.UNAVAILABLE, "feedback queue full; retry later")
        return FeedbackResult(FeedbackStatus.RECORDED, "", decision_id, chosen, checked)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer."""
        self._spool.close(timeout)
