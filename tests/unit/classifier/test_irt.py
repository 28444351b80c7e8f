"""IRT fits recover known parameters from simulated outcomes; the calibration table is monotone and exact."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import orjson
import pytest

from classifier.irt import (
    CalibrationTable,
    canonical_model_name,
    fit_abilities,
    fit_rasch,
    fit_success_curve,
    main,
    sigmoid,
)
from classifier.loader import load_difficulty_model


def simulate(seed: int, items: int, models: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(size=items)
    ability = np.linspace(-1.5, 1.5, models)
    item, model = (a.ravel() for a in np.meshgrid(np.arange(items), np.arange(models), indexing="ij"))
    y = (rng.uniform(size=item.size) < sigmoid(ability[model] - difficulty[item])).astype(np.float64)
    return difficulty, ability, item.astype(np.int64), model.astype(np.int64), y


def test_rasch_recovers_order() -> None:
    difficulty, ability, item, model, y = simulate(0, items=300, models=20)
    fit = fit_rasch(item, model, y, 300, 20)
    assert np.corrcoef(fit.difficulty, difficulty)[0, 1] > 0.85
    assert np.corrcoef(fit.ability, ability)[0, 1] > 0.98


def test_fit_abilities_on_known_difficulties() -> None:
    difficulty, ability, item, model, y = simulate(1, items=2000, models=3)
    names = ["low", "mid", "high"]
    fits = fit_abilities((names[m], float(difficulty[i]), float(v)) for i, m, v in zip(item, model, y, strict=True))
    for name, want in zip(names, ability, strict=True):
        assert fits[name].ability == pytest.approx(want, abs=0.15)
        assert fits[name].records == 2000
    assert fit_abilities([]) == {}


def test_success_curve_recovers_slope() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(size=5000)
    y = (rng.uniform(size=d.size) < sigmoid(0.5 - 1.2 * d)).astype(np.float64)
    curve = fit_success_curve(d, y)
    assert curve.intercept == pytest.approx(0.5, abs=0.1)
    assert curve.slope == pytest.approx(-1.2, abs=0.1)


TABLE = CalibrationTable(raw=(0.0, 1.0, 3.0), difficulty=(-1.0, 0.0, 1.0))  # overall slope 2/3


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        pytest.param(0.0, -1.0, id="first-knot"),
        pytest.param(0.5, -0.5, id="between"),
        pytest.param(2.0, 0.5, id="second-segment"),
        pytest.param(3.0, 1.0, id="last-knot"),
        pytest.param(6.0, 3.0, id="beyond-uses-overall-slope"),
        pytest.param(-3.0, -3.0, id="below-uses-overall-slope"),
    ],
)
def test_calibration_table(raw: float, want: float) -> None:
    assert TABLE.apply(raw) == pytest.approx(want)
    assert TABLE.apply_many(np.array([raw]))[0] == pytest.approx(want)


@pytest.mark.parametrize(
    ("raw", "difficulty"),
    [
        pytest.param((0.0,), (0.0,), id="one-knot"),
        pytest.param((0.0, 1.0), (0.0,), id="mismatched"),
        pytest.param((0.0, 0.0), (0.0, 1.0), id="raw-not-increasing"),
        pytest.param((0.0, 1.0), (1.0, 1.0), id="difficulty-flat"),
    ],
)
def test_calibration_table_rejects(raw: tuple[float, ...], difficulty: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="knots"):
        CalibrationTable(raw=raw, difficulty=difficulty)


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("gpt-4o-2024-05-13", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct"),
        ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet"),
        ("Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct"),
        ("Some-New-Model", "some-new-model"),
    ],
)
def test_canonical_model_name(name: str, want: str) -> None:
    assert canonical_model_name(name) == want


def test_cli_fits_abilities_on_the_model_scale(tiny_model_dir: Path, tmp_path: Path) -> None:
    items = [
        {"messages": [{"role": "user", "content": "what is x ?" * (1 + i % 3)}], "scores": {"a": i % 2, "b": 1}}
        for i in range(40)
    ]
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))
    out = io.StringIO()
    assert main(["--data", str(data), "--model", str(tiny_model_dir), "--min-records", "40"], stdout=out) == 0
    fitted = orjson.loads(out.getvalue())
    assert set(fitted) == {"a", "b"}
    assert fitted["a"]["records"] == 40
    assert fitted["b"]["ability"] > fitted["a"]["ability"]


def test_cli_skips_and_counts_scores_outside_0_1_instead_of_clamping(tiny_model_dir: Path, tmp_path: Path) -> None:
    """85 (a percentage), true and -3 are not scores: clamped to 1, 1 and 0 they would bias the fitted ability."""
    items = [{"messages": [{"role": "user", "content": "what is x ?"}], "scores": {"a": 0.5}}] * 5 + [
        {"messages": [{"role": "user", "content": "what is x ?"}], "scores": {"a": 85, "b": True, "c": -3}},
        {"messages": [{"role": "user", "content": "what is x ?"}]},
    ]
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))
    out, err = io.StringIO(), io.StringIO()
    assert (
        main(["--data", str(data), "--model", str(tiny_model_dir), "--min-records", "1"], stdout=out, stderr=err) == 0
    )
    assert set(orjson.loads(out.getvalue())) == {"a"}
    assert orjson.loads(out.getvalue())["a"]["records"] == 5
    assert (
        "skipped 1 items without scores or text the server classifies, 0 lines that are not JSON,"
        " 3 scores that are not numbers in [0, 1]"
    ) in err.getvalue()


def test_cli_reads_a_repeated_id_once_as_eval_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Concatenated exports repeat items: eval and adapt score the first item with an id, irt counted every copy."""
    items = [
        {"id": f"q{i}", "messages": [{"role": "user", "content": f"what is {i} ?"}], "scores": {"a": i % 2, "b": 1}}
        for i in range(35)
    ]
    items += [{**item, "scores": {"a": 1, "b": 0}} for item in items[:5]]  # q0..q4 again, other outcomes
    items.append({"messages": [{"role": "user", "content": "no id"}], "scores": {"a": 1, "b": 1}})  # kept: no id
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))
    out, err = io.StringIO(), io.StringIO()
    assert (
        main(["--data", str(data), "--model", str(tiny_model_dir), "--min-records", "1"], stdout=out, stderr=err) == 0
    )
    assert err.getvalue().startswith("72 outcome records from 36 items; ")
    assert "5 items whose id an earlier item has (the first one counts)" in err.getvalue()
    assert orjson.loads(out.getvalue())["a"]["records"] == 36


@pytest.mark.parametrize(("records", "fitted"), [(99, set()), (100, {"a", "b"})])
def test_cli_leaves_out_a_model_with_too_few_records(
    tiny_model_dir: Path, tmp_path: Path, records: int, fitted: set[str]
) -> None:
    """One thumbs-up fitted gpt-4o-mini at +2.3, above gpt-4o: a few feedback scores must not set an ability."""
    items = [{"messages": [{"role": "user", "content": "what is x ?"}], "scores": {"a": 1, "b": 0}}] * records
    items += [{"messages": [{"role": "user", "content": "what is y ?"}], "scores": {"c": 1}}] * 3
    data = tmp_path / "d.jsonl"
    data.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))
    out, err = io.StringIO(), io.StringIO()
    code = main(["--data", str(data), "--model", str(tiny_model_dir)], stdout=out, stderr=err)
    assert "left out, fewer than 100 records (--min-records): " in err.getvalue() and "c (3)" in err.getvalue()
    if fitted:
        assert code == 0 and set(orjson.loads(out.getvalue())) == fitted
    else:
        assert code == 2 and err.getvalue().splitlines()[-1].endswith("(--min-records)")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --data {data} (No such file or directory)"),
        (gzip.compress(b'{"messages": []}\n' * 500)[:-30], "cannot read --data {data} (truncated gzip file)"),
        (b'{"messages": [{"role": "user", "content": "q"}]}\n', "no usable outcome records in --data {data}"),
    ],
    ids=["missing", "truncated-gzip", "no-scores"],
)
def test_cli_bad_data_is_one_line_and_exit_2(
    tiny_model_dir: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    data = tmp_path / "d.jsonl"
    if content is not None:
        data.write_bytes(content)
    err = io.StringIO()
    assert main(["--data", str(data), "--model", str(tiny_model_dir)], stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().splitlines()[-1].startswith("python -m classifier.irt: " + message.format(data=data))


def _fit(tiny_model_dir: Path, path: Path, items: list[dict[str, object]], lines: bytes = b"") -> tuple[dict, str]:
    """Run the CLI on ``items`` (then ``lines``) with ``--min-records 1``: (the fitted abilities, stderr)."""
    path.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items) + lines)
    out, err = io.StringIO(), io.StringIO()
    code = main(["--data", str(path), "--model", str(tiny_model_dir), "--min-records", "1"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return orjson.loads(out.getvalue()), err.getvalue()


def test_cli_reads_prompts_as_the_server_and_eval_do(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Blank prompts are not classified (the server would not), text parts the server reads are, a torn line is
    skipped and counted, and a multi-turn item scores at least as its first user turn (eval's floor)."""
    blank = [{"messages": [{"role": "user", "content": "   "}], "scores": {"a": 1}}]
    blank += [{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": ""}], "scores": {"a": 1}}]
    parts = [{"messages": [{"role": "user", "content": [{"type": "input_text", "text": "x ?"}]}], "scores": {"a": 0}}]
    _, err = _fit(tiny_model_dir, tmp_path / "blank.jsonl", blank + parts, b'{"messages": [{"ro\n')
    assert err.startswith(
        "1 outcome records from 3 items; skipped 2 items without scores or text the server classifies,"
        " 1 lines that are not JSON,"
    )
    model = load_difficulty_model("onnx", tiny_model_dir)
    easy, hard = sorted(["hello", "prove that primes are infinite ."], key=lambda t: model.predict(t).difficulty)
    last = [{"messages": [{"role": "user", "content": easy}], "scores": {"a": i % 2}} for i in range(20)]
    turns = [
        {"messages": [{"role": "user", "content": hard}, {"role": "assistant", "content": "ok"}, *i["messages"]],
         "scores": i["scores"]}
        for i in last
    ]  # fmt: skip
    alone, _ = _fit(tiny_model_dir, tmp_path / "last.jsonl", last)
    floored, err = _fit(tiny_model_dir, tmp_path / "turns.jsonl", turns)
    assert "; 20 multi-turn items scored at least as their first user turn" in err
    assert floored["a"]["ability"] != alone["a"]["ability"]


def test_cli_reads_gzip_without_the_gz_suffix(tiny_model_dir: Path, tmp_path: Path) -> None:
    """It said ``line 1 is not JSON``."""
    items = [{"messages": [{"role": "user", "content": "what is x ?"}], "scores": {"a": i % 2}} for i in range(4)]
    data = tmp_path / "d.jsonl"
    data.write_bytes(gzip.compress(b"".join(orjson.dumps(i) + b"\n" for i in items)))
    out, err = io.StringIO(), io.StringIO()
    assert (
        main(["--data", str(data), "--model", str(tiny_model_dir), "--min-records", "1"], stdout=out, stderr=err) == 0
    )
    assert orjson.loads(out.getvalue())["a"]["records"] == 4
