"""The ONNX runtime model: parity with the training path, the cut contract, thread safety, the shipped files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

import classifier
import classifier.evaluate
import classifier.features
import classifier.irt
import classifier.metrics
import classifier.onnx_model
import classifier.tokenize
from classifier.features import embedding_bag
from classifier.loader import load_difficulty_model
from classifier.model import DifficultyModel
from classifier.onnx_model import MODEL_FILES, OnnxDifficultyModel
from classifier.tokenize import TextCut
from tests.unit.classifier.tiny import SHIPPED

TEXTS = [
    "",
    "hello",
    "What is the integral of x ?",
    "prove that primes are infinite . please",
    "zebra unbelievable " * 20,
    "Écrivez",
]


@pytest.fixture(scope="module")
def shipped() -> OnnxDifficultyModel:
    model = load_difficulty_model("onnx")
    assert isinstance(model, OnnxDifficultyModel)
    return model


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_parity_with_training_path(tiny_model_dir: Path, text: str) -> None:
    model = OnnxDifficultyModel.load(tiny_model_dir)
    table = np.load(tiny_model_dir / "table.npy")
    head = np.load(tiny_model_dir / "head.npy")
    features = model.featurizer.encode(text)
    bag = embedding_bag(table, features, model.featurizer.spec.prior_tokens)
    want = (bag @ head[:-1] + head[-1]).item()
    assert model.raw(features) == pytest.approx(want, abs=1e-5)
    assert model.predict(text).difficulty == pytest.approx(model._table.apply(want), abs=1e-5)


@pytest.mark.parametrize("text", TEXTS)
def test_folded_graph_equals_full_graph(tiny_model_dir: Path, text: str) -> None:
    """Folding the linear head into the table (what ships) changes nothing but rounding."""
    full = OnnxDifficultyModel.load(tiny_model_dir)
    folded = OnnxDifficultyModel.load(tiny_model_dir / "folded")
    features = full.featurizer.encode(text)
    assert folded.raw(features) == pytest.approx(full.raw(features), abs=1e-5)


def test_tiny_model_is_a_difficulty_model(tiny_model_dir: Path) -> None:
    model = load_difficulty_model("onnx", tiny_model_dir)
    assert isinstance(model, DifficultyModel)
    assert dict(model.default_abilities) == {"cheap": -0.5, "strong": 1.5}
    prediction = model.predict("what is the integral")
    assert np.isfinite(prediction.difficulty)
    assert 0.0 <= prediction.confidence <= 1.0


@pytest.mark.parametrize("missing", MODEL_FILES)
def test_load_reports_missing_file(tiny_model_dir: Path, tmp_path: Path, missing: str) -> None:
    for name in MODEL_FILES:
        if name != missing:
            (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=missing):
        OnnxDifficultyModel.load(tmp_path)


def test_load_rejects_unknown_format(tiny_model_dir: Path, tmp_path: Path) -> None:
    for name in MODEL_FILES:
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    meta = orjson.loads((tmp_path / "metadata.json").read_bytes())
    meta["format"] = 99
    (tmp_path / "metadata.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(ValueError, match="format"):
        OnnxDifficultyModel.load(tmp_path)


def test_shipped_files_are_small() -> None:
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(MODEL_FILES)
    sizes = [(SHIPPED / name).stat().st_size for name in MODEL_FILES]
    assert max(sizes) <= 20 * 2**20
    assert sum(sizes) <= 8 * 10**6


def test_shipped_parity_with_training_path(shipped: OnnxDifficultyModel) -> None:
    """Scores training computed in numpy for fixed strings (stored in the metadata) equal the serving path's."""
    parity = orjson.loads((SHIPPED / "metadata.json").read_bytes())["parity"]
    assert len(parity) >= 5
    for case in parity:
        assert shipped.raw(shipped.featurizer.encode(case["text"])) == pytest.approx(case["raw"], abs=1e-4), case


def test_shipped_cut_contract(shipped: OnnxDifficultyModel) -> None:
    """Only the kept start and end of a long prompt matter, and the cut text scores like the original."""
    start = " ".join(f"term{i}" for i in range(80))
    end = " ".join(f"end{i}" for i in range(40))
    a = start + "The first story is about a farmer and his goats. " * 100 + end
    b = start + "Completely different middle about quantum chromodynamics! " * 80 + end
    cut = shipped.featurizer.spec.cut
    assert cut == TextCut(head_chars=256, tail_chars=96)
    assert shipped.predict(a) == shipped.predict(b)
    assert shipped.predict(a) == shipped.predict(cut.apply(a))


def test_shipped_is_thread_safe(shipped: OnnxDifficultyModel) -> None:
    texts = [f"Question {i}: what is {i} times {i + 7}? " * (1 + i % 5) for i in range(200)]
    sequential = [shipped.predict(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(shipped.predict, texts))
    assert parallel == sequential


@pytest.mark.parametrize(
    ("weaker", "stronger"),
    [
        ("gpt-4o-mini", "gpt-4o"),
        ("claude-3-haiku", "claude-3-5-sonnet"),
        ("gemini-1.5-flash", "gemini-1.5-pro"),
        ("llama-3.1-8b-instruct", "llama-3.1-70b-instruct"),
        ("mixtral-8x7b-instruct", "gpt-4o"),
    ],
)
def test_shipped_default_abilities(shipped: OnnxDifficultyModel, weaker: str, stronger: str) -> None:
    abilities = shipped.default_abilities
    assert abilities[weaker] < abilities[stronger]


@pytest.mark.parametrize(
    "module",
    [
        classifier,
        classifier.evaluate,
        classifier.features,
        classifier.irt,
        classifier.metrics,
        classifier.onnx_model,
        classifier.tokenize,
    ],
)
def test_exports(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(module, name)
