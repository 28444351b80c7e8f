"""Faults through the real Envoy: router killed or draining, fail-open and fail-closed, slow classifier, reloads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from devstack.stack import Stack
from extproc.classify import ClassifierThreads
from extproc.service import ExternalProcessorService
from extproc.snapshot import SnapshotRef
from extproc.telemetry import Telemetry
from tests.fakes import FakeDifficultyModel, demo_settings, snapshot
from tests.integration.conftest import router_metric, wait_until
from tests.integration.test_routing import EASY, HARD, JSON, chat_body, post
from tests.protocol import body_msg, chat_headers, headers_msg, router_metadata

HEURISTIC = {"classifier": {"kind": "heuristic"}}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(workdir=tmp_path, router_overrides={**HEURISTIC, "server": {"grace_seconds": 5}}) as s:
        yield s


def test_router_killed_mid_load_fails_open_then_routing_resumes(stack: Stack) -> None:
    results: list[tuple[int, str | None, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(
                    stack.base_url + "/v1/chat/completions",
                    content=chat_body(EASY),
                    headers={"content-type": "application/json"},
                )
                decided = r.headers.get("x-model-router-decision-id")  # none: Envoy failed open
                results.append((r.status_code, decided, r.headers["x-upstream-cluster"]))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        time.sleep(0.5)
        stack.stop_router(signal.SIGKILL)
        killed_at = len(results)
        time.sleep(1.0)
        down = results[killed_at:]
        stack.start_router()
        resumed_at = len(results)
        time.sleep(0.5)
        stop.set()
        for f in futures:
            f.result()
    assert all(code == 200 for code, _, _ in results), {code for code, _, _ in results}
    assert any(decided is None and cluster == "frontier" for _, decided, cluster in down), "no request saw the outage"
    assert all(cluster == "frontier" for _, decided, cluster in down if decided is None)
    after = results[resumed_at:]
    assert after and all(decided is not None for _, decided, _ in after[-5:]), "routing did not resume"


def test_fail_closed_gives_a_clear_5xx_not_a_hang(tmp_path: Path) -> None:
    def fail_closed(cfg: dict[str, Any]) -> None:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
        ext_proc["typed_config"]["failure_mode_allow"] = False

    s = Stack(workdir=tmp_path, envoy_patch=fail_closed)
    s.start(router=False)
    try:
        start = time.monotonic()
        r = post(s, chat_body(EASY))
        assert 500 <= r.status_code < 600
        assert time.monotonic() - start < 5
    finally:
        s.stop()


async def _serve_inprocess(
    port: int, model: FakeDifficultyModel, timeout_ms: float
) -> tuple[grpc.aio.Server, Telemetry]:
    base = demo_settings()
    settings = base.model_copy(update={"server": base.server.model_copy(update={"classifier_timeout_ms": timeout_ms})})
    telemetry = Telemetry(settings.telemetry, __import__("logging").getLogger("test.inprocess"))
    server = grpc.aio.server()
    service = ExternalProcessorService(SnapshotRef(snapshot(model, settings)), ClassifierThreads(2), telemetry)
    pb_grpc.add_ExternalProcessorServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, telemetry


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(FakeDifficultyModel(delay=1.0), id="slower-than-budget"),
        pytest.param(FakeDifficultyModel(error=RuntimeError("onnx failed")), id="raising"),
    ],
)
async def test_classifier_fault_falls_back_within_budget(tmp_path: Path, model: FakeDifficultyModel) -> None:
    s = Stack(workdir=tmp_path)
    s.start(router=False)
    server, telemetry = await _serve_inprocess(s.router_port, model, timeout_ms=50)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            start = time.monotonic()
            r = await client.post(
                s.base_url + "/v1/chat/completions",
                content=chat_body("an easy one"),
                headers={"content-type": "application/json"},
            )
            elapsed = time.monotonic() - start
        assert r.status_code == 200
        assert r.headers["x-model-router-model"] == "gpt-4o"  # the default model, not the cheap one
        assert r.headers["x-upstream-cluster"] == "frontier"
        assert elapsed < 0.5, "the fallback must come within the classifier budget, well under 1 s"
        assert telemetry.errors.labels(reason="classifier_failed")._value.get() == 1
    finally:
        await server.stop(None)
        s.stop()


async def test_sigterm_drains_in_flight_streams_and_exits(stack: Stack) -> None:
    """A stream open when SIGTERM comes (its headers answered, its body not yet sent) is still answered in full; new
    requests fail open at once; the process exits within ``grace_seconds``. Envoy's buffer filter opens the ext_proc
    stream only once a body is complete, so the open stream is held here as Envoy would hold it, over gRPC."""
    proc = stack.procs["router"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.router_port}") as channel:
        messages: asyncio.Queue[pb.ProcessingRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.ProcessingRequest]:
            while (message := await messages.get()) is not None:
                yield message

        replies = pb_grpc.ExternalProcessorStub(channel).Process(requests())
        await messages.put(headers_msg(chat_headers()))
        assert (await replies.read()).HasField("request_headers")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(timeout=20) as client:
            during = await client.post(stack.base_url + "/v1/chat/completions", content=chat_body(EASY), headers=JSON)
        assert during.status_code == 200 and during.headers["x-upstream-cluster"] == "frontier"  # new: fail-open
        await messages.put(body_msg(chat_body(HARD)))
        answer = await replies.read()
        await messages.put(None)
    assert router_metadata(answer)["selected_model"] == "gpt-4o", "the in-flight stream was not finished"
    start = time.monotonic()
    code = await asyncio.to_thread(proc.wait, 10)
    assert code == 0
    assert time.monotonic() - start < 6  # grace_seconds is 5
    stack.procs.pop("router")


def _rewrite_config(stack: Stack, **policy: Any) -> None:
    data = yaml.safe_load(stack.router_config_path.read_text())
    data["policy"].update(policy)
    stack.router_config_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _config_in_force(stack: Stack) -> bool:
    """``model_router_config_info`` names the file's current bytes (its SHA-256, as ``sha256sum`` prints it)."""
    digest = hashlib.sha256(stack.router_config_path.read_bytes()).hexdigest()[:12]
    return router_metric(stack, "model_router_config_info", digest=digest) == 1


def _routed(stack: Stack, model: str) -> bool:
    return "x-model-router-decision-id" in post(stack, chat_body(EASY, model=model)).headers  # pass-throughs have none


@pytest.mark.parametrize("trigger", ["file-change", "sighup"])
def test_hot_reload_applies_valid_and_rejects_invalid(stack: Stack, trigger: str) -> None:
    if trigger == "sighup":  # make sure the file watcher is not what applies it
        data = yaml.safe_load(stack.router_config_path.read_text())
        data["server"]["config_poll_seconds"] = 0
        stack.router_config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        stack.stop_router()
        stack.start_router()
    assert not _routed(stack, "gpt-4o-mini")
    assert _config_in_force(stack)

    with ThreadPoolExecutor(2) as pool:  # traffic during the reload: nothing may fail
        stop = threading.Event()

        def traffic() -> list[int]:
            codes = []
            while not stop.is_set():
                codes.append(post(stack, chat_body(HARD)).status_code)
            return codes

        running: concurrent.futures.Future[list[int]] = pool.submit(traffic)
        _rewrite_config(stack, routable_models=["auto", "router", "gpt-4o-mini"])
        if trigger == "sighup":
            stack.procs["router"].send_signal(signal.SIGHUP)
        assert wait_until(lambda: _routed(stack, "gpt-4o-mini")), "valid config was not applied"
        stop.set()
        assert set(running.result()) == {200}
    assert router_metric(stack, "model_router_config_reloads_total", result="applied") == 1
    assert _config_in_force(stack), "the applied file's digest, and only it"
    applied = stack.router_config_path.read_bytes()

    _rewrite_config(stack, quality_target=7, routable_models=["auto"])
    if trigger == "sighup":
        stack.procs["router"].send_signal(signal.SIGHUP)
    assert wait_until(lambda: router_metric(stack, "model_router_config_reloads_total", result="rejected") == 1)
    assert "policy.quality_target" in stack.log("router").read_text()
    assert _routed(stack, "gpt-4o-mini"), "the running config must stay in force"
    still = hashlib.sha256(applied).hexdigest()[:12]
    assert router_metric(stack, "model_router_config_info", digest=still) == 1 and not _config_in_force(stack)
