"""Two gateway replicas (each Envoy + its router sidecar) sharing a feedback signing key: feedback posted to the
replica that did not decide is accepted with the decision's feedback token, and refused without it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from devstack.stack import Stack
from tests.integration.conftest import wait_until
from tests.integration.test_learning import FEEDBACK, _jsonl
from tests.integration.test_routing import EASY

KEY = "3c1f" * 16


def _replica(workdir: Path, keys: Path) -> Stack:
    stack = Stack(workdir=workdir)
    stack.router_overrides = {
        "classifier": {"kind": "heuristic"},
        "feedback": {"enabled": True, "path": str(workdir / "feedback.jsonl"), "signing_key_file": str(keys)},
    }
    return stack


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    root = tmp_path_factory.mktemp("replicas")
    keys = root / "feedback-keys"
    keys.write_text(f"# shared by every replica\n{KEY}\n")
    with _replica(root / "a", keys) as a, _replica(root / "b", keys) as b:
        yield a, b


def test_feedback_reaches_a_replica_that_did_not_decide(replicas: tuple[Stack, Stack]) -> None:
    decided_on, other = replicas
    client = openai.OpenAI(base_url=decided_on.base_url + "/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": EASY}])
    decision_id, token = raw.headers["x-model-router-decision-id"], raw.headers["x-model-router-feedback-token"]
    assert KEY not in token and EASY not in token

    by_id = httpx.post(other.base_url + FEEDBACK, json={"decision_id": decision_id, "score": 1}, timeout=5)
    assert by_id.status_code == 404, "the other replica never saw the decision"
    by_token = httpx.post(other.base_url + FEEDBACK, json={"feedback_token": token, "score": 1}, timeout=5)
    assert by_token.status_code == 200, by_token.text
    assert by_token.json() == {"decision_id": decision_id, "model": raw.headers["x-model-router-model"], "score": 1.0}
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refused = httpx.post(other.base_url + FEEDBACK, json={"feedback_token": tampered, "score": 0}, timeout=5)
    assert refused.status_code == 400 and "feedback_token" in refused.json()["error"]["message"]

    feedback = other.workdir / "feedback.jsonl"
    assert wait_until(lambda: len(_jsonl(feedback)) == 1)
    (line,) = _jsonl(feedback)
    assert (line["decision_id"], line["selected_model"], line["score"]) == (decision_id, "gpt-4o-mini", 1.0)
    assert not (decided_on.workdir / "feedback.jsonl").exists() or _jsonl(decided_on.workdir / "feedback.jsonl") == []
    assert KEY not in json.dumps(line) and KEY not in other.log("router").read_text()
