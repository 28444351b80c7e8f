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


def test_a_key_removed_from_the_key_file_is_revoked_without_a_restart(tmp_path: Path) -> None:
    """The documented rotation: add the new key first, later drop the old one. Updating the Secret must be enough:
    the router reads the key file again when it changes (a leaked key stayed valid until a restart)."""
    keys = tmp_path / "feedback-keys"
    keys.write_text(f"{KEY}\n")
    stack = _replica(tmp_path, keys)
    stack.router_overrides["server"] = {"config_poll_seconds": 0.2}
    new_key = "9ab2" * 16
    with stack:

        def token(prompt: str) -> str:
            client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            return raw.headers["x-model-router-feedback-token"]

        def accepted(feedback_token: str) -> bool:
            answer = httpx.post(stack.base_url + FEEDBACK, json={"feedback_token": feedback_token, "score": 1})
            assert answer.status_code in (200, 400), answer.text
            return answer.status_code == 200

        old = token(EASY)
        keys.write_text(f"{new_key}\n{KEY}\n")  # step 1: the new key signs, the old one still verifies
        assert wait_until(lambda: "new keys from" in stack.log("router").read_text())
        assert accepted(old)
        rotated = token(EASY + " again")
        keys.write_text(f"{new_key}\n")  # step 2: the old key is dropped
        assert wait_until(lambda: not accepted(old)), "a removed key must stop verifying"
        assert accepted(rotated), "tokens signed after step 1 stay valid"
        keys.write_text("")  # an empty key file is refused; the running keys stay
        assert wait_until(lambda: "holds no key" in stack.log("router").read_text())
        assert accepted(rotated) and not accepted(old)
