"""``python -m classifier.train --out DIR``: a bad ``--out`` is refused before any work, ``DIR`` is replaced in one
step. The whole pipeline runs in about a second on a tiny outcome file and a tiny cached "distilled" table."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from safetensors.numpy import save_file

from classifier import atomic_dir, train
from classifier.onnx_model import MODEL_FILES, OnnxDifficultyModel
from tests.unit.classifier.tiny import TINY_VOCAB, tiny_tokenizer

PROG = "python -m classifier.train"


def tree(root: Path) -> dict[str, bytes | None]:
    """Everything under ``root``: files with their bytes, directories as None, so two trees compare exactly."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``--data`` (two sources, 60 prompts each, three models) and ``--cache`` (the table distil_table reuses)."""
    rng = random.Random(0)
    words = [t for t in TINY_VOCAB if t.isalpha() and t not in ("[PAD]", "[UNK]")]
    rows = []
    for source in ("alpha", "beta"):
        for i in range(60):
            prompt = " ".join(rng.choices(words, k=rng.randint(1, 12)))
            hard = len(prompt) / 60
            scores = {m: float(rng.random() > hard * skill) for m, skill in (("a", 1.5), ("b", 1.0), ("c", 0.5))}
            rows.append({"source": source, "id": f"{source}-{i}", "prompt": prompt, "scores": scores})
    data = tmp_path_factory.mktemp("data")
    (data / "outcomes.jsonl.gz").write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows), mtime=0))
    cache = tmp_path_factory.mktemp("cache")
    distilled = cache / f"m2v-minilm-pca{train.PCA_DIMS}-seed{train.SEED}"
    distilled.mkdir()
    table = np.random.default_rng(0).normal(size=(len(TINY_VOCAB), 8)).astype(np.float32)
    save_file({"embeddings": table}, str(distilled / "model.safetensors"))
    tiny_tokenizer().save(str(distilled / "tokenizer.json"))
    return data, cache


def run(inputs: tuple[Path, Path], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    data, cache = inputs
    code = train.main(["--data", str(data), "--out", str(out), "--cache", str(cache)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["file", "unrelated-dir", "symlink"])
def test_out_that_is_not_a_model_directory_is_refused_before_any_work(
    inputs: tuple[Path, Path],
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_bytes(b"precious")
        expected = "exists and is not a directory"
    elif kind == "unrelated-dir":
        (out / "sub").mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
        expected = "is a non-empty directory without metadata.json, so not a model directory; refusing to replace"
    else:
        shutil.copytree(tiny_model_dir, tmp_path / "target")
        out.symlink_to(tmp_path / "target", target_is_directory=True)
        expected = f"is a symbolic link; name the directory it points to ({tmp_path / 'target'}) or a new path"

    def load_dataset(*args: object) -> None:
        raise AssertionError("the training started before --out was checked")

    monkeypatch.setattr(train, "load_dataset", load_dataset)
    before = tree(tmp_path)
    code, err = run(inputs, out, capsys)
    assert code == 2
    assert err.startswith(f"{PROG}: --out {out} {expected}") and err.count("\n") == 1, err  # one line, no log
    assert tree(tmp_path) == before and out.is_symlink() == (kind == "symlink")


def test_out_is_created_then_replaced_as_a_whole(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh (nested) path is created; an existing model directory is replaced entirely: no file of the previous
    version survives, nothing temporary is left, and the result loads (the loader's parity check passes)."""
    out = tmp_path / "new" / "model"
    code, err = run(inputs, out, capsys)
    assert code == 0, err
    assert f"wrote {out} in " in err
    first = tree(out)
    assert sorted(first) == sorted(MODEL_FILES)
    (out / "stale.txt").write_text("from an older version")
    code, err = run(inputs, out, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
    assert tree(out) == first  # deterministic, and exactly the three files
    OnnxDifficultyModel.load(out)


@pytest.mark.parametrize(
    ("failure", "code"),
    [(KeyboardInterrupt(), None), (OSError(28, "No space left on device"), 2)],
    ids=["ctrl-c", "disk-full"],
)
def test_a_failed_write_leaves_the_existing_model_directory_as_it_was(
    inputs: tuple[Path, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: BaseException,
    code: int | None,
) -> None:
    """Ctrl-C or a full disk after the first file: ``--out`` is byte-identical to before, not half old and half new;
    a full disk is a one-line error (exit 2), not a traceback."""
    out = tmp_path / "deploy" / "model"
    shutil.copytree(tiny_model_dir, out)
    before = tree(out.parent)
    real = atomic_dir._write_file
    written: list[str] = []

    def write(path: Path, payload: bytes) -> None:
        if written:
            raise failure
        written.append(path.name)
        real(path, payload)

    monkeypatch.setattr(atomic_dir, "_write_file", write)
    if code is None:
        with pytest.raises(KeyboardInterrupt):
            run(inputs, out, capsys)
    else:
        got, err = run(inputs, out, capsys)
        assert got == code
        assert err.splitlines()[-1] == (
            f"{PROG}: --out cannot be written ([Errno 28] No space left on device); {out} is left as it was"
        )
    assert written == ["model.onnx"]
    assert tree(out.parent) == before  # the old model intact, the temporary directory removed


@pytest.mark.parametrize("command", ["train", "loso"])
def test_a_missing_data_set_is_one_line_and_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkout without ../shared (a fresh clone from GitHub) gets a message naming the data set, not a traceback."""
    from classifier import loso

    main = train.main if command == "train" else loso.main
    with pytest.raises(SystemExit) as info:
        main(["--data", str(tmp_path)])
    assert info.value.code == 2
    assert f"--data {tmp_path}: no outcomes.jsonl.gz there" in capsys.readouterr().err
