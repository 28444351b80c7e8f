"""The ``model-router`` command line as users run it: plain ``--help`` texts, and one ``model-router <command>: ...``
line on stderr with exit code 2 (never a traceback) for files the commands cannot read or write."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extproc.cli import _parser, main

ROOT = Path(__file__).resolve().parents[2]
ITEM = {"id": "a", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "scores": {"weak": 0.0, "strong": 1.0}}
DECISION = {
    "ts": "2025-11-23T00:00:00.000Z",
    "level": "info",
    "event": "decision",
    "decision_id": "0000000000000001",
    "outcome": "OUTCOME_ROUTED",
    "selected_model": "gpt-4o-mini",
    "tier": "cheap",
    "estimated_cost_requested": 0.003,
    "estimated_cost_selected": 0.0002,
}


def _commands() -> list[str]:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    return list(sub.choices)


@pytest.mark.parametrize("argv", [[], *([name] for name in _commands())], ids=lambda argv: " ".join(argv) or "main")
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """No reStructuredText or Markdown markup from docstrings: ``--help`` is read in a terminal."""
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "`" not in out, out
    if argv:
        assert out.split("\n\n")[1].strip(), "the command's --help describes it"


def _fails_with(capsys: pytest.CaptureFixture[str], argv: list[str], line: str) -> str:
    """Run ``argv``; it must exit 2 with exactly ``line`` (a prefix of it, if it ends in ...) on stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    if line.endswith("..."):
        assert err.startswith(line.removesuffix("...")), err
    else:
        assert err == line + "\n"
    return out


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(ITEM) + "\n")
    return path


def test_eval_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    line = f"model-router eval: cannot read --data {missing} (No such file or directory)"
    assert (
        _fails_with(capsys, ["eval", "--heuristic", "--data", str(missing), "--out", str(tmp_path / "o")], line) == ""
    )


def test_eval_data_line_that_is_not_json_is_scored_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(f"{json.dumps(ITEM)}\n\n{{not json\n".encode()))
    assert main(["eval", "--heuristic", "--data", str(bad), "--out", str(tmp_path / "o")]) == 0
    assert "not JSON: 1 lines (3; scored as the maximum, id null)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o").read_text().splitlines()[1])["line"] == 3


@pytest.mark.parametrize(
    ("payload", "why"),
    [(b"not gzip", "not a gzip file"), (gzip.compress(b"x" * 1000)[:20], "truncated gzip file")],
    ids=["not-gzip", "truncated-gzip"],
)
def test_eval_corrupt_gzip_data(tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: bytes, why: str) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(payload)
    line = f"model-router eval: cannot read --data {bad} ({why})"
    assert _fails_with(capsys, ["eval", "--heuristic", "--data", str(bad), "--out", str(tmp_path / "o")], line) == ""


def test_eval_unwritable_out(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing" / "dir" / "x.jsonl"
    line = f"model-router eval: cannot write --out {out} (No such file or directory)"
    assert _fails_with(capsys, ["eval", "--heuristic", "--data", str(data), "--out", str(out)], line) == ""


def test_eval_missing_model(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "nope"
    line = f"model-router eval: cannot load --model {model} ({model / 'model.onnx'} is missing)"
    assert (
        _fails_with(capsys, ["eval", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "o")], line)
        == ""
    )


def test_eval_malformed_model(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from classifier.onnx_model import MODEL_FILES

    model = tmp_path / "junk"
    model.mkdir()
    for name in MODEL_FILES:
        (model / name).write_text("junk")
    line = f"model-router eval: cannot load --model {model} ({model / 'metadata.json'}: not JSON..."
    assert (
        _fails_with(capsys, ["eval", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "o")], line)
        == ""
    )


def test_eval_unwritable_plot(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "missing" / "curve.png"
    argv = ["eval", "--heuristic", "--data", str(data), "--out", str(tmp_path / "o"), "--plot", str(plot)]
    out = _fails_with(capsys, argv, f"model-router eval: cannot write --plot {plot} (No such file or directory)")
    assert "APGR" in out, "the scores and the metrics come first"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "router.log"
    path.write_text(json.dumps(DECISION) + "\n")
    return path


def test_report_unwritable_html(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "missing" / "dir" / "r.html"
    line = f"model-router report: cannot write --html {html} (No such file or directory)"
    assert _fails_with(capsys, ["report", str(log), "--html", str(html)], line) == "", "nothing printed on failure"


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        ("missing.log", None, "No such file or directory"),
        ("bad.log.gz", b"not gzip", "not a gzip file"),
        ("cut.log.gz", gzip.compress(b"x" * 1000)[:20], "truncated gzip file"),
    ],
    ids=["missing", "not-gzip", "truncated-gzip"],
)
def test_report_unreadable_log(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, payload: bytes | None, why: str
) -> None:
    bad = tmp_path / name
    if payload is not None:
        bad.write_bytes(payload)
    line = f"model-router report: cannot read {bad} ({why}" + ("" if why.endswith("...") else ")")
    _fails_with(capsys, ["report", str(log), str(bad)], line)


def test_report_eval_files_are_named(log: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"id": "a", "score": 0.5}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "score": 0.5}\n[oops\n')
    html = ["--html", str(tmp_path / "r.html")]
    argv = ["report", str(log), "--eval", str(bad), "--data", str(data), *html]
    _fails_with(capsys, argv, f"model-router report: cannot read --eval {bad} (line 2 is not JSON)")
    argv = ["report", str(log), "--eval", str(scores), "--data", str(tmp_path / "missing.jsonl"), *html]
    line = f"model-router report: cannot read --data {tmp_path / 'missing.jsonl'} (No such file or directory)"
    _fails_with(capsys, argv, line)


def test_adapt_errors_go_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    argv = ["adapt", "--outcomes", str(missing), "--weak", "w", "--strong", "s", "--out", str(tmp_path / "m")]
    out = _fails_with(capsys, argv, f"model-router adapt: cannot read --outcomes {missing} (No such file or directory)")
    assert out == ""


def test_report_eval_without_html_is_refused(log: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The curve is drawn only in the page: without it the files were read and checked, and the result shown nowhere."""
    line = "model-router report: --eval and --data draw a curve in the --html page: give --html FILE"
    _fails_with(capsys, ["report", str(log), "--eval", str(data), "--data", str(data)], line)


@pytest.mark.parametrize("option", ["--weak", "--strong"])
def test_report_model_names_without_eval_are_refused(
    log: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    """They only mean something for --eval's data: silently ignoring them would print a report the user did not ask."""
    line = "model-router report: --weak and --strong name models of --eval's data: give --eval and --data"
    _fails_with(capsys, ["report", str(log), option, "gpt-4o"], line)


def test_serve_ignores_sighup_until_it_can_reload(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SIGHUP's default action ends the process: a reload sent while the model loads (before the server installs its
    handler) would kill the router. It is ignored from the moment serve starts."""
    import signal

    import extproc.reload

    seen: list[object] = []

    class Stop(Exception):
        pass

    def load_snapshot(_path: Path) -> None:
        seen.append(signal.getsignal(signal.SIGHUP))
        raise Stop

    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    monkeypatch.setattr(extproc.reload, "load_snapshot", load_snapshot)
    try:
        with pytest.raises(Stop):
            main(["serve", "--config", str(tmp_path / "model-router.yaml")])
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen == [signal.SIG_IGN]


@pytest.mark.parametrize(("command", "ignored"), [("serve", True), ("check-config", False)])
def test_the_entry_point_ignores_sighup_before_importing_the_cli(
    monkeypatch: pytest.MonkeyPatch, command: str, ignored: bool
) -> None:
    """The console script's own entry ignores SIGHUP for ``serve`` before the CLI's imports (≈0.1 s in which a
    reload signal ended a starting router); other commands keep the default."""
    import signal

    import extproc.__main__
    import extproc.cli

    seen: list[object] = []
    monkeypatch.setattr(sys, "argv", ["model-router", command, "--config", "x.yaml"])
    monkeypatch.setattr(extproc.cli, "main", lambda: seen.append(signal.getsignal(signal.SIGHUP)) or 0)
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert extproc.__main__.run() == 0
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen == [signal.SIG_IGN if ignored else signal.SIG_DFL]
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert scripts["model-router"].value == "extproc.__main__:run"


def test_a_reader_that_leaves_early_is_no_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model-router eval ... | head -1``: stdout's pipe is closed while eval still prints; exit as SIGPIPE would."""
    import io
    import os

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({**ITEM, "id": str(i)}) + "\n" for i in range(5)))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: every write to the pipe fails with EPIPE
    closed = io.TextIOWrapper(os.fdopen(write_end, "wb", buffering=0), line_buffering=True)
    monkeypatch.setattr("sys.stdout", closed)
    try:
        assert main(["eval", "--heuristic", "--data", str(data), "--out", str(tmp_path / "o")]) == 141
        closed.write("the exit's own flush\n")  # now goes to /dev/null instead of raising again
        closed.flush()
    finally:
        monkeypatch.undo()
        closed.close()


ROOT = Path(__file__).resolve().parents[2]
ROUTER_CONFIG = ROOT / "envoy" / "model-router.yaml"
ENVOY_CONFIG = ROOT / "envoy" / "envoy.yaml"


def test_check_config_cross_checks_the_shipped_envoy_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", "--config", str(ROUTER_CONFIG), "--envoy-config", str(ENVOY_CONFIG)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.startswith("ok: classifier ")
    assert out.splitlines()[1:] == [f"ok: --envoy-config {ENVOY_CONFIG} agrees with the config"]


def test_check_config_reads_a_json_bootstrap_and_the_sidecars_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON is what some tools write (envoy -c takes both); --listen is the sidecar's serve --listen."""
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(json.dumps(yaml.safe_load((ROOT / "k8s" / "base" / "envoy.yaml").read_text())))
    argv = ["check-config", "--config", str(ROOT / "k8s" / "base" / "router-config" / "model-router.yaml")]
    assert main([*argv, "--envoy-config", str(bootstrap), "--listen", "127.0.0.1:50051"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"ok: --envoy-config {bootstrap} agrees with the config"]
    assert main([*argv, "--envoy-config", str(bootstrap), "--listen", "127.0.0.1:50052"]) == 0, "a warning passes"
    assert capsys.readouterr().out.splitlines()[1:] == [
        "warning: listener llm_gateway, ext_proc filter envoy.filters.http.ext_proc, cluster model_router: connects"
        " to 127.0.0.1:50051, but the router listens on 127.0.0.1:50052 (--listen)",
        f"ok: --envoy-config {bootstrap} agrees with the config (1 warning)",
    ]


def test_check_config_exits_2_on_an_envoy_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    envoy = yaml.safe_load(ENVOY_CONFIG.read_text())
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    (cheap,) = [r for r in routes if r["match"].get("headers", [{}])[0].get("string_match") == {"exact": "cheap"}]
    routes.remove(cheap)
    broken = tmp_path / "envoy.yaml"
    broken.write_text(yaml.safe_dump(envoy))
    assert main(["check-config", "--config", str(ROUTER_CONFIG), "--envoy-config", str(broken)]) == 2
    out, err = capsys.readouterr()
    assert err == ""
    assert [line.split(" (")[0] for line in out.splitlines()[1:]] == [
        "error: listener llm_gateway, route_config llm_routes, virtual host llm: catalog cluster cheap"
    ], "no ok line for the Envoy config"


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        ("missing.yaml", None, "cannot read --envoy-config {path} (No such file or directory)"),
        ("dir", "dir", "cannot read --envoy-config {path} (Is a directory)"),
        ("bad.yaml", b"static_resources: [\n", "--envoy-config {path} is not valid YAML: while parsing a flow..."),
        ("bad.json", b'{"static_resources": {}, "static_resources": {}}', "--envoy-config {path} is not valid YAML..."),
        ("latin1.yaml", b"admin: caf\xe9\n", "--envoy-config {path} is not UTF-8 text (byte 10)"),
        ("list.yaml", b"- a\n", "--envoy-config {path} is a list, not a mapping (an Envoy bootstrap is one)"),
        ("empty.yaml", b"", "--envoy-config {path} is empty, not a mapping (an Envoy bootstrap is one)"),
    ],
    ids=["missing", "directory", "not-yaml", "duplicate-key", "not-utf8", "not-a-mapping", "empty"],
)
def test_check_config_unusable_envoy_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, payload: bytes | str | None, why: str
) -> None:
    """One line, before the classifier loads (nothing on stdout)."""
    path = tmp_path / name
    if payload == "dir":
        path.mkdir()
    elif isinstance(payload, bytes):
        path.write_bytes(payload)
    argv = ["check-config", "--config", str(ROUTER_CONFIG), "--envoy-config", str(path)]
    assert _fails_with(capsys, argv, "model-router check-config: " + why.format(path=path)) == ""


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--listen", "127.0.0.1:50051"],
            "--listen is the router's address for --envoy-config: give --envoy-config FILE",
        ),
        (
            ["--envoy-config", str(ENVOY_CONFIG), "--listen", "50051"],
            "--listen: '50051' has no host; write 127.0.0.1:50051, or 0.0.0.0:50051 for every interface",
        ),
    ],
    ids=["without-envoy-config", "not-an-address"],
)
def test_check_config_listen_needs_envoy_config_and_an_address(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    full = ["check-config", "--config", str(ROUTER_CONFIG), *argv]
    assert _fails_with(capsys, full, f"model-router check-config: {line}") == ""


def test_eval_heuristic_and_model_are_exclusive(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model`` was silently ignored beside ``--heuristic`` (the table said ``model heuristic-v1``)."""
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--heuristic", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "argument --model: not allowed with argument --heuristic" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("size", ["0", "-5"])
def test_fail_open_lua_needs_a_positive_body_limit(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``MAX_BODY_BYTES = 0`` makes the filter refuse every rename: ``auto`` would reach the upstream in an outage."""
    argv = ["fail-open-lua", "--config", str(ROUTER_CONFIG), "--max-body-bytes", size]
    assert _fails_with(capsys, argv, f"model-router fail-open-lua: --max-body-bytes {size}: must be at least 1") == ""


@pytest.mark.parametrize("command", ["check-config", "fail-open-lua"])
def test_a_yaml_error_names_the_config_file(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """YAML's message pointed at ``in "<unicode string>", line 2``, not at the file."""
    bad = tmp_path / "router.yaml"
    bad.write_text("policy:\n  routable_models: [auto\n")
    assert main([command, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f'in "{bad}", line 2, column 20' in err and "<unicode string>" not in err, err


def _shell(command: str) -> subprocess.CompletedProcess[str]:
    """``model-router`` run by a shell (bash, ``pipefail``: the command's exit code, not ``cat``'s) from the repo."""
    program = f"{shlex.quote(sys.executable)} -m extproc"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.format(program=program)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_eval_out_to_stdout_through_a_pipe_and_a_redirect(data: Path, tmp_path: Path) -> None:
    """``--out /dev/stdout | cat`` failed (exit 2, "No such file or directory": the path was resolved to the pipe's
    ``/proc/<pid>/fd/pipe:[N]`` and renamed into); with ``> file`` the file was renamed over, losing the summary."""
    eval_ = f"{{program}} eval --heuristic --data {shlex.quote(str(data))} --out /dev/stdout"
    summary = "model heuristic-v1: scored 1 items into /dev/stdout"
    piped = _shell(eval_ + " | cat")
    assert (piped.returncode, piped.stderr) == (0, "")
    lines = piped.stdout.splitlines()
    assert json.loads(lines[0])["id"] == "a" and lines[1] == summary
    file = tmp_path / "out.txt"
    redirected = _shell(eval_ + f" > {shlex.quote(str(file))}")
    assert (redirected.returncode, redirected.stderr) == (0, "")
    assert file.read_text() == piped.stdout, "the scores, then the summary lines, both in the file"


def test_report_html_to_stdout_through_a_pipe_and_a_redirect(log: Path, tmp_path: Path) -> None:
    """``report --html /dev/stdout | head`` failed as ``eval --out /dev/stdout`` did; ``> file`` lost the text."""
    report = f"{{program}} report {shlex.quote(str(log))} --html /dev/stdout"
    piped = _shell(report + " | cat")
    assert (piped.returncode, piped.stderr) == (0, "")
    assert piped.stdout.startswith("<!DOCTYPE html>")
    assert piped.stdout.rstrip().endswith("HTML report written to /dev/stdout")
    file = tmp_path / "out.txt"
    redirected = _shell(report + f" > {shlex.quote(str(file))}")
    assert (redirected.returncode, redirected.stderr) == (0, "")
    assert file.read_text() == piped.stdout, "the page, then the text summary, both in the file"


def test_a_symlink_loop_as_output_is_one_line(
    data: Path, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Path.resolve`` raises ``RuntimeError`` on a loop (Python 3.11): a traceback instead of the error line."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    reason = "Too many levels of symbolic links"
    argv = ["eval", "--heuristic", "--data", str(data), "--out", str(loop)]
    _fails_with(capsys, argv, f"model-router eval: cannot write --out {loop} ({reason})")
    _fails_with(
        capsys, ["report", str(log), "--html", str(loop)], f"model-router report: cannot write --html {loop} ({reason})"
    )


def test_report_corrupt_gzip_data_in_a_log_is_one_line(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any file starting with gzip's magic bytes is read as gzip: damaged deflate data raised ``zlib.error``, which
    the report did not catch (a traceback, exit 1)."""
    payload = bytearray(gzip.compress(b"".join(json.dumps({**DECISION, "n": i}).encode() + b"\n" for i in range(2000))))
    payload[200:260] = bytes(b ^ 0x55 for b in payload[200:260])
    bad = tmp_path / "router-copy.log"  # no .gz: sniffed
    bad.write_bytes(bytes(payload))
    _fails_with(capsys, ["report", str(log), str(bad)], f"model-router report: cannot read {bad} (corrupt gzip file)")


def test_eval_then_report_on_data_with_repeated_ids(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's pipeline: eval scores the first item with each id and leaves the repeats out; report --eval took
    the same --data as an error (exit 2, "duplicate id(s)"). Now it reads it as eval does, and says so."""
    items = [
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": "why " * (1 + 7 * i)}],
            "scores": {"weak": float(i % 3 == 0), "strong": 1.0},
        }
        for i in range(30)
    ]
    items += [{**item, "scores": {"weak": 1.0, "strong": 0.0}} for item in items[:5]]
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    scores = tmp_path / "scores.jsonl"
    assert main(["eval", "--heuristic", "--data", str(data), "--out", str(scores)]) == 0
    assert "5 duplicate ids (q0, q1, q2, q3, q4" in capsys.readouterr().err
    page = tmp_path / "p.html"
    assert main(["report", str(log), "--html", str(page), "--eval", str(scores), "--data", str(data)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "cost-quality curve on 30 EVAL items: 5 repeating an earlier item's id (eval scores the first)" in out
    assert "APGR" in page.read_text()


def test_report_envoy_log_is_repeatable_and_takes_several(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file per gateway pod: ``--envoy-log a b`` and ``--envoy-log a --envoy-log b`` read both."""
    line = {"start_time": "2025-11-23T00:00:00.000Z", "duration_ms": 3, "model_router": {"decision_id": None}}
    pods = [tmp_path / "envoy-a.log", tmp_path / "envoy-b.log"]
    for pod in pods:
        pod.write_text(json.dumps(line) + "\n")
    for argv in (["--envoy-log", *map(str, pods)], ["--envoy-log", str(pods[0]), "--envoy-log", str(pods[1])]):
        assert main(["report", str(log), "--json", *argv]) == 0
        envoy = json.loads(capsys.readouterr().out)["envoy"]
        assert (envoy["access_lines"], envoy["not_applied"]) == (2, 1)
