"""``model-router report --envoy-log`` against a real Envoy: a decision whose answer came after Envoy's
``message_timeout`` is in the decision log but was not applied, and the report says so.

The router runs in-process (as in ``test_faults``) with a decision tap that holds the event loop for one request,
after the decision is logged and before the answer is sent: an overloaded router, made repeatable. Envoy writes both
shipped access-log formats: its JSON log on stdout (``envoy/envoy.yaml``) and, added here, the text format of
``k8s/base/envoy.yaml`` to a file.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from devstack.stack import ROOT, Stack
from extproc.classify import ClassifierThreads
from extproc.config import Settings
from extproc.record import DecisionRecord
from extproc.report import write_report
from extproc.request import ParsedRequest
from extproc.service import ExternalProcessorService
from extproc.snapshot import SnapshotRef
from extproc.telemetry import Telemetry
from tests.fakes import FakeDifficultyModel, demo_settings, snapshot, with_section
from tests.integration.test_routing import EASY, JSON, chat_body

LATE = "a late one: what is the capital of Peru?"


class _StallsOnLate:
    """Holds the event loop past Envoy's 200 ms ``message_timeout`` when the prompt is :data:`LATE`: the decision is
    logged by then, the answer comes too late."""

    def decided(
        self, settings: Settings, rec: DecisionRecord, parsed: ParsedRequest, served_model: str
    ) -> Mapping[str, str]:
        if parsed.prompt_text == LATE:
            time.sleep(0.6)
        return {}

    def answered_by(self, decision_id: str, model: str) -> None:
        """Nothing to observe."""


def _text_access_log(stack: Stack) -> Any:
    """Also write k8s/base/envoy.yaml's text access log, to a file."""
    k8s = yaml.safe_load((ROOT / "k8s/base/envoy.yaml").read_text())
    hcm = k8s["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    text = hcm["access_log"][0]["typed_config"]["log_format"]

    def patch(cfg: dict[str, Any]) -> None:
        logger = {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(stack.workdir / "envoy-text.log"),
                "log_format": text,
            },
        }
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"].append(
            logger
        )

    return patch


async def _serve(port: int, log: Path) -> tuple[grpc.aio.Server, logging.Handler]:
    settings = with_section(demo_settings(), "telemetry", decision_log=True)
    handler = logging.FileHandler(log)  # the message alone: the decision's JSON, as report reads it
    logger = logging.getLogger("test.envoy_applied")
    logger.propagate, logger.handlers[:] = False, [handler]
    logger.setLevel(logging.INFO)
    service = ExternalProcessorService(
        SnapshotRef(snapshot(FakeDifficultyModel(), settings)),
        ClassifierThreads(2),
        Telemetry(settings.telemetry, logger),
        tap=_StallsOnLate(),
    )
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, handler


def _report(router_log: Path, envoy_log: Path) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    assert write_report([router_log], out, as_json=True, envoy_logs=[envoy_log], err=err) == 0, err.getvalue()
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


async def test_report_counts_the_late_decision_as_not_applied(tmp_path: Path) -> None:
    stack = Stack(workdir=tmp_path)
    stack.envoy_patch = _text_access_log(stack)
    stack.start(router=False)
    router_log = tmp_path / "router-decisions.log"
    server, handler = await _serve(stack.router_port, router_log)
    try:
        timeouts = stack.envoy_stat("http.llm.ext_proc.message_timeouts")
        seen = []
        async with httpx.AsyncClient(timeout=10) as client:
            for prompt in (EASY, "a medium question", LATE, "a hard question", EASY):
                r = await client.post(stack.base_url + "/v1/chat/completions", content=chat_body(prompt), headers=JSON)
                assert r.status_code == 200, r.text
                seen.append((r.headers.get("x-model-router-decision-id"), r.headers["x-upstream-cluster"]))
                if prompt == LATE:
                    await asyncio.sleep(0.5)  # the held loop answers the late one first: the next one is in time
        assert seen[2] == (None, "frontier"), "the late decision went out unrouted (fail-open)"
        assert all(decision is not None for decision, _ in seen[:2] + seen[3:]), seen
        assert stack.envoy_stat("http.llm.ext_proc.message_timeouts") == timeouts + 1
    finally:
        await server.stop(None)
        handler.close()
        stack.stop()  # Envoy writes its access logs out as it exits
    logged = [json.loads(line) for line in router_log.read_text().splitlines()]
    assert len(logged) == 5, "the router logged the late decision too"
    late = {d["decision_id"] for d in logged} - {decision for decision, _ in seen}
    assert len(late) == 1
    for envoy_log in (stack.log("envoy"), tmp_path / "envoy-text.log"):
        report = _report(router_log, envoy_log)
        envoy = report["envoy"]
        assert (envoy["applied"], envoy["not_applied"], envoy["outside_span"]) == (4, 1, 0), (envoy_log, envoy)
        assert envoy["access_lines"] == 5
        assert report["total"]["requests"] == 4
        assert late.isdisjoint(Path(envoy_log).read_text().split()), "Envoy never saw the late decision's id"
