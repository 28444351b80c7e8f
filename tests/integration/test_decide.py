"""Decide on the router's real gRPC port, beside ext_proc: the same decision as a live request through Envoy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devstack.stack import ENVOY_DIR, Stack
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc
from extproc.decision_proto import label
from extproc.server import MESSAGE_HEADROOM
from tests.integration.test_routing import EASY, HARD, chat_body, post

OVERRIDES = {"classifier": {"kind": "heuristic"}, "telemetry": {"decision_log": True}}
_PER_CALL = {"decision_id", "decided_at", "classify_seconds", "total_seconds"}


@pytest.fixture(scope="module")
def dstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(workdir=tmp_path_factory.mktemp("decide"), router_overrides=OVERRIDES) as s:
        yield s


@pytest.fixture(scope="module")
def channel(dstack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{dstack.router_port}") as ch:
        yield ch


def _logged(stack: Stack, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in stack.log("router").read_text(errors="replace").splitlines():
            if line.startswith("{") and decision_id in line:
                event: dict[str, Any] = json.loads(line)
                if event.get("event") == "decision" and event.get("decision_id") == decision_id:
                    return event
        time.sleep(0.1)
    raise AssertionError(f"decision {decision_id} not in the router log")


def _comparable(decision: dict[str, Any]) -> dict[str, Any]:
    known = api.RoutingDecision.DESCRIPTOR.fields_by_name
    return {k: v for k, v in decision.items() if k in known and k not in _PER_CALL}


@pytest.mark.parametrize("prompt", [EASY, HARD], ids=["easy", "hard"])
def test_decide_agrees_with_a_live_request(dstack: Stack, channel: grpc.Channel, prompt: str) -> None:
    body = chat_body(prompt)
    reply = api_grpc.ModelRouterServiceStub(channel).Decide(
        api.DecideRequest(path="/v1/chat/completions", headers={"x-request-id": "d1"}, body=body), timeout=10
    )
    live = post(dstack, body)
    assert live.status_code == 200, live.text
    assert reply.decision.selected_model == live.headers["x-model-router-model"] == live.headers["x-upstream-model"]
    assert reply.decision.tier == live.headers["x-model-router-tier"]
    logged = _logged(dstack, live.headers["x-model-router-decision-id"])
    assert _comparable(json_format.MessageToDict(reply.decision, preserving_proto_field_name=True)) == _comparable(
        logged
    )
    assert _logged(dstack, reply.decision.decision_id), "Decide's decision is logged like a live one"


def test_bad_body_is_a_passthrough_decision(channel: grpc.Channel) -> None:
    reply = api_grpc.ModelRouterServiceStub(channel).Decide(
        api.DecideRequest(path="/v1/chat/completions", body=b'{"model": "auto", "messages": ['), timeout=10
    )
    assert reply.decision.outcome == api.OUTCOME_PASSTHROUGH
    assert label("reason", reply.decision.reason) == "invalid_json"


def test_grpc_messages_are_bounded_by_the_body_limit(channel: grpc.Channel) -> None:
    """gRPC decodes a whole message before the handler runs: a 64 MiB cap let a few Decide calls exhaust the
    router's memory. A body just over ``limits.max_body_bytes`` still gets its passthrough answer; a message over the
    limit plus the headroom is refused before it is decoded."""
    limit = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())["limits"]["max_body_bytes"]
    decide = api_grpc.ModelRouterServiceStub(channel).Decide
    over = api.DecideRequest(path="/v1/chat/completions", body=b" " * (limit + 1))
    assert label("reason", decide(over, timeout=20).decision.reason) == "body_too_large"
    with pytest.raises(grpc.RpcError) as info:
        decide(api.DecideRequest(path="/v1/chat/completions", body=b" " * (limit + MESSAGE_HEADROOM)), timeout=20)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    still = decide(api.DecideRequest(path="/v1/chat/completions", body=b"{}"), timeout=10)
    assert label("reason", still.decision.reason) == "no_model", "the router keeps answering"


def test_missing_path_is_invalid_argument(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        api_grpc.ModelRouterServiceStub(channel).Decide(api.DecideRequest(body=b"{}"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "path" in info.value.details()  # type: ignore[attr-defined]


def test_reflection_and_health_list_every_service(channel: grpc.Channel) -> None:
    answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {
        "model_router.v1.ModelRouterService",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="model_router.v1.ModelRouterService"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_explain_asks_the_running_router(dstack: Stack, channel: grpc.Channel) -> None:
    target = f"127.0.0.1:{dstack.router_port}"
    shown = subprocess.run(
        [sys.executable, "-m", "extproc", "explain", "--target", target, HARD],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "extproc", "explain", "--target", target, "--json", HARD],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    reply = json_format.Parse(as_json, api.DecideResponse())
    assert reply.decision.selected_model == "gpt-4o"
    assert f"-> {reply.decision.selected_model} (tier {reply.decision.tier}" in shown.splitlines()[0]
    assert len(reply.models) == 3


def test_decision_api_off_turns_off_decide_and_reflection(tmp_path: Path) -> None:
    """server.decision_api: false leaves ext_proc and health on the port, and nothing that reveals the catalog."""
    overrides = {**OVERRIDES, "server": {"decision_api": False}}
    with Stack(workdir=tmp_path, router_overrides=overrides) as stack:
        assert "x-model-router-model" in post(stack, chat_body(EASY)).headers, "ext_proc still routes"
        with grpc.insecure_channel(f"127.0.0.1:{stack.router_port}") as ch:
            for call in (
                lambda: api_grpc.ModelRouterServiceStub(ch).Decide(api.DecideRequest(path="/v1/chat/completions")),
                lambda: list(
                    reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                    )
                ),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
