"""``run_eval``: the EVAL.md file contract, the unparsed-item rule, the metrics table and the plot."""

from __future__ import annotations

import errno
import gzip
import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from classifier.evaluate import NotJsonLine, choose_pair, last_user_text, pair_gain_scores, read_items, run_eval
from classifier.model import Prediction

ABILITIES: Mapping[str, float] = {"small": 0.0, "big": 2.0}


class KeywordModel:
    """Difficulty = number of times "hard" occurs (a fake with a known ranking)."""

    name = "keyword-v1"
    default_abilities = ABILITIES

    def predict(self, text: str) -> Prediction:
        return Prediction(difficulty=float(text.count("hard")), confidence=1.0)


def item(i: int, text: str | None, small: float, big: float) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}] if text is not None else "not a list"
    return {"id": f"x-{i}", "messages": messages, "scores": {"small": small, "big": big}}


ITEMS = [
    item(0, "easy", 1.0, 1.0),
    item(1, "hard", 0.0, 1.0),
    item(2, "hard hard", 0.0, 1.0),
    item(3, "so so", 1.0, 0.0),
    item(4, None, 0.0, 0.0),
]


def write(path: Path, items: list[dict[str, Any]]) -> Path:
    payload = b"".join(orjson.dumps(i) + b"\n" for i in items)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz"])
def test_run_eval_writes_every_item(tmp_path: Path, name: str) -> None:
    data = write(tmp_path / name, ITEMS)
    out = tmp_path / "scores.jsonl"
    stdout = io.StringIO()
    code = run_eval(data, out, KeywordModel(), last_user_text, "small", "big", None, stdout)
    assert code == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert lines == [
        {"id": "x-0", "score": 0.0},
        {"id": "x-1", "score": 1.0},
        {"id": "x-2", "score": 2.0},
        {"id": "x-3", "score": 0.0},
        {"id": "x-4", "score": 2.0},  # not classifiable: the file's maximum
    ]
    text = stdout.getvalue()
    assert "not classifiable by the server: 1 items" in text
    for label in ("router ", "router+fit", "length", "random", "oracle"):
        assert f"\n{label}" in text
    assert "pair: weak small" in text


def test_run_eval_metrics_row(tmp_path: Path) -> None:
    # Items 1 and 2 gain 1, item 3 loses 1, items 0 and 4 gain 0; q_small = .4, q_big = .6.
    # Router order (scores 2,2,1,0,0 with item 4 tied at the max): 2 and 4 tied first -> the curve is computed by hand
    # in test_metrics; here only check the router beats random and the oracle is the ceiling.
    data = write(tmp_path / "d.jsonl", ITEMS)
    stdout = io.StringIO()
    run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, "small", "big", None, stdout)
    rows = {line.split()[0]: line.split()[1:] for line in stdout.getvalue().splitlines() if line[:1].isalpha()}
    assert float(rows["random"][0]) == pytest.approx(0.5)
    assert float(rows["router"][0]) > 0.5
    assert float(rows["oracle"][0]) >= float(rows["router"][0])


def test_run_eval_plot(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", ITEMS)
    plot = tmp_path / "curve.png"
    run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, None, None, plot, io.StringIO())
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_run_eval_without_outcomes(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", [{"id": 1, "messages": [{"role": "user", "content": "hard"}]}])
    stdout = io.StringIO()
    assert run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, None, None, None, stdout) == 0
    assert "metrics skipped" in stdout.getvalue()


def _failing(
    data: Path, out: Path, weak: str | None = None, strong: str | None = None, plot: Path | None = None
) -> tuple[str, str]:
    """Run eval expecting exit code 2: (stdout, the one error line on stderr without its prefix)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run_eval(data, out, KeywordModel(), last_user_text, weak, strong, plot, stdout, stderr) == 2
    error = stderr.getvalue()
    assert error.startswith("model-router eval: ") and error.count("\n") == 1, error
    assert "model-router eval:" not in stdout.getvalue(), "errors go to stderr"
    return stdout.getvalue(), error.removeprefix("model-router eval: ").rstrip("\n")


def test_run_eval_empty_file(tmp_path: Path) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_bytes(b"\n")
    assert _failing(data, tmp_path / "s.jsonl") == ("", f"--data {data} has no items")


def test_run_eval_unreadable_data_names_the_file_and_the_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    assert _failing(missing, tmp_path / "s.jsonl")[1] == (f"cannot read --data {missing} (No such file or directory)")


def test_run_eval_gives_a_line_that_is_not_json_a_score_too(tmp_path: Path) -> None:
    """EVAL.md: items it cannot parse still get a line, and are counted. A torn line (a crash, a full disk) has no
    id, so its output line carries its line number instead; the live server would send it to the default model."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(orjson.dumps(ITEMS[0]) + b"\n\n" + orjson.dumps(ITEMS[1]) + b'\n{"id": "torn", "mess\n[1]\n')
    out = tmp_path / "s.jsonl"
    stdout = io.StringIO()
    assert run_eval(bad, out, KeywordModel(), last_user_text, None, None, None, stdout) == 0
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    top = max(x["score"] for x in lines)
    assert [x["id"] for x in lines] == [ITEMS[0]["id"], ITEMS[1]["id"], None, None]
    assert lines[2] == {"id": None, "line": 4, "score": top}
    assert lines[3] == {"id": None, "line": 5, "score": top}, "no invented id: it could collide with a real one"
    assert "not JSON: 1 lines (4; scored as the maximum, id null)" in stdout.getvalue()
    assert "not classifiable by the server: 1 items" in stdout.getvalue()


def test_run_eval_unwritable_outputs(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", ITEMS)
    out = tmp_path / "no" / "s.jsonl"
    assert _failing(data, out) == ("", f"cannot write --out {out} (No such file or directory)")
    plot = tmp_path / "no" / "curve.png"
    stdout, error = _failing(data, tmp_path / "s.jsonl", plot=plot)
    assert error == f"cannot write --plot {plot} (No such file or directory)"
    assert "APGR" in stdout and (tmp_path / "s.jsonl").is_file(), "the scores and the metrics are kept"


def test_run_eval_plot_without_matplotlib_fails_before_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib comes only with the dev and train extras (not in the image): --plot says so up front."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    data = write(tmp_path / "d.jsonl", ITEMS)
    stdout, error = _failing(data, tmp_path / "s.jsonl", plot=tmp_path / "c.png")
    assert stdout == "" and error == "--plot needs matplotlib, which is not installed (pip install matplotlib)"
    assert not (tmp_path / "s.jsonl").exists()


def test_run_eval_models_missing_everywhere(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", ITEMS)
    stdout, error = _failing(data, tmp_path / "s.jsonl", weak="tiny", strong="big")
    assert error == f"no item of --data {data} has scores for both 'tiny' and 'big'"
    assert "scored 5 items" in stdout


def test_read_items_names_a_line_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": 1}\n\nnope\n')
    with pytest.raises(NotJsonLine) as caught:
        list(read_items(path))
    assert isinstance(caught.value, ValueError) and str(caught.value) == f"{path}:3: not JSON"
    assert (caught.value.path, caught.value.number) == (path, 3)


@pytest.mark.parametrize(
    ("message_list", "want"),
    [
        pytest.param([{"role": "user", "content": "hi"}], "hi", id="string"),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}],
                }
            ],
            "a\nb",
            id="parts",
        ),
        pytest.param(
            [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "last"},
            ],
            "last",
            id="last-user",
        ),
        pytest.param([{"role": "system", "content": "s"}], None, id="no-user"),
        pytest.param("nope", None, id="not-a-list"),
    ],
)
def test_last_user_text(message_list: object, want: str | None) -> None:
    assert last_user_text({"messages": message_list}) == want


@pytest.mark.parametrize(
    ("scores", "want"),
    [
        pytest.param([{"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0}], ("a", "b"), id="two-models"),
        pytest.param([{"a": 0.1, "b": 0.5, "c": 0.9}], ("b", "c"), id="median-and-best"),
        pytest.param([{"a": 1.0}], None, id="one-model"),
    ],
)
def test_choose_pair(scores: list[dict[str, float]], want: tuple[str, str] | None) -> None:
    assert choose_pair(scores) == want


@pytest.mark.parametrize(
    ("weak", "strong", "want"),
    [
        pytest.param("d", None, ("d", "c"), id="weak-is-the-best"),
        pytest.param("a", None, ("a", "d"), id="weak-named"),
        pytest.param(None, "d", ("b", "d"), id="strong-is-the-best"),
        pytest.param(None, "b", ("a", "b"), id="strong-named-gets-a-model-below-it"),
        pytest.param("x", None, ("x", "d"), id="weak-not-in-the-file"),
    ],
)
def test_choose_pair_never_pairs_a_named_model_with_itself(
    weak: str | None, strong: str | None, want: tuple[str, str]
) -> None:
    scores = [{"a": 0.1, "b": 0.4, "c": 0.6, "d": 0.9}]
    assert choose_pair(scores) == ("b", "d")
    assert choose_pair(scores, weak, strong) == want


def test_pair_gain_scores_peaks_between_abilities() -> None:
    rng = np.random.default_rng(0)
    d = rng.uniform(-4, 4, size=4000)
    weak = (rng.uniform(size=d.size) < 1 / (1 + np.exp(d + 1))).astype(float)
    strong = (rng.uniform(size=d.size) < 1 / (1 + np.exp(d - 1))).astype(float)
    gain = pair_gain_scores(d, weak, strong)
    assert abs(d[np.argmax(gain)]) < 1.0
    assert gain[np.argmin(np.abs(d))] > gain[np.argmax(d)]


def test_read_items_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": 1}\n\n[1, 2]\n')
    assert list(read_items(path)) == [{"id": 1}, {"_invalid": [1, 2]}]


def test_eval_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``model-router eval`` as users run it: the CLI, the shipped ONNX model, a score line per item, the metrics."""
    from extproc.cli import main

    items = [
        item(i, "What is 2 + 2?" if i % 2 else "Prove Fermat's last theorem for n = 3.", i % 2, 1.0) for i in range(20)
    ]
    data = tmp_path / "items.jsonl"
    data.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in items))
    out = tmp_path / "scores.jsonl"
    assert main(["eval", "--data", str(data), "--out", str(out), "--weak", "small", "--strong", "big"]) == 0
    scores = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [s["id"] for s in scores] == [x["id"] for x in items]
    assert "APGR" in capsys.readouterr().out


BAD = ("NaN", "Infinity", "-Infinity", "50", "-0.5")


def test_scores_outside_zero_to_one_are_no_scores(tmp_path: Path) -> None:
    """``NaN``, ``Infinity`` or 50 would turn every metric into nan or past the ceiling: left out and counted."""
    clean = write(tmp_path / "clean.jsonl", ITEMS)
    user = '"messages": [{"role": "user", "content": "hard"}]'
    bad = [f'{{"id": "b-{i}", {user}, "scores": {{"small": {v}, "big": 1}}}}\n' for i, v in enumerate(BAD)]
    data = tmp_path / "d.jsonl"
    data.write_bytes(clean.read_bytes() + "".join(bad).encode())
    stdout, want = io.StringIO(), io.StringIO()
    assert run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, "small", "big", None, stdout) == 0
    run_eval(clean, tmp_path / "c.jsonl", KeywordModel(), last_user_text, "small", "big", None, want)
    got = stdout.getvalue()
    assert f"scores that are not numbers in [0, 1]: {len(BAD)} (left out)" in got
    assert "nan" not in got
    rows = [line for line in got.splitlines() if line.startswith(("router", "length", "oracle"))]
    assert rows == [line for line in want.getvalue().splitlines() if line.startswith(("router", "length", "oracle"))]


def test_swapped_weak_and_strong_are_warned_about(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", ITEMS)
    stdout = io.StringIO()
    run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, "big", "small", None, stdout)
    assert "warning: the strong model scores below the weak one" in stdout.getvalue()
    right = io.StringIO()
    run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, "small", "big", None, right)
    assert "warning" not in right.getvalue()


def test_a_multi_turn_item_scores_at_least_as_its_first_user_turn(tmp_path: Path) -> None:
    """The live server never routes a conversation below its first user turn's choice (stickiness): the score the
    live policy acts on is the higher of the two turns' difficulties."""
    from extproc.cli import opening_text_of_item, prompt_text_of_item

    def conversation(i: int, first: str, last: str) -> dict[str, Any]:
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": "ok"}]
        return {"id": f"c-{i}", "messages": [*messages, {"role": "user", "content": last}]}

    items = [conversation(0, "hard hard", "thanks"), conversation(1, "easy", "hard"), item(2, "hard", 0.0, 1.0)]
    data = write(tmp_path / "d.jsonl", items)
    out, stdout = tmp_path / "s.jsonl", io.StringIO()
    run_eval(data, out, KeywordModel(), prompt_text_of_item, None, None, None, stdout, opening_of=opening_text_of_item)
    assert [orjson.loads(line)["score"] for line in out.read_bytes().splitlines()] == [2.0, 1.0, 1.0]
    assert "multi-turn: 2 items scored at least as their first user turn" in stdout.getvalue()


def _same(tmp_path: Path, data: Path, how: str) -> Path:
    """Another name for ``data``: the same path, a relative spelling, a symbolic link or a hard link."""
    if how == "same":
        return data
    if how == "relative":
        return Path(os.path.relpath(data))
    other = tmp_path / "other.jsonl"
    if how == "symlink":
        other.symlink_to(data)
    else:
        os.link(data, other)
    return other


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink"])
def test_out_that_is_the_data_file_is_refused_before_anything_is_written(tmp_path: Path, how: str) -> None:
    """``--out`` equal to ``--data`` replaced the labelled data by 800 score lines, exit 0."""
    data = write(tmp_path / "d.jsonl", ITEMS)
    before = data.read_bytes()
    out = _same(tmp_path, data, how)
    assert _failing(data, out) == ("", f"--out {out} is the --data file")
    assert data.read_bytes() == before


@pytest.mark.parametrize(
    ("plot_is", "want"), [("data", "--plot {plot} is the --data file"), ("out", "--plot {plot} is the --out file")]
)
def test_plot_that_is_an_input_or_the_out_file_is_refused(tmp_path: Path, plot_is: str, want: str) -> None:
    data = write(tmp_path / "d.png", ITEMS)
    out = tmp_path / "s.png"
    plot = data if plot_is == "data" else out
    before = data.read_bytes()
    assert _failing(data, out, plot=plot) == ("", want.format(plot=plot))
    assert data.read_bytes() == before and not out.exists()


def test_out_is_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while writing ``--out`` leaves the previous file as it was (and no temporary file)."""
    data = write(tmp_path / "d.jsonl", ITEMS)
    out = tmp_path / "s.jsonl"
    out.write_bytes(b"previous\n")
    out.chmod(0o640)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full)
        assert _failing(data, out) == ("", f"cannot write --out {out} (No space left on device)")
    assert out.read_bytes() == b"previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "s.jsonl"]
    assert run_eval(data, out, KeywordModel(), last_user_text, "small", "big", None, io.StringIO()) == 0
    assert len(out.read_bytes().splitlines()) == len(ITEMS) and (out.stat().st_mode & 0o777) == 0o640


def test_run_eval_reads_gzip_without_the_gz_suffix(tmp_path: Path) -> None:
    """Read as text, a gzipped ``.jsonl`` scored a few "not JSON" lines and exited 0."""
    data = tmp_path / "d.jsonl"
    data.write_bytes(gzip.compress(b"".join(orjson.dumps(i) + b"\n" for i in ITEMS)))
    out, stdout = tmp_path / "s.jsonl", io.StringIO()
    assert run_eval(data, out, KeywordModel(), last_user_text, "small", "big", None, stdout) == 0
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == [i["id"] for i in ITEMS]
    assert "not JSON" not in stdout.getvalue()


def test_corrupt_gzip_data_is_one_line_and_exit_2(tmp_path: Path) -> None:
    payload = bytearray(gzip.compress(b"".join(orjson.dumps({**ITEMS[1], "id": i}) + b"\n" for i in range(2000))))
    payload[200:260] = bytes(b ^ 0x55 for b in payload[200:260])
    data = tmp_path / "d.jsonl.gz"
    data.write_bytes(bytes(payload))
    _, error = _failing(data, tmp_path / "s.jsonl")
    assert error == f"cannot read --data {data} (corrupt gzip file)"


def test_weak_and_strong_must_differ(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", ITEMS)
    out = tmp_path / "s.jsonl"
    assert _failing(data, out, weak="big", strong="big") == ("", "--weak and --strong must name different models")
    assert not out.exists()


@pytest.mark.parametrize(
    ("weak", "strong", "want"),
    [
        pytest.param("big", None, "pair: weak big (mean 0.600) -> strong small (mean 0.400)", id="weak-is-the-best"),
        pytest.param(None, "small", "pair: weak big (mean 0.600) -> strong small (mean 0.400)", id="strong-named"),
    ],
)
def test_one_named_model_is_never_its_own_pair(tmp_path: Path, weak: str | None, strong: str | None, want: str) -> None:
    """``--weak`` naming the best-scoring model made it the default strong model too: a table of nan."""
    data = write(tmp_path / "d.jsonl", ITEMS)
    stdout = io.StringIO()
    assert run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, weak, strong, None, stdout) == 0
    assert want in stdout.getvalue() and "nan" not in stdout.getvalue()


def test_models_that_tie_on_average_say_so_instead_of_a_nan_table(tmp_path: Path) -> None:
    items = [item(0, "hard", 0.0, 1.0), item(1, "easy", 1.0, 0.0)]
    data = write(tmp_path / "d.jsonl", items)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_eval(
        data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, None, None, tmp_path / "c.png", stdout, stderr
    )
    assert code == 0
    assert "the two models tie on average: PGR is undefined, metrics skipped" in stdout.getvalue()
    assert "nan" not in stdout.getvalue() and "APGR" not in stdout.getvalue()
    assert stderr.getvalue() == "model-router eval: --plot not written: the two models tie on average\n"
    assert not (tmp_path / "c.png").exists()


def test_duplicate_ids_are_counted_and_only_the_first_is_scored(tmp_path: Path) -> None:
    """``report --eval`` joins ``--out`` to ``--data`` by id: one id, one score, and the duplicates said."""
    items = [*ITEMS, {**ITEMS[1], "scores": {"small": 1.0, "big": 0.0}}, {**ITEMS[2]}, {**ITEMS[1]}]
    data = write(tmp_path / "d.jsonl", items)
    out, stdout, stderr = tmp_path / "s.jsonl", io.StringIO(), io.StringIO()
    assert run_eval(data, out, KeywordModel(), last_user_text, "small", "big", None, stdout, stderr) == 0
    assert stderr.getvalue() == (
        "model-router eval: 3 duplicate ids (x-1, x-2): only the first item with an id is scored, the later ones are"
        " left out of --out and the metrics\n"
    )
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == [i["id"] for i in ITEMS]
    assert f"scored {len(ITEMS)} items" in stdout.getvalue()
    want = io.StringIO()
    run_eval(
        write(tmp_path / "u.jsonl", ITEMS),
        tmp_path / "u.out",
        KeywordModel(),
        last_user_text,
        "small",
        "big",
        None,
        want,
    )
    table = [line for line in stdout.getvalue().splitlines() if line.startswith(("pair", "router", "oracle"))]
    assert table == [line for line in want.getvalue().splitlines() if line.startswith(("pair", "router", "oracle"))]


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("curve", "--plot {plot} must end in .png (the plot is a PNG)"),
        ("c.nope", "--plot {plot} must end in .png (the plot is a PNG)"),
        ("dir.png", "--plot {plot} is a directory; name a .png file"),
    ],
)
def test_plot_that_is_not_a_png_name_is_refused_up_front(tmp_path: Path, name: str, want: str) -> None:
    """``--plot curve`` wrote ``curve.png`` and said ``curve``; ``--plot x.txt`` failed after ``--out`` was written."""
    data = write(tmp_path / "d.jsonl", ITEMS)
    plot = tmp_path / name
    if name == "dir.png":
        plot.mkdir()
    assert _failing(data, tmp_path / "s.jsonl", plot=plot) == ("", want.format(plot=plot))
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "curve.png").exists()


def test_plot_without_outcome_scores_says_it_is_not_written(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", [{"id": 1, "messages": [{"role": "user", "content": "hard"}]}])
    stdout, stderr = io.StringIO(), io.StringIO()
    plot = tmp_path / "c.png"
    assert run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, None, None, plot, stdout, stderr) == 0
    assert stderr.getvalue() == "model-router eval: --plot not written: no outcome scores\n"
    assert not plot.exists()


def test_a_line_that_is_not_utf8_is_named_so(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(orjson.dumps(ITEMS[1]) + b'\n{"id": "caf\xe9"}\nnope\n')
    stdout = io.StringIO()
    assert run_eval(data, tmp_path / "s.jsonl", KeywordModel(), last_user_text, None, None, None, stdout) == 0
    assert "not UTF-8: 1 lines (2; scored as the maximum, id null)" in stdout.getvalue()
    assert "not JSON: 1 lines (3; scored as the maximum, id null)" in stdout.getvalue()


def test_a_file_with_no_classifiable_item_says_what_it_scored(tmp_path: Path) -> None:
    """With nothing classified there is no maximum: every item scores 0.0, and the summary says that."""
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'nope\n{"id": "a", "messages": "not a list"}\n')
    out, stdout = tmp_path / "s.jsonl", io.StringIO()
    assert run_eval(data, out, KeywordModel(), last_user_text, None, None, None, stdout) == 0
    assert [orjson.loads(line)["score"] for line in out.read_bytes().splitlines()] == [0.0, 0.0]
    assert "not JSON: 1 lines (1; scored 0.0, as no item is classifiable, id null)" in stdout.getvalue()
    assert "not classifiable by the server: 1 items (scored 0.0, as no item is classifiable)" in stdout.getvalue()
