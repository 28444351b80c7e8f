"""``model-router report``: old and new decision lines, bad lines counted, text/JSON, and the HTML page in Chromium.

The browser test renders the HTML report in headless Chromium (Debian package ``chromium``), reads every figure
back from the rendered DOM and compares it with totals computed here from the raw log lines; it keeps a PNG
screenshot in pytest's tmp dir (``--update-golden`` also refreshes ``docs/report.png``).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import random
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from extproc.record import DecisionRecord, Outcome, record_json
from extproc.report import EvalInput, eval_curve, write_report

ROOT = Path(__file__).resolve().parents[2]
DAY_NS = 86_400 * 10**9
START_NS = 1_763_856_000 * 10**9  # 2025-11-23T00:00:00Z
MODELS = (("llama-3.1-8b-instruct", "small", 0.00002), ("gpt-4o-mini", "cheap", 0.0002), ("gpt-4o", "frontier", 0.003))
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def _records(n: int = 60, seed: int = 7) -> list[DecisionRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, tier, cost = MODELS[i % 3]
        outcome = rng.choice([Outcome.ROUTED, Outcome.ROUTED, Outcome.FALLBACK, Outcome.SHADOW, Outcome.PASSTHROUGH])
        if outcome is Outcome.PASSTHROUGH:
            out.append(
                DecisionRecord(
                    decision_id=f"{i:016x}",
                    outcome=outcome,
                    reason="model_not_routable",
                    started_unix_ns=START_NS + (i % 3) * DAY_NS,
                )
            )
            continue
        out.append(
            DecisionRecord(
                decision_id=f"{i:016x}",
                outcome=outcome,
                reason="cheapest_meeting_target" if outcome is not Outcome.FALLBACK else "classifier_failed",
                schema="openai.chat",
                requested_model="auto",
                selected_model=name,
                cluster=tier,
                tier=tier,
                input_tokens=rng.randint(5, 500),
                cost_requested=0.003 * rng.uniform(0.5, 2),
                cost_selected=cost * rng.uniform(0.5, 2),
                tenant=rng.choice(["acme", "globex", None]),
                started_unix_ns=START_NS + (i % 3) * DAY_NS + rng.randint(0, DAY_NS - 1),
            )
        )
    return out


def _log_line(rec: DecisionRecord) -> str:
    """As the router writes it: the log formatter's fields, then the decision's JSON."""
    return json.dumps(
        {
            "ts": "2025-11-23T00:00:00.000Z",
            "level": "info",
            "logger": "model_router.decisions",
            **json.loads(record_json(rec)),
        }
    )


def _legacy_line(rec: DecisionRecord) -> str:
    """As the router wrote it before RoutingDecision: the record's fields, lower-case labels, ``ts`` only."""
    fields = {k: v for k, v in dataclasses.asdict(rec).items() if v is not None}
    for k in ("started_unix_ns", "traceparent", "tracestate"):
        fields.pop(k, None)
    fields["outcome"] = rec.outcome.value
    ts = np.datetime64(rec.started_unix_ns, "ns").astype("datetime64[ms]")
    return json.dumps(
        {"ts": f"{ts}Z", "level": "info", "logger": "model_router.decisions", "event": "decision", **fields}
    )


BAD_LINES = (
    '{"ts": "x", "level": "info", "event": "decision", "decision_id": "trunc',
    '{"event": "decision", "decision_id": "t", "outcome": "OUTCOME_ROUTED", "estimated_cost_selected": "cheap"}',
)
OTHER_LINES = ("model-router ready on 127.0.0.1:50051", '{"ts": "x", "level": "info", "msg": "config reloaded"}')


@pytest.fixture
def log(tmp_path: Path) -> Path:
    recs = _records()
    lines = [_log_line(r) if i % 2 else _legacy_line(r) for i, r in enumerate(recs)]  # old and new, mixed
    lines[10:10] = BAD_LINES
    lines[3:3] = OTHER_LINES
    path = tmp_path / "router.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected(recs: list[DecisionRecord]) -> dict[str, float]:
    """Every figure of the report, computed straight from the records."""
    want: dict[str, float] = defaultdict(float)
    tiers: dict[str, int] = defaultdict(int)
    for r in recs:
        counted = r.outcome is not Outcome.PASSTHROUGH
        tiers[r.tier if counted and r.tier else "(not routed)"] += 1
        if not counted:
            continue
        assert r.cost_requested is not None and r.cost_selected is not None and r.selected_model is not None
        day = str(np.datetime64(r.started_unix_ns, "ns").astype("datetime64[D]"))
        for group in (f"model:{r.selected_model}", f"tenant:{r.tenant or '-'}", f"day:{day}", "total"):
            want[f"{group}:requests"] += 1
            want[f"{group}:without"] += r.cost_requested
            want[f"{group}:with"] += r.cost_selected
            want[f"{group}:saved"] += r.cost_requested - r.cost_selected
    for key in [k for k in want if k.endswith(":without")]:
        group = key.removesuffix(":without")
        want[f"{group}:saved_pct"] = 100 * want[f"{group}:saved"] / want[key]
    total = sum(tiers.values())
    for tier, n in tiers.items():
        want[f"tier:{tier}:requests"] = n
        want[f"tier:{tier}:share"] = 100 * n / total
    want["bad_lines"] = len(BAD_LINES)
    return dict(want)


def test_text_table_reads_old_and_new_lines_and_counts_bad_ones(log: Path) -> None:
    out = io.StringIO()
    assert write_report([log], out) == 0
    text = out.getvalue()
    want = _expected(_records())
    total_line = next(line for line in text.splitlines() if line.startswith("total:"))
    assert f"total: {int(want['total:requests'])} requests" in total_line
    assert f"instead of {want['total:without']:.4f}" in total_line
    assert f"skipped {len(BAD_LINES)} unreadable decision line(s)" in text
    assert "passthrough=" in total_line and "shadow=" in total_line


def test_json_totals(log: Path) -> None:
    out = io.StringIO()
    assert write_report([log], out, as_json=True) == 0
    data = json.loads(out.getvalue())
    want = _expected(_records())
    assert data["total"]["requests"] == want["total:requests"]
    assert data["total"]["saved"] == pytest.approx(want["total:saved"])
    assert data["bad_lines"] == len(BAD_LINES)
    assert {k: v["requests"] for k, v in data["by_model"].items()} == {
        k.split(":")[1]: v for k, v in want.items() if k.startswith("model:") and k.endswith(":requests")
    }


def test_no_decisions_is_exit_1(tmp_path: Path) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("\n".join((*OTHER_LINES, BAD_LINES[0])) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert write_report([empty], out, as_json=True, err=err) == 1
    assert out.getvalue() == "", "--json output is JSON or nothing"
    assert "no decision events" in err.getvalue() and "skipped 1" in err.getvalue()


def _report_error(paths: list[Path], html: Path | None = None, evaluation: EvalInput | None = None) -> str:
    """Run the report expecting exit code 2: its one error line, written to ``err`` and nothing to ``out``."""
    out, err = io.StringIO(), io.StringIO()
    assert write_report(paths, out, html=html, evaluation=evaluation, err=err) == 2
    assert out.getvalue() == "", "a failed report prints only its error"
    assert err.getvalue().startswith("model-router report: ") and err.getvalue().count("\n") == 1, err.getvalue()
    return err.getvalue().removeprefix("model-router report: ").rstrip("\n")


def test_unwritable_html_is_one_line_on_err(log: Path, tmp_path: Path) -> None:
    page = tmp_path / "missing" / "report.html"
    assert _report_error([log], html=page) == f"cannot write --html {page} (No such file or directory)"
    assert _report_error([log], html=tmp_path) == f"cannot write --html {tmp_path} (Is a directory)"


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        ("missing.log", None, "No such file or directory"),
        ("bad.log.gz", b"not gzip", "not a gzip file"),
        ("cut.log.gz", gzip.compress(b"x" * 1000)[:20], "truncated gzip file"),
    ],
    ids=["missing", "not-gzip", "truncated-gzip"],
)
def test_unreadable_log_is_one_line_naming_it(
    log: Path, tmp_path: Path, name: str, payload: bytes | None, why: str
) -> None:
    bad = tmp_path / name
    if payload is not None:
        bad.write_bytes(payload)
    assert _report_error([log, bad]) == f"cannot read {bad} ({why})"


def test_unreadable_eval_files_are_named_by_option(log: Path, tmp_path: Path) -> None:
    scores, data, _ = _eval_files(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(scores.read_text() + "{cut\n")
    lines = len(scores.read_text().splitlines()) + 1
    assert (
        _report_error([log], evaluation=EvalInput(bad, data)) == f"cannot read --eval {bad} (line {lines} is not JSON)"
    )
    missing = tmp_path / "missing.jsonl"
    assert _report_error([log], evaluation=EvalInput(scores, missing)) == (
        f"cannot read --data {missing} (No such file or directory)"
    )
    assert _report_error([log], evaluation=EvalInput(scores, data, "weak-m", "nobody")) == (
        f"--data {data}: no item has outcomes for both weak-m and nobody"
    )


def test_eval_outcomes_that_are_not_numbers_are_no_scores(log: Path, tmp_path: Path) -> None:
    """``null`` or text where a model's outcome should be: the item lacks that outcome, as ``model-router eval``
    reads it (it was a TypeError traceback)."""
    scores, data, _ = _eval_files(tmp_path)
    items = [json.loads(line) for line in data.read_text().splitlines()]
    for item in items[:20]:
        item["scores"]["strong-m"] = None if int(item["id"][1:]) % 2 else "1.0"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    for pair in (("weak-m", "strong-m"), (None, None)):
        page = tmp_path / "report.html"
        out = io.StringIO()
        assert write_report([log], out, html=page, evaluation=EvalInput(scores, data, *pair)) == 0, out.getvalue()
        assert "180 EVAL items" in page.read_text()


def test_eval_data_that_eval_accepts_is_read_alike(log: Path, tmp_path: Path) -> None:
    """A torn ``--data`` line (``eval`` scores it with no id) is skipped, and outcomes outside [0, 1] (``NaN``, 50)
    are no score, as ``model-router eval`` reads them: the page shows the same items as for the clean file."""
    scores, data, _ = _eval_files(tmp_path)
    clean = tmp_path / "clean.html"
    assert write_report([log], io.StringIO(), html=clean, evaluation=EvalInput(scores, data)) == 0
    lines = data.read_text().splitlines()
    lines[0] = lines[0].replace('"strong-m": ', '"strong-m": NaN, "x": ')
    lines[1] = lines[1].replace('"strong-m": ', '"strong-m": 50, "x": ')
    data.write_text("\n".join(lines) + '\n{"id": "torn", "scores": {"weak-m"\n')
    page = tmp_path / "report.html"
    out = io.StringIO()
    assert write_report([log], out, html=page, evaluation=EvalInput(scores, data)) == 0, out.getvalue()
    assert "198 EVAL items" in page.read_text() and "200 EVAL items" in clean.read_text()


class _Figures(HTMLParser):
    """Collects ``data-figure`` elements: name -> (data-value, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, tuple[float, str]] = {}
        self._open: str | None = None
        self._value = 0.0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-figure"):
            self._open, self._value = a["data-figure"], float(a["data-value"] or "nan")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.figures[self._open] = (self._value, data.strip())
            self._open = None


def _eval_files(tmp_path: Path) -> tuple[Path, Path, float]:
    rng = np.random.default_rng(3)
    n = 200
    hardness = rng.uniform(0, 1, n)
    weak = (rng.uniform(0, 1, n) > hardness).astype(float)
    strong = np.maximum(weak, (rng.uniform(0, 1, n) > hardness * 0.4).astype(float))
    score = hardness + rng.normal(0, 0.2, n)
    data = tmp_path / "eval.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"i{i}",
                    "messages": [{"role": "user", "content": "q"}],
                    "scores": {"weak-m": weak[i], "strong-m": strong[i]},
                }
            )
            + "\n"
            for i in range(n)
        )
    )
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"id": f"i{i}", "score": float(score[i])}) + "\n" for i in range(n)))
    from classifier.metrics import summarize

    return scores, data, summarize(score, weak, strong).apgr


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed (Debian package `chromium`; see the Makefile)"
    return found


def test_html_report_in_headless_chromium(log: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    scores, data, apgr = _eval_files(tmp_path)
    page = tmp_path / "report.html"
    out = io.StringIO()
    assert write_report([log], out, html=page, evaluation=EvalInput(scores, data, "weak-m", "strong-m")) == 0
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text, "self-contained"

    chromium = _chromium()
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    parser = _Figures()
    parser.feed(dom)
    got = parser.figures
    want = _expected(_records())
    assert set(want) <= set(got), f"missing on the page: {sorted(set(want) - set(got))}"
    for name, value in want.items():
        shown_value, shown_text = got[name]
        assert shown_value == pytest.approx(value, rel=1e-9, abs=1e-12), name
        if name.endswith(("_pct", ":share")):
            assert shown_text == f"{value:.1f}%", name
        elif name.endswith(":requests") or name == "bad_lines":
            assert shown_text == str(int(value)), name
        else:
            assert shown_text == f"{value:.6f}", name
    assert got["eval:apgr"][0] == pytest.approx(apgr) and got["eval:apgr"][1] == f"{apgr:.3f}"
    assert "<polyline" in dom, "the cost-quality curve is drawn"

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1100,1600",
            "--hide-scrollbars",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if request.config.getoption("--update-golden"):
        shutil.copyfile(shot, ROOT / "docs" / "report.png")


def test_pinned_requests_are_their_own_tier_and_not_savings(tmp_path: Path) -> None:
    """``model-router label`` replays prompts pinned to each model (``trusted_override``): counting them would report
    the labeller's traffic as the router's savings."""
    routed = _records(n=3)[0]
    routed = dataclasses.replace(routed, outcome=Outcome.ROUTED, reason="cheapest_meeting_target")
    pinned = dataclasses.replace(routed, decision_id="00000000000000ff", reason="trusted_override", cost_selected=0.0)
    log = tmp_path / "router.log"
    log.write_text(_log_line(routed) + "\n" + _log_line(pinned) + "\n")
    out = io.StringIO()
    assert write_report([log], out, as_json=True) == 0
    data = json.loads(out.getvalue())
    assert data["total"]["requests"] == 1
    assert data["total"]["saved"] == pytest.approx(routed.cost_requested - routed.cost_selected)
    assert data["tiers"] == {routed.tier: 1, "(pinned)": 1}


def test_a_score_line_without_an_id_joins_no_item(log: Path, tmp_path: Path) -> None:
    """``model-router eval`` writes ``"id": null`` for a --data line that was not JSON; an item without an id must
    not pick that score up (both would be the string "None")."""
    scores, data, _ = _eval_files(tmp_path)
    items = [json.loads(line) for line in data.read_text().splitlines()]
    del items[0]["id"]
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    scores.write_text(scores.read_text() + json.dumps({"id": None, "line": 7, "score": 9.0}) + "\n")
    page = tmp_path / "report.html"
    assert write_report([log], io.StringIO(), html=page, evaluation=EvalInput(scores, data)) == 0
    assert f"{len(items) - 1} EVAL items" in page.read_text()


@pytest.mark.parametrize("which", ["log", "second-log", "eval", "data", "symlink", "other-spelling"])
def test_html_that_is_an_input_is_refused_before_anything_is_written(log: Path, tmp_path: Path, which: str) -> None:
    """``report copy.log --html copy.log`` replaced the decision log, often the only copy, with the page (exit 0)."""
    scores, data, _ = _eval_files(tmp_path)
    other = tmp_path / "other.log"
    shutil.copyfile(log, other)
    link = tmp_path / "link.html"
    link.symlink_to(log)
    page = {
        "log": log,
        "second-log": other,
        "eval": scores,
        "data": data,
        "symlink": link,
        "other-spelling": tmp_path / "." / log.name,
    }[which]
    before = {p: p.read_bytes() for p in (log, other, scores, data)}
    what = {"eval": "the --eval file", "data": "the --data file"}.get(which, "an input log")
    assert _report_error([log, other], html=page, evaluation=EvalInput(scores, data)) == f"--html {page} is {what}"
    assert {p: p.read_bytes() for p in before} == before


def test_html_is_written_whole_or_not_at_all(log: Path, tmp_path: Path) -> None:
    """The page goes to a hidden sibling renamed over ``--html``: a write that fails part way (here: past a file size
    limit, as on a full disk) leaves the previous page as it was and no temporary file behind; a symlink keeps
    pointing at the page."""
    page = tmp_path / "report.html"
    page.write_text("previous page")
    link = tmp_path / "latest.html"
    link.symlink_to(page)
    script = (
        "import io, resource, signal, sys; from pathlib import Path; from extproc.report import write_report;"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000));"
        "sys.exit(write_report([Path(sys.argv[1])], io.StringIO(), html=Path(sys.argv[2])))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(log), str(link)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert run.returncode == 2 and run.stderr == f"model-router report: cannot write --html {link} (File too large)\n"
    assert page.read_text() == "previous page"
    assert write_report([log], io.StringIO(), html=link) == 0
    assert link.is_symlink() and page.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.html", "report.html", "router.log"]


def test_html_write_interrupted_leaves_no_temporary_file(
    log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only ``OSError`` removed the hidden sibling: Ctrl-C at the rename left ``.report.html.partial`` behind."""
    page = tmp_path / "report.html"
    page.write_text("previous page")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report([log], io.StringIO(), html=page)
    assert page.read_text() == "previous page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "router.log"]


def test_html_is_fsynced_keeps_its_mode_and_leaves_another_runs_temporary_file(
    log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page was renamed in unsynced (empty after a crash), took the umask's mode instead of the old page's, and
    every run wrote the one fixed ``.report.html.partial`` (``O_TRUNC``): two runs at once wrote into one file."""
    page = tmp_path / "report.html"
    page.write_text("previous page")
    page.chmod(0o640)
    other_run = tmp_path / ".report.html.partial"
    other_run.write_text("another run's page, half written")
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    assert write_report([log], io.StringIO(), html=page) == 0
    assert page.read_text().startswith("<!DOCTYPE html>") and synced
    assert stat.S_IMODE(page.stat().st_mode) == 0o640
    assert other_run.read_text() == "another run's page, half written"


def test_a_gzip_log_without_the_gz_suffix_is_read_as_gzip(log: Path, tmp_path: Path) -> None:
    """``kubectl cp`` of a compressed capture often keeps a plain name: it read as text with no decision line."""
    plain = tmp_path / "router-copy.log"
    plain.write_bytes(gzip.compress(log.read_bytes()))
    want, got = io.StringIO(), io.StringIO()
    assert write_report([log], want, as_json=True) == 0
    assert write_report([plain], got, as_json=True) == 0
    assert json.loads(got.getvalue()) == json.loads(want.getvalue())


def test_the_same_decisions_given_twice_count_once(log: Path, tmp_path: Path) -> None:
    """``report router.log router.log`` (or a log and its .gz copy) doubled the requests and the savings."""
    copy = tmp_path / "router.log.gz"
    copy.write_bytes(gzip.compress(log.read_bytes()))
    once, twice = io.StringIO(), io.StringIO()
    assert write_report([log], once, as_json=True) == 0
    assert write_report([log, copy], twice, as_json=True) == 0
    a, b = json.loads(once.getvalue()), json.loads(twice.getvalue())
    assert b["total"] == a["total"] and b["tiers"] == a["tiers"]
    assert a["duplicate_decisions"] == 0 and b["duplicate_decisions"] == len(_records())
    text = io.StringIO()
    assert write_report([log, log], text) == 0
    assert f"skipped {len(_records())} duplicate decision(s)" in text.getvalue()


def _one_decision(**changes: object) -> str:
    rec = dataclasses.replace(_records(n=1)[0], outcome=Outcome.ROUTED, reason="cheapest_meeting_target")
    return json.dumps({**json.loads(_log_line(rec)), **changes})


@pytest.mark.parametrize(
    ("changes", "readable"),
    [
        pytest.param({"estimated_cost_requested": -5}, False, id="negative-cost"),
        pytest.param({"estimated_cost_selected": "Infinity"}, False, id="infinite-cost"),
        pytest.param({"estimated_cost_selected": "NaN"}, False, id="nan-cost"),
        pytest.param({"outcome": 7}, False, id="unknown-outcome-number"),
        pytest.param({"stream": "stderr"}, True, id="shipper-stream-key"),
        pytest.param({"stream": True}, True, id="a-streamed-request"),
        pytest.param({"stream": "yes"}, False, id="stream-not-a-bool"),
        pytest.param({"kubernetes": {"pod": "x"}}, True, id="other-shipper-key"),
    ],
)
def test_decision_lines_with_impossible_values_are_unreadable(
    tmp_path: Path, changes: dict[str, object], readable: bool
) -> None:
    """A negative or non-finite cost gave ``cost_requested: inf``, an outcome the proto lacks ``outcomes seen: =1``;
    a shipper's ``"stream": "stderr"`` made a good line unreadable (it clashes with RoutingDecision's bool)."""
    path = tmp_path / "router.log"
    path.write_text(_one_decision() + "\n" + _one_decision(decision_id="00000000000000ee", **changes) + "\n")
    out = io.StringIO()
    assert write_report([path], out, as_json=True) == 0
    data = json.loads(out.getvalue())
    assert (data["bad_lines"], data["total"]["requests"]) == ((0, 2) if readable else (1, 1))
    assert all(math.isfinite(v) for v in data["total"].values() if isinstance(v, float))


def test_duplicate_ids_in_eval_are_refused(log: Path, tmp_path: Path) -> None:
    """Scores join items by id: with an id twice, the last score went to both items and the APGR changed silently."""
    scores, data, _ = _eval_files(tmp_path)
    lines = scores.read_text().splitlines()
    dup_scores = tmp_path / "dup_scores.jsonl"
    dup_scores.write_text("\n".join([*lines, lines[3].replace("0.", "1.", 1)]) + "\n")
    assert _report_error([log], tmp_path / "r.html", EvalInput(dup_scores, data)) == (
        f"--eval {dup_scores}: 1 duplicate id(s) (first 'i3'); scores are joined to --data items by id, so each item"
        " needs its own"
    )


def test_duplicate_ids_in_data_are_read_as_eval_reads_them(log: Path, tmp_path: Path) -> None:
    """``eval`` scores the first item with an id and leaves the later ones out, so ``report --eval`` must take the
    same ``--data`` (it refused it, exit 2): the first item counts, the repeats are left out of the curve and said."""
    scores, data, apgr = _eval_files(tmp_path)
    items = [json.loads(line) for line in data.read_text().splitlines()]
    repeats = [{**items[i], "scores": {"weak-m": 1.0, "strong-m": 0.0}} for i in (5, 6)]  # would change the curve
    dup_data = tmp_path / "dup_data.jsonl"
    dup_data.write_text("".join(json.dumps(item) + "\n" for item in [*items, *repeats]))
    out, err = io.StringIO(), io.StringIO()
    assert write_report([log], out, html=tmp_path / "r.html", evaluation=EvalInput(scores, dup_data), err=err) == 0
    assert err.getvalue() == ""
    left_out = "2 repeating an earlier item's id (eval scores the first) of the --data items left out"
    assert f"cost-quality curve on 200 EVAL items: {left_out}" in out.getvalue().splitlines()
    assert f"{escape(left_out)}." in (tmp_path / "r.html").read_text()
    assert eval_curve(EvalInput(scores, dup_data)).apgr == pytest.approx(apgr)


def test_data_items_without_a_score_are_said_to_be_left_out(log: Path, tmp_path: Path) -> None:
    scores, data, _ = _eval_files(tmp_path)
    scores.write_text("".join(scores.read_text().splitlines(keepends=True)[:150]))
    page = tmp_path / "report.html"
    out = io.StringIO()
    assert write_report([log], out, html=page, evaluation=EvalInput(scores, data)) == 0
    note = "50 without a score in --eval of the --data items left out"
    assert f"cost-quality curve on 150 EVAL items: {note}" in out.getvalue()
    assert note in page.read_text()


def _pair_files(tmp_path: Path, means: dict[str, float]) -> tuple[Path, Path]:
    """Eval files whose models score 1 on the first ``mean`` share of 100 items."""
    data, scores = tmp_path / "pair.jsonl", tmp_path / "pair_scores.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "scores": {m: float(i < 100 * mean) for m, mean in means.items()}}) + "\n"
            for i in range(100)
        )
    )
    scores.write_text("".join(json.dumps({"id": f"p{i}", "score": (i * 37) % 100 / 100}) + "\n" for i in range(100)))
    return scores, data


def test_weak_and_strong_must_differ_and_a_tie_is_said(log: Path, tmp_path: Path) -> None:
    """The same model as weak and strong (or --weak alone naming the best model) wrote ``eval:apgr = nan``."""
    scores, data = _pair_files(tmp_path, {"best": 0.9, "mid": 0.6, "low": 0.3})
    page = tmp_path / "report.html"
    assert _report_error([log], page, EvalInput(scores, data, "best", "best")) == (
        "--weak and --strong must name different models"
    )
    assert not page.exists()
    pairs = ((None, None, ("mid", "best")), ("best", None, ("best", "mid")), (None, "mid", ("low", "mid")))
    for weak, strong, want in pairs:
        out = io.StringIO()
        assert write_report([log], out, html=page, evaluation=EvalInput(scores, data, weak, strong)) == 0
        figures = _Figures()
        figures.feed(page.read_text())
        assert math.isfinite(figures.figures["eval:apgr"][0])
        assert f"goes to {want[1]}, the rest to {want[0]}" in page.read_text()
    tie_scores, tie_data = _pair_files(tmp_path, {"a": 0.5, "b": 0.5})
    assert _report_error([log], page, EvalInput(tie_scores, tie_data)) == (
        f"--data {tie_data}: a and b tie on average (0.500 over 100 items): the gain over the weak model (PGR) is"
        " undefined; name another pair with --weak/--strong"
    )


# --- --envoy-log: the decisions Envoy applied ----------------------------------------------------------------------

T0_NS = START_NS + 3600 * 10**9  # 2025-11-23T01:00:00Z
MS = 10**6
DECIDED_MS = (0, 100, 200, 300, 400)
"""When each of the five test decisions was made, in ms after T0; Envoy saw its request start 2 ms earlier."""
TENANTS = ("acme", "globex", "acme", "globex", "acme")


def _iso(ns: int, zone: str = "Z") -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[ms]")) + zone


def _envoy_decision(i: int, outcome: Outcome = Outcome.ROUTED, via_decide: bool = False) -> str:
    rec = DecisionRecord(
        decision_id=f"{i:016x}",
        outcome=outcome,
        reason="cheapest_meeting_target" if outcome is not Outcome.PASSTHROUGH else "model_not_routable",
        schema="openai.chat",
        requested_model="auto",
        selected_model="gpt-4o-mini",
        cluster="cheap",
        tier="cheap",
        cost_requested=0.003,
        cost_selected=0.0002,
        tenant=TENANTS[i],
        started_unix_ns=T0_NS + DECIDED_MS[i] * MS,
        via_decide=via_decide,
    )
    return _log_line(rec)


def _json_access(i: int, applied: bool = True) -> str:
    """A line of envoy/envoy.yaml's JSON access log for request ``i``, as Envoy writes it (a missing value: null)."""
    decision = f"{i:016x}" if applied else None
    router = {"outcome": "routed" if applied else None, "decision_id": decision, "selected_model": None, "tier": None}
    line = {
        "start_time": _iso(T0_NS + (DECIDED_MS[i] - 2) * MS),
        "method": "POST",
        "path": "/v1/chat/completions",
        "response_code": 200,
        "duration_ms": 5,
        "upstream_cluster": "cheap" if applied else "frontier",
        "model_router": router,
    }
    return json.dumps(line)


def _text_access(i: int, applied: bool = True) -> str:
    """A line of k8s/base/envoy.yaml's text access log for request ``i`` (a missing value: ``-``)."""
    start = _iso(T0_NS + (DECIDED_MS[i] - 2) * MS)
    meta = (
        f"outcome=routed reason=cheapest_meeting_target model=gpt-4o-mini decision={i:016x}"
        if applied
        else ("outcome=- reason=- model=- decision=-")
    )
    return f'[{start}] "POST /v1/chat/completions" 200 {"cheap" if applied else "frontier"} {meta} 5ms'


def _envoy_report(tmp_path: Path, router: list[str], envoy: list[list[str]], *extra: str) -> dict[str, object]:
    """``report --json --envoy-log ...`` on these lines: one Envoy log per list."""
    log = tmp_path / "router.log"
    log.write_text("\n".join(router) + "\n")
    paths = []
    for n, lines in enumerate(envoy):
        paths.append(tmp_path / f"envoy-{n}.log")
        paths[-1].write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    assert write_report([log], out, as_json=True, envoy_logs=paths) == 0
    got: dict[str, object] = json.loads(out.getvalue())
    return got


ALL = range(5)
R = _envoy_decision


@pytest.mark.parametrize(
    ("router", "envoy", "want"),
    [
        pytest.param([R(i) for i in ALL], [[_json_access(i) for i in ALL]], (5, 0, {}, 0, 0), id="json-all-applied"),
        pytest.param([R(i) for i in ALL], [[_text_access(i) for i in ALL]], (5, 0, {}, 0, 0), id="text-all-applied"),
        pytest.param(
            [R(i) for i in ALL],
            [[_json_access(i, applied=i != 2) for i in ALL]],
            (4, 1, {"acme": 1}, 0, 0),
            id="json-late-one-failed-open",
        ),
        pytest.param(
            [R(i) for i in ALL],
            [[_text_access(i, applied=i != 3) for i in ALL]],
            (4, 1, {"globex": 1}, 0, 0),
            id="text-late-one-failed-open",
        ),
        pytest.param(
            [R(i) for i in ALL],
            [[_json_access(i) for i in (0, 1)], [_text_access(i, applied=i != 4) for i in (2, 3, 4)]],
            (4, 1, {"acme": 1}, 0, 0),
            id="two-pods-one-of-each-format",
        ),
        pytest.param(
            [R(i) for i in ALL],
            [[_json_access(i) for i in (0, 1, 3, 4)]],
            (4, 1, {"acme": 1}, 0, 0),
            id="no-line-inside-the-span-is-not-applied",
        ),
        pytest.param(
            [R(i) for i in ALL],
            [[_json_access(i) for i in (1, 2, 3)]],
            (3, 0, {}, 2, 0),
            id="before-and-after-the-span-is-outside",
        ),
        pytest.param(
            [R(0), R(1), R(2, via_decide=True), R(3), R(4)],
            [[_json_access(i) for i in (0, 1, 3, 4)]],
            (4, 0, {}, 0, 1),
            id="decide-is-not-checked",
        ),
        pytest.param(
            [R(0), R(1, Outcome.FALLBACK), R(2, Outcome.SHADOW), R(3, Outcome.PASSTHROUGH), R(4, Outcome.REJECTED)],
            [[_json_access(0), _json_access(1, applied=False)] + [_json_access(i, applied=False) for i in (2, 3, 4)]],
            (1, 2, {"acme": 1, "globex": 1}, 0, 0),
            id="fallback-and-shadow-checked-passthrough-and-rejected-not",
        ),
    ],
)
def test_envoy_log_counts_decisions_not_applied(
    tmp_path: Path, router: list[str], envoy: list[list[str]], want: tuple[int, int, dict[str, int], int, int]
) -> None:
    got = _envoy_report(tmp_path, router, envoy)
    e = got["envoy"]
    assert isinstance(e, dict)
    assert (e["applied"], e["not_applied"], e["not_applied_by_tenant"], e["outside_span"], e["via_decide"]) == want
    total = got["total"]
    assert isinstance(total, dict)
    routed = sum(1 for line in router if '"OUTCOME_PASSTHROUGH"' not in line and '"OUTCOME_REJECTED"' not in line)
    assert total["requests"] == routed - want[1], "a decision Envoy did not apply is no saving"
    assert total["saved"] == pytest.approx((routed - want[1]) * (0.003 - 0.0002))
    tiers = got["tiers"]
    assert isinstance(tiers, dict) and tiers.get("(not routed)", 0) == 5 - routed + want[1]


def test_envoy_log_skips_and_counts_lines_in_neither_format(tmp_path: Path) -> None:
    """A container log interleaves Envoy's own messages; a log collector may prefix a timestamp of its own."""
    envoy = [
        "[2025-11-23 01:00:00.500][2981][warning][main] [source/server/server.cc:1028] caught ENVOY_SIGTERM",
        _json_access(0),
        "2025-11-23T01:00:00.101Z stdout F " + _text_access(1),
        '{"start_time": "yesterday", "duration_ms": 5, "model_router": {"decision_id": "0000000000000002"}}',
        '{"ts": "2025-11-23T01:00:00.000Z", "level": "info", "msg": "a router line"}',
        '{"start_time": "2025-11-23T01:00:00.198Z", "model_router": {"decision_id": "00000000000000',
        _text_access(2).replace("5ms", "5 ms"),
        _json_access(4),
    ]
    got = _envoy_report(tmp_path, [R(i) for i in ALL], [envoy])
    e = got["envoy"]
    assert isinstance(e, dict)
    assert (e["access_lines"], e["skipped_lines"]) == (3, 5)
    assert (e["applied"], e["not_applied"]) == (3, 2)  # 2 and 3: no readable line inside the span


@pytest.mark.parametrize(
    ("start", "want"),
    [
        pytest.param("2025-11-23T01:00:00.098Z", "2025-11-23T01:00:00.098Z", id="utc-z"),
        pytest.param("2025-11-23T03:00:00.098+02:00", "2025-11-23T01:00:00.098Z", id="offset"),
        pytest.param("2025-11-23T01:00:00.098", "2025-11-23T01:00:00.098Z", id="no-zone-is-utc"),
    ],
)
def test_envoy_start_times_in_any_zone_are_read_as_utc(tmp_path: Path, start: str, want: str) -> None:
    line = json.loads(_json_access(1))
    got = _envoy_report(tmp_path, [R(1)], [[json.dumps({**line, "start_time": start})]])
    e = got["envoy"]
    assert isinstance(e, dict)
    assert e["span"] == [want, "2025-11-23T01:00:00.104Z"]  # start + 5 ms + 1 ms for Envoy's rounding
    assert e["applied"] == 1


def test_a_decision_just_after_envoy_started_its_request_is_inside_the_span(tmp_path: Path) -> None:
    """The router decides a few ms after Envoy's ``start_time``: the last request's decision is within its duration."""
    got = _envoy_report(tmp_path, [R(0), R(1)], [[_json_access(0, applied=False), _json_access(1, applied=False)]])
    e = got["envoy"]
    assert isinstance(e, dict) and (e["not_applied"], e["outside_span"]) == (2, 0)


@pytest.mark.parametrize("name", ["envoy.log.gz", "envoy-copy.log"])
def test_a_gzip_envoy_log_is_read(tmp_path: Path, name: str) -> None:
    plain = tmp_path / "plain.log"
    plain.write_text("\n".join(_json_access(i, applied=i != 2) for i in ALL) + "\n")
    packed = tmp_path / name
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    log = tmp_path / "router.log"
    log.write_text("\n".join(R(i) for i in ALL) + "\n")
    want, got = io.StringIO(), io.StringIO()
    assert write_report([log], want, as_json=True, envoy_logs=[plain]) == 0
    assert write_report([log], got, as_json=True, envoy_logs=[packed]) == 0
    assert json.loads(got.getvalue()) == json.loads(want.getvalue())
    assert json.loads(got.getvalue())["envoy"]["not_applied"] == 1


def test_envoy_log_in_text_and_html_output(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    log.write_text("\n".join(R(i) for i in ALL) + "\n")
    envoy = tmp_path / "envoy.log"
    envoy.write_text("\n".join([_text_access(i, applied=i != 3) for i in ALL] + ["[x][1][info][main] starting"]))
    out, page = io.StringIO(), tmp_path / "report.html"
    assert write_report([log], out, html=page, envoy_logs=[envoy]) == 0
    text = out.getvalue()
    assert "total (as Envoy applied them): 4 requests" in text
    assert "4 applied, 1 not applied (Envoy failed open: sent unrouted; left out; by tenant: globex 1)" in text
    assert "0 outside the Envoy logs' time span 2025-11-23T00:59:59.998Z .. 2025-11-23T01:00:00.404Z" in text
    assert "Read 5 access-log line(s); 1 line(s) in neither access-log format skipped." in text
    doc = page.read_text()
    for name, value in (("not_applied", 1), ("not_applied:tenant:globex", 1), ("applied", 4), ("skipped_lines", 1)):
        assert f'data-figure="envoy:{name}" data-value="{value}"' in doc, name
    assert 'data-figure="total:requests" data-value="4"' in doc
    plain, plain_page = io.StringIO(), tmp_path / "plain.html"
    assert write_report([log], plain, html=plain_page) == 0
    assert "Envoy" not in plain.getvalue() and 'id="envoy"' not in plain_page.read_text()
    assert "total: 5 requests" in plain.getvalue(), "without --envoy-log nothing changes"


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        pytest.param("missing.log", None, "cannot read --envoy-log {} (No such file or directory)", id="missing"),
        pytest.param(
            "cut.log.gz", gzip.compress(b"x" * 1000)[:20], "cannot read --envoy-log {} (truncated gzip file)", id="cut"
        ),
        pytest.param(
            "router.log",
            b"",
            "--envoy-log {}: no Envoy access-log line (7 line(s) in neither the JSON format of envoy/envoy.yaml nor"
            " the text format of k8s/base/envoy.yaml)",
            id="the-router-log-given-as-envoy-log",
        ),
    ],
)
def test_unusable_envoy_log_is_one_line_naming_it(
    log: Path, tmp_path: Path, name: str, payload: bytes | None, why: str
) -> None:
    bad = log if name == "router.log" else tmp_path / name
    if payload:
        bad.write_bytes(payload)
    if name == "router.log":  # seven decision lines, nothing Envoy wrote
        bad.write_text("\n".join(R(i) for i in ALL) + "\n" + "\n".join(OTHER_LINES) + "\n")
    out, err = io.StringIO(), io.StringIO()
    assert write_report([log], out, envoy_logs=[bad], err=err) == 2
    assert err.getvalue() == f"model-router report: {why.format(bad)}\n"


def test_html_that_is_an_envoy_log_is_refused(log: Path, tmp_path: Path) -> None:
    envoy = tmp_path / "envoy.log"
    envoy.write_text(_json_access(0) + "\n")
    err = io.StringIO()
    assert write_report([log], io.StringIO(), html=envoy, envoy_logs=[envoy], err=err) == 2
    assert "is an --envoy-log" in err.getvalue() and envoy.read_text() == _json_access(0) + "\n"
