"""End-to-end routing through the real Envoy binary, with httpx and the official openai SDK as clients."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest
import yaml

from devstack.stack import ENVOY_DIR, Stack
from tests.integration.conftest import HEURISTIC

EASY = "What is the capital of France?"
HARD = (
    "Prove that the integral of x^2 from 0 to 1 equals 1/3 step by step, derive the general theorem for x^n, "
    "and explain why the proof of the fundamental theorem holds. Then design an algorithm and analyze its complexity."
)


def chat_body(prompt: str, model: str = "auto", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], **extra})


def last_received(stack: Stack, cluster: str) -> dict[str, object]:
    got = httpx.get(f"http://127.0.0.1:{stack.upstream_ports[cluster]}/_received").json()
    assert got, f"upstream {cluster} received nothing"
    return got[-1]  # type: ignore[no-any-return]


def received_body(stack: Stack, cluster: str) -> bytes:
    return base64.b64decode(str(last_received(stack, cluster)["body_b64"]))


JSON = {"content-type": "application/json"}


def post(stack: Stack, body: bytes, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    return httpx.post(
        stack.base_url + path,
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )


def test_easy_prompt_goes_cheap_with_only_model_rewritten(stack: Stack) -> None:
    sent = chat_body(EASY, temperature=1.0, n=1, x_vendor={"model": "keep"}, seed=12345678901234567)
    r = post(stack, sent)
    assert r.status_code == 200, r.text
    cluster = r.headers["x-upstream-cluster"]
    assert cluster in ("small", "cheap")
    got = received_body(stack, cluster)
    new_model = r.headers["x-upstream-model"]
    assert got == sent.replace(b'"model":"auto"', b'"model":' + orjson.dumps(new_model))
    assert r.headers["x-model-router-model"] == new_model
    assert r.headers["x-model-router-tier"] == cluster
    assert len(r.headers["x-model-router-decision-id"]) == 16


def test_hard_prompt_goes_frontier(stack: Stack) -> None:
    r = post(stack, chat_body(HARD))
    assert r.status_code == 200, r.text
    assert (r.headers["x-upstream-cluster"], r.headers["x-upstream-model"]) == ("frontier", "gpt-4o")


@pytest.mark.parametrize(
    ("model", "cluster", "status"),
    [
        pytest.param("gpt-4o-mini", "cheap", 200, id="catalog-model-to-its-cluster"),
        pytest.param("llama-3.1-8b-instruct", "small", 200, id="another-catalog-model"),
        pytest.param("not-in-the-catalog", "frontier", 404, id="unknown-model-default-route"),
    ],
)
def test_non_routable_model_is_untouched(stack: Stack, model: str, cluster: str, status: int) -> None:
    """The router does not choose (no decision headers, body byte for byte), but a catalog model goes to the
    cluster that serves it; the fake upstreams answer 404 for models they do not serve, as providers do."""
    sent = chat_body(EASY, model=model)
    r = post(stack, sent)
    assert r.status_code == status, r.text
    assert r.headers["x-upstream-cluster"] == cluster
    assert received_body(stack, cluster) == sent
    assert "x-model-router-decision-id" not in r.headers


def router_headers_received(stack: Stack, cluster: str) -> set[str]:
    """The ``x-model-router-*`` headers the last request to ``cluster``'s upstream carried."""
    headers = last_received(stack, cluster)["headers"]
    return {k.lower() for k in headers if k.lower().startswith("x-model-router-")}  # type: ignore[attr-defined]


ROUTER_HEADERS = {
    "x-model-router-cluster": "cheap",
    "x-model-router-override": "gpt-4o-mini",
    "x-model-router-override-token": "not-for-the-provider",
    "x-model-router-quality": "0.9",
    "x-model-router-max-cost": "1",
    "x-model-router-latency": "interactive",
}


def test_client_cannot_choose_the_route(stack: Stack) -> None:
    r = post(stack, chat_body(EASY), **{"x-model-router-cluster": "frontier", "x-model-router-model": "gpt-4o"})
    assert r.headers["x-upstream-cluster"] in ("small", "cheap")
    # Not even the cluster header the router set itself goes upstream.
    assert router_headers_received(stack, r.headers["x-upstream-cluster"]) == set()
    r = post(stack, chat_body(EASY, model="not-in-the-catalog"), **{"x-model-router-cluster": "cheap"})
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert router_headers_received(stack, "frontier") == set()


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        pytest.param("/v1/chat/completions", "application/json", b'{"model":"auto","messages":[', id="malformed-json"),
        pytest.param("/v1/chat/completions", "application/json", b'{"messages":[]}', id="missing-model"),
        pytest.param("/v1/chat/completions", "text/plain", chat_body(EASY, model="gpt-4o"), id="non-json-content-type"),
        pytest.param("/v1/embeddings", "application/json", chat_body(EASY), id="unknown-path"),
        pytest.param(
            "/v1/chat/completions",
            "application/json",
            b'{"model":"auto","model":"auto"}',
            id="duplicate-model",
        ),
    ],
)
def test_bad_or_foreign_requests_are_forwarded_unchanged(
    stack: Stack, path: str, content_type: str, body: bytes
) -> None:
    r = httpx.post(stack.base_url + path, content=body, headers={"content-type": content_type}, timeout=10)
    assert r.status_code < 500, r.text
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert received_body(stack, "frontier") == body


def test_body_over_envoy_limit_gets_413(stack: Stack) -> None:
    r = post(stack, chat_body("x" * (5 * 1024 * 1024)))
    assert r.status_code == 413


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_the_body_limit_holds_for_every_protocol(stack: Stack, http2: bool) -> None:
    """Over HTTP/2 the listener's buffer limit did not bound a stream's body (16 MiB went through, whole, to the
    router and the upstream); Envoy's buffer filter makes 4 MiB the limit of the router's APIs for both protocols."""
    limit = 4 * 1024 * 1024
    prefix, suffix = chat_body("What is 2+2? ").split(b"What is 2+2? ")
    room = 16  # for the chosen model's name, longer than "auto"
    body = prefix + b"What is 2+2? " + b"a" * (limit - room - len(prefix) - len(suffix) - 13) + suffix
    assert len(body) == limit - room
    with httpx.Client(http1=not http2, http2=http2, timeout=30) as client:
        sent = client.post(stack.base_url + "/v1/chat/completions", content=body, headers=JSON)
        assert sent.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert sent.status_code == 200, sent.text
        assert "x-model-router-decision-id" in sent.headers
        at_limit = client.post(stack.base_url + "/v1/chat/completions", content=body + b" " * room, headers=JSON)
        assert at_limit.status_code != 413, "the limit itself is accepted"
        over = client.post(stack.base_url + "/v1/chat/completions", content=body + b" " * (room + 1), headers=JSON)
        assert over.status_code == 413
        # Other APIs are not buffered: an audio or file upload streams through, whatever its size.
        upload = client.post(stack.base_url + "/v1/audio/transcriptions", content=b"\0" * (3 * limit))
        assert upload.status_code != 413 and upload.headers["x-upstream-cluster"] == "frontier"


@pytest.mark.parametrize("path", ["//v1/chat/completions", "/v1//chat/completions", "/v1/%63hat/completions"])
def test_path_spellings_of_a_routed_api_are_routed(stack: Stack, path: str) -> None:
    """Envoy normalises the path before the router and the route table see it: an upstream reads these spellings as
    its chat API, so sent as they were they would reach it unrouted (as "auto": a 404). Escaped slashes are kept:
    other APIs' paths carry ``%2F`` as data (test below)."""
    r = httpx.post(stack.base_url + path, content=chat_body(EASY), headers=JSON, timeout=10)
    assert r.status_code == 200, r.text
    assert "x-model-router-decision-id" in r.headers


def test_escaped_slashes_reach_other_apis_as_sent(stack: Stack) -> None:
    """An object name or an ARN in another API's path holds ``%2F`` as data: unescaping it would change the
    resource (or break a signed request)."""
    path = "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.claude/converse"
    r = httpx.post(stack.base_url + path, content=b"{}", headers=JSON, timeout=10)
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert last_received(stack, "frontier")["raw_path"] == path


def test_large_body_under_limit_is_routed(stack: Stack) -> None:
    sent = chat_body("What is 2+2? " + "a" * (2 * 1024 * 1024))
    r = post(stack, sent)
    assert r.status_code == 200
    assert r.headers["x-model-router-model"] == r.headers["x-upstream-model"]


GZIP = {"content-type": "application/json", "content-encoding": "gzip"}


def test_gzip_body_is_inflated_and_routed(stack: Stack) -> None:
    """Envoy's request decompressor inflates a gzip body before the router reads it (and ends the body with
    trailers, which the router must not take for a streamed body): "auto" is routed, and the upstream gets the
    plain JSON with only the model changed, no content-encoding, and a content-length that fits it."""
    sent = chat_body(EASY, temperature=0.5)
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=gzip.compress(sent), headers=GZIP, timeout=10)
    assert r.status_code == 200, r.text
    cluster, model = r.headers["x-upstream-cluster"], r.headers["x-upstream-model"]
    assert (cluster, r.headers["x-model-router-model"]) == ("cheap", model)
    got = last_received(stack, cluster)
    headers = {k.lower(): v for k, v in got["headers"].items()}  # type: ignore[attr-defined]
    body = sent.replace(b'"auto"', orjson.dumps(model))
    assert "content-encoding" not in headers and headers["content-length"] == str(len(body))
    assert base64.b64decode(str(got["body_b64"])) == body


def test_gzip_body_inflating_past_the_limit_gets_413(stack: Stack) -> None:
    """The buffer filter's limit holds for the inflated body: a 5 MiB body sent as 5 KiB of gzip is refused."""
    bomb = gzip.compress(chat_body("x" * (5 * 1024 * 1024)))
    assert len(bomb) < 10_000
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=bomb, headers=GZIP, timeout=10)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("path", "encoding"),
    [
        pytest.param("/v1/embeddings", "gzip", id="another-api"),
        # Decoded first-listed-first, "gzip, br" (br applied last) would be mangled: it passes unread.
        pytest.param("/v1/chat/completions", "gzip, br", id="encoded-twice"),
    ],
)
def test_a_gzip_body_not_inflated_is_forwarded_as_sent(stack: Stack, path: str, encoding: str) -> None:
    sent = gzip.compress(b'{"model":"auto","input":"x"}')
    headers = {**GZIP, "content-encoding": encoding}
    httpx.post(stack.base_url + path, content=sent, headers=headers, timeout=10)
    got = {k.lower(): v for k, v in last_received(stack, "frontier")["headers"].items()}  # type: ignore[attr-defined]
    assert (got["content-encoding"], got["content-length"]) == (encoding, str(len(sent)))


def test_openai_sdk_chat(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="test-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": EASY}]
    )
    completion = raw.parse()
    assert completion.model == raw.headers["x-model-router-model"] != "auto"
    assert (
        completion.choices[0].message.content
        == f"answer from {completion.model} on cluster {raw.headers['x-upstream-cluster']}"
    )
    client.close()


def test_openai_sdk_streaming(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="test-key", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": HARD}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "answer from gpt-4o on cluster frontier"
    assert {c.model for c in chunks} == {"gpt-4o"}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_openai_sdk_completions(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="test-key", max_retries=0)
    completion = client.completions.create(model="auto", prompt="Say hello", max_tokens=5)
    client.close()
    assert completion.model in ("llama-3.1-8b-instruct", "gpt-4o-mini")


def test_get_requests_pass(stack: Stack) -> None:
    r = httpx.get(stack.base_url + "/v1/models", timeout=10)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["gpt-4o"]  # the frontier upstream's


@pytest.mark.parametrize(
    ("model", "cluster", "served"), [("auto", "frontier", "gpt-4o"), ("gpt-4o-mini", "cheap", "gpt-4o-mini")]
)
def test_a_body_over_a_limit_is_served_as_without_the_router(
    stack: Stack, model: str, cluster: str, served: str
) -> None:
    """2,001 messages (``limits.max_messages`` is 2,000): not classified, but "auto" must not reach the upstream,
    which serves no such model (a 404 while a router outage would have served it)."""
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(2001)]
    sent = json.dumps({"model": model, "messages": turns}).encode()
    r = post(stack, sent)
    assert r.status_code == 200, r.text
    assert (r.headers["x-upstream-cluster"], r.headers["x-upstream-model"]) == (cluster, served)
    assert received_body(stack, cluster) == sent.replace(f'"{model}"'.encode(), f'"{served}"'.encode(), 1)
    assert r.headers["x-model-router-model"] == served and "x-model-router-decision-id" not in r.headers


ROUTER_RESPONSE_HEADERS = (
    "x-model-router-model",
    "x-model-router-tier",
    "x-model-router-decision-id",
    "x-model-router-feedback-token",
    "x-model-router-fallback-model",
)


@pytest.mark.parametrize(
    ("body", "decided"),
    [
        pytest.param(chat_body(EASY), True, id="routed"),
        pytest.param(chat_body(EASY, model="gpt-4o"), False, id="catalog-model"),
        pytest.param(chat_body(EASY, model="someone-else"), False, id="not-routable"),
    ],
)
def test_an_upstreams_own_router_headers_never_reach_the_client(stack: Stack, body: bytes, decided: bool) -> None:
    """An upstream (or a second gateway behind this one) answering with headers of the router's names: the client
    sees only what this router decided; a value the router leaves empty used to let the upstream's through."""
    spoofed = dict.fromkeys(ROUTER_RESPONSE_HEADERS, "spoofed")
    for port in stack.upstream_ports.values():
        httpx.post(f"http://127.0.0.1:{port}/_headers", json=spoofed, timeout=5).raise_for_status()
    try:
        r = post(stack, body)
    finally:
        for port in stack.upstream_ports.values():
            httpx.post(f"http://127.0.0.1:{port}/_headers", json={}, timeout=5).raise_for_status()
    assert r.status_code in (200, 404), r.text
    assert all(r.headers.get(name) != "spoofed" for name in ROUTER_RESPONSE_HEADERS), dict(r.headers)
    assert ("x-model-router-decision-id" in r.headers) is decided


@pytest.fixture(scope="module")
def typo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The cheap model's cluster misspelt in the router's catalog: Envoy has no route for the name the router sets."""
    router = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    for model in router["catalog"]:
        model["cluster"] = "cheapp" if model["cluster"] == "cheap" else model["cluster"]
    overrides = {**HEURISTIC, "catalog": router["catalog"]}
    with Stack(workdir=tmp_path_factory.mktemp("typo"), router_overrides=overrides) as running:
        yield running


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        pytest.param("/v1/chat/completions", chat_body(EASY), {"error"}, id="openai"),
        pytest.param(
            "/v1/messages",
            orjson.dumps({"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": EASY}]}),
            {"type", "error"},
            id="anthropic",
        ),
    ],
)
def test_a_cluster_envoy_has_no_route_for_is_a_503_not_a_wrong_upstream(
    typo_stack: Stack, path: str, body: bytes, shape: set[str]
) -> None:
    """Before, the request reached the default upstream under the cheap model's name: a 404 counted as routed."""
    frontier = f"http://127.0.0.1:{typo_stack.upstream_ports['frontier']}/_received"
    received = len(httpx.get(frontier).json())
    r = post(typo_stack, body, path)
    assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
    error = r.json()
    assert set(error) == shape and "no route for (x-model-router-cluster)" in error["error"]["message"]
    assert error["error"].get("code", "no_route_for_cluster") == "no_route_for_cluster"
    assert len(httpx.get(frontier).json()) == received, "no upstream was asked"


@pytest.mark.parametrize(
    ("extra", "http2", "path", "room"),
    [
        pytest.param(80, False, "/v1/chat/completions", True, id="room"),
        pytest.param(92, False, "/v1/chat/completions", False, id="no-room-http1"),
        pytest.param(90, True, "/v1/chat/completions", False, id="no-room-http2"),
        pytest.param(92, False, "/v1/messages", False, id="anthropic-shape"),
    ],
)
def test_a_request_near_envoys_header_limit_gets_a_clear_answer(
    stack: Stack, extra: int, http2: bool, path: str, room: bool
) -> None:
    """Envoy holds 100 request headers at most (its pseudo-headers, x-request-id and x-forwarded-proto included: the
    client's ~95), and answered the router's cluster header past that with a bare 500: now a 431 in the API's error
    shape, which names the limit (never a hand-over to the fail-open filter, which knows no tenant)."""
    headers = {"content-type": "application/json", **{f"x-h{i}": "v" for i in range(extra)}}
    if path == "/v1/messages":
        body = orjson.dumps({"model": "auto", "max_tokens": 64, "messages": [{"role": "user", "content": EASY}]})
    else:
        body = chat_body(EASY)
    with httpx.Client(http2=http2, http1=not http2) as client:
        r = client.post(stack.base_url + path, content=body, headers=headers, timeout=10)
    if room:
        assert r.status_code == 200 and r.headers["x-upstream-cluster"] == "cheap", r.text
        return
    assert r.status_code == 431 and r.headers["content-type"] == "application/json", r.text
    error = r.json()
    if path == "/v1/messages":
        assert error["type"] == "error" and "100 headers" in error["error"]["message"]
    else:
        assert error["error"]["code"] == "request_headers_too_large" and "100 headers" in error["error"]["message"]


def _envoy_counter(stack: Stack, name: str) -> int:
    stats = httpx.get(f"http://127.0.0.1:{stack.admin_port}/stats", params={"filter": f"^{name}$"}, timeout=5).text
    return sum(int(line.rsplit(": ", 1)[1]) for line in stats.splitlines() if line.startswith(f"{name}: "))


def test_a_body_of_a_million_containers_is_not_searched_and_stalls_nothing(stack: Stack) -> None:
    """1.4 million empty arrays (4 MiB), over ``limits.max_json_containers``: matching their brackets to find the
    model held the router's event loop past Envoy's 200 ms message timeout (every stream waited; Envoy failed open).
    Past 100,000 brackets the router does not look: the body goes as sent, at once, decided by the router."""
    pre, post_ = b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"x":[', b"[]]}"
    sent = pre + b"[]," * ((4_194_304 - 100 - len(pre) - len(post_)) // 3) + post_
    timeouts = _envoy_counter(stack, "http.llm.ext_proc.message_timeouts")
    r = post(stack, sent)
    assert r.status_code == 404, r.text  # "auto" as sent: the fake upstream, like a provider, serves no such model
    assert received_body(stack, "frontier") == sent
    assert _envoy_counter(stack, "http.llm.ext_proc.message_timeouts") == timeouts, "the router answered in time"
    assert post(stack, chat_body(EASY)).headers["x-upstream-cluster"] == "cheap"


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(chat_body("hello !").replace(b"!", b"\\ud83d"), id="lone-surrogate"),  # a cut emoji
        pytest.param(b"\xef\xbb\xbf" + chat_body(EASY), id="byte-order-mark"),
    ],
)
def test_json_the_router_cannot_parse_is_served_as_without_it(stack: Stack, sent: bytes) -> None:
    """orjson refuses these; sent on as "auto" they were a 404 while a router outage would have served them."""
    assert b'"auto"' in sent
    r = post(stack, sent)
    assert r.status_code in (200, 400), r.text  # the fake upstream, like orjson, may refuse the body itself
    assert received_body(stack, "frontier") == sent.replace(b'"auto"', b'"gpt-4o"', 1)
    assert r.headers["x-model-router-model"] == "gpt-4o" and "x-model-router-decision-id" not in r.headers


def test_router_down_fails_open_to_default_model(routerless_stack: Stack) -> None:
    """Envoy's fail-open filter gives a routable alias the default model, every other byte as sent: "auto" would
    be a 404 from the default route's provider, an outage in place of the promised lost savings."""
    sent = chat_body(
        'He wrote {"model":"auto"} and \\"model\\":\\"auto\\"', temperature=0.5, metadata={"model": "auto"}
    )
    r = post(routerless_stack, sent)
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert received_body(routerless_stack, "frontier") == sent.replace(b'"model":"auto"', b'"model":"gpt-4o"', 1)
    # No decision headers: the router did not decide (a labeller must not take this for a pinned answer).
    assert not {h for h in r.headers if h.startswith("x-model-router-")}
    r = post(routerless_stack, sent, **ROUTER_HEADERS)
    assert r.headers["x-upstream-cluster"] == "frontier"  # Envoy strips the header even without the router
    # Nobody stripped them in the router's place: Envoy's route does, so the override secret stays in the gateway.
    assert router_headers_received(routerless_stack, "frontier") == set()


def test_router_down_renames_auto_in_a_gzip_body(routerless_stack: Stack) -> None:
    """The fail-open filter reads the inflated body, as the router would have."""
    sent = chat_body(EASY)
    r = httpx.post(routerless_stack.base_url + "/v1/chat/completions", content=gzip.compress(sent), headers=GZIP)
    assert r.status_code == 200, r.text
    assert received_body(routerless_stack, "frontier") == sent.replace(b'"auto"', b'"gpt-4o"')


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/responses/input_tokens"])
def test_router_down_renames_auto_in_a_token_count(routerless_stack: Stack, path: str) -> None:
    """The token-count paths get the fail-open filter's repair too, as the router would have renamed the alias."""
    sent = orjson.dumps({"model": "auto", "input": EASY})
    r = post(routerless_stack, sent, path)
    assert r.status_code == 200, r.text
    assert received_body(routerless_stack, "frontier") == sent.replace(b'"auto"', b'"gpt-4o"')


@pytest.mark.parametrize(("model", "cluster"), [("llama-3.1-8b-instruct", "small"), ("gpt-4o-mini", "cheap")])
def test_router_down_sends_a_named_catalog_model_to_its_cluster(
    routerless_stack: Stack, model: str, cluster: str
) -> None:
    sent = chat_body(EASY, model=model)
    r = post(routerless_stack, sent)
    assert r.status_code == 200, r.text  # the default route's provider would answer 404
    assert r.headers["x-upstream-cluster"] == cluster
    assert received_body(routerless_stack, cluster) == sent
    assert router_headers_received(routerless_stack, cluster) == set()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", chat_body(EASY, model="not-in-the-catalog"), id="unknown-model"),
        pytest.param(
            "/v1/chat/completions",
            b'{"metadata":{"model":"auto"},"model":"gpt-4o","messages":[]}',
            id="auto-only-nested",
        ),
        pytest.param("/v1/chat/completions", b'{"model":"auto","model":"auto"}', id="duplicate-model-key"),
        pytest.param("/v1/chat/completions", b'{"model":"auto","messages":[', id="malformed-json"),
        pytest.param("/v1/embeddings", b'{"model":"auto","input":"x"}', id="not-a-router-path"),
        pytest.param(
            "/v1/chat/completions",
            b'{"model":"auto","messages":[{"role":"user","content":"x"}],"pad":"' + b"x" * (4194304 - 69) + b'"}',
            id="rename-would-pass-envoys-buffer-limit",
        ),
    ],
)
def test_router_down_leaves_other_requests_untouched(routerless_stack: Stack, path: str, body: bytes) -> None:
    r = httpx.post(routerless_stack.base_url + path, content=body, headers={"content-type": "application/json"})
    assert r.headers["x-upstream-cluster"] == "frontier"
    assert received_body(routerless_stack, "frontier") == body
    assert "x-model-router-model" not in r.headers


def test_decision_log_has_no_prompt_text(stack: Stack) -> None:
    secret = "zebra-unicorn-secret-prompt-text"
    post(stack, chat_body(f"What is {secret}?"))
    log = stack.log("router").read_text()
    assert secret not in log
    assert json.dumps(secret) not in log
