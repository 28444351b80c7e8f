"""``run_adapt``: learns a deployment's own pattern, writes a loadable model, skips and fails the documented way."""

from __future__ import annotations

import errno
import gzip
import io
import math
import os
import random
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

import classifier.adapt as adapt_module
from classifier import atomic_dir
from classifier.adapt import run_adapt
from classifier.onnx_model import MODEL_FILES, OnnxDifficultyModel
from extproc.cli import prompt_text_of_item

DATA_DIR = Path(__file__).parents[3] / ".." / "shared" / "data"
MARKER = "zebra"
_WORD_TEXT = """river mountain library engine violin harvest ocean pencil garden rocket window carpet thunder
lemon castle
bridge candle forest planet silver winter summer tiger copper meadow canyon island lantern marble"""
WORDS = _WORD_TEXT.split()


def synthetic_items(n: int, seed: int) -> list[dict[str, Any]]:
    """Prompts of random words; the weak model fails exactly those with the marker word, the strong never fails."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(4, 12))
        hard = rng.random() < 0.4
        if hard:
            words.insert(rng.randrange(len(words) + 1), MARKER)
        items.append(
            {
                "id": f"s-{i}",
                "messages": [{"role": "user", "content": " ".join(words)}],
                "scores": {"weak-m": 0.0 if hard else 1.0, "strong-m": 1.0},
            }
        )
    return items


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    payload = b"".join(orjson.dumps(item) + b"\n" for item in items)
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def apgr(report: str, label: str) -> float:
    """The cross-validated mean APGR of one scorer in the report."""
    match = re.search(rf"^{label}\s+(\S+) ± (\S+)", report, flags=re.MULTILINE)
    assert match is not None, report
    return float(match.group(1))


def adapt(
    data: Path, out: Path, weak: str = "weak-m", strong: str = "strong-m", seed: int = 0, force: bool = False
) -> tuple[int, str]:
    """Run adapt; the report on stdout, then the error line, which must be on stderr (and only with exit code 2)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_adapt(data, out, weak, strong, None, prompt_text_of_item, 5, seed, stdout, force=force, stderr=stderr)
    report, error = stdout.getvalue(), stderr.getvalue()
    assert "model-router adapt:" not in report, "errors go to stderr"
    if code in (2, 130):
        assert error.startswith("model-router adapt: ") and error.count("\n") == 1, error
    else:
        assert error == "", error
    return code, report + error


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One adapted model on the synthetic file (400 usable items plus 12 to skip), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("adapt")
    items = synthetic_items(400, seed=1)
    one_score = {"weak-m": 1.0}
    items += [{"id": f"m-{i}", "messages": [{"role": "user", "content": "x"}], "scores": one_score} for i in range(5)]
    items += [{"id": f"n-{i}", "messages": [{"role": "user", "content": "y"}]} for i in range(4)]
    items += [{"id": f"u-{i}", "messages": "not a list", "scores": {"weak-m": 1.0, "strong-m": 1.0}} for i in range(3)]
    data = write_jsonl(tmp / "outcomes.jsonl.gz", items)
    out = tmp / "model"
    code, report = adapt(data, out)
    assert code == 0, report
    return data, out, report


def test_adapted_model_learns_the_deployment_pattern(synthetic: tuple[Path, Path, str]) -> None:
    _, _, report = synthetic
    assert apgr(report, "adapted") > apgr(report, "base") + 0.1
    assert apgr(report, "adapted") >= apgr(report, "oracle") - 0.01  # the pattern is learnable exactly
    assert re.search(r"fitted on 400 records in [\d.]+ s", report)
    assert "5-fold cross-validation on 400 records" in report


def test_output_directory_is_a_servable_model(synthetic: tuple[Path, Path, str]) -> None:
    _, out, _ = synthetic
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES)
    model = OnnxDifficultyModel.load(out)
    base = OnnxDifficultyModel.load(Path(__file__).parents[3] / "classifier" / "models" / "default")
    assert model.default_abilities == base.default_abilities
    assert "+adapt-" in model.name
    easy = model.predict("river mountain library engine")
    hard = model.predict(f"river mountain {MARKER} library engine")
    for p in (easy, hard, model.predict(""), model.predict("lorem ipsum " * 500)):
        assert math.isfinite(p.difficulty) and 0.0 <= p.confidence <= 1.0
    assert hard.difficulty > easy.difficulty
    meta = orjson.loads((out / "metadata.json").read_bytes())
    for entry in meta["parity"]:  # the stored training-path raw scores match the written graph
        assert model.raw(model.featurizer.encode(entry["text"])) == pytest.approx(entry["raw"], abs=1e-5)


def test_items_without_both_scores_are_skipped_and_counted(synthetic: tuple[Path, Path, str]) -> None:
    _, _, report = synthetic
    assert "412 items, 400 usable; skipped 9 without scores" in report
    assert "3 not classifiable by the server" in report
    assert "malformed" not in report


def test_same_seed_gives_byte_identical_files(synthetic: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, out, _ = synthetic
    code, _ = adapt(data, tmp_path / "again")
    assert code == 0
    for name in MODEL_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("missing.jsonl", None, "No such file or directory"),
        ("bad.jsonl.gz", b"this is not gzip", "not a gzip file"),
        ("cut.jsonl.gz", gzip.compress(b'{"id": 1}\n' * 1000)[:-20], "truncated gzip file"),
    ],
)
def test_unreadable_data_is_one_line_and_exit_2(tmp_path: Path, name: str, payload: bytes | None, reason: str) -> None:
    """Worded as eval words it, without Python's exception class (``FileNotFoundError: [Errno 2] ...``)."""
    data = tmp_path / name
    if payload is not None:
        data.write_bytes(payload)
    code, report = adapt(data, tmp_path / "model")
    assert code == 2
    assert report.startswith(f"model-router adapt: cannot read --outcomes {data} ({reason}"), report
    assert report.count("\n") == 1, "only the error, on stderr"
    assert not (tmp_path / "model").exists()


def test_gzip_without_the_gz_suffix_is_read(tmp_path: Path) -> None:
    """It said ``fewer than two models are scored on 90% of the records``."""
    data = tmp_path / "outcomes.jsonl"
    data.write_bytes(gzip.compress(b"".join(orjson.dumps(item) + b"\n" for item in synthetic_items(30, seed=4))))
    outcomes = adapt_module.read_outcomes(data, prompt_text_of_item, "weak-m", "strong-m")
    assert (outcomes.total, len(outcomes.texts), outcomes.malformed_lines) == (30, 30, [])


def test_weak_and_strong_must_differ(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_items(30, seed=5))
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_adapt(data, tmp_path / "m", "weak-m", "weak-m", None, prompt_text_of_item, 5, 0, stdout, stderr=stderr)
    assert (code, stdout.getvalue()) == (2, "")
    assert stderr.getvalue() == "model-router adapt: --weak and --strong must name different models\n"


def test_weak_naming_the_best_model_gets_the_best_other_model_as_strong(tmp_path: Path) -> None:
    """It was chosen as its own strong model."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_items(30, seed=5))
    stdout = io.StringIO()
    run_adapt(data, tmp_path / "m", "strong-m", None, None, prompt_text_of_item, 5, 0, stdout, stderr=io.StringIO())
    assert "pair from the file's scores: weak 'strong-m', strong 'weak-m'" in stdout.getvalue()


@pytest.mark.parametrize("where", ["under-a-file", "under-a-file-deeper"])
def test_out_that_cannot_be_created_is_refused_before_fitting(tmp_path: Path, where: str) -> None:
    """``--out /proc/m`` (or under a file, or on a read-only mount) failed only after the whole fit."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_items(400, seed=7))
    out = tmp_path / "d.jsonl" / "model" if where == "under-a-file" else tmp_path / "d.jsonl" / "x" / "model"
    code, report = adapt(data, out)
    assert code == 2
    assert report == f"model-router adapt: cannot write --out {out} (Not a directory)\n", "refused up front"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"], "the probe is removed"


def test_malformed_lines_are_counted_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    lines = [orjson.dumps(item) for item in synthetic_items(400, seed=3)]
    lines[1] = b"not json at all"
    lines[4] = b"[1, 2]"
    lines.insert(7, b"")  # blank: not an item, not an error
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(b"\n".join(lines) + b'\n{"truncated": ')
    code, report = adapt(data, tmp_path / "model", force=True)
    assert code == 0, report
    assert "398 items, 398 usable" in report
    assert "3 malformed lines (2, 5, 402)" in report


def test_too_few_records_refused_unless_forced(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "small.jsonl", synthetic_items(10, seed=2))
    code, report = adapt(data, tmp_path / "model", force=True)
    assert code == 2 and "at least 20 are needed" in report
    data = write_jsonl(tmp_path / "few.jsonl", synthetic_items(150, seed=2))
    code, report = adapt(data, tmp_path / "model")
    assert code == 2 and "only 150 usable records; below 400" in report and "--force" in report
    assert not (tmp_path / "model").exists()
    code, report = adapt(data, tmp_path / "model", force=True)
    assert code == 0, report
    assert (tmp_path / "model" / "model.onnx").is_file()


def test_unknown_model_is_refused_naming_the_models_seen(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "ok.jsonl", synthetic_items(100, seed=2))
    code, report = adapt(data, tmp_path / "model", weak="nobody")
    assert code == 2
    assert "no item has a score for 'nobody'; models in the file: ['weak-m', 'strong-m']" in report


def test_one_class_is_refused(tmp_path: Path) -> None:
    items = synthetic_items(450, seed=4)
    for item in items:
        item["scores"] = {"weak-m": 1.0, "strong-m": 1.0}
    code, report = adapt(write_jsonl(tmp_path / "flat.jsonl", items), tmp_path / "model", force=True)
    assert code == 2 and "one class" in report


def test_no_signal_is_refused_unless_forced(tmp_path: Path) -> None:
    """Outcomes that do not depend on the prompt: the head cannot beat base and length, so nothing is written."""
    rng = random.Random(5)
    items = synthetic_items(450, seed=5)
    for item in items:
        item["scores"] = {"weak-m": float(rng.random() < 0.5), "strong-m": 1.0}
    data = write_jsonl(tmp_path / "noise.jsonl", items)
    code, report = adapt(data, tmp_path / "model")
    assert code == 2 and "too little signal" in report, report
    assert not (tmp_path / "model").exists()
    code, report = adapt(data, tmp_path / "model", force=True)
    assert code == 0 and "writing anyway" in report


REAL_WEAK = "mistral-7b-instruct-v0.3"
REAL_STRONG = "llama-3.1-nemotron-51b-instruct"


def test_real_data_adapted_beats_base_and_length_in_cross_validation(tmp_path: Path) -> None:
    """ulab_llmrouter, mistral-7b -> nemotron-51b, 1,430 records (the notes: .70 adapted vs .58 length)."""
    with gzip.open(DATA_DIR / "outcomes.jsonl.gz", "rb") as fh:
        rows = [orjson.loads(line) for line in fh]
    rows = sorted((r for r in rows if r["source"] == "ulab_llmrouter"), key=lambda r: str(r["id"]))
    random.Random(0).shuffle(rows)
    items = [
        {"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}], "scores": r["scores"]}
        for r in rows[:1430]
    ]
    data = write_jsonl(tmp_path / "ulab.jsonl", items)
    code, report = adapt(data, tmp_path / "model", weak=REAL_WEAK, strong=REAL_STRONG)
    assert code == 0, report
    assert "fitted on 1430 records" in report
    assert apgr(report, "adapted") >= apgr(report, "base")
    assert apgr(report, "adapted") > apgr(report, "length")


def test_pair_defaults_to_the_files_models(synthetic: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Without --weak/--strong the pair comes from the scores (the better model is the strong one); same model."""
    data, out, _ = synthetic
    stdout = io.StringIO()
    code = run_adapt(data, tmp_path / "auto", None, None, None, prompt_text_of_item, 5, 0, stdout)
    assert code == 0, stdout.getvalue()
    assert "pair from the file's scores: weak 'weak-m', strong 'strong-m'" in stdout.getvalue()
    for name in MODEL_FILES:
        assert (tmp_path / "auto" / name).read_bytes() == (out / name).read_bytes(), name


def test_pair_cannot_be_chosen_from_one_model(tmp_path: Path) -> None:
    items = [{"id": i, "messages": [{"role": "user", "content": "x"}], "scores": {"only": 1.0}} for i in range(50)]
    stdout, stderr = io.StringIO(), io.StringIO()
    data = write_jsonl(tmp_path / "one.jsonl", items)
    code = run_adapt(data, tmp_path / "m", None, None, None, prompt_text_of_item, 5, 0, stdout, stderr=stderr)
    assert code == 2 and stdout.getvalue() == ""
    assert stderr.getvalue().startswith("model-router adapt: ") and "fewer than two models" in stderr.getvalue()


def _noise_with_a_tied_fold(seed: int) -> list[dict[str, Any]]:
    """Random outcomes of two ~50% models (the audit's generator): with this seed one cross-validation fold has the
    same mean for both models, so its APGR is undefined (NaN)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(3000)]
    items = []
    for i in range(400):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 25)))
        scores = {"weak-m": int(rng.random() < 0.5), "strong-m": int(rng.random() < 0.55)}
        items.append({"id": f"x{i}", "messages": [{"role": "user", "content": text}], "scores": scores})
    return items


def test_an_undefined_cross_validation_score_is_not_a_pass(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "noise.jsonl", _noise_with_a_tied_fold(2))
    code, report = adapt(data, tmp_path / "model")
    assert "nan" in report, "the seed must give a fold without a defined APGR, or this test checks nothing"
    assert code == 2 and "too little signal" in report, report
    assert not (tmp_path / "model").exists()


def test_duplicate_ids_and_scores_outside_0_1_are_skipped_and_counted(tmp_path: Path) -> None:
    items = synthetic_items(400, seed=6)
    items += [dict(item) for item in items[:30]]  # a concatenated export: the same prompts again
    bad = [{**item, "id": f"bad-{n}", "scores": {"weak-m": 100, "strong-m": 1.0}} for n, item in enumerate(items[:5])]
    data = write_jsonl(tmp_path / "dups.jsonl", items + bad)
    code, report = adapt(data, tmp_path / "model", force=True)
    assert code == 0, report
    assert "435 items, 400 usable; skipped 5 without scores" in report and "30 duplicate ids" in report


# --- writing --out atomically (classifier.atomic_dir) ---------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes | None]:
    """Everything under ``root``: files with their bytes, directories as None, so two trees compare exactly."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture
def deployed(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """An existing model directory (the tiny model: its three files plus extras and a subdirectory) as ``--out``."""
    out = tmp_path / "deploy" / "model"
    shutil.copytree(tiny_model_dir, out)
    assert (out / "folded").is_dir() and (out / "table.npy").is_file()  # extras the replacement must not keep
    return out


def _fail_on_second_file(monkeypatch: pytest.MonkeyPatch, out: Path, exc: BaseException) -> list[list[str]]:
    """Make writing the second file raise ``exc``; returns what ``out``'s parent held at that moment."""
    real = atomic_dir._write_file
    seen: list[list[str]] = []

    def write(path: Path, payload: bytes) -> None:
        if path.name == "tokenizer.json":
            seen.append(sorted(p.name for p in out.parent.iterdir()))
            assert (path.parent / "model.onnx").is_file()  # midway: one file written, in the temporary directory
            raise exc
        real(path, payload)

    monkeypatch.setattr(atomic_dir, "_write_file", write)
    return seen


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_leaves_existing_out_identical_and_no_temp_dir(
    synthetic: tuple[Path, Path, str], deployed: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    data, _, _ = synthetic
    before = tree(deployed.parent)
    seen = _fail_on_second_file(monkeypatch, deployed, exc)
    if isinstance(exc, OSError):
        code, report = adapt(data, deployed)
        assert code == 2
        assert report.splitlines()[-1] == (
            f"model-router adapt: cannot write --out {deployed} (No space left on device); it is left as it was"
        )
    else:  # Ctrl-C: an exit, not a traceback
        code, report = adapt(data, deployed)
        assert code == 130
        assert report.splitlines()[-1] == f"model-router adapt: interrupted; --out {deployed} is left as it was"
    assert len(seen) == 1 and seen[0][0].startswith(".model.tmp-") and seen[0][1:] == ["model"], seen
    assert tree(deployed.parent) == before  # --out byte-identical, the temporary directory gone


def test_failure_at_the_swap_leaves_existing_out_identical(
    synthetic: tuple[Path, Path, str], deployed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _, _ = synthetic
    before = tree(deployed.parent)

    def exchange(a: Path, b: Path) -> bool:
        assert (a / "metadata.json").is_file() and (b / "table.npy").is_file()  # new complete, old untouched
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic_dir, "_exchange", exchange)
    code, report = adapt(data, deployed)
    assert code == 2 and "cannot write --out" in report and "Input/output error" in report
    assert tree(deployed.parent) == before


def test_fallback_swap_puts_the_old_directory_back_if_the_new_one_cannot_go_in(
    synthetic: tuple[Path, Path, str], deployed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the exchange: out is renamed aside, then renaming the new one in fails: the old one goes back."""
    data, _, _ = synthetic
    before = tree(deployed.parent)
    real_rename = os.rename
    renames: list[tuple[str, str]] = []

    def rename(src: Any, dst: Any) -> None:
        renames.append((Path(src).name, Path(dst).name))
        if Path(src).name.startswith(".model.tmp-"):
            raise OSError(errno.EIO, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename)
    code, report = adapt(data, deployed)
    assert code == 2 and "cannot write --out" in report
    assert [(s[:11], d[:11]) for s, d in renames] == [
        ("model", ".model.old-"),
        (".model.tmp-", "model"),
        (".model.old-", "model"),
    ]
    assert tree(deployed.parent) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_existing_model_dir_is_replaced_completely_and_loads(
    synthetic: tuple[Path, Path, str], deployed: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    data, fresh, _ = synthetic
    if not exchange:
        monkeypatch.setattr(atomic_dir, "_exchange", lambda a, b: False)
    deployed.chmod(0o750)
    old_name = OnnxDifficultyModel.load(deployed).name
    code, report = adapt(data, deployed)
    assert code == 0, report
    assert sorted(p.name for p in deployed.parent.iterdir()) == ["model"]  # nothing temporary or old left
    assert sorted(p.name for p in deployed.iterdir()) == sorted(MODEL_FILES)  # the extras went with the old one
    for name in MODEL_FILES:
        assert (deployed / name).read_bytes() == (fresh / name).read_bytes(), name
    assert stat.S_IMODE(deployed.stat().st_mode) == 0o750
    model = OnnxDifficultyModel.load(deployed)
    assert "+adapt-" in model.name and model.name != old_name


def test_empty_out_directory_is_filled(synthetic: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, fresh, _ = synthetic
    (tmp_path / "model").mkdir()
    code, report = adapt(data, tmp_path / "model")
    assert code == 0, report
    assert tree(tmp_path) == {"model": None, **{f"model/{name}": (fresh / name).read_bytes() for name in MODEL_FILES}}


def _unrelated_dir(out: Path) -> None:
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "model.onnx").write_bytes(b"not yours")


@pytest.mark.parametrize("kind", ["file", "unrelated-dir", "symlink"])
def test_out_that_is_not_a_model_directory_is_refused_before_fitting(
    synthetic: tuple[Path, Path, str], tmp_path: Path, kind: str
) -> None:
    data, fresh, _ = synthetic
    out = tmp_path / "out"
    if kind == "file":
        out.write_bytes(b"precious")
        expected = "exists and is not a directory"
    elif kind == "unrelated-dir":
        _unrelated_dir(out)
        expected = "is a non-empty directory without metadata.json, so not a model directory; refusing to replace"
    else:
        shutil.copytree(fresh, tmp_path / "target")
        out.symlink_to(tmp_path / "target", target_is_directory=True)
        expected = f"is a symbolic link; name the directory it points to ({tmp_path / 'target'}) or a new path"
    before = tree(tmp_path)
    code, report = adapt(data, out)
    assert code == 2
    assert report.startswith(f"model-router adapt: --out {out} {expected}"), report
    assert report.count("\n") == 1  # refused up front: no summary, no cross-validation
    assert tree(tmp_path) == before and out.is_symlink() == (kind == "symlink")


def test_out_that_becomes_unrelated_during_the_fit_is_refused_at_the_swap(
    synthetic: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out is checked again just before the swap: a directory created meanwhile is not replaced."""
    data, _, _ = synthetic
    out = tmp_path / "out"
    real = adapt_module.cross_validate

    def cross_validate(*args: Any, **kwargs: Any) -> Any:
        _unrelated_dir(out)
        return real(*args, **kwargs)

    monkeypatch.setattr(adapt_module, "cross_validate", cross_validate)
    code, report = adapt(data, out)
    assert code == 2 and "5-fold cross-validation" in report
    assert report.splitlines()[-1].startswith(f"model-router adapt: --out {out} is a non-empty directory without")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert tree(out) == {"notes.txt": b"mine", "sub": None, "sub/model.onnx": b"not yours"}


def test_exchange_swaps_two_directories_in_one_step(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new").write_bytes(b"new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old").write_bytes(b"old")
    if not atomic_dir._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here; the rename-aside fallback is tested above")
    assert tree(tmp_path) == {"a": None, "a/old": b"old", "b": None, "b/new": b"new"}


def test_out_created_while_the_files_are_written_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last check runs after the temporary directory is complete, right before the swap."""
    out = tmp_path / "out"
    real = atomic_dir._write_file

    def write(path: Path, payload: bytes) -> None:
        real(path, payload)
        if not out.exists():
            _unrelated_dir(out)

    monkeypatch.setattr(atomic_dir, "_write_file", write)
    with pytest.raises(atomic_dir.OutDirError, match=r"non-empty directory without metadata\.json"):
        atomic_dir.publish_dir(out, {"metadata.json": b"{}", "model.onnx": b"graph"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert tree(out) == {"notes.txt": b"mine", "sub": None, "sub/model.onnx": b"not yours"}
