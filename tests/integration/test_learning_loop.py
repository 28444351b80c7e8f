"""The learning loop end to end on local fakes: capture -> label -> adapt -> candidate beside live -> promote.

Real Envoy, the router with the shipped ONNX model, the openai SDK as the client, fake upstreams, and a fake judge
whose grades depend on the prompt: the small model fails every question that mentions the marker word (a
deployment-specific pattern the shipped model cannot know). The adapted model must learn it; as a candidate it must
decide beside the live model without routing anything; promoted by a config edit (hot reload, traffic flowing), the
live router must then decide exactly as the candidate did.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import openai
import pytest

from devstack.stack import Stack
from extproc.cli import main
from tests.integration.conftest import router_metric, wait_until
from tests.integration.test_label import FRONTIER, SMALL, TOKEN, for_labelling, running_judge

MARKER = "zebra"
TOPICS = (
    "What is the capital of France?",
    "List three fruits.",
    "Write a haiku about autumn.",
    "Translate 'good morning' to Spanish.",
    "Explain the difference between TCP and UDP.",
    "Summarise the history of the river Thames.",
    "Prove that there are infinitely many primes.",
    "Solve the integral of x^2 e^x dx and verify it by differentiation.",
    "Derive the closed form of the Fibonacci numbers with generating functions.",
    "Design a distributed rate limiter for a multi-region API gateway and discuss consistency trade-offs.",
    # Longer, exam-like questions: the shipped model sends these to the frontier tier, the short ones above below it.
    "You are given the Python function below. def f(text, sep): parts = text.split(sep); out = [p[::-1] for p in"
    " parts if p]; return sep.join(out[::-1]). What does f('ab-cd--ef', '-') return? Work through every step of the"
    " execution, track each intermediate list, and give the final string.",
    "A firm faces demand Q = 120 - 2P and has total cost C(Q) = 10Q + 0.5Q^2. Find the profit-maximising price and"
    " quantity, compute the deadweight loss relative to perfect competition, and explain how a per-unit tax of 6"
    " changes the equilibrium. Options: (A) P=40 (B) P=45 (C) P=50 (D) P=55.",
)
WORDS = [
    "river",
    "mountain",
    "library",
    "engine",
    "violin",
    "harvest",
    "ocean",
    "pencil",
    "garden",
    "rocket",
    "window",
    "carpet",
]
RECORDS = 420
"""Above ``adapt``'s 400-record minimum, so no ``--force``."""


def prompts(n: int, seed: int) -> list[str]:
    """Varied questions (the shipped model spreads them over the tiers); 40% carry the marker word."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        if rng.random() < 0.4:
            words.insert(rng.randrange(4), MARKER)
        out.append(f"{rng.choice(TOPICS)} Context: {' '.join(words)}.")
    return out


def _reloads(stack: Stack) -> float:
    return router_metric(stack, "model_router_config_reloads_total", result="applied")


def _reconfigure(stack: Stack, classifier: dict[str, Any]) -> None:
    """Edit the live config file and wait until the router has applied it (hot reload by file poll)."""
    before = _reloads(stack)
    stack.write_router_config({"classifier": classifier})
    assert wait_until(lambda: _reloads(stack) > before, timeout=20.0), "timed out"


def _ask(client: openai.OpenAI, prompt: str) -> tuple[str, str, str]:
    """Decision id, the model the router chose, and the upstream model that answered."""
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": prompt}])
    assert raw.http_response.status_code == 200
    answered = raw.parse().choices[0].message.content or ""
    return raw.headers["x-model-router-decision-id"], raw.headers["x-model-router-model"], answered


def _decisions(stack: Stack) -> dict[str, dict[str, Any]]:
    """The router's decision log lines by decision id."""
    out = {}
    for line in stack.log("router").read_text().splitlines():
        start = line.find("{")
        if start < 0 or '"decision"' not in line:
            continue
        event = json.loads(line[start:])
        if event.get("event") == "decision":
            out[event["decision_id"]] = event
    return out


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, Path]]:
    workdir = tmp_path_factory.mktemp("loop")
    stack = Stack(workdir=workdir, envoy_patch=for_labelling)
    stack.router_overrides = {
        "server": {"config_poll_seconds": 0.2},
        "telemetry": {"decision_log": True},
        "security": {"override": {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}},
        "capture": {"enabled": True, "sample_rate": 1.0, "path": str(workdir / "capture.jsonl")},
    }
    judge_args = ("--grade", f"{SMALL}@small=8", "--grade", f"{FRONTIER}@frontier=9", "--fails-on", f"{MARKER}@{SMALL}")
    with stack, running_judge(workdir, *judge_args) as judge_url:
        yield stack, judge_url, workdir


def test_capture_label_adapt_candidate_promote(loop: tuple[Stack, str, Path]) -> None:
    stack, judge_url, workdir = loop
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0)

    # 1. Capture: live traffic through Envoy; every prompt lands in the capture file under its decision id.
    captured_ids = [_ask(client, p)[0] for p in prompts(RECORDS, seed=1)]
    capture = workdir / "capture.jsonl"
    assert wait_until(lambda: capture.exists() and len(capture.read_text().splitlines()) >= RECORDS, timeout=20.0), (
        "timed out"
    )
    lines = [json.loads(line) for line in capture.read_text().splitlines()]
    assert [line["id"] for line in lines] == captured_ids

    # 2. Label: both models answer each captured prompt through the gateway (pinned), the judge grades them.
    outcomes = workdir / "outcomes.jsonl"
    label_argv = [
        "label", "--data", str(capture), "--out", str(outcomes), "--models", f"{SMALL},{FRONTIER}",
        "--base-url", stack.base_url + "/v1", "--header", f"x-model-router-override-token={TOKEN}",
        "--pin-alias", "auto", "--judge-base-url", judge_url + "/v1", "--judge-model", "fake-judge",
        "--config", str(stack.router_config_path), "--concurrency", "8", "--yes",
    ]  # fmt: skip
    assert main(label_argv) == 0
    labelled = [json.loads(line) for line in outcomes.read_text().splitlines()]
    assert len(labelled) == RECORDS
    for record in labelled:
        hard = MARKER in record["messages"][0]["content"]
        assert record["scores"] == {SMALL: 0.0 if hard else 7 / 9, FRONTIER: 8 / 9}

    # 3. Adapt: the cross-validated report must show the pattern learned, better than shipped and length.
    model_dir = workdir / "adapted"
    report = io.StringIO()
    with redirect_stdout(report):
        code = main(
            ["adapt", "--outcomes", str(outcomes), "--weak", SMALL, "--strong", FRONTIER, "--out", str(model_dir)]
        )
    assert code == 0, report.getvalue()
    apgr = {m[0]: float(m[1]) for m in re.findall(r"^(\w+)\s+(\S+) ±", report.getvalue(), re.MULTILINE)}
    assert apgr["adapted"] > max(apgr["base"], apgr["length"]) + 0.1, report.getvalue()

    # 4. Candidate: the adapted model decides beside the live one; only the live one routes.
    _reconfigure(stack, {"candidate_model_dir": str(model_dir)})
    fresh = prompts(80, seed=2)
    asked = [_ask(client, p) for p in fresh]
    logged = _decisions(stack)
    candidate_choice = {}
    for prompt, (decision_id, routed, answered) in zip(fresh, asked, strict=True):
        event = logged[decision_id]
        assert event["selected_model"] == routed and f"answer from {routed} " in answered  # the live choice routes
        candidate_choice[prompt] = event["candidate_selected_model"]
    moved_up = [p for p, (_, routed, _) in zip(fresh, asked, strict=True) if candidate_choice[p] != routed]
    assert moved_up, "the candidate never disagreed with the live model"
    marked = [p for p in fresh if MARKER in p]
    assert sum(candidate_choice[p] != SMALL for p in marked) > 0.9 * len(marked)
    text = io.StringIO()
    with redirect_stdout(text):
        assert main(["report", str(stack.log("router"))]) == 0
    assert re.search(r"candidate model: decided beside the live one on \d+ requests", text.getvalue())

    # 5. Promote: the candidate becomes the live model by a config edit, under traffic; nothing fails.
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        background = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0)
        while not stop.is_set():
            try:
                _ask(background, "What is the capital of France?")
            except BaseException as exc:
                failures.append(exc)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        _reconfigure(stack, {"model_dir": str(model_dir)})
    finally:
        stop.set()
        worker.join(30)
    assert failures == []
    after = {p: _ask(client, p)[1] for p in fresh}
    assert after == candidate_choice
