"""ExternalProcessorService on decision streams: when it ends them.

Envoy keeps a decision stream open until the router closes it or the HTTP request ends. Each case drives the service
with a stream that, like Envoy's, stays open until the test sends its next message, so a service that waited for
more would hang (a guard timeout turns that into a failure) instead of ending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config import Settings, TelemetrySettings
from extproc.service import ExternalProcessorService
from extproc.snapshot import SnapshotRef
from extproc.telemetry import Telemetry
from tests.fakes import DecisionStreamContext, demo_settings, inline_classify, snapshot, with_section
from tests.protocol import body_msg, chat_headers, headers_msg

CHAT = b'{"model":"auto","messages":[{"role":"user","content":"medium question"}]}'
GUARD_SECONDS = 10  # only against a hang: every wait below ends at once when the service behaves


class _Envoy:
    """One decision stream as Envoy drives it: a message is sent only when the test sends it."""

    def __init__(self, settings: Settings) -> None:
        telemetry = Telemetry(TelemetrySettings(metrics_listen=None), logging.getLogger("test.service"), None)
        self.telemetry = telemetry
        service = ExternalProcessorService(SnapshotRef(snapshot(settings=settings)), inline_classify, telemetry)
        self._queue: asyncio.Queue[pb.ProcessingRequest] = asyncio.Queue()
        self._answers = service.Process(self._messages(), DecisionStreamContext())  # type: ignore[arg-type]

    async def _messages(self) -> AsyncIterator[pb.ProcessingRequest]:
        while True:
            yield await self._queue.get()

    async def send(self, message: pb.ProcessingRequest) -> str | None:
        """Send one message; the kind of the router's answer, or None if the router ended the stream instead."""
        await self._queue.put(message)
        return await self.next_answer()

    async def next_answer(self) -> str | None:
        try:
            answer = await asyncio.wait_for(anext(self._answers), GUARD_SECONDS)
        except StopAsyncIteration:
            return None
        return answer.WhichOneof("response")


def _settings(on_response: bool, **policy: object) -> Settings:
    return with_section(demo_settings(**policy), "server", decision_headers_on_response=on_response)


@pytest.mark.parametrize(
    ("headers", "body", "answers", "policy"),
    [
        pytest.param(chat_headers(), CHAT, ["request_headers", "request_body"], {}, id="routed"),
        pytest.param(chat_headers(), b"{not json", ["request_headers", "request_body"], {}, id="passed-at-the-body"),
        pytest.param(chat_headers("/v1/embeddings"), None, ["request_headers"], {}, id="passed-at-the-headers"),
        pytest.param(
            chat_headers(**{"x-model-router-quality": "2"}),
            CHAT,
            ["request_headers", "immediate_response"],
            {"quality_header": True, "invalid_constraint": "reject"},
            id="rejected",
        ),
    ],
)
async def test_a_decision_stream_ends_once_the_request_is_decided(
    headers: dict[str, str], body: bytes | None, answers: list[str], policy: dict[str, object]
) -> None:
    """A response that streams for minutes holds no router stream: the router ends it after its last answer."""
    envoy = _Envoy(_settings(on_response=False, **policy))
    got = [await envoy.send(headers_msg(headers))]
    if body is not None:
        got.append(await envoy.send(body_msg(body)))
    assert got == answers
    assert await envoy.next_answer() is None  # ended without a further message from Envoy
    assert envoy.telemetry.streams_in_flight._value.get() == 0


async def test_decision_headers_on_the_response_keep_the_stream_until_the_response_headers() -> None:
    envoy = _Envoy(_settings(on_response=True))
    assert await envoy.send(headers_msg(chat_headers())) == "request_headers"
    assert await envoy.send(body_msg(CHAT)) == "request_body"
    assert envoy.telemetry.streams_in_flight._value.get() == 1
    assert await envoy.send(pb.ProcessingRequest(response_headers=pb.HttpHeaders())) == "response_headers"
    assert await envoy.next_answer() is None  # nothing more to add: not held for the response body
    assert envoy.telemetry.streams_in_flight._value.get() == 0


async def test_decision_headers_on_the_response_do_not_hold_a_request_the_router_passed() -> None:
    """A pass-through gets no decision headers, so its stream ends at once even with the option on."""
    envoy = _Envoy(_settings(on_response=True))
    assert await envoy.send(headers_msg(chat_headers("/v1/embeddings"))) == "request_headers"
    assert await envoy.next_answer() is None
