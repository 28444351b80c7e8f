"""ResponseObserver: the usage of a decided request, read from the observability-mode filter's copy of its response.

The two streams share nothing but Envoy's dynamic metadata, so each case first lets a real StreamHandler decide and
then feeds the observer messages that carry the metadata that decision set, as Envoy forwards it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import json_format

from extproc.config import Settings, TelemetrySettings
from extproc.observe import FALLBACK_NAMESPACE, USAGE_MODEL_KEY, CopyCheck, ResponseObserver
from extproc.policy import estimate_cost
from extproc.service import ExternalProcessorService
from extproc.snapshot import Snapshot, SnapshotRef
from extproc.stream import StreamHandler
from extproc.telemetry import Telemetry
from tests.fakes import (
    DecisionStreamContext,
    RecordingSink,
    demo_settings,
    fixed_clock,
    inline_classify,
    sequential_ids,
    snapshot,
    with_section,
)
from tests.protocol import body_msg, chat_headers, headers_msg, replay, router_metadata

CHAT = b'{"model":"auto","messages":[{"role":"user","content":"medium question"}]}'
USAGE_JSON = b'{"object":"chat.completion","usage":{"prompt_tokens":1000,"completion_tokens":500}}'


def usage_on(settings: Settings | None = None, on: bool = True) -> Snapshot:
    return snapshot(settings=with_section(settings or demo_settings(), "telemetry", response_usage=on))


async def decided(snap: Snapshot, body: bytes = CHAT) -> dict[str, str]:
    """The ``model_router`` metadata a deciding stream set for ``body`` (what Envoy forwards to the observer)."""
    handler = StreamHandler(snap, inline_classify, RecordingSink(), sequential_ids(), fixed_clock())
    responses = await replay(handler, chat_headers(), body)
    return router_metadata(responses[-1])


def observed(
    kind: str, metadata: Mapping[str, str], fallback: str | None = None, **fields: object
) -> pb.ProcessingRequest:
    """One message of the observer's stream, with the namespaces Envoy forwards (``forwarding_namespaces``)."""
    msg = pb.ProcessingRequest(observability_mode=True)
    if kind == "response_headers":
        msg.response_headers.SetInParent()
    else:
        msg.response_body.CopyFrom(pb.HttpBody(**fields))  # type: ignore[arg-type]
    namespaces: dict[str, object] = {"model_router": dict(metadata)}
    if fallback is not None:
        namespaces[FALLBACK_NAMESPACE] = {"model": fallback}
    json_format.ParseDict({"filter_metadata": namespaces}, msg.metadata_context)
    return msg


def read(observer: ResponseObserver, messages: list[pb.ProcessingRequest]) -> list[bool]:
    """Feed ``messages`` until the observer wants no more, then end the stream as the service does."""
    wanted = []
    for msg in messages:
        wanted.append(observer.feed(msg))
        if not wanted[-1]:
            break
    observer.close()
    return wanted


def response(metadata: Mapping[str, str], body: bytes, fallback: str | None = None) -> list[pb.ProcessingRequest]:
    """Headers, the body in two chunks, then the empty end-of-stream message observability mode sends."""
    return [
        observed("response_headers", metadata, fallback),
        observed("response_body", metadata, fallback, body=body[:30]),
        observed("response_body", metadata, fallback, body=body[30:]),
        observed("response_body", metadata, fallback, end_of_stream=True),
    ]


class _AnsweredByTap:
    """Records what the observer tells the learning tap about fallbacks."""

    def __init__(self, fail: bool = False) -> None:
        self.answered: list[tuple[str, str]] = []
        self.fail = fail

    def decided(self, *args: object) -> dict[str, str]:
        return {}

    def answered_by(self, decision_id: str, model: str) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.answered.append((decision_id, model))


@pytest.mark.parametrize(
    ("written", "answered", "error"),
    [
        (None, "gpt-4o-mini", None),  # no fallback filter, or no retry
        ("", "gpt-4o-mini", None),  # an attempt back on the router's own cluster clears the rename
        ("gpt-4o-mini", "gpt-4o-mini", None),
        ("gpt-4o", "gpt-4o", None),  # the frontier cluster answered under its own name
        ("not-in-catalog", "gpt-4o-mini", "unknown_fallback_model"),
    ],
)
async def test_usage_is_priced_for_the_model_that_answered(
    written: str | None, answered: str, error: str | None
) -> None:
    snap = usage_on()
    metadata = await decided(snap)
    assert metadata[USAGE_MODEL_KEY] == "gpt-4o-mini"
    sink, tap = RecordingSink(), _AnsweredByTap()
    observer = ResponseObserver(snap, sink, tap)
    wanted = read(observer, response(metadata, USAGE_JSON, written))
    assert observer.result == "read"
    assert wanted == [True, True, True, False]  # read to the end of the stream, then done
    decision_id = metadata["decision_id"]
    assert sink.usages == [(decision_id, answered, 1000, 500, estimate_cost(snap.by_name[answered], 1000, 500))]
    assert sink.errors == ([error] if error else [])
    assert tap.answered == ([(decision_id, answered)] if answered != "gpt-4o-mini" else [])


@pytest.mark.parametrize(
    ("decider_usage", "observer_usage"),
    [
        pytest.param(False, True, id="decided-with-usage-off"),  # no usage_model in the metadata
        pytest.param(True, False, id="usage-turned-off-since"),  # a reload: the observer's snapshot says off
    ],
)
async def test_a_response_is_not_read_unless_usage_was_on_for_both(decider_usage: bool, observer_usage: bool) -> None:
    metadata = await decided(usage_on(on=decider_usage))
    sink = RecordingSink()
    observer = ResponseObserver(usage_on(on=observer_usage), sink)
    assert read(observer, response(metadata, USAGE_JSON)) == [False]
    assert (sink.usages, sink.errors, observer.result) == ([], [], None)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(CHAT.replace(b'"auto"', b'"gpt-4o-mini"'), id="catalog-model-named"),
        pytest.param(b"{not json", id="malformed"),
    ],
)
async def test_a_request_the_router_did_not_decide_is_not_read(body: bytes) -> None:
    """A pass-through's metadata has no decision id: the stream ends at the response headers."""
    snap = usage_on()
    metadata = await decided(snap, body)
    assert "decision_id" not in metadata
    sink = RecordingSink()
    assert read(ResponseObserver(snap, sink), response(metadata, USAGE_JSON)) == [False]
    assert (sink.usages, sink.errors) == ([], [])


async def test_usage_of_a_response_cut_before_its_last_chunk_is_still_recorded_once() -> None:
    """The upstream reset, or the client stopped reading at the final SSE event: no end_of_stream ever comes."""
    snap = usage_on()
    metadata = await decided(snap)
    sink = RecordingSink()
    observer = ResponseObserver(snap, sink)
    sse = b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}\n\ndata: [DONE]\n\n'
    assert observer.feed(observed("response_headers", metadata))
    assert observer.feed(observed("response_body", metadata, body=sse))
    assert sink.usages == []
    observer.close()
    observer.close()
    assert [usage[:4] for usage in sink.usages] == [(metadata["decision_id"], "gpt-4o-mini", 12, 7)]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        pytest.param(b'{"object":"chat.completion"}', [], id="none-reported"),
        pytest.param(b"\x1f\x8b" + b"corrupt" * 10, ["usage_unreadable"], id="corrupt-gzip"),
        pytest.param(b'{"pad":"' + b"x" * (2 << 20) + b'"}', ["usage_unreadable"], id="oversized-without-usage"),
    ],
)
async def test_a_response_whose_usage_cannot_be_read_is_counted(body: bytes, errors: list[str]) -> None:
    """Its cost would otherwise vanish from the usage metrics with nothing to alert on."""
    snap = usage_on()
    sink = RecordingSink()
    observer = ResponseObserver(snap, sink)
    read(observer, response(await decided(snap), body))
    assert (sink.usages, sink.errors) == ([], errors)
    assert observer.result == ("unreadable" if errors else "not_reported")


async def test_a_model_a_reload_removed_is_counted_not_priced() -> None:
    snap = usage_on()
    metadata = await decided(snap) | {USAGE_MODEL_KEY: "retired-model"}
    sink = RecordingSink()
    observer = ResponseObserver(snap, sink)
    assert read(observer, response(metadata, USAGE_JSON)) == [False]
    assert (sink.usages, sink.errors, observer.result) == ([], [], "unknown_model")


async def test_a_failing_tap_costs_only_the_fallback_note() -> None:
    snap = usage_on()
    sink = RecordingSink()
    read(ResponseObserver(snap, sink, _AnsweredByTap(fail=True)), response(await decided(snap), USAGE_JSON, "gpt-4o"))
    assert [usage[1:4] for usage in sink.usages] == [("gpt-4o", 1000, 500)]
    assert sink.errors == ["tap_exception"]


def test_usage_on_without_copies_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """The observer filter left disabled (as shipped) would otherwise give no usage, no error and no log line. A
    copy comes when its response ends, long after its decision: no copy while the first responses may still be
    streaming is not yet a sign of anything."""
    now = [0.0]
    missing = CopyCheck(after=3, wait_seconds=600, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="model_router.observe"):
        for _ in range(6):
            missing.decided()
        assert caplog.records == []  # many decisions, but their responses may still stream
        now[0] = 599.0
        missing.decided()
        assert caplog.records == []
        for _ in range(3):
            now[0] += 1.0
            missing.decided()
    assert [r.getMessage() for r in caplog.records] == [
        "telemetry.response_usage is on, but no response copy came for 8 decisions in 600 s: enable Envoy's "
        'model_router_usage filter (README "Real usage")'
    ]
    caplog.clear()
    working = CopyCheck(after=3, wait_seconds=600, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="model_router.observe"):
        for _ in range(6):
            working.decided()
        working.copied()
        now[0] += 600.0
        working.decided()
    assert caplog.records == []


def _service(snap: Snapshot, after: int = 100) -> tuple[ExternalProcessorService, Telemetry]:
    telemetry = Telemetry(TelemetrySettings(metrics_listen=None), logging.getLogger("test.observe"), None)
    check = CopyCheck(after=after, wait_seconds=0)
    service = ExternalProcessorService(SnapshotRef(snap), inline_classify, telemetry, copy_check=check)
    return service, telemetry


async def _stream(
    messages: list[pb.ProcessingRequest], hold: asyncio.Event | None = None
) -> AsyncIterator[pb.ProcessingRequest]:
    for msg in messages:
        yield msg
    if hold is not None:  # the stream stays open, as Envoy's does until the response ends
        await hold.wait()


def _count(telemetry: Telemetry, result: str) -> float:
    return telemetry.usage_responses.labels(result=result)._value.get()  # type: ignore[no-any-return]


async def test_the_service_hands_an_observability_stream_to_the_observer_and_answers_nothing() -> None:
    snap = usage_on()
    service, telemetry = _service(snap)
    metadata = await decided(snap)
    answers = [a async for a in service.Process(_stream(response(metadata, USAGE_JSON)), None)]  # type: ignore[arg-type]
    assert answers == []
    assert _count(telemetry, "read") == 1
    assert telemetry.usage_tokens.labels(model="gpt-4o-mini", direction="input")._value.get() == 1000
    assert telemetry.streams_in_flight._value.get() == 0  # decision streams only


async def test_a_cancelled_observer_stream_still_counts_the_usage_it_read() -> None:
    snap = usage_on()
    service, telemetry = _service(snap)
    metadata = await decided(snap)
    sse = b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}\n\n'
    messages = [observed("response_headers", metadata), observed("response_body", metadata, body=sse)]

    async def drain() -> None:
        async for _ in service.Process(_stream(messages, hold=asyncio.Event()), None):  # type: ignore[arg-type]
            pass

    task = asyncio.create_task(drain())
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _count(telemetry, "read") == 1
    assert telemetry.usage_tokens.labels(model="gpt-4o-mini", direction="output")._value.get() == 7


@pytest.mark.parametrize("copied", [False, True], ids=["filter-left-disabled", "copies-arrive"])
async def test_the_service_warns_when_decisions_with_usage_get_no_copies(
    copied: bool, caplog: pytest.LogCaptureFixture
) -> None:
    snap = usage_on()
    service, _ = _service(snap, after=2)
    if copied:
        metadata = await decided(snap)
        assert [a async for a in service.Process(_stream(response(metadata, USAGE_JSON)), None)] == []  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="model_router.observe"):
        for _ in range(3):
            messages = [headers_msg(chat_headers()), body_msg(CHAT)]
            answers = [a async for a in service.Process(_stream(messages), DecisionStreamContext())]  # type: ignore[arg-type]
            assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert len(caplog.records) == (0 if copied else 1)


async def test_copies_with_usage_off_are_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """The filter enabled but the router option off: each copy costs a stream for nothing."""
    decided_with_usage = await decided(usage_on())
    service, telemetry = _service(usage_on(on=False))
    with caplog.at_level(logging.WARNING, logger="model_router.observe"):
        for _ in range(3):
            messages = response(decided_with_usage, USAGE_JSON)
            assert [a async for a in service.Process(_stream(messages), None)] == []  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "Envoy sends response copies (filter model_router_usage) but telemetry.response_usage is off: each costs a"
        " stream for nothing; turn usage on, or disable the filter"
    ]
    assert all(_count(telemetry, result) == 0 for result in ("read", "not_reported", "unreadable", "unknown_model"))
