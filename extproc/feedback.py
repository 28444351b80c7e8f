"""Feedback on recent decisions: a bounded store of what was decided, and the one validation + write path.

The gRPC ``Feedback`` method (:meth:`FeedbackRecorder.submit_async`) and ``POST /v1/feedback``
(:meth:`FeedbackRecorder.submit`) share one validation and write path. A score is only
accepted for a decision made within ``feedback.decision_ttl_seconds``: one this process made (the store is per
process), or one whose signed feedback token (``extproc/feedback_token.py``) carries it, which lets any replica
holding the key accept feedback for another replica's decisions. Accepted feedback is appended to
``feedback.path`` through a :class:`~extproc.spool.Spool`; it holds ids, model names, a number and times, never
text from the request or the caller. The caller is answered "recorded" only once the line is appended: a score lost
to a full disk is answered "unavailable" (retry) instead, and does not count towards the decision's cap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import functools
import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from classifier.jsonl import unit_score
from extproc.feedback_token import TokenError, TokenSigner
from extproc.spool import Spool

__all__ = [
    "IDEMPOTENCY_HASH_KEY",
    "TIME_KEY",
    "DecisionEntry",
    "DecisionStore",
    "FeedbackRecorder",
    "FeedbackResult",
    "FeedbackStatus",
    "idempotency_key_hash",
]

TIME_KEY = "received_unix"
WRITE_WAIT_SECONDS = 5.0
"""How long a submission waits for its line to be appended before answering "unavailable"."""
_DECISION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
IDEMPOTENCY_HASH_KEY = "idempotency_key_hash"
"""The feedback line's field for a score's idempotency key, kept as :func:`idempotency_key_hash`."""


def idempotency_key_hash(key: str) -> str:
    """What the router keeps of an idempotency key: a digest, so the feedback file (kept without a TTL) holds no
    text a caller chose (a key could carry anything); equal keys give equal digests, all that deduplication needs."""
    return hashlib.blake2b(key.encode(), digest_size=16, person=b"mr-idempotency").hexdigest()


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    """What feedback needs to know about one decision."""

    requested_model: str
    selected_model: str
    served_model: str
    """The model that answered: the selected one, or in shadow mode the requested (or default) one."""
    tenant: str | None
    decided_unix: float

    def token_fields(self, decision_id: str) -> dict[str, Any]:
        """What a feedback token carries (short keys: the token is a response header)."""
        return {
            "d": decision_id,
            "r": self.requested_model,
            "s": self.selected_model,
            "v": self.served_model,
            "t": self.tenant,
            "u": self.decided_unix,
        }

    @classmethod
    def from_token_fields(cls, fields: dict[str, Any]) -> tuple[str, DecisionEntry]:
        """The decision id and entry of verified token fields; ``TokenError`` if a field is missing or mistyped."""
        names = ("d", "r", "s", "v")
        if not all(isinstance(fields.get(k), str) for k in names) or not isinstance(fields.get("u"), (int, float)):
            raise TokenError("not a feedback token")
        tenant = fields.get("t")
        if tenant is not None and not isinstance(tenant, str):
            raise TokenError("not a feedback token")
        entry = cls(fields["r"], fields["s"], fields["v"], tenant, float(fields["u"]))
        return fields["d"], entry


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
        self._scored: OrderedDict[str, tuple[float, int]] = OrderedDict()
        """Decision id -> accepted scores so far (ids from tokens too), under the same bounds as the entries."""
        self._keyed: OrderedDict[str, tuple[float, dict[tuple[str, str], float]]] = OrderedDict()
        """Decision id -> (model, idempotency key) -> the score written under it, under the same bounds (each was
        one admitted score, so at most ``max_scores_per_decision`` per decision)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def remember(self, decision_id: str, entry: DecisionEntry) -> None:
        """Keep ``entry`` for the TTL; drops expired entries and, over the bound, the oldest ones."""
        now = self._clock()
        with self._lock:
            self._entries[decision_id] = (now + self._ttl, entry)
            self._entries.move_to_end(decision_id)
            self._prune(self._entries, now)

    def _prune(self, table: OrderedDict[str, Any], now: float) -> None:
        """Drop expired entries and, over the bound, the oldest ones (insertion order is expiry order)."""
        while table:
            first_expires, _ = next(iter(table.values()))
            if first_expires > now and len(table) <= self._max:
                break
            table.popitem(last=False)

    def admit_score(self, decision_id: str, limit: int) -> bool:
        """Count one more score for ``decision_id``; False (and not counted) once ``limit`` were admitted: one
        decision's scores must not flood the feedback file and rotate everyone else's out of it."""
        now = self._clock()
        with self._lock:
            expires, count = self._scored.get(decision_id, (now + self._ttl, 0))
            if count >= limit:
                return False
            self._scored[decision_id] = (expires, count + 1)
            self._prune(self._scored, now)
            return True

    def written_score(self, decision_id: str, model: str, key: str) -> float | None:
        """The score written for ``decision_id`` and ``model`` under ``key``, if this process wrote one."""
        with self._lock:
            found = self._keyed.get(decision_id)
            return None if found is None else found[1].get((model, key))

    def remember_written(self, decision_id: str, model: str, key: str, score: float) -> None:
        """``score`` was written under ``key``: a retry with that key is answered without writing it again."""
        now = self._clock()
        with self._lock:
            expires, keys = self._keyed.get(decision_id, (now + self._ttl, {}))
            keys.setdefault((model, key), score)
            self._keyed[decision_id] = (expires, keys)
            self._prune(self._keyed, now)

    def take_back_score(self, decision_id: str) -> None:
        """Undo one :meth:`admit_score` (the score was not written after all)."""
        with self._lock:
            found = self._scored.get(decision_id)
            if found is not None and found[1] > 0:
                self._scored[decision_id] = (found[0], found[1] - 1)

    def answered_by(self, decision_id: str, model: str) -> None:
        """Record that ``model`` answered instead (an upstream fallback); its expiry is unchanged."""
        with self._lock:
            found = self._entries.get(decision_id)
            if found is not None:
                expires, entry = found
                self._entries[decision_id] = (expires, dataclasses.replace(entry, served_model=model))

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
    """The score was not written: the writer's queue is full, the router is stopping, or the write failed (or was
    not confirmed in time). Retry later."""
    TOO_MANY = "resource_exhausted"
    """This decision already has ``feedback.max_scores_per_decision`` scores."""


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


def _resolve(written: concurrent.futures.Future[bool], on_written: Callable[[], None] | None, ok: bool) -> None:
    """The spool's callback (writer thread): ``on_written`` runs once the line is written, even if the caller was
    already answered (a future given up on, by a timeout or a cancelled wait, is left alone)."""
    if ok and on_written is not None:
        on_written()
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        written.set_result(ok)


class FeedbackRecorder:
    """Validates one piece of feedback against the decision store and queues it for the feedback file."""

    def __init__(
        self,
        decisions: DecisionStore,
        spool: Spool,
        catalog: Callable[[], Collection[str]],
        wall_clock: Callable[[], float] = time.time,
        on_result: Callable[[str, str], None] = lambda result, source: None,
        signer: TokenSigner | None = None,
        token_ttl_seconds: float = 3600.0,
        max_scores_per_decision: int = 10,
        write_wait_seconds: float = WRITE_WAIT_SECONDS,
    ) -> None:
        """``on_result(status, source)`` counts every submission (``model_router_feedback_total``); ``signer``
        verifies feedback tokens (None: tokens are refused), accepted ``token_ttl_seconds`` after the decision;
        past ``max_scores_per_decision`` accepted scores, a decision's feedback is refused; a submission waits up to
        ``write_wait_seconds`` for its line to be appended."""
        self._decisions = decisions
        self._spool = spool
        self._catalog = catalog
        self._wall_clock = wall_clock
        self._on_result = on_result
        self._signer = signer
        self._token_ttl = token_ttl_seconds
        self._max_scores = max_scores_per_decision
        self._write_wait = write_wait_seconds

    def submit(
        self,
        decision_id: Any,
        score: Any,
        model: Any = None,
        source: str = "grpc",
        token: Any = None,
        idempotency_key: Any = None,
    ) -> FeedbackResult:
        """Record ``score`` for ``model`` (default: the model that served) of decision ``decision_id``, or of the
        decision a feedback ``token`` carries (then ``decision_id`` may be omitted, and must match if given).
        ``idempotency_key``, if given: a retry of a score this process wrote (even after answering it 503) gets the
        written score back and writes nothing; else the key is written with the score, and ``model-router outcomes``
        counts one score per decision, model and key.

        Values come straight from the caller (JSON or protobuf) and are type-checked here, in one place. Blocks
        until the line is appended (at most ``write_wait_seconds``): for threads, not the event loop.
        """
        result, written = self._submit(decision_id, score, model, source, token, idempotency_key)
        ok = None
        if written is not None:
            with contextlib.suppress(TimeoutError):  # concurrent.futures' TimeoutError is the builtin since 3.11
                ok = written.result(self._write_wait)
        return self._finish(result, written, ok, source)

    async def submit_async(
        self,
        decision_id: Any,
        score: Any,
        model: Any = None,
        source: str = "grpc",
        token: Any = None,
        idempotency_key: Any = None,
    ) -> FeedbackResult:
        """:meth:`submit` for the event loop: waits for the write without blocking it."""
        result, written = self._submit(decision_id, score, model, source, token, idempotency_key)
        ok = None
        if written is not None:
            with contextlib.suppress(TimeoutError):
                ok = await asyncio.wait_for(asyncio.wrap_future(written), self._write_wait)
        return self._finish(result, written, ok, source)

    def _finish(
        self, result: FeedbackResult, written: concurrent.futures.Future[bool] | None, ok: bool | None, source: str
    ) -> FeedbackResult:
        """Count and return the answer: ``result`` itself if nothing was queued, else what the write came to."""
        if written is not None:
            result = self._settle(result, ok)
        self._on_result(result.status.value, source)
        return result

    def _settle(self, queued: FeedbackResult, ok: bool | None) -> FeedbackResult:
        """The answer once the writer has spoken: ``ok`` True (written), False (lost) or None (not yet known)."""
        if ok:
            return queued
        if ok is False:
            self._decisions.take_back_score(queued.decision_id)  # not written: the retry must not be refused
            return FeedbackResult(FeedbackStatus.UNAVAILABLE, "feedback.path: the score could not be written; retry")
        # Still queued: it may be written yet, so it keeps its place under the cap.
        return FeedbackResult(
            FeedbackStatus.UNAVAILABLE, f"feedback.path: the write was not confirmed within {self._write_wait:g} s"
        )

    def _from_token(self, token: Any, decision_id: Any) -> tuple[str, DecisionEntry] | FeedbackResult:
        if not isinstance(token, str):
            return _invalid("feedback_token: must be a string")
        if self._signer is None:
            return _invalid("feedback_token: this router has no feedback.signing_key_file")
        try:
            found_id, entry = DecisionEntry.from_token_fields(self._signer.verify(token))
        except TokenError as exc:
            return _invalid(f"feedback_token: {exc}")
        if decision_id not in (None, "", found_id):
            return _invalid("decision_id: does not match feedback_token")
        if self._wall_clock() - entry.decided_unix > self._token_ttl:
            return FeedbackResult(FeedbackStatus.NOT_FOUND, "feedback_token: expired (feedback.decision_ttl_seconds)")
        return found_id, entry

    def _submit(
        self, decision_id: Any, score: Any, model: Any, source: str, token: Any, idempotency_key: Any
    ) -> tuple[FeedbackResult, concurrent.futures.Future[bool] | None]:
        """The result, and for a queued line the future its writer completes (see :meth:`_settle`)."""
        if idempotency_key not in (None, "") and not (
            isinstance(idempotency_key, str) and _IDEMPOTENCY_KEY.fullmatch(idempotency_key)
        ):
            return _invalid("idempotency_key: must be 1 to 200 visible ASCII characters"), None
        checked = self._check(decision_id, score, model, token)
        if isinstance(checked, FeedbackResult):
            return checked, None
        decision_id, entry, value = checked
        chosen = model or entry.served_model
        key_hash = idempotency_key_hash(idempotency_key) if idempotency_key else None
        if key_hash:  # a retry of a score this process wrote: the same answer, no second line or slot
            written_before = self._decisions.written_score(decision_id, chosen, key_hash)
            if written_before is not None:
                return FeedbackResult(FeedbackStatus.RECORDED, "", decision_id, chosen, written_before), None
        if not self._decisions.admit_score(decision_id, self._max_scores):
            message = (
                f"decision_id: already {self._max_scores} scores for this decision (feedback.max_scores_per_decision)"
            )
            return FeedbackResult(FeedbackStatus.TOO_MANY, message), None
        line = {
            "feedback_id": uuid.uuid4().hex,  # one per accepted score: copies of one archive can be told apart
            "decision_id": decision_id,
            "model": chosen,
            "score": value,
            TIME_KEY: round(self._wall_clock(), 3),
            "decided_unix": entry.decided_unix,
            "requested_model": entry.requested_model,
            "selected_model": entry.selected_model,
            "tenant": entry.tenant,
            "source": source,
        }
        if key_hash:
            line[IDEMPOTENCY_HASH_KEY] = key_hash
        written: concurrent.futures.Future[bool] = concurrent.futures.Future()
        on_written = (  # also when it lands after the caller was answered 503 (not confirmed in time)
            functools.partial(self._decisions.remember_written, decision_id, chosen, key_hash, value)
            if key_hash
            else None
        )
        if not self._spool.offer(line, functools.partial(_resolve, written, on_written)):
            self._decisions.take_back_score(decision_id)  # not written: the retry must not be refused
            return FeedbackResult(FeedbackStatus.UNAVAILABLE, "feedback queue full; retry later"), None
        return FeedbackResult(FeedbackStatus.RECORDED, "", decision_id, chosen, value), written

    def _check(
        self, decision_id: Any, score: Any, model: Any, token: Any
    ) -> tuple[str, DecisionEntry, float] | FeedbackResult:
        """The submission's decision id, decision and score, or why it is refused (nothing counted yet)."""
        if token is None or token == "":
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
        if token is not None and token != "":
            verified = self._from_token(token, decision_id)
            if isinstance(verified, FeedbackResult):
                return verified
            decision_id, entry = verified
            # The replica that decided may know more than the token it signed before the answer: who answered.
            entry = self._decisions.get(decision_id) or entry
        else:
            found = self._decisions.get(decision_id)
            if found is None:
                return FeedbackResult(
                    FeedbackStatus.NOT_FOUND,
                    "decision_id: no recent decision with this id on this router (unknown, expired, or another "
                    "replica's: send its feedback_token)",
                )
            entry = found
        return decision_id, entry, checked

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer."""
        self._spool.close(timeout)
