"""Envoy's JSON access log carries the router's decision (dynamic metadata ``model_router``) beside its own fields.

The access log goes to Envoy's stdout, which the stack writes to ``stack.log("envoy")``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from devstack.stack import ENVOY_DIR, Stack
from tests.integration.test_routing import EASY, HARD, chat_body, post, received_body

OVERRIDES = {"classifier": {"kind": "heuristic"}, "telemetry": {"decision_log": True}}

# The access_log block of envoy/envoy.yaml's http_connection_manager (as pasted there).
ACCESS_LOG_YAML = """
                # One JSON object per request on stdout: Envoy's own fields beside the router's decision (the dynamic
                # metadata the router sets under `model_router`; null when the router did not decide).
                access_log:
                  - name: envoy.access_loggers.stdout
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
                      log_format:
                        json_format:
                          start_time: "%START_TIME%"
                          method: "%REQ(:METHOD)%"
                          path: "%REQ(:PATH)%"
                          protocol: "%PROTOCOL%"
                          response_code: "%RESPONSE_CODE%"
                          response_flags: "%RESPONSE_FLAGS%"
                          bytes_received: "%BYTES_RECEIVED%"
                          bytes_sent: "%BYTES_SENT%"
                          duration_ms: "%DURATION%"
                          upstream_cluster: "%UPSTREAM_CLUSTER%"
                          upstream_host: "%UPSTREAM_HOST%"
                          request_id: "%REQ(X-REQUEST-ID)%"
                          model_router:
                            decision_id: "%DYNAMIC_METADATA(model_router:decision_id)%"
                            selected_model: "%DYNAMIC_METADATA(model_router:selected_model)%"
                            tier: "%DYNAMIC_METADATA(model_router:tier)%"
                            cluster: "%DYNAMIC_METADATA(model_router:cluster)%"
                            reason: "%DYNAMIC_METADATA(model_router:reason)%"
"""
ENVOY_FIELDS = ("start_time", "method", "path", "response_code", "duration_ms", "upstream_cluster", "request_id")


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _install_access_log(cfg: dict[str, Any]) -> None:
    """Until envoy/envoy.yaml has the JSON access log, run the test with the block above installed."""
    _hcm(cfg)["access_log"] = yaml.safe_load(ACCESS_LOG_YAML)["access_log"]


def _has_json_access_log() -> bool:
    committed = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    return "json_format" in json.dumps(_hcm(committed).get("access_log"))


@pytest.fixture(scope="module")
def astack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    patch = None if _has_json_access_log() else _install_access_log
    with Stack(workdir=tmp_path_factory.mktemp("access"), router_overrides=OVERRIDES, envoy_patch=patch) as s:
        yield s


def _access_line(stack: Stack, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15  # Envoy flushes its access log on a timer
    while time.monotonic() < deadline:
        for line in stack.log("envoy").read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                entry: dict[str, Any] = json.loads(line)
                if entry.get("request_id") == request_id:
                    return entry
        time.sleep(0.2)
    raise AssertionError(f"no access-log line for {request_id}:\n{stack.log('envoy').read_text()[-3000:]}")


def _decision(stack: Stack, decision_id: str) -> dict[str, Any]:
    for line in stack.log("router").read_text(errors="replace").splitlines():
        if line.startswith("{") and decision_id in line:
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == "decision":
                return event
    raise AssertionError(f"decision {decision_id} not logged")


@pytest.mark.parametrize("prompt", [EASY, HARD], ids=["easy", "hard"])
def test_access_log_has_the_decision(astack: Stack, prompt: str) -> None:
    request_id = f"access-{len(prompt)}"
    r = post(astack, chat_body(prompt), **{"x-request-id": request_id})
    assert r.status_code == 200, r.text
    entry = _access_line(astack, request_id)
    for name in ENVOY_FIELDS:
        assert entry[name] is not None, name
    assert (entry["method"], entry["path"], entry["response_code"]) == ("POST", "/v1/chat/completions", 200)
    mr = entry["model_router"]
    assert mr["decision_id"] == r.headers["x-model-router-decision-id"]
    assert mr["selected_model"] == r.headers["x-model-router-model"] == r.headers["x-upstream-model"]
    assert mr["tier"] == r.headers["x-model-router-tier"]
    logged = _decision(astack, mr["decision_id"])
    assert mr["cluster"] == logged["cluster"]
    assert "REASON_" + mr["reason"].upper() == logged["reason"]


def test_a_named_catalog_model_passes_through_to_its_cluster(astack: Stack) -> None:
    """Not routed (no decision id, body untouched), but sent to the cluster that serves it: the default route's
    provider would answer 404 for another provider's model."""
    sent = chat_body(EASY, model="llama-3.1-8b-instruct")
    r = post(astack, sent, **{"x-request-id": "access-pass"})
    assert r.status_code == 200, r.text
    assert received_body(astack, "small") == sent
    entry = _access_line(astack, "access-pass")
    assert entry["upstream_cluster"] == "small_then_stronger"
    mr = entry["model_router"]
    assert (mr["outcome"], mr["reason"], mr["selected_model"], mr["cluster"]) == (
        "passthrough",
        "model_not_routable",
        "llama-3.1-8b-instruct",
        "small",
    )
    assert mr["decision_id"] is None and "x-model-router-decision-id" not in r.headers


def test_passthrough_has_no_decision_fields(astack: Stack) -> None:
    r = post(astack, chat_body(EASY, model="not-in-the-catalog"), **{"x-request-id": "access-other"})
    assert r.status_code == 404  # the default route's provider does not serve it either
    entry = _access_line(astack, "access-other")
    assert entry["upstream_cluster"] == "frontier"
    mr = entry["model_router"]
    assert (mr.pop("outcome"), mr.pop("reason")) == ("passthrough", "model_not_routable")
    assert all(v is None for v in mr.values()), entry
