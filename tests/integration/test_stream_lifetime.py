"""How long a decision stream lives, through real Envoy: the router ends it once the request is decided.

Envoy keeps an ext_proc stream until the processor closes it or the HTTP request ends. Held for a response that
streams for minutes, it would take a slot of the ``model_router`` cluster's circuit breaker (1,024 in
``envoy/envoy.yaml``) for the whole answer, and past that limit requests go unrouted. Each case holds the upstream's
SSE answer after its first event (fake upstream ``POST /_hold``) and looks at Envoy's and the router's counters while
the response is in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.integration.conftest import HEURISTIC, router_metric, wait_until
from tests.integration.test_routing import HARD, JSON, chat_body

DECISION_HEADERS = ("x-model-router-model", "x-model-router-tier", "x-model-router-decision-id")


def _router_streams_ended(stack: Stack) -> bool:
    return (
        stack.envoy_stat("cluster.model_router.upstream_rq_active") == 0
        and router_metric(stack, "model_router_streams_in_flight") == 0
    )


def _stream_while_held(stack: Stack) -> tuple[dict[str, str], bytes, bool]:
    """A streamed answer, held after its first event: its headers, its whole body once released, and whether the
    router's stream for it had ended while the response was still in flight."""
    stack.hold_streams(after=1)
    try:
        url, body = stack.base_url + "/v1/chat/completions", chat_body(HARD, stream=True)
        with httpx.stream("POST", url, content=body, headers=JSON, timeout=20) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            received = next(chunks)  # the first event reached the client; the upstream now waits
            ended = wait_until(lambda: _router_streams_ended(stack), timeout=5)
            stack.hold_streams(after=0)
            received += b"".join(chunks)
            return dict(r.headers), received, ended
    finally:
        stack.hold_streams(after=0)


def test_a_streaming_response_holds_no_router_stream(stack: Stack) -> None:
    started = stack.envoy_stat("http.llm.ext_proc.streams_started")
    headers, received, ended = _stream_while_held(stack)
    assert ended, "the router's stream stayed open while the response streamed"
    assert stack.envoy_stat("http.llm.ext_proc.streams_started") == started + 1
    assert stack.envoy_stat("http.llm.ext_proc.streams_failed") == 0
    assert headers["x-model-router-model"] == "gpt-4o"  # the decision headers still come (from the metadata)
    assert received.startswith(b"data: ") and received.endswith(b"data: [DONE]\n\n")


def _router_cluster_limit(limit: int) -> Callable[[dict[str, Any]], None]:
    def patch(cfg: dict[str, Any]) -> None:
        cluster = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "model_router")
        cluster["circuit_breakers"] = {"thresholds": [{"max_requests": limit}]}

    return patch


def test_more_responses_streaming_at_once_than_the_router_cluster_allows_are_all_routed(tmp_path: Path) -> None:
    """What holding the stream for the response would cost: with the cluster's limit at 2, the third response
    streaming at once would find no stream left and go unrouted (fail-open). Decided one after another, each while
    the earlier ones still stream, all six are routed."""
    with Stack(workdir=tmp_path, router_overrides=HEURISTIC, envoy_patch=_router_cluster_limit(2)) as stack:
        stack.hold_streams(after=1)
        try:
            url, body = stack.base_url + "/v1/chat/completions", chat_body(HARD, stream=True)
            with httpx.Client(timeout=20) as client, contextlib.ExitStack() as open_responses:
                streaming = []
                for _ in range(6):
                    r = open_responses.enter_context(client.stream("POST", url, content=body, headers=JSON))
                    chunks = r.iter_raw()
                    next(chunks)  # its first event arrived; it goes on streaming while the next one is decided
                    streaming.append((r, chunks))
                stack.hold_streams(after=0)
                models = [r.headers.get("x-model-router-model") for r, _ in streaming]
                bodies = [b"".join(chunks) for _, chunks in streaming]
        finally:
            stack.hold_streams(after=0)
        assert models == ["gpt-4o"] * 6
        assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
        assert stack.envoy_stat("http.llm.ext_proc.failure_mode_allowed") == 0


def _response_headers_to_router(cfg: dict[str, Any]) -> None:
    """A gateway that sends the router the response headers and builds no decision headers itself."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    ext_proc["typed_config"]["processing_mode"]["response_header_mode"] = "SEND"
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["response_headers_to_add"] = [
        h for h in vhost["response_headers_to_add"] if h["header"]["key"] not in DECISION_HEADERS
    ]


@pytest.fixture(params=[True, False], ids=["decision-headers-on-response", "option-off"])
def headers_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    overrides = {**HEURISTIC, "server": {"decision_headers_on_response": request.param}}
    with Stack(workdir=tmp_path, router_overrides=overrides, envoy_patch=_response_headers_to_router) as s:
        yield s


def test_decision_headers_on_the_response(headers_stack: Stack) -> None:
    """With the option, the router answers the response headers with the decision, then ends its stream before the
    response body; without it, Envoy takes the router's early close as "processing complete" and the response goes
    on, without the headers."""
    stack, on = headers_stack, headers_stack.router_overrides["server"]["decision_headers_on_response"]
    headers, received, ended = _stream_while_held(stack)
    assert ended
    assert received.endswith(b"data: [DONE]\n\n")
    if on:
        assert headers["x-model-router-model"] == "gpt-4o" and headers["x-model-router-tier"] == "frontier"
        assert len(headers["x-model-router-decision-id"]) == 16
    else:
        assert not set(DECISION_HEADERS) & set(headers)
    assert stack.envoy_stat("http.llm.ext_proc.streams_failed") == 0
