"""``model-router label`` against the real Envoy + router + fake upstreams, graded by a fake judge (a real HTTP
server speaking the OpenAI Chat API).

The fake judge grades an answer by the model *and cluster* it names (``devstack/judge.py``): llama on ``small`` = 3,
gpt-4o on ``frontier`` = 9, anything else = 1. So an answer that came from the wrong place would show up as a wrong
score, and every test checks that the scores are exactly the right ones or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devstack.stack import ROOT, Stack, free_port
from extproc.cli import main
from tests.integration.conftest import HEURISTIC
from tests.integration.test_routing import EASY, HARD

TOKEN = "labeller-secret"
SMALL, FRONTIER = "llama-3.1-8b-instruct", "gpt-4o"
GOOD = {SMALL: (3 - 1) / 9, FRONTIER: (9 - 1) / 9}
"""The scores the fake judge's table gives each model's real answer."""


def for_labelling(cfg: dict[str, Any]) -> None:
    """The gateway as README "Labelling" asks: attempt counts in responses; no outlier ejection between tests."""
    for cluster in cfg["static_resources"]["clusters"]:
        cluster.pop("outlier_detection", None)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["include_attempt_count_in_response"] = True


@pytest.fixture(scope="module")
def label_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    overrides = {**HEURISTIC, "security": {"override": {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}}}
    workdir = tmp_path_factory.mktemp("label")
    with Stack(workdir=workdir, router_overrides=overrides, envoy_patch=for_labelling) as running:
        yield running


@contextlib.contextmanager
def running_judge(workdir: Path, *args: str) -> Iterator[str]:
    """The fake judge (``devstack/judge.py``) in its own process with these arguments; yields its base URL."""
    port = free_port()
    log = workdir / "judge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.judge", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/_requests", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fake judge did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_judge(
        tmp_path_factory.mktemp("judge"), "--grade", f"{SMALL}@small=3", "--grade", f"{FRONTIER}@frontier=9"
    ) as url:
        yield url


def judge_requests(judge_url: str) -> dict[str, int]:
    counts: dict[str, int] = httpx.get(judge_url + "/_requests", timeout=5).json()
    return counts


def fail(stack: Stack, cluster: str, status: int) -> None:
    """Make one fake upstream answer every request with ``status`` (0 heals it)."""
    httpx.post(f"http://127.0.0.1:{stack.upstream_ports[cluster]}/_fail?status={status}", timeout=5).raise_for_status()


def item(ident: str | int, prompt: str, **extra: Any) -> bytes:
    return orjson.dumps({"id": ident, "messages": [{"role": "user", "content": prompt}], **extra})


def label(stack: Stack, judge_url: str, data: Path, out: Path, *extra: str, token: str = TOKEN) -> int:
    argv = [
        "label",
        "--data",
        str(data),
        "--out",
        str(out),
        "--models",
        f"{SMALL},{FRONTIER}",
        "--base-url",
        stack.base_url + "/v1",
        "--header",
        f"x-model-router-override-token={token}",
        "--pin-alias",
        "auto",
        "--judge-base-url",
        judge_url + "/v1",
        "--judge-model",
        "fake-judge",
        "--config",
        str(stack.router_config_path),
        "--judge-price-in",
        "1",
        "--judge-price-out",
        "2",
        "--retries",
        "2",
        "--backoff",
        "0.01",
        "--judge-timeout",
        "0.5",
        "--timeout",
        "10",
        "--yes",
        *extra,
    ]
    return main(argv)


def records(out: Path) -> dict[str | int, dict[str, Any]]:
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    return {row["id"]: row for row in rows}


def test_labels_through_the_gateway_and_judge_faults_end_missing_never_wrong(
    label_stack: Stack, judge_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    lines = [
        item("plain", EASY, category="geo"),
        item("text", "Name a prime number. JUDGE:text"),
        item(7, "Name a colour. JUDGE:flaky", source="capture", captured_at="2026-11-23T05:00:00Z"),
        b"{not json",
        item("ratelimited", "Name a fruit. JUDGE:ratelimit"),
        item("garbled", "Name a river. JUDGE:garbled@gpt-4o"),
        item("judge500", "Name a tree. JUDGE:http500@llama-3.1-8b-instruct"),
        item("slow", "Name a bird. JUDGE:slow@gpt-4o"),
        item("judge-down", "Name a city. JUDGE:http500"),
        orjson.dumps({"id": "empty", "messages": [{"role": "user", "content": ""}]}),
        item("plain", "a duplicate id"),
        orjson.dumps({"messages": [{"role": "user", "content": "no id"}]}),
    ]
    data.write_bytes(b"\n".join(lines) + b"\n")
    before = judge_requests(judge_url)

    assert label(label_stack, judge_url, data, out) == 0

    got = records(out)
    assert set(got) == {"plain", "text", 7, "ratelimited", "garbled", "judge500", "slow"}
    for ident in ("plain", "text", 7, "ratelimited"):
        assert got[ident]["scores"] == GOOD, ident
        assert got[ident]["missing"] == {}
    assert got["plain"]["category"] == "geo"
    assert got["plain"]["messages"] == [{"role": "user", "content": EASY}]
    assert "source" not in got[7] and "captured_at" not in got[7]
    assert got["garbled"]["scores"] == {SMALL: GOOD[SMALL]}
    assert got["garbled"]["missing"] == {FRONTIER: "judge_unparseable"}
    assert got["judge500"]["scores"] == {FRONTIER: GOOD[FRONTIER]}
    assert got["judge500"]["missing"] == {SMALL: "judge_http_500"}
    assert got["slow"]["missing"] == {FRONTIER: "judge_timeout"}
    assert got["slow"]["answers_chars"][FRONTIER] > 0
    assert all(row["judge"] == "fake-judge" and row["rubric"] == "v1" for row in got.values())

    after = judge_requests(judge_url)
    spent = {fault: after.get(fault, 0) - before.get(fault, 0) for fault in after}
    assert spent["http500"] == 3 + 2 * 3  # judge500 (one model) and judge-down (two), each tried 1 + 2 retries
    assert spent["flaky"] == 2 * 2 and spent["ratelimit"] == 2 * 2  # one failure, then a grade, per model
    assert spent["garbled"] == 3

    summary = capsys.readouterr().out
    assert "2 malformed input lines skipped (4: not JSON; 12: no id)" in summary
    assert "1 input items without user text skipped (lines 10)" in summary
    assert "1 duplicate input ids skipped (lines 11)" in summary
    assert "labelled 7 items" in summary
    assert "1 items not written: no model got a grade" in summary
    assert f"missing {SMALL}: 2 (judge_http_500 x2)" in summary
    assert f"missing {FRONTIER}: 3 (judge_http_500 x1, judge_timeout x1, judge_unparseable x1)" in summary

    # Resume: a crash left half a line; the next run drops it, skips what is done and retries only judge-down.
    with out.open("ab") as fh:
        fh.write(b'{"id": "half-writ')
    assert label(label_stack, judge_url, data, out) == 4  # judge-down is still down: this run labelled nothing
    summary = capsys.readouterr().out
    assert "removed an incomplete last line (line 8, 17 bytes" in summary
    assert "skipped 7 items already in" in summary and "labelled 0 items" in summary
    assert records(out) == got


def test_failing_upstreams_are_retried_then_missing_and_a_fallback_answer_is_never_kept(
    label_stack: Stack, judge_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    data.write_bytes(item("a", EASY) + b"\n" + item("b", "Name a mountain.") + b"\n")
    # small fails: Envoy's fallback chain answers from `cheap` under llama's name (attempt count 2);
    # frontier fails: no fallback there, the labeller sees the 503 itself.
    fail(label_stack, "small", 503)
    fail(label_stack, "frontier", 503)
    try:
        assert label(label_stack, judge_url, data, out) == 4  # nothing labelled: says so in the exit code
    finally:
        fail(label_stack, "small", 0)
        fail(label_stack, "frontier", 0)
    summary = capsys.readouterr().out
    assert not out.exists() or out.read_bytes() == b""
    assert "2 items not written" in summary
    assert f"missing {SMALL}: 2 (gateway_retried x2)" in summary
    assert f"missing {FRONTIER}: 2 (http_503 x2)" in summary

    assert label(label_stack, judge_url, data, out) == 0  # healed: the same command finishes the job
    got = records(out)
    assert got["a"]["scores"] == GOOD and got["b"]["scores"] == GOOD


def test_a_pin_the_router_does_not_honour_is_missing_not_mislabelled(
    label_stack: Stack, judge_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wrong override secret: the router routes ``auto`` itself (HARD goes to gpt-4o), so llama's answer is not
    llama's. The gpt-4o answer *is* gpt-4o's (the router says so), and is kept."""
    data, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    data.write_bytes(item("hard", HARD) + b"\n")
    assert label(label_stack, judge_url, data, out, token="wrong") == 0
    got = records(out)["hard"]
    assert got["scores"] == {FRONTIER: GOOD[FRONTIER]}
    assert got["missing"] == {SMALL: "rerouted"}
    assert "retries 0" in capsys.readouterr().out  # a rerouted answer is a configuration problem: not retried
