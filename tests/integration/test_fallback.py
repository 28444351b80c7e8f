"""Upstream fallback in the real Envoy: a failing or unreachable small/cheap cluster is retried on the next stronger
cluster (aggregate clusters + ``previous_priorities``), healthy clusters are never retried, and the chains' fallback
filter renames the model for the cluster that answers, changing no other byte (README "Envoy settings")."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from devstack.stack import Stack
from devstack.upstream import EXPECT_HEADER, digest_without_model
from extproc.bodyedit import replace_model
from tests.integration.conftest import HEURISTIC, router_metric, wait_until
from tests.integration.test_access_log import _access_line
from tests.integration.test_learning import FEEDBACK
from tests.integration.test_routing import EASY, HARD, chat_body, last_received, post, received_body

TO_SMALL = {"x-model-router-quality": "0.5"}
"""With the demo catalog and the heuristic classifier, the easy prompt goes to ``small`` at this quality target and
to ``cheap`` at the default one."""
MODEL_OF = {"small": "llama-3.1-8b-instruct", "cheap": "gpt-4o-mini", "frontier": "gpt-4o"}


def without_outlier_detection(cfg: dict[str, Any]) -> None:
    """Keep each test's failures from ejecting a host for the next tests (ejection is tested on its own)."""
    for cluster in cfg["static_resources"]["clusters"]:
        cluster.pop("outlier_detection", None)


TENANTS = {
    **HEURISTIC,
    "policy": {"tenant_header": "x-tenant-id"},
    "tenants": {
        "frugal": {"models": [MODEL_OF["small"], MODEL_OF["cheap"]], "default_model": MODEL_OF["cheap"]},
        "gap": {"models": [MODEL_OF["small"], MODEL_OF["frontier"]], "default_model": MODEL_OF["small"]},
        "tiny": {"models": [MODEL_OF["small"]], "default_model": MODEL_OF["small"]},
    },
}
"""Tenants whose subsets leave out a stronger cluster (requests without the header see the whole catalog)."""


@pytest.fixture(scope="module")
def fallback_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: these tests break and heal its upstreams."""
    workdir = tmp_path_factory.mktemp("fallback")
    with Stack(workdir=workdir, router_overrides=TENANTS, envoy_patch=without_outlier_detection) as running:
        yield running


@pytest.fixture(autouse=True)
def _heal(fallback_stack: Stack) -> Iterator[None]:
    yield
    for cluster in fallback_stack.upstream_ports:
        fail(fallback_stack, cluster, 0)


def fail(stack: Stack, cluster: str, status: int) -> None:
    """Make ``cluster``'s fake upstream answer every request with ``status`` (0 heals it)."""
    r = httpx.post(f"http://127.0.0.1:{stack.upstream_ports[cluster]}/_fail?status={status}", timeout=5)
    assert r.status_code == 200


def received_count(stack: Stack, clusters: Iterable[str] | None = None) -> dict[str, int]:
    """How many requests each upstream (of ``clusters``, default all) has received (``/_received`` keeps 256)."""
    return {
        cluster: len(httpx.get(f"http://127.0.0.1:{stack.upstream_ports[cluster]}/_received", timeout=5).json())
        for cluster in (stack.upstream_ports if clusters is None else clusters)
    }


def received_since(stack: Stack, before: dict[str, int]) -> dict[str, int]:
    """Requests each upstream received since ``before`` (a :func:`received_count`)."""
    after = received_count(stack)
    return {cluster: after[cluster] - before[cluster] for cluster in after}


def retries(stack: Stack) -> int:
    return sum(
        stack.envoy_stat(f"cluster.{c}.upstream_rq_retry") for c in ("small_then_stronger", "cheap_then_stronger")
    )


def test_healthy_upstreams_answer_on_their_own_cluster_without_retries(fallback_stack: Stack) -> None:
    before, retried = received_count(fallback_stack), retries(fallback_stack)
    cases = [(chat_body(EASY), TO_SMALL, "small"), (chat_body(EASY), {}, "cheap"), (chat_body(HARD), {}, "frontier")]
    for body, headers, cluster in cases:
        r = post(fallback_stack, body, **headers)
        assert r.status_code == 200, r.text
        assert (r.headers["x-upstream-cluster"], r.headers["x-model-router-tier"]) == (cluster, cluster)
        assert r.headers["x-upstream-model"] == MODEL_OF[cluster]
        assert "x-model-router-fallback-model" not in r.headers
        # The fallback filter's working header never reaches an upstream.
        assert not any(
            k.lower() == "x-model-router-upstream-cluster" for k in last_received(fallback_stack, cluster)["headers"]
        )
    assert received_since(fallback_stack, before) == {"small": 1, "cheap": 1, "frontier": 1}
    assert retries(fallback_stack) == retried


@pytest.mark.parametrize("status", [503, 500, 429])
@pytest.mark.parametrize(
    ("headers", "tier", "stronger"),
    [pytest.param(TO_SMALL, "small", "cheap", id="small"), pytest.param({}, "cheap", "frontier", id="cheap")],
)
def test_failing_cluster_falls_back_to_the_next_stronger(
    fallback_stack: Stack, status: int, headers: dict[str, str], tier: str, stronger: str
) -> None:
    fail(fallback_stack, tier, status)
    before = received_count(fallback_stack)
    body = chat_body(EASY, temperature=0.5, metadata={"model": "not-this-one"})
    r = post(fallback_stack, body, **headers, **{EXPECT_HEADER: digest_without_model(body)})
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream-cluster"] == stronger
    # The decision headers describe the router's choice; the retried body names the stronger cluster's model, and
    # the upstream checked that no other byte changed (a wrong content-length would not get this far either).
    assert (r.headers["x-model-router-tier"], r.headers["x-model-router-model"]) == (tier, MODEL_OF[tier])
    assert r.headers["x-upstream-model"] == r.headers["x-model-router-fallback-model"] == MODEL_OF[stronger]
    received = received_since(fallback_stack, before)
    assert received[tier] == 1  # tried once, then the next stronger cluster
    assert received[stronger] == 1


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_a_body_of_megabytes_falls_back_too(fallback_stack: Stack, http2: bool) -> None:
    """A retry resends the buffered body, up to the stream's buffer limit: the listener's is 256 KiB (memory, README
    "Envoy settings"), and the buffer filter raises it to 4 MiB on the router's routes. A 3.5 MB body must still be
    retried whole on the stronger cluster, not answered with the failing cluster's error."""
    fail(fallback_stack, "cheap", 503)
    before = received_count(fallback_stack)
    body = chat_body(EASY, model=MODEL_OF["cheap"], metadata={"pad": "x" * 3_500_000})
    headers = {"content-type": "application/json", EXPECT_HEADER: digest_without_model(body)}
    with httpx.Client(http1=not http2, http2=http2, timeout=20) as client:
        r = client.post(fallback_stack.base_url + "/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert (r.headers["x-upstream-cluster"], r.headers["x-model-router-fallback-model"]) == ("frontier", "gpt-4o")
    assert received_since(fallback_stack, before) == {"small": 0, "cheap": 1, "frontier": 1}


def test_two_failing_tiers_fall_back_to_frontier(fallback_stack: Stack) -> None:
    fail(fallback_stack, "small", 503)
    fail(fallback_stack, "cheap", 429)
    body = chat_body(EASY)
    request = {EXPECT_HEADER: digest_without_model(body), "x-request-id": "fallback-twice"}
    r = post(fallback_stack, body, **TO_SMALL, **request)
    assert r.status_code == 200, r.text
    # Renamed twice (for cheap, then for frontier), each time from the router's body: the second attempt must not
    # inherit the first one's content-length.
    assert (r.headers["x-upstream-cluster"], r.headers["x-upstream-model"]) == ("frontier", MODEL_OF["frontier"])
    assert r.headers["x-model-router-fallback-model"] == MODEL_OF["frontier"]
    entry = _access_line(fallback_stack, "fallback-twice")
    assert (entry["attempts"], entry["model_router"]["fallback_model"]) == (3, MODEL_OF["frontier"])
    assert entry["model_router"]["selected_model"] == MODEL_OF["small"]


def test_a_retry_back_on_the_routers_cluster_gets_the_routers_body(fallback_stack: Stack) -> None:
    """A two-cluster chain's third attempt returns to the first cluster: after the rename for frontier, it must get
    the router's body with its own content-length again (a stale length would corrupt the request)."""
    fail(fallback_stack, "cheap", 503)
    fail(fallback_stack, "frontier", 500)
    before = received_count(fallback_stack)
    body = chat_body(EASY)
    r = post(fallback_stack, body, **{EXPECT_HEADER: digest_without_model(body)})
    assert (r.status_code, r.headers["x-upstream-cluster"]) == (503, "cheap"), r.text
    assert "x-model-router-fallback-model" not in r.headers
    assert received_since(fallback_stack, before) == {"small": 0, "cheap": 2, "frontier": 1}
    assert received_body(fallback_stack, "cheap") == replace_model(body, MODEL_OF["cheap"])


def test_every_tier_failing_returns_the_last_error(fallback_stack: Stack) -> None:
    for cluster in fallback_stack.upstream_ports:
        fail(fallback_stack, cluster, 503)
    before = received_count(fallback_stack)
    r = post(fallback_stack, chat_body(EASY), **TO_SMALL)
    assert r.status_code == 503
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert received_since(fallback_stack, before) == {"small": 1, "cheap": 1, "frontier": 1}  # no extra attempts


def test_client_errors_are_not_retried(fallback_stack: Stack) -> None:
    fail(fallback_stack, "cheap", 400)
    before = received_count(fallback_stack)
    r = post(fallback_stack, chat_body(EASY))
    assert (r.status_code, r.headers["x-upstream-cluster"]) == (400, "cheap")
    assert received_since(fallback_stack, before) == {"small": 0, "cheap": 1, "frontier": 0}


def test_frontier_has_no_stronger_cluster_to_fall_back_to(fallback_stack: Stack) -> None:
    fail(fallback_stack, "frontier", 503)
    before = received_count(fallback_stack)
    r = post(fallback_stack, chat_body(HARD))
    assert (r.status_code, r.headers["x-upstream-cluster"]) == (503, "frontier")
    assert received_since(fallback_stack, before) == {"small": 0, "cheap": 0, "frontier": 1}


NO_FALLBACK = "serves none of the models this request may use"


@pytest.mark.parametrize(
    ("tenant", "extra", "failing", "attempts"),
    [
        pytest.param("frugal", {}, ["cheap"], {"small": 0, "cheap": 1, "frontier": 0}, id="cheap-fails"),
        pytest.param("frugal", TO_SMALL, ["small", "cheap"], {"small": 1, "cheap": 1, "frontier": 0}, id="two-fail"),
        # A gap in the subset ends the chain: the local reply on cheap is not retried on frontier.
        pytest.param("gap", TO_SMALL, ["small"], {"small": 1, "cheap": 0, "frontier": 0}, id="gap"),
    ],
)
def test_a_fallback_outside_the_tenants_models_is_answered_not_sent(
    fallback_stack: Stack, tenant: str, extra: dict[str, str], failing: list[str], attempts: dict[str, int]
) -> None:
    """A fallback cluster that serves none of the tenant's models gets no request under a name it does not serve
    (it answered 404 for the cheap model's name): the client gets a 503 saying why, in its SDK's error shape."""
    for cluster in failing:
        fail(fallback_stack, cluster, 503)
    before = received_count(fallback_stack)
    client = openai.OpenAI(base_url=fallback_stack.base_url + "/v1", api_key="k", max_retries=0)
    request_id = f"no-fallback-{tenant}-{len(failing)}"
    with client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": EASY}],
            extra_headers={"x-tenant-id": tenant, "x-request-id": request_id, **extra},
        )
    assert info.value.status_code == 503
    assert NO_FALLBACK in info.value.message
    assert info.value.code == "no_fallback_model"
    assert "x-model-router-fallback-model" not in info.value.response.headers
    assert received_since(fallback_stack, before) == attempts
    logged = _access_line(fallback_stack, request_id)
    refused_on = {"gap": "cheap"}.get(tenant, "frontier")
    assert (logged["response_code"], logged["model_router"]["no_model_on"]) == (503, refused_on)
    assert logged["attempts"] == sum(attempts.values()) + 1


def test_anthropic_clients_get_the_no_fallback_answer_in_their_shape(fallback_stack: Stack) -> None:
    fail(fallback_stack, "cheap", 529)
    client = anthropic.Anthropic(
        base_url=fallback_stack.base_url, api_key="k", max_retries=0, default_headers={"x-tenant-id": "frugal"}
    )
    with client, pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="auto", max_tokens=64, messages=[{"role": "user", "content": EASY}])
    assert info.value.status_code == 503
    body: Any = info.value.body
    assert (body["type"], body["error"]["type"]) == ("error", "api_error")
    assert NO_FALLBACK in body["error"]["message"]


def test_streaming_request_falls_back_before_the_stream_starts(fallback_stack: Stack) -> None:
    fail(fallback_stack, "cheap", 429)
    client = anthropic.Anthropic(base_url=fallback_stack.base_url, api_key="test-key", max_retries=0)
    with (
        client,
        client.messages.stream(model="auto", max_tokens=64, messages=[{"role": "user", "content": EASY}]) as stream,
    ):
        text = "".join(stream.text_stream)
    assert text == f"answer from {MODEL_OF['frontier']} on cluster frontier"


def test_unreachable_cluster_falls_back_and_is_then_skipped(tmp_path: Path) -> None:
    """The shipped config: connection refused is retried on the next cluster; after 5 failures the host is ejected
    and new requests go straight to the next cluster, with no failed attempt; concurrent retries are not capped."""
    with Stack(workdir=tmp_path, router_overrides=HEURISTIC) as stack:
        small = stack.procs["upstream-small"]
        small.terminate()
        small.wait(10)

        def send(_: int) -> tuple[int, str, str]:
            r = post(stack, chat_body(EASY), **TO_SMALL)
            cluster = r.headers.get("x-upstream-cluster", "")
            assert r.headers.get("x-upstream-model") == MODEL_OF.get(cluster), "renamed for the answering cluster"
            return r.status_code, r.headers.get("x-model-router-tier", ""), cluster

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, range(32)))
        # On a loaded machine a decision can miss the router's deadline and go to the default model instead.
        to_small = [cluster for _, tier, cluster in results if tier == "small"]
        assert [status for status, _, _ in results] == [200] * 32
        assert len(to_small) >= 16 and set(to_small) == {"cheap"}
        assert stack.envoy_stat("cluster.small_then_stronger.upstream_rq_retry_overflow") == 0
        assert stack.envoy_stat("cluster.small.outlier_detection.ejections_enforced_total") == 1
        retried = stack.envoy_stat("cluster.small_then_stronger.upstream_rq_retry")
        assert 5 <= retried < len(to_small)
        for _ in range(5):
            status, tier, cluster = send(0)
            assert status == 200 and (tier, cluster) in {("small", "cheap"), ("frontier", "frontier")}
        assert stack.envoy_stat("cluster.small_then_stronger.upstream_rq_retry") == retried  # skipped, not tried


def test_an_ejected_tier_does_not_send_a_tenant_outside_its_models(tmp_path: Path) -> None:
    """The shipped config, small down: a tenant with only small's model is answered 503 (also once small is ejected
    and the chain's first attempt is cheap); those local replies eject nothing else, so other requests fall back to
    cheap as before."""
    with Stack(workdir=tmp_path, router_overrides=TENANTS) as stack:
        small = stack.procs["upstream-small"]
        small.terminate()
        small.wait(10)
        before = received_count(stack, ["cheap", "frontier"])
        for _ in range(8):
            r = post(stack, chat_body(EASY), **TO_SMALL, **{"x-tenant-id": "tiny"})
            assert (r.status_code, r.json()["error"]["code"]) == (503, "no_fallback_model")
        assert stack.envoy_stat("cluster.small.outlier_detection.ejections_enforced_total") == 1
        assert stack.envoy_stat("cluster.cheap.outlier_detection.ejections_enforced_total") == 0
        assert received_count(stack, ["cheap", "frontier"]) == before  # nothing sent
        r = post(stack, chat_body(EASY), **TO_SMALL)
        assert (r.status_code, r.headers["x-upstream-cluster"]) == (200, "cheap")


def pod_network_is_internal(cfg: dict[str, Any]) -> None:
    """What an operator may well add: the pod network counts as internal (e.g. for ``x-envoy-internal``)."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["internal_address_config"] = {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}


def test_a_client_cannot_drive_envoys_retries_even_from_an_internal_address(tmp_path: Path) -> None:
    """Envoy honours its x-envoy-* control headers from internal requests, and without use_remote_address a
    client's X-Forwarded-For says who is internal: the gateway removes them all before anything reads them (one
    request became 11 upstream calls, 5 at frontier, and the client named Envoy stats)."""
    control = {
        "x-envoy-retry-on": "retriable-status-codes",
        "x-envoy-retriable-status-codes": "200",
        "x-envoy-max-retries": "10",
        "x-envoy-upstream-alt-stat-name": "client-chosen",
        "x-forwarded-for": "10.1.2.3",
    }
    with Stack(workdir=tmp_path, router_overrides=HEURISTIC, envoy_patch=pod_network_is_internal) as stack:
        for body, cluster in ((chat_body(EASY), "cheap"), (chat_body(EASY, model="gpt-4o"), "frontier")):
            before = received_count(stack)
            r = post(stack, body, **control)
            assert (r.status_code, r.headers["x-upstream-cluster"]) == (200, cluster)
            assert received_since(stack, before) == {c: int(c == cluster) for c in before}
            assert not {k for k in last_received(stack, cluster)["headers"] if k.lower().startswith("x-envoy-r")}
        stats = httpx.get(f"http://127.0.0.1:{stack.admin_port}/stats", timeout=5).text
        assert "client-chosen" not in stats


@pytest.fixture(scope="module")
def watching_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The router reads each response (``telemetry.response_usage``) and remembers decisions for feedback."""
    workdir = tmp_path_factory.mktemp("fallback-usage")
    overrides = {
        **HEURISTIC,
        "telemetry": {"response_usage": True},
        "feedback": {"enabled": True, "path": str(workdir / "feedback.jsonl")},
    }
    with Stack(workdir=workdir, router_overrides=overrides, envoy_patch=without_outlier_detection) as running:
        yield running


def usage_tokens(stack: Stack, model: str) -> tuple[float, float]:
    return tuple(  # type: ignore[return-value]
        router_metric(stack, "model_router_usage_tokens_total", model=model, direction=d) for d in ("input", "output")
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_usage_and_feedback_follow_the_model_that_answered(watching_stack: Stack, stream: bool) -> None:
    """cheap fails, frontier answers under its own name: the usage the router reads is frontier's (tokens and cost
    at its price), and feedback by decision id defaults to it; the decision headers keep the router's choice."""
    before = {m: usage_tokens(watching_stack, m) for m in (MODEL_OF["cheap"], MODEL_OF["frontier"])}
    fail(watching_stack, "cheap", 503)
    try:
        client = openai.OpenAI(base_url=watching_stack.base_url + "/v1", api_key="k", max_retries=0)
        messages: Any = [{"role": "user", "content": EASY}]
        with client:
            if stream:
                options: Any = {"include_usage": True}
                sse = client.chat.completions.with_raw_response.create(
                    model="auto", messages=messages, stream=True, stream_options=options
                )
                headers, usage = sse.headers, list(sse.parse())[-1].usage
            else:
                whole = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
                headers, usage = whole.headers, whole.parse().usage
    finally:
        fail(watching_stack, "cheap", 0)
    assert usage is not None
    assert headers["x-model-router-model"] == MODEL_OF["cheap"]
    assert headers["x-model-router-fallback-model"] == MODEL_OF["frontier"]
    frontier = MODEL_OF["frontier"]
    want = (before[frontier][0] + usage.prompt_tokens, before[frontier][1] + usage.completion_tokens)
    assert wait_until(lambda: usage_tokens(watching_stack, frontier) == want)
    assert usage_tokens(watching_stack, MODEL_OF["cheap"]) == before[MODEL_OF["cheap"]]
    assert router_metric(watching_stack, "model_router_usage_cost_total", model=frontier) > 0

    sent = {"decision_id": headers["x-model-router-decision-id"], "score": 1}
    answer = httpx.post(watching_stack.base_url + FEEDBACK, json=sent, timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == frontier


def shift_body_after_the_router(cfg: dict[str, Any]) -> None:
    """A filter between the router and the upstream that moves every byte of the body (a leading space)."""
    without_outlier_detection(cfg)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    shift = "function envoy_on_request(h)\n  local b = h:body()\n  b:setBytes(' ' .. b:getBytes(0, b:length()))\nend\n"
    hcm["http_filters"].insert(
        -1,
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": shift},
            },
        },
    )


def test_fallback_filter_never_splices_a_body_it_does_not_recognise(tmp_path: Path) -> None:
    """If the model value is no longer where the router wrote it, the retried body goes out as it is, whole."""
    with Stack(workdir=tmp_path, router_overrides=HEURISTIC, envoy_patch=shift_body_after_the_router) as stack:
        fail(stack, "small", 503)
        body = chat_body(EASY)
        r = post(stack, body, **TO_SMALL)
        # Whole but not renamed: cheap's provider does not serve the small model and says so (as a real one would).
        assert r.status_code == 404, r.text
        assert r.headers["x-upstream-cluster"] == "cheap"
        assert MODEL_OF["small"] in r.json()["error"]["message"]
        assert "x-model-router-fallback-model" not in r.headers
        assert received_body(stack, "cheap") == b" " + (replace_model(body, MODEL_OF["small"]) or b"")
        assert "the model value is not where the router wrote it" in stack.log("envoy").read_text()


def frontier_without_endpoint_metadata(cfg: dict[str, Any]) -> None:
    """A tier cluster whose endpoints were not given the fallback filter's metadata."""
    without_outlier_detection(cfg)
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] == "frontier":
            for group in cluster["load_assignment"]["endpoints"]:
                for endpoint in group["lb_endpoints"]:
                    endpoint.pop("metadata", None)


def test_an_endpoint_without_metadata_gets_the_routers_body_even_after_a_rename(tmp_path: Path) -> None:
    """small fails, cheap (renamed) fails, frontier has no metadata: the third attempt must carry the router's own
    body and length again, not the second attempt's rename or its content-length."""
    with Stack(workdir=tmp_path, router_overrides=HEURISTIC, envoy_patch=frontier_without_endpoint_metadata) as stack:
        fail(stack, "small", 503)
        fail(stack, "cheap", 503)
        body = chat_body(EASY)
        r = post(stack, body, **TO_SMALL, **{EXPECT_HEADER: digest_without_model(body)})
        # The router's body, not renamed for frontier: its provider does not serve the small model (a real 404).
        assert r.status_code == 404, r.text
        assert r.headers["x-upstream-cluster"] == "frontier"
        assert MODEL_OF["small"] in r.json()["error"]["message"]
        assert "x-model-router-fallback-model" not in r.headers
        assert received_body(stack, "cheap") == replace_model(body, MODEL_OF["cheap"])
        assert received_body(stack, "frontier") == replace_model(body, MODEL_OF["small"])


@pytest.mark.parametrize("router", [False, True], ids=["router-down", "router-up-escaped-name"])
def test_a_retry_that_could_not_rename_still_says_so(tmp_path: Path, router: bool) -> None:
    """Without a rename table (the fail-open filter chose the cluster, or the client's model value has escapes the
    router leaves alone), a retry goes to a stronger cluster under the name asked for: the response must say so,
    or a labeller would score that cluster's answer for the model it asked."""
    s = Stack(workdir=tmp_path, router_overrides=HEURISTIC, envoy_patch=without_outlier_detection)
    s.start(router=router)
    try:
        fail(s, "small", 503)
        name = "llama\\u002d3.1-8b-instruct" if router else MODEL_OF["small"]
        body = b'{"model":"' + name.encode() + b'","messages":[{"role":"user","content":"hi"}]}'
        r = post(s, body)
        assert r.headers["x-upstream-cluster"] == "cheap"  # the next cluster of the chain, asked for llama: a 404
        assert r.status_code == 404
        assert r.headers["x-model-router-fallback-model"] == MODEL_OF["small"]
        assert received_body(s, "cheap") == body
    finally:
        s.stop()
