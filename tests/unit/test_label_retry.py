"""Backoff policy and which failures are retried, with a fake sleep and fake randomness (no real waiting)."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Awaitable, Callable

import httpx
import orjson
import pytest

from extproc.labeling.client import ChatEndpoint
from extproc.labeling.retry import CallError, RetryPolicy, parse_retry_after, with_retries

NOW = 1_800_000_000.0


class FakeSleep:
    """Records each requested delay instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.mark.parametrize(
    ("attempt", "rand", "want"),
    [
        pytest.param(0, 0.0, 0.5, id="first-retry-least"),
        pytest.param(0, 0.999, 0.9995, id="first-retry-most"),
        pytest.param(3, 0.0, 4.0, id="doubles-each-time"),
        pytest.param(10, 0.0, 15.0, id="capped-least"),
        pytest.param(10, 1.0, 30.0, id="capped-most"),
    ],
)
def test_backoff_is_exponential_with_bounded_jitter(attempt: int, rand: float, want: float) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=30.0)
    assert policy.delay(attempt, None, lambda: rand) == pytest.approx(want)


@pytest.mark.parametrize(
    ("retry_after", "rand", "want"),
    [
        pytest.param(7.0, 0.0, 7.0, id="honoured"),
        pytest.param(7.0, 1.0, 7.7, id="plus-at-most-10pct"),
        pytest.param(0.0, 0.5, 0.0, id="zero-means-now"),
        pytest.param(3600.0, 0.0, 120.0, id="capped"),
    ],
)
def test_retry_after_replaces_the_backoff_step(retry_after: float, rand: float, want: float) -> None:
    assert RetryPolicy(max_retry_after=120.0).delay(5, retry_after, lambda: rand) == pytest.approx(want)


@pytest.mark.parametrize(
    ("header", "want"),
    [
        pytest.param("12", 12.0, id="seconds"),
        pytest.param(" 0 ", 0.0, id="zero"),
        pytest.param(email.utils.formatdate(NOW + 30, usegmt=True), 30.0, id="http-date"),
        pytest.param(email.utils.formatdate(NOW - 30, usegmt=True), 0.0, id="date-in-the-past"),
        pytest.param("-5", None, id="negative"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(header: str | None, want: float | None) -> None:
    assert parse_retry_after(header, NOW) == want


def failing(errors: list[CallError]) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A call that raises ``errors`` in order, then returns "ok"; and its call counter."""
    calls = [0]

    async def call() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    return call, calls


async def test_retryable_failures_are_retried_until_success() -> None:
    sleep = FakeSleep()
    call, calls = failing([CallError("timeout", True), CallError("http_429", True, retry_after=2.0)])
    assert await with_retries(call, RetryPolicy(retries=3, base_delay=1.0), sleep, lambda: 0.0) == "ok"
    assert calls == [3]
    assert sleep.delays == [0.5, 2.0]  # backoff step 0, then the server's Retry-After


async def test_gives_up_after_the_configured_retries_with_the_last_reason() -> None:
    sleep = FakeSleep()
    call, calls = failing([CallError("http_503", True)] * 5)
    with pytest.raises(CallError) as raised:
        await with_retries(call, RetryPolicy(retries=2, base_delay=1.0), sleep, lambda: 0.0)
    assert raised.value.reason == "http_503"
    assert calls == [3]
    assert sleep.delays == [0.5, 1.0]


async def test_a_non_retryable_failure_is_raised_at_once() -> None:
    sleep = FakeSleep()
    call, calls = failing([CallError("http_400", False)])
    with pytest.raises(CallError):
        await with_retries(call, RetryPolicy(retries=3), sleep, lambda: 0.0)
    assert calls == [1] and sleep.delays == []


def endpoint(handler: Callable[[httpx.Request], httpx.Response], client: httpx.AsyncClient) -> ChatEndpoint:
    return ChatEndpoint(client, "http://gw/v1/", {"authorization": "Bearer k"}, 5.0, asyncio.Semaphore(2), lambda: NOW)


def reply(content: object = "hi", status: int = 200, **headers: str) -> httpx.Response:
    body = {
        "choices": [{"message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def raise_(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("handler", "reason", "retryable", "retry_after"),
    [
        pytest.param(lambda r: reply(status=429, **{"retry-after": "4"}), "http_429", True, 4.0, id="429"),
        pytest.param(lambda r: reply(status=503), "http_503", True, None, id="5xx"),
        pytest.param(lambda r: reply(status=400), "http_400", False, None, id="400-not-retried"),
        pytest.param(lambda r: reply(status=401), "http_401", False, None, id="401-not-retried"),
        pytest.param(lambda r: httpx.Response(200, content=b"<html>"), "bad_response", True, None, id="not-json"),
        pytest.param(lambda r: reply(content=None), "no_content", False, None, id="no-content"),
        pytest.param(raise_(httpx.ConnectError("refused")), "connection_error", True, None, id="connect"),
        pytest.param(raise_(httpx.RemoteProtocolError("reset")), "connection_error", True, None, id="reset"),
        pytest.param(raise_(httpx.ReadTimeout("slow")), "timeout", True, None, id="timeout"),
    ],
)
async def test_endpoint_failures_carry_reason_and_retryability(
    handler: Callable[[httpx.Request], httpx.Response], reason: str, retryable: bool, retry_after: float | None
) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(CallError) as raised:
            await endpoint(handler, client).complete({"model": "m", "messages": []})
    assert (raised.value.reason, raised.value.retryable, raised.value.retry_after) == (reason, retryable, retry_after)


async def test_endpoint_posts_to_chat_completions_with_its_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return reply("fine", **{"x-model-router-model": "m"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        got = await endpoint(handler, client).complete({"model": "m"}, {"x-extra": "1"})
    assert (got.text, got.input_tokens, got.output_tokens) == ("fine", 3, 1)
    assert got.headers["x-model-router-model"] == "m"
    assert str(seen[0].url) == "http://gw/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer k" and seen[0].headers["x-extra"] == "1"
    assert orjson.loads(seen[0].content) == {"model": "m"}
