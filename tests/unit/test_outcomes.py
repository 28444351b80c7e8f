"""``model-router outcomes``: captured prompts joined with feedback into EVAL.md records, and what is skipped."""

from __future__ import annotations

import gzip
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from extproc.cli import main
from extproc.feedback import idempotency_key_hash
from extproc.outcomes import join_outcomes, run_outcomes


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _capture(decision_id: str, text: str = "q") -> dict[str, Any]:
    return {"id": decision_id, "messages": [{"role": "user", "content": text}], "captured_unix": 1.0, "tenant": None}


def _fb(decision_id: str, model: str, score: Any) -> dict[str, Any]:
    return {"decision_id": decision_id, "model": model, "score": score, "received_unix": 2.0}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_join_means_skips_and_counts(tmp_path: Path) -> None:
    captures = _write(
        tmp_path / "capture.jsonl",
        [
            _capture("a", "first"),
            _capture("b"),
            "not json",
            {"id": "c"},  # no messages
            {"id": "", "messages": [{"role": "user", "content": "x"}]},
            _capture("a", "repeated"),
            _capture("d"),  # no feedback
        ],
    )
    rotated = _write(tmp_path / "capture.jsonl.1", [_capture("e")])
    feedback = _write(
        tmp_path / "feedback.jsonl",
        [
            _fb("a", "small", 1),
            _fb("a", "small", 1),
            _fb("a", "small", 0),
            _fb("a", "big", 1),
            _fb("b", "small", 0),
            _fb("e", "big", 0.5),
            _fb("zz", "small", 1),  # no captured prompt
            _fb("zz", "big", 0),
            _fb("yy", "small", 1),
            _fb("a", "small", 2),  # out of range
            _fb("a", "small", True),
            {"decision_id": "a", "score": 1},  # no model
            "{broken",
        ],
    )
    out = io.BytesIO()
    stats = join_outcomes([rotated, captures], [feedback], out)
    got = [json.loads(x) for x in out.getvalue().splitlines()]
    assert got == [
        {"id": "e", "messages": [{"role": "user", "content": "q"}], "scores": {"big": 0.5}},
        {"id": "a", "messages": [{"role": "user", "content": "first"}], "scores": {"small": 2 / 3, "big": 1.0}},
        {"id": "b", "messages": [{"role": "user", "content": "q"}], "scores": {"small": 0.0}},
    ]
    assert (stats.records, stats.feedback_joined, stats.averaged) == (3, 6, 1)
    assert (stats.malformed_capture, stats.duplicate_capture, stats.unscored_capture) == (3, 1, 1)
    assert (stats.malformed_feedback, stats.orphan_feedback, stats.orphan_decisions) == (4, 3, 2)


def test_the_same_feedback_line_in_two_copies_of_an_archive_counts_once(tmp_path: Path) -> None:
    captures = _write(tmp_path / "c.jsonl", [_capture("a")])
    lines = [{**_fb("a", "m", 1), "feedback_id": "f1"}, {**_fb("a", "m", 0), "feedback_id": "f2"}, _fb("a", "m", 0)]
    first = _write(tmp_path / "feedback-monday.jsonl", lines)
    second = _write(tmp_path / "feedback-tuesday.jsonl", lines[:2])  # a later copy of the same (rotated) file
    out = io.BytesIO()
    stats = join_outcomes([captures], [first, second], out)
    assert json.loads(out.getvalue())["scores"] == {"m": 1 / 3}  # f1, f2 and the id-less line, each once
    assert (stats.feedback_joined, stats.duplicate_feedback) == (3, 2)


def test_a_retried_score_counts_once_by_its_idempotency_key(tmp_path: Path) -> None:
    """A score answered 503 (not confirmed in time) may be written after all, and its retry too: the client's key,
    the same on both, makes them one score. The same key on another decision is another score."""
    captures = _write(tmp_path / "c.jsonl", [_capture("a"), _capture("b")])
    lines = [
        {**_fb("a", "m", 1), "feedback_id": "1", "idempotency_key_hash": "k"},
        {**_fb("a", "m", 1), "feedback_id": "2", "idempotency_key_hash": "k"},  # the retry
        {**_fb("a", "m", 0), "feedback_id": "3", "idempotency_key_hash": "other"},
        {**_fb("b", "m", 1), "feedback_id": "4", "idempotency_key_hash": "k"},
        {**_fb("b", "n", 0), "feedback_id": "5", "idempotency_key_hash": "k"},  # the same key for another model
        # A line from before keys were kept as digests, and its retry written after: one score.
        {**_fb("b", "n", 1), "feedback_id": "6", "idempotency_key": "raw"},
        {**_fb("b", "n", 1), "feedback_id": "7", "idempotency_key_hash": idempotency_key_hash("raw")},
    ]
    feedback = _write(tmp_path / "f.jsonl", lines)
    out = io.BytesIO()
    stats = join_outcomes([captures], [feedback], out)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["scores"] for r in records] == [{"m": 0.5}, {"m": 1.0, "n": 0.5}]
    assert (stats.duplicate_feedback, stats.feedback_joined) == (2, 5)


def test_keep_unscored_writes_prompts_without_scores(tmp_path: Path) -> None:
    captures = _write(tmp_path / "c.jsonl", [_capture("a"), _capture("b")])
    feedback = _write(tmp_path / "f.jsonl", [_fb("a", "m", 1)])
    out = io.BytesIO()
    stats = join_outcomes([captures], [feedback], out, keep_unscored=True)
    assert [json.loads(x) for x in out.getvalue().splitlines()] == [
        {"id": "a", "messages": [{"role": "user", "content": "q"}], "scores": {"m": 1.0}},
        {"id": "b", "messages": [{"role": "user", "content": "q"}]},
    ]
    assert stats.records == 2 and stats.unscored_capture == 1


def test_cli_reads_gzip_writes_private_file_and_summarises(tmp_path: Path, capsys: Any) -> None:
    captures = tmp_path / "c.jsonl.gz"
    with gzip.open(captures, "wt") as f:
        f.write(json.dumps(_capture("a")) + "\nnope\n")
    feedback = _write(tmp_path / "f.jsonl", [_fb("a", "m", 1), _fb("x", "m", 0)])
    out = tmp_path / "out.jsonl"
    code = main(["outcomes", "--capture", str(captures), "--feedback", str(feedback), "--out", str(out)])
    assert code == 0
    assert _records(out) == [{"id": "a", "messages": [{"role": "user", "content": "q"}], "scores": {"m": 1.0}}]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    printed = capsys.readouterr().out
    assert f"wrote 1 records to {out}" in printed
    assert "1 feedback lines for 1 decisions without a captured prompt" in printed
    assert "1 malformed capture lines" in printed


@pytest.mark.parametrize(
    ("flags", "want", "other"),
    [
        pytest.param([], ["a", "b", "c"], None, id="all"),
        pytest.param(["--tenant", "acme"], ["a"], 2, id="only-one"),
        pytest.param(["--tenant", "acme", "beta"], ["a", "b"], 1, id="only-two"),
        pytest.param(["--exclude-tenant", "acme"], ["b", "c"], 1, id="all-but-one"),
    ],
)
def test_records_carry_their_tenant_and_tenants_can_be_picked(
    tmp_path: Path, capsys: Any, flags: list[str], want: list[str], other: int | None
) -> None:
    """One tenant's clients can score their own decisions at will: its records can be left out (or fitted alone)."""
    tenants = {"a": "acme", "b": "beta", "c": None}
    captures = _write(tmp_path / "c.jsonl", [{**_capture(i), "tenant": t} for i, t in tenants.items()])
    feedback = _write(tmp_path / "f.jsonl", [_fb(i, "m", 1) for i in tenants])
    out = tmp_path / "out.jsonl"
    assert main(["outcomes", "--capture", str(captures), "--feedback", str(feedback), "--out", str(out), *flags]) == 0
    records = _records(out)
    assert [r["id"] for r in records] == want
    assert all(r.get("tenant") == tenants[r["id"]] for r in records)
    assert all(("tenant" in r) is (tenants[r["id"]] is not None) for r in records)  # no "tenant": null
    printed = capsys.readouterr().out
    assert "0 feedback lines for 0 decisions without a captured prompt" in printed  # left out is not orphaned
    assert (f"; {other} captured decisions of other tenants" in printed) is (other is not None)
    assert "no captured decision of tenant" not in printed


def test_a_tenant_no_decision_has_is_said(tmp_path: Path, capsys: Any) -> None:
    """A typo, or a tenant header value with no ``tenants:`` entry (recorded as no tenant), filters nothing."""
    captures = _write(tmp_path / "c.jsonl", [{**_capture("a"), "tenant": "acme"}])
    feedback = _write(tmp_path / "f.jsonl", [_fb("a", "m", 1)])
    out = tmp_path / "out.jsonl"
    argv = ["outcomes", "--capture", str(captures), "--feedback", str(feedback), "--out", str(out)]
    assert main([*argv, "--exclude-tenant", "acmee", "acme"]) == 0
    printed = capsys.readouterr().out
    assert "no captured decision of tenant 'acmee' (only tenants configured under `tenants:`" in printed
    assert "tenant 'acme'" not in printed


def test_tenant_and_exclude_tenant_are_exclusive(tmp_path: Path, capsys: Any) -> None:
    argv = ["outcomes", "--capture", "c", "--feedback", "f", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--tenant", "a", "--exclude-tenant", "b"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_missing_input_is_a_one_line_error(tmp_path: Path) -> None:
    err = io.StringIO()
    code = run_outcomes([tmp_path / "nope.jsonl"], [], tmp_path / "out.jsonl", False, io.StringIO(), err)
    assert (
        err.getvalue()
        == f"model-router outcomes: cannot read --capture {tmp_path / 'nope.jsonl'} (No such file or directory)\n"
    )
    assert code == 2 and sorted(tmp_path.iterdir()) == []


def test_the_readme_command_works_before_the_first_rotation(tmp_path: Path) -> None:
    """A missing ``X.1`` given with ``X`` is skipped and named; a missing live file, or a ``.1`` alone, is an error."""
    live = _write(tmp_path / "capture.jsonl", [_capture("a")])
    feedback = _write(tmp_path / "feedback.jsonl", [_fb("a", "m", 1)])
    rotated, feedback_rotated = tmp_path / "capture.jsonl.1", tmp_path / "feedback.jsonl.1"
    out, stdout = tmp_path / "out.jsonl", io.StringIO()
    code = run_outcomes([rotated, live], [feedback_rotated, feedback], out, False, stdout, io.StringIO())
    assert code == 0 and [r["id"] for r in _records(out)] == ["a"]
    assert stdout.getvalue().splitlines()[2:] == [
        f"skipped missing {rotated} (not rotated yet)",
        f"skipped missing {feedback_rotated} (not rotated yet)",
    ]
    assert "not rotated" not in run_ok_summary(tmp_path, [live], [feedback])
    for captures, feedbacks, named in (
        ([rotated], [feedback], f"--capture {rotated}"),  # a .1 without its live file: a typo, not a rotation
        ([live, tmp_path / "other.jsonl.1"], [feedback], f"--capture {tmp_path / 'other.jsonl.1'}"),
        (
            [live],
            [_write(tmp_path / "gone.jsonl.1", []), tmp_path / "gone.jsonl"],
            f"--feedback {tmp_path / 'gone.jsonl'}",
        ),
    ):
        err = io.StringIO()
        assert run_outcomes(captures, feedbacks, out, False, io.StringIO(), err) == 2
        assert err.getvalue() == f"model-router outcomes: cannot read {named} (No such file or directory)\n"


def run_ok_summary(tmp_path: Path, captures: list[Path], feedback: list[Path]) -> str:
    stdout = io.StringIO()
    assert run_outcomes(captures, feedback, tmp_path / "ok.jsonl", False, stdout, io.StringIO()) == 0
    return stdout.getvalue()


def test_errors_name_the_argument_and_the_file(tmp_path: Path) -> None:
    captures = _write(tmp_path / "c.jsonl", [_capture("a")])
    feedback = _write(tmp_path / "f.jsonl", [_fb("a", "m", 1)])
    not_gzip = _write(tmp_path / "plain.jsonl.gz", [_capture("a")])
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(gzip.compress(b"x" * 1000)[:10] + b"garbage, not deflate" * 5)
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(b"\n".join(json.dumps(_capture(f"b{n}")).encode() for n in range(500)))[:-40])
    out = tmp_path / "out.jsonl"
    cases = [
        ([not_gzip], [feedback], out, f"cannot read --capture {not_gzip} (not a gzip file)"),
        ([captures], [corrupt], out, f"cannot read --feedback {corrupt} (corrupt gzip file)"),
        ([truncated], [feedback], out, f"cannot read --capture {truncated} (truncated gzip file)"),
        ([tmp_path], [feedback], out, f"cannot read --capture {tmp_path} (Is a directory)"),
        (
            [captures],
            [feedback],
            tmp_path / "x" / "o.jsonl",
            f"cannot write --out {tmp_path / 'x' / 'o.jsonl'} (No such file or directory)",
        ),
    ]
    for caps, fbs, target, message in cases:
        err = io.StringIO()
        assert run_outcomes(caps, fbs, target, False, io.StringIO(), err) == 2
        assert err.getvalue() == f"model-router outcomes: {message}\n"
    assert not out.exists()


def test_a_failed_run_leaves_the_previous_output_whole(tmp_path: Path) -> None:
    captures = _write(tmp_path / "c.jsonl", [_capture("a")])
    feedback = _write(tmp_path / "f.jsonl", [_fb("a", "m", 1)])
    out = tmp_path / "out.jsonl"
    assert run_outcomes([captures], [feedback], out, False, io.StringIO(), io.StringIO()) == 0
    good = out.read_bytes()
    broken = tmp_path / "old.jsonl.gz"
    broken.write_bytes(gzip.compress(b"\n".join(json.dumps(_capture(f"b{n}")).encode() for n in range(500)))[:-40])
    err = io.StringIO()
    assert run_outcomes([captures, broken], [feedback], out, False, io.StringIO(), err) == 2
    assert out.read_bytes() == good, "the previous output is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "f.jsonl", "old.jsonl.gz", "out.jsonl"]


def test_a_rotation_during_the_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The router renames capture.jsonl to capture.jsonl.1 while the join reads: files opened first keep their
    lines, and a file that is then reachable under both names is read once."""
    live, previous = tmp_path / "capture.jsonl", tmp_path / "capture.jsonl.1"
    _write(previous, [_capture("old")])
    _write(live, [_capture("new")])
    feedback = _write(tmp_path / "f.jsonl", [_fb("old", "m", 1), _fb("new", "m", 0), _fb("new", "m", 0)])
    out = io.BytesIO()
    import contextlib

    from extproc import outcomes

    with contextlib.ExitStack() as stack:
        files = outcomes._open_all(stack, [previous, live])
        live.replace(previous)  # the rotation, after the inputs are open
        _write(live, [_capture("newest")])
        stats = outcomes._join(files, outcomes._open_all(stack, [feedback, feedback]), out, False)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in records] == ["old", "new"]
    assert records[1]["scores"] == {"m": 0.0} and stats.averaged == 1, "the feedback file given twice is read once"


def test_a_rotation_between_the_opens_keeps_the_live_file_in_either_argument_order(tmp_path: Path) -> None:
    """Each live file is opened before its ``.1``: a rotation between the two opens then finds the same file under
    both names (read once), never the old ``.1`` and the new empty live file (which would lose the live file)."""
    import contextlib

    from extproc import outcomes

    live, previous = tmp_path / "capture.jsonl", tmp_path / "capture.jsonl.1"

    class RotateAfterFirstOpen(contextlib.ExitStack):
        rotated = False

        def enter_context(self, cm: Any) -> Any:
            opened = super().enter_context(cm)
            if not self.rotated:
                self.rotated = True
                live.replace(previous)  # the router's rotation: the live file becomes .1, the old .1 is gone
                _write(live, [_capture("newest")])
            return opened

    feedback = _write(tmp_path / "f.jsonl", [_fb("new", "m", 1)])
    for order in ([previous, live], [live, previous]):
        _write(previous, [_capture("old")])
        _write(live, [_capture("new")])
        out = io.BytesIO()
        with RotateAfterFirstOpen() as stack:
            files = outcomes._open_all(stack, order)
            stats = outcomes._join(files, outcomes._open_all(stack, [feedback]), out, True)
        assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["new"], order
        assert stats.records == 1 and stats.orphan_feedback == 0
