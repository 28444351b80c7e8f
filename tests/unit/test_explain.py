"""``model-router explain``: the one-screen decision, JSON output, input sources, and one-line errors (exit 2)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from devstack.stack import ENVOY_DIR, free_port
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.cli import main
from extproc.explain import ExplainInput, run_explain

HARD = "Prove that the integral of x^2 from 0 to 1 equals 1/3 step by step, derive the theorem for x^n."
EASY = "What is the capital of France?"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    data["classifier"] = {"kind": "heuristic"}
    path = tmp_path_factory.mktemp("explain") / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(config: Path, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = list(argv)
    file = args[args.index("-f") + 1] if "-f" in args else None
    prompt = next((a for a in args if not a.startswith("-") and a != file), None)
    source = ExplainInput(prompt, file, "/v1/chat/completions", "auto")
    code = run_explain(source, config, None, "--json" in args, io.StringIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def test_one_screen_has_decision_reason_score_and_every_model(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--config", str(config), HARD]) == 0
    out = capsys.readouterr().out
    catalog = [m["name"] for m in yaml.safe_load(config.read_text())["catalog"]]
    assert out.splitlines()[0].startswith("decision ")
    assert "reason     cheapest_meeting_target" in out or "reason     none_meets_target_most_able" in out
    assert "score      difficulty " in out and "quality target 0.80" in out
    table = [line for line in out.splitlines()[1:] if any(f" {name} " in line for name in catalog)]
    assert len(table) == len(catalog)
    assert sum(line.startswith("<") for line in table) == 1, "exactly one model is marked as selected"
    assert len(out.splitlines()) <= 24, "one screen"


def test_json_is_the_decide_response(config: Path) -> None:
    code, out, _ = _run(config, EASY, "--json")
    assert code == 0
    response = json_format.Parse(out, api.DecideResponse())
    assert response.decision.outcome == api.OUTCOME_ROUTED
    assert response.decision.selected_model in {m.name for m in response.models}
    assert json.loads(out)["decision"]["reason"].startswith("REASON_")


@pytest.mark.parametrize(
    ("stdin", "selected"),
    [
        pytest.param(HARD, "gpt-4o", id="prompt-text"),
        pytest.param(
            json.dumps({"model": "auto", "messages": [{"role": "user", "content": HARD}]}), "gpt-4o", id="request-body"
        ),
    ],
)
def test_reads_stdin(config: Path, stdin: str, selected: str) -> None:
    code, out, _ = _run(config, "--json", stdin=stdin)
    assert code == 0
    assert json.loads(out)["decision"]["selected_model"] == selected


def test_body_file_passthrough_is_explained(config: Path, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": EASY}]}))
    code, out, _ = _run(config, "-f", str(body))
    assert code == 0
    assert "passthrough" in out and "model_not_routable" in out and "forwarded untouched" in out


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "cannot read", id="missing-file"),
        pytest.param(b'{"model": "auto", "messages": [', "not valid JSON", id="malformed"),
        pytest.param(b"[1, 2]", "must be a JSON object", id="not-an-object"),
    ],
)
def test_bad_file_is_one_line_and_exit_2(config: Path, tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "req.json"
    if content is not None:
        path.write_bytes(content)
    code, out, err = _run(config, "-f", str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and problem in err and str(path) in err


def test_empty_stdin_and_bad_config_are_exit_2(config: Path, tmp_path: Path) -> None:
    assert _run(config, stdin="   ")[0] == 2
    code, _, err = _run(tmp_path / "missing.yaml", EASY)
    assert code == 2 and err.count("\n") == 1 and "missing.yaml" in err


def test_unreachable_target_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", "--target", f"127.0.0.1:{free_port()}", EASY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "UNAVAILABLE" in err
