"""Issue-8 policy features through the real Envoy: constraints (incl. a 400), latency class, tenants,
conversation stickiness, shadow mode and the savings report."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from devstack.stack import ENVOY_DIR, Stack
from tests.integration.test_routing import EASY, HARD, chat_body, last_received, post


def _catalog() -> list[dict[str, object]]:
    catalog: list[dict[str, object]] = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())["catalog"]
    for model in catalog:
        if model["name"] == "gpt-4o":
            model["latency_class"] = "slow"
    return catalog


OVERRIDES = {
    "classifier": {"kind": "heuristic"},
    "telemetry": {"decision_log": True},
    "policy": {
        "tenant_header": "x-tenant-id",
        "invalid_constraint": "reject",
        "stickiness": {"session_header": "x-session-id"},
    },
    "catalog": _catalog(),
    "tenants": {
        "frugal": {"models": ["llama-3.1-8b-instruct", "gpt-4o-mini"], "default_model": "gpt-4o-mini"},
        "watcher": {"shadow": True},
    },
}


@pytest.fixture(scope="module")
def pstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(workdir=tmp_path_factory.mktemp("policy"), router_overrides=OVERRIDES) as s:
        yield s


def test_invalid_constraint_gets_a_clear_400(pstack: Stack) -> None:
    client = openai.OpenAI(base_url=pstack.base_url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": EASY}],
            extra_headers={"x-model-router-quality": "very high"},
        )
    client.close()
    assert "x-model-router-quality" in str(info.value)
    assert info.value.code == "invalid_model_router_constraint"


def test_invalid_constraint_400_has_the_anthropic_shape_on_messages(pstack: Stack) -> None:
    client = anthropic.Anthropic(base_url=pstack.base_url, api_key="k", max_retries=0)
    with client, pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="auto",
            max_tokens=16,
            messages=[{"role": "user", "content": EASY}],
            extra_headers={"x-model-router-quality": "very high"},
        )
    body = info.value.body
    assert info.value.status_code == 400 and isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "x-model-router-quality" in body["error"]["message"]


def test_invalid_constraint_on_a_request_the_router_does_not_route_goes_on(pstack: Stack) -> None:
    """Reject mode refuses what the router would decide; a catalog model the client named is only forwarded."""
    r = post(pstack, chat_body(HARD, model="gpt-4o-mini"), **{"x-model-router-quality": "very high"})
    assert r.status_code == 200 and r.headers["x-upstream-model"] == "gpt-4o-mini"


def test_max_cost_caps_a_hard_prompt(pstack: Stack) -> None:
    assert post(pstack, chat_body(HARD)).headers["x-model-router-model"] == "gpt-4o"
    r = post(pstack, chat_body(HARD), **{"x-model-router-max-cost": "0.0005"})
    assert r.headers["x-model-router-model"] == "gpt-4o-mini" == r.headers["x-upstream-model"]


def test_interactive_excludes_slow_models(pstack: Stack) -> None:
    r = post(pstack, chat_body(HARD), **{"x-model-router-latency": "interactive"})
    assert r.headers["x-model-router-model"] == "gpt-4o-mini"


def test_tenant_catalog_subset(pstack: Stack) -> None:
    r = post(pstack, chat_body(HARD), **{"x-tenant-id": "frugal"})
    assert r.headers["x-model-router-model"] == "gpt-4o-mini"
    assert r.headers["x-upstream-cluster"] == "cheap"


def test_session_stickiness(pstack: Stack) -> None:
    session = {"x-session-id": "conv-42"}
    assert post(pstack, chat_body(HARD), **session).headers["x-model-router-model"] == "gpt-4o"
    follow_up = post(pstack, chat_body(EASY), **session)
    assert follow_up.headers["x-model-router-model"] == "gpt-4o", "an escalated conversation fell back"
    other = post(pstack, chat_body(EASY), **{"x-session-id": "conv-43"})
    assert other.headers["x-model-router-model"] != "gpt-4o"


def test_conversation_stickiness_without_session_header(pstack: Stack) -> None:
    opening = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}]

    def turn(*later: str) -> httpx.Response:
        messages = list(opening)
        for i, text in enumerate(later):
            messages.append({"role": "user", "content": text})
            if i < len(later) - 1:
                messages.append({"role": "assistant", "content": f"reply {i}"})
        return post(pstack, httpx.Request("POST", "/", json={"model": "auto", "messages": messages}).read())

    assert turn(EASY).headers["x-model-router-model"] != "gpt-4o"
    assert turn(EASY, HARD).headers["x-model-router-model"] == "gpt-4o"
    assert turn(EASY, HARD, EASY).headers["x-model-router-model"] == "gpt-4o"


def test_a_hard_openings_follow_up_stays_strong_without_a_session_header(pstack: Stack) -> None:
    """The first turn's escalation cannot be remembered (no reply identifies the conversation yet); the follow-up's
    request carries the opening, whose decision is the conversation's floor."""
    client = openai.OpenAI(base_url=pstack.base_url + "/v1", api_key="k", max_retries=0)
    history: list[ChatCompletionMessageParam] = [{"role": "user", "content": HARD}]
    first = client.chat.completions.with_raw_response.create(model="auto", messages=history)
    history += [{"role": "assistant", "content": first.parse().choices[0].message.content or ""}]
    follow_up = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[*history, {"role": "user", "content": EASY}],
    )
    alone = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": EASY}])
    client.close()
    assert first.headers["x-model-router-model"] == "gpt-4o"
    assert follow_up.headers["x-model-router-model"] == "gpt-4o" == follow_up.parse().model
    assert alone.headers["x-model-router-model"] != "gpt-4o"


def test_shadow_tenant_is_untouched_and_reported(pstack: Stack) -> None:
    sent = chat_body(EASY)
    r = post(pstack, sent, **{"x-tenant-id": "watcher"})
    assert r.status_code == 200
    assert "x-model-router-model" not in r.headers
    # Where it would go without the router: "auto" names no upstream model, so the default model, as sent otherwise.
    assert r.headers["x-upstream-cluster"] == "frontier"
    import base64

    got = base64.b64decode(str(last_received(pstack, "frontier")["body_b64"]))
    assert got == sent.replace(b'"model":"auto"', b'"model":"gpt-4o"')
    report = subprocess.run(
        [sys.executable, "-m", "extproc", "report", str(pstack.log("router"))],
        capture_output=True,
        text=True,
        check=True,
    )
    watcher_rows = [line for line in report.stdout.splitlines() if line.startswith("watcher ")]
    assert watcher_rows and any("%" in line for line in watcher_rows), report.stdout
    assert "shadow=1" in report.stdout
