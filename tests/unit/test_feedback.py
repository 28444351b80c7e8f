"""Feedback: the decision store's bounds, validation, and the gRPC and HTTP endpoints writing the feedback file."""

from __future__ import annotations

import asyncio
import errno
import json
import math
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from devstack.stack import free_port
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc
from extproc.decide import DecisionService
from extproc.feedback import (
    IDEMPOTENCY_HASH_KEY,
    DecisionEntry,
    DecisionStore,
    FeedbackRecorder,
    FeedbackResult,
    FeedbackStatus,
    idempotency_key_hash,
)
from extproc.feedback_http import MAX_BODY_BYTES, start_feedback_server
from extproc.feedback_token import TokenSigner
from extproc.snapshot import SnapshotRef
from extproc.spool import RotatingJsonl, Spool, SpoolTarget
from tests.fakes import RecordingSink, demo_settings, inline_classify, snapshot

CATALOG = frozenset({"llama-3.1-8b-instruct", "gpt-4o-mini", "gpt-4o"})
KNOWN = "00000000000000aa"
ENTRY = DecisionEntry(
    requested_model="auto",
    selected_model="gpt-4o-mini",
    served_model="gpt-4o-mini",
    tenant="acme",
    decided_unix=1_700_000_000.0,
)
SIGNER = TokenSigner([b"k" * 32])
ELSEWHERE = "00000000000000cc"
"""A decision another replica made: not in this harness's store."""
ELSEWHERE_TOKEN = SIGNER.sign(ENTRY.token_fields(ELSEWHERE))


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_store_forgets_after_the_ttl() -> None:
    clock = Clock()
    store = DecisionStore(max_entries=10, ttl_seconds=60.0, clock=clock)
    store.remember("a", ENTRY)
    clock.now += 59.9
    assert store.get("a") == ENTRY
    clock.now += 0.1
    assert store.get("a") is None
    assert len(store) == 0, "an expired entry is dropped when read"


def test_a_fallback_changes_the_served_model_and_not_the_expiry() -> None:
    clock = Clock()
    store = DecisionStore(max_entries=10, ttl_seconds=60.0, clock=clock)
    store.remember("a", ENTRY)
    clock.now += 30
    store.answered_by("a", "gpt-4o")
    store.answered_by("unknown", "gpt-4o")  # expired or never seen: nothing to correct, nothing created
    entry = store.get("a")
    assert entry is not None and (entry.selected_model, entry.served_model) == ("gpt-4o-mini", "gpt-4o")
    assert len(store) == 1
    clock.now += 30
    assert store.get("a") is None


def test_store_is_bounded_oldest_first() -> None:
    store = DecisionStore(max_entries=3, ttl_seconds=60.0, clock=Clock())
    for name in "abcde":
        store.remember(name, ENTRY)
    assert len(store) == 3
    assert [store.get(n) is not None for n in "abcde"] == [False, False, True, True, True]


def test_store_drops_expired_entries_as_new_ones_arrive() -> None:
    clock = Clock()
    store = DecisionStore(max_entries=1000, ttl_seconds=10.0, clock=clock)
    for i in range(100):
        store.remember(f"old{i}", ENTRY)
    clock.now += 11
    store.remember("new", ENTRY)
    assert len(store) == 1, "memory is released without waiting for reads"


@dataclass
class Harness:
    recorder: FeedbackRecorder
    spool: Spool
    path: Path
    store: DecisionStore

    def lines(self) -> list[dict[str, Any]]:
        self.spool.close()
        return [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    store = DecisionStore(100, 60.0, clock=Clock())
    store.remember(KNOWN, ENTRY)
    path = tmp_path / "feedback.jsonl"
    spool = Spool("feedback", "received_unix", lambda _r: None, capacity=4)
    spool.configure(SpoolTarget(path, max_bytes=1 << 20))
    recorder = FeedbackRecorder(
        store, spool, lambda: CATALOG, wall_clock=lambda: 1_700_000_100.0, signer=SIGNER, token_ttl_seconds=600.0
    )
    yield Harness(recorder, spool, path, store)
    spool.close()


@pytest.mark.parametrize(
    ("decision_id", "score", "model", "status", "message"),
    [
        pytest.param(None, 1, None, FeedbackStatus.INVALID, "decision_id: required", id="missing-id"),
        pytest.param("", 1, None, FeedbackStatus.INVALID, "decision_id: required", id="empty-id"),
        pytest.param(7, 1, None, FeedbackStatus.INVALID, "decision_id: required", id="numeric-id"),
        pytest.param("../etc", 1, None, FeedbackStatus.INVALID, "decision_id: not a decision id", id="odd-chars"),
        pytest.param("a" * 65, 1, None, FeedbackStatus.INVALID, "decision_id: not a decision id", id="too-long"),
        pytest.param(KNOWN, None, None, FeedbackStatus.INVALID, "score: required", id="missing-score"),
        pytest.param(KNOWN, "1", None, FeedbackStatus.INVALID, "score: must be a number in [0, 1]", id="string"),
        pytest.param(KNOWN, True, None, FeedbackStatus.INVALID, "score: must be a number in [0, 1]", id="bool"),
        pytest.param(KNOWN, math.nan, None, FeedbackStatus.INVALID, "score: must be a number in [0, 1]", id="nan"),
        pytest.param(KNOWN, -0.01, None, FeedbackStatus.INVALID, "score: must be a number in [0, 1]", id="below"),
        pytest.param(KNOWN, 1.01, None, FeedbackStatus.INVALID, "score: must be a number in [0, 1]", id="above"),
        pytest.param(KNOWN, 1, "gpt-5", FeedbackStatus.INVALID, "model: not a catalog model", id="model-unknown"),
        pytest.param(KNOWN, 1, ["gpt-4o"], FeedbackStatus.INVALID, "model: must be a string", id="model-list"),
        pytest.param("00000000000000bb", 1, None, FeedbackStatus.NOT_FOUND, "decision_id: no recent", id="unknown"),
    ],
)
def test_rejected_feedback_writes_nothing(
    harness: Harness, decision_id: Any, score: Any, model: Any, status: FeedbackStatus, message: str
) -> None:
    result = harness.recorder.submit(decision_id, score, model)
    assert result.status is status
    assert result.message.startswith(message)
    assert harness.lines() == []


@pytest.mark.parametrize(
    "key", [7, "two words", "é", "k" * 201, ["k"]], ids=["int", "space", "non-ascii", "long", "list"]
)
def test_a_malformed_idempotency_key_is_refused(harness: Harness, key: Any) -> None:
    result = harness.recorder.submit(KNOWN, 1, idempotency_key=key)
    assert result.status is FeedbackStatus.INVALID and result.message.startswith("idempotency_key: must be")
    assert harness.lines() == []


def test_an_idempotency_key_is_written_with_the_score_as_a_digest(harness: Harness) -> None:
    """The same key on every retry of one score lets ``model-router outcomes`` count it once (test_outcomes.py); the
    file keeps a digest, not the key: a caller could put any text in a key, and the file has no TTL."""
    key = "CANARY-3b0c6f7e-9d1a-4c55-a0f2"
    assert harness.recorder.submit(KNOWN, 1, idempotency_key=key).status is FeedbackStatus.RECORDED
    assert harness.recorder.submit(KNOWN, 1, idempotency_key="").status is FeedbackStatus.RECORDED  # none
    assert harness.recorder.submit(KNOWN, 0, "gpt-4o", idempotency_key=key).status is FeedbackStatus.RECORDED
    first, second, third = harness.lines()
    assert re.fullmatch("[0-9a-f]{32}", first[IDEMPOTENCY_HASH_KEY])
    assert first[IDEMPOTENCY_HASH_KEY] == third[IDEMPOTENCY_HASH_KEY] != idempotency_key_hash(key + "x")
    assert IDEMPOTENCY_HASH_KEY not in second
    assert "CANARY" not in harness.path.read_text()


OLD_ENTRY = DecisionEntry("auto", "gpt-4o-mini", "gpt-4o-mini", None, 1_700_000_100.0 - 601)


@pytest.mark.parametrize(
    ("decision_id", "token", "status", "message"),
    [
        pytest.param(KNOWN, ELSEWHERE_TOKEN, FeedbackStatus.INVALID, "decision_id: does not match", id="mismatch"),
        pytest.param(
            None,
            TokenSigner([b"x" * 32]).sign(ENTRY.token_fields(ELSEWHERE)),
            FeedbackStatus.INVALID,
            "feedback_token: not signed by this deployment's key",
            id="other-key",
        ),
        pytest.param(None, ELSEWHERE_TOKEN[:-2], FeedbackStatus.INVALID, "feedback_token: not signed", id="cut"),
        pytest.param(None, "v1.e30.x", FeedbackStatus.INVALID, "feedback_token: not signed", id="forged"),
        pytest.param(None, SIGNER.sign({"d": ELSEWHERE}), FeedbackStatus.INVALID, "feedback_token: not a", id="fields"),
        pytest.param(None, 42, FeedbackStatus.INVALID, "feedback_token: must be a string", id="not-a-string"),
        pytest.param(
            None,
            SIGNER.sign(OLD_ENTRY.token_fields(ELSEWHERE)),
            FeedbackStatus.NOT_FOUND,
            "feedback_token: expired",
            id="expired",
        ),
    ],
)
def test_rejected_tokens_write_nothing(
    harness: Harness, decision_id: Any, token: Any, status: FeedbackStatus, message: str
) -> None:
    result = harness.recorder.submit(decision_id, 1, token=token)
    assert (result.status, result.message[: len(message)]) == (status, message)
    assert harness.lines() == []


def test_a_token_carries_another_replicas_decision(harness: Harness) -> None:
    """The store has never seen ELSEWHERE: the token alone is enough, with or without the id beside it."""
    for decision_id in (None, ELSEWHERE):
        result = harness.recorder.submit(decision_id, 1, token=ELSEWHERE_TOKEN, source="http")
        assert result == FeedbackResult(FeedbackStatus.RECORDED, "", ELSEWHERE, "gpt-4o-mini", 1.0)
    line = harness.lines()[0]
    assert {k: line[k] for k in ("decision_id", "decided_unix", "requested_model", "selected_model", "tenant")} == {
        "decision_id": ELSEWHERE,
        "decided_unix": ENTRY.decided_unix,
        "requested_model": "auto",
        "selected_model": "gpt-4o-mini",
        "tenant": "acme",
    }


def test_a_token_to_the_replica_that_decided_gets_the_model_that_answered(harness: Harness) -> None:
    """The token is signed before the answer; the store learns of an upstream fallback from the response."""
    token = SIGNER.sign(ENTRY.token_fields(KNOWN))
    harness.store.answered_by(KNOWN, "gpt-4o")
    assert harness.recorder.submit(None, 1, token=token).model == "gpt-4o"


def test_a_router_without_a_key_refuses_tokens(tmp_path: Path) -> None:
    spool = Spool("feedback", "received_unix", lambda _r: None, start=False)
    spool.configure(SpoolTarget(tmp_path / "f.jsonl", max_bytes=1 << 20))
    recorder = FeedbackRecorder(DecisionStore(10, 60.0), spool, lambda: CATALOG)
    result = recorder.submit(None, 1, token=ELSEWHERE_TOKEN)
    assert (result.status, result.message) == (
        FeedbackStatus.INVALID,
        "feedback_token: this router has no feedback.signing_key_file",
    )
    spool.close()


def test_accepted_feedback_defaults_to_the_served_model(harness: Harness) -> None:
    assert harness.recorder.submit(KNOWN, 1) == FeedbackResult(FeedbackStatus.RECORDED, "", KNOWN, "gpt-4o-mini", 1.0)
    assert harness.recorder.submit(KNOWN, 0.25, "gpt-4o", source="http").model == "gpt-4o"
    assert harness.recorder.submit(KNOWN, 0).score == 0.0, "thumbs down is a score, not a missing one"
    first, second, third = harness.lines()
    ids = [line.pop("feedback_id") for line in (first, second, third)]
    assert len(set(ids)) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids), "one unique id per line"
    assert first == {
        "decision_id": KNOWN,
        "model": "gpt-4o-mini",
        "score": 1.0,
        "received_unix": 1_700_000_100.0,
        "decided_unix": 1_700_000_000.0,
        "requested_model": "auto",
        "selected_model": "gpt-4o-mini",
        "tenant": "acme",
        "source": "grpc",
    }
    assert (second["model"], second["score"], second["source"]) == ("gpt-4o", 0.25, "http")
    assert third["score"] == 0.0


def test_every_submission_is_counted_by_result_and_source(tmp_path: Path) -> None:
    counted: list[tuple[str, str]] = []
    store = DecisionStore(100, 60.0, clock=Clock())
    store.remember(KNOWN, ENTRY)
    spool = Spool("feedback", "received_unix", lambda _r: None, capacity=1)
    spool.configure(SpoolTarget(tmp_path / "f.jsonl", max_bytes=1 << 20))
    recorder = FeedbackRecorder(store, spool, lambda: CATALOG, on_result=lambda r, s: counted.append((r, s)))
    recorder.submit(KNOWN, 1, source="http")
    spool.configure(None)  # writing turned off: the next line is not written
    recorder.submit(KNOWN, 1)
    recorder.submit("f" * 16, 1)
    recorder.submit(KNOWN, 7, source="http")
    assert counted == [
        ("recorded", "http"),
        ("unavailable", "grpc"),
        ("not_found", "grpc"),
        ("invalid_argument", "http"),
    ]
    spool.close()


def _stalled(tmp_path: Path, capacity: int) -> tuple[FeedbackRecorder, Spool, DecisionStore]:
    """A recorder whose writer never runs until ``spool.close()``, and which waits 10 ms for a write."""
    store = DecisionStore(100, 60.0, clock=Clock())
    store.remember(KNOWN, ENTRY)
    spool = Spool("feedback", "received_unix", lambda _r: None, capacity=capacity, start=False)
    spool.configure(SpoolTarget(tmp_path / "feedback.jsonl", max_bytes=1 << 20))
    return FeedbackRecorder(store, spool, lambda: CATALOG, write_wait_seconds=0.01), spool, store


def test_a_slow_or_full_writer_is_unavailable_not_lost_silently(tmp_path: Path) -> None:
    """Not confirmed in time: 'unavailable' (it may still be written, so it keeps its place under the cap); a full
    queue: 'unavailable' and not counted, so the retry is not refused."""
    recorder, spool, store = _stalled(tmp_path, capacity=2)
    got = [recorder.submit(KNOWN, 1) for _ in range(3)]
    assert [r.status for r in got] == [FeedbackStatus.UNAVAILABLE] * 3
    assert [r.message for r in got] == ["feedback.path: the write was not confirmed within 0.01 s"] * 2 + [
        "feedback queue full; retry later"
    ]
    spool.close()
    assert len((tmp_path / "feedback.jsonl").read_text().splitlines()) == 2, "the queued ones were written late"
    assert [store.admit_score(KNOWN, 10) for _ in range(9)] == [True] * 8 + [False]


@pytest.mark.parametrize("wait", ["thread", "event-loop"])
def test_a_retry_of_a_score_written_late_is_answered_without_a_second_line(tmp_path: Path, wait: str) -> None:
    """The first attempt is answered 503 (not confirmed in time) and written after all; the retry, with the same
    idempotency key, gets the recorded score back: no second line, no second slot under the cap."""
    recorder, spool, store = _stalled(tmp_path, capacity=2)
    if wait == "thread":
        first = recorder.submit(KNOWN, 1, idempotency_key="k")
    else:
        first = asyncio.run(recorder.submit_async(KNOWN, 1, idempotency_key="k"))  # the wait is cancelled
    assert first.status is FeedbackStatus.UNAVAILABLE
    spool.close()  # the writer runs: the line lands
    retry = recorder.submit(KNOWN, 0.5, idempotency_key="k")  # even with another score: the first one stands
    assert retry == FeedbackResult(FeedbackStatus.RECORDED, "", KNOWN, "gpt-4o-mini", 1.0)
    assert len((tmp_path / "feedback.jsonl").read_text().splitlines()) == 1
    assert [store.admit_score(KNOWN, 2) for _ in range(2)] == [True, False], "the retry took no slot"


def test_an_idempotency_key_is_per_model_and_a_recorded_retry_takes_no_slot(harness: Harness) -> None:
    store = harness.store
    for _ in range(3):
        assert harness.recorder.submit(KNOWN, 1, idempotency_key="k").status is FeedbackStatus.RECORDED
    other = harness.recorder.submit(KNOWN, 0, "gpt-4o", idempotency_key="k")
    assert (other.status, other.model, other.score) == (FeedbackStatus.RECORDED, "gpt-4o", 0.0)
    assert [(x["model"], x["score"]) for x in harness.lines()] == [("gpt-4o-mini", 1.0), ("gpt-4o", 0.0)]
    assert sum(store.admit_score(KNOWN, 5) for _ in range(5)) == 3, "two slots used, not four"


def test_a_score_lost_to_a_failed_write_is_unavailable_and_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the caller is told to retry (not "recorded"), the drop is counted, and the decision's allowance
    is not used up."""
    drops: list[str] = []
    counted: list[str] = []
    store = DecisionStore(100, 60.0, clock=Clock())
    store.remember(KNOWN, ENTRY)
    spool = Spool("feedback", "received_unix", drops.append)
    spool.configure(SpoolTarget(tmp_path / "feedback.jsonl", max_bytes=1 << 20))
    recorder = FeedbackRecorder(store, spool, lambda: CATALOG, on_result=lambda r, _s: counted.append(r))

    def full_disk(*_args: Any) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RotatingJsonl, "append", full_disk)
    result = recorder.submit(KNOWN, 1, source="http")
    spool.close()
    assert result == FeedbackResult(FeedbackStatus.UNAVAILABLE, "feedback.path: the score could not be written; retry")
    assert (counted, drops) == (["unavailable"], ["feedback_write_failed"])
    assert [store.admit_score(KNOWN, 10) for _ in range(11)] == [True] * 10 + [False]


@pytest.fixture
def http_url(harness: Harness) -> Iterator[str]:
    port = free_port()
    stop = start_feedback_server(f"127.0.0.1:{port}", harness.recorder, poll_interval=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        pytest.param("POST", "/v1/feedback", {"decision_id": KNOWN, "score": 1}, 200, None, id="ok"),
        pytest.param("POST", "/v1/feedback", {"decision_id": "f" * 16, "score": 1}, 404, "not_found", id="unknown"),
        pytest.param("POST", "/v1/feedback", {"feedback_token": ELSEWHERE_TOKEN, "score": 1}, 200, None, id="token"),
        pytest.param("POST", "/v1/feedback", {"decision_id": KNOWN, "score": 2}, 400, "invalid_argument", id="score"),
        pytest.param(
            "POST", "/v1/feedback", {"decision_id": KNOWN, "score": 1, "idempotency_key": "k-1"}, 200, None, id="key"
        ),
        pytest.param(
            "POST",
            "/v1/feedback",
            {"decision_id": KNOWN, "score": 1, "idempotency_key": 1},
            400,
            "invalid_argument",
            id="key-not-a-string",
        ),
        pytest.param("POST", "/v1/feedback", {"decision_id": KNOWN}, 400, "invalid_argument", id="no-score"),
        pytest.param(
            "POST",
            "/v1/feedback",
            {"decision_id": KNOWN, "score": 1, "comment": "free text"},
            400,
            "invalid_argument",
            id="no-free-text",
        ),
        pytest.param("POST", "/v1/feedback", [KNOWN, 1], 400, "invalid_argument", id="not-an-object"),
        pytest.param(
            "POST",
            "/v1/feedback",
            f'{{"decision_id": "{KNOWN}", "score": 1, "score": 0}}'.encode(),
            400,
            "invalid_argument",
            id="duplicate-field",
        ),
        pytest.param("POST", "/v1/feedback", b"{nope", 400, "invalid_argument", id="not-json"),
        pytest.param("POST", "/v1/feedback", b"x" * (MAX_BODY_BYTES + 1), 413, "too_large", id="too-large"),
        pytest.param("GET", "/v1/feedback", None, 405, "method_not_allowed", id="get"),
        pytest.param("POST", "/metrics", {"decision_id": KNOWN, "score": 1}, 404, "not_found", id="other-path"),
    ],
)
def test_http_endpoint(
    harness: Harness, http_url: str, method: str, path: str, body: Any, status: int, code: str | None
) -> None:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    r = httpx.request(method, http_url + path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    if code is None:
        decision_id = ELSEWHERE if "feedback_token" in body else KNOWN
        assert r.json() == {"decision_id": decision_id, "model": "gpt-4o-mini", "score": 1.0}
        key = body.get("idempotency_key")
        assert [(line["source"], line.get(IDEMPOTENCY_HASH_KEY)) for line in harness.lines()] == [
            ("http", key and idempotency_key_hash(key))
        ]
    else:
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
        assert harness.lines() == []


@pytest.fixture
async def feedback_stub(harness: Harness) -> AsyncIterator[api_grpc.ModelRouterServiceStub]:
    server = grpc.aio.server()
    snaps = SnapshotRef(snapshot(settings=demo_settings()))
    api_grpc.add_ModelRouterServiceServicer_to_server(
        DecisionService(snaps, inline_classify, RecordingSink(), feedback=harness.recorder), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield api_grpc.ModelRouterServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def test_grpc_feedback(harness: Harness, feedback_stub: api_grpc.ModelRouterServiceStub) -> None:
    reply = await feedback_stub.Feedback(api.FeedbackRequest(decision_id=KNOWN, score=0.0), timeout=5)
    assert (reply.decision_id, reply.model, reply.score) == (KNOWN, "gpt-4o-mini", 0.0)
    request = api.FeedbackRequest(feedback_token=ELSEWHERE_TOKEN, score=1, idempotency_key="retry-me")
    reply = await feedback_stub.Feedback(request, timeout=5)
    assert (reply.decision_id, reply.model, reply.score) == (ELSEWHERE, "gpt-4o-mini", 1.0)
    cases = [
        (api.FeedbackRequest(decision_id="ffffffffffffffff", score=1), grpc.StatusCode.NOT_FOUND, "decision_id"),
        (api.FeedbackRequest(decision_id=KNOWN), grpc.StatusCode.INVALID_ARGUMENT, "score: required"),
        (api.FeedbackRequest(decision_id=KNOWN, score=1.5), grpc.StatusCode.INVALID_ARGUMENT, "score"),
        (api.FeedbackRequest(decision_id=KNOWN, score=1, model="nope"), grpc.StatusCode.INVALID_ARGUMENT, "model"),
        (api.FeedbackRequest(score=1), grpc.StatusCode.INVALID_ARGUMENT, "decision_id: required"),
        (
            api.FeedbackRequest(decision_id=KNOWN, score=1, idempotency_key="a b"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "idempotency_key",
        ),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await feedback_stub.Feedback(request, timeout=5)
        assert err.value.code() == code and message in (err.value.details() or "")
    lines = [(line["decision_id"], line["score"], line.get(IDEMPOTENCY_HASH_KEY)) for line in harness.lines()]
    assert lines == [(KNOWN, 0.0, None), (ELSEWHERE, 1.0, idempotency_key_hash("retry-me"))]


async def test_too_many_scores_are_429_and_resource_exhausted(
    harness: Harness, http_url: str, feedback_stub: api_grpc.ModelRouterServiceStub
) -> None:
    for _ in range(10):  # the default feedback.max_scores_per_decision, used up
        assert harness.store.admit_score(KNOWN, 10)
    r = httpx.post(http_url + "/v1/feedback", json={"decision_id": KNOWN, "score": 1})
    assert (r.status_code, r.json()["error"]["code"]) == (429, "resource_exhausted")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await feedback_stub.Feedback(api.FeedbackRequest(decision_id=KNOWN, score=1), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert harness.lines() == []


async def test_grpc_feedback_waits_for_the_write_off_the_event_loop(tmp_path: Path) -> None:
    """``submit_async`` answers "recorded" once the writer thread appended the line, and "unavailable" when the line
    is lost (writing turned off), without blocking the loop meanwhile."""
    store = DecisionStore(100, 60.0, clock=Clock())
    store.remember(KNOWN, ENTRY)
    spool = Spool("feedback", "received_unix", lambda _r: None)
    spool.configure(SpoolTarget(tmp_path / "feedback.jsonl", max_bytes=1 << 20))
    recorder = FeedbackRecorder(store, spool, lambda: CATALOG)
    try:
        assert (await recorder.submit_async(KNOWN, 1)).status is FeedbackStatus.RECORDED
        assert len((tmp_path / "feedback.jsonl").read_text().splitlines()) == 1, "written before the answer"
        spool.configure(None)
        assert (await recorder.submit_async(KNOWN, 0)).status is FeedbackStatus.UNAVAILABLE
    finally:
        spool.close()


async def test_grpc_feedback_when_disabled_is_failed_precondition() -> None:
    server = grpc.aio.server()
    snaps = SnapshotRef(snapshot(settings=demo_settings()))
    api_grpc.add_ModelRouterServiceServicer_to_server(DecisionService(snaps, inline_classify, RecordingSink()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api_grpc.ModelRouterServiceStub(channel).Feedback(
                    api.FeedbackRequest(decision_id=KNOWN, score=1), timeout=5
                )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await server.stop(None)


def test_one_decision_cannot_flood_the_feedback_file(tmp_path: Path) -> None:
    """Past max_scores_per_decision accepted scores (by id or by token alike), a decision's feedback is refused and
    nothing is written; other decisions are unaffected; refusals do not use up the allowance."""
    store = DecisionStore(100, 60.0, clock=Clock())
    store.remember(KNOWN, ENTRY)
    spool = Spool("feedback", "received_unix", lambda _r: None, capacity=64)
    path = tmp_path / "feedback.jsonl"
    spool.configure(SpoolTarget(path, max_bytes=1 << 20))
    recorder = FeedbackRecorder(
        store, spool, lambda: CATALOG, signer=SIGNER, token_ttl_seconds=1e12, max_scores_per_decision=3
    )
    token = SIGNER.sign(ENTRY.token_fields(KNOWN))
    got = [recorder.submit(KNOWN, 1).status, recorder.submit(None, 0, token=token).status]
    got += [recorder.submit(KNOWN, 1, "gpt-4o").status, recorder.submit(KNOWN, 7).status]  # invalid: not counted
    refused = recorder.submit(KNOWN, 1)
    assert got == [FeedbackStatus.RECORDED] * 3 + [FeedbackStatus.INVALID]
    assert refused == FeedbackResult(
        FeedbackStatus.TOO_MANY,
        "decision_id: already 3 scores for this decision (feedback.max_scores_per_decision)",
    )
    assert recorder.submit(None, 1, token=ELSEWHERE_TOKEN).status is FeedbackStatus.RECORDED
    spool.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [line["decision_id"] for line in lines] == [KNOWN] * 3 + [ELSEWHERE]


def test_the_score_counts_are_bounded_like_the_store() -> None:
    store = DecisionStore(max_entries=3, ttl_seconds=60.0, clock=Clock())
    for n in range(10):
        assert store.admit_score(f"{n:016x}", 1)
    assert store.admit_score(f"{9:016x}", 1) is False
    assert store.admit_score(f"{0:016x}", 1), "the oldest counts were dropped at the bound"


def _raw_post(url: str, head: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 request written by hand (httpx always sends a length for bytes content)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head + b"\r\n")
        conn.sendall(body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def _chunked(data: bytes, size: int) -> bytes:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "body", "status", "code"),
    [
        pytest.param(
            b"Transfer-Encoding: chunked\r\n",
            _chunked(json.dumps({"decision_id": KNOWN, "score": 1}).encode(), 7),
            200,
            None,
            id="chunked",
        ),
        pytest.param(
            b"Transfer-Encoding: chunked\r\n",
            _chunked(b"x" * (MAX_BODY_BYTES + 1), 1000),
            413,
            "too_large",
            id="chunked-too-large",
        ),
        pytest.param(
            b"Transfer-Encoding: chunked\r\n", b"zz\r\nab\r\n0\r\n\r\n", 400, "invalid_argument", id="bad-size"
        ),
        pytest.param(b"", b"", 411, "length_required", id="neither-length-nor-chunked"),
    ],
)
def test_http_endpoint_reads_chunked_bodies(
    harness: Harness, http_url: str, head: bytes, body: bytes, status: int, code: str | None
) -> None:
    """Envoy forwards an HTTP/2 request without content-length as chunked HTTP/1.1: that must not be a 411."""
    got, answer = _raw_post(http_url, head, body)
    assert got == status, answer
    if code is None:
        assert answer == {"decision_id": KNOWN, "model": "gpt-4o-mini", "score": 1.0}
        assert len(harness.lines()) == 1
    else:
        assert answer["error"]["code"] == code
        assert harness.lines() == []


def test_negative_zero_is_written_as_zero(harness: Harness) -> None:
    assert math.copysign(1.0, harness.recorder.submit(KNOWN, -0.0).score) == 1.0
    assert '"score":0.0' in harness.path.read_text()


def test_a_repeated_field_is_named_not_guessed(harness: Harness, http_url: str) -> None:
    body = f'{{"decision_id": "{KNOWN}", "score": 1, "model": "gpt-4o", "score": 0}}'
    r = httpx.post(http_url + "/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["message"]) == (400, "score: given more than once")


def test_a_body_nested_past_the_duplicate_check_is_a_400(harness: Harness, http_url: str) -> None:
    """orjson reads 1,023 levels; the stdlib parser that looks for repeated fields gave up first (a plain-text 500
    and a traceback in the log)."""
    body = f'{{"decision_id": "{KNOWN}", "score": 1, "model": '.encode() + b"[" * 990 + b"]" * 990 + b"}"
    r = httpx.post(http_url + "/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["message"]) == (400, "body: nested too deeply")
    assert harness.lines() == []
