"""The ONNX runtime model: parity with the training path, the cut contract, thread safety, the shipped files."""

from __future__ import annotations

import math
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
from tests.unit.classifier.conftest import TINY_CLIP
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
@pytest.mark.parametrize("graph", ["clipped", "clipped-folded"])
def test_clipped_graphs_compute_what_training_scores(tiny_model_dir: Path, graph: str, text: str) -> None:
    """Training's out-of-fold scores, calibration and parity strings use :class:`train.Scorer`; the graph (full or
    folded) must compute the same clipped sum."""
    from classifier import train

    model = OnnxDifficultyModel.load(tiny_model_dir / graph)
    head = np.load(tiny_model_dir / "head.npy")
    scorer = train.Scorer.of(
        np.load(tiny_model_dir / "table.npy"),
        train.Head(weight=head[:-1], bias=float(head[-1])),
        model.featurizer.spec.prior_tokens,
        TINY_CLIP,
    )
    features = model.featurizer.encode(text)
    assert model.raw(features) == pytest.approx(scorer.raw([features])[0], abs=1e-5)
    unclipped = OnnxDifficultyModel.load(tiny_model_dir).raw(features)
    if len(features.ids) > 1:
        assert model.raw(features) != pytest.approx(unclipped, abs=1e-4), "the clip must bind on the tiny table"


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


def _mixed_dir(tmp_path: Path, base: Path, **files: bytes) -> Path:
    for name in MODEL_FILES:
        (tmp_path / name).write_bytes(files.get(name.replace(".", "_"), (base / name).read_bytes()))
    return tmp_path


def _shuffled_vocabulary(tokenizer_json: bytes) -> bytes:
    """The same tokenizer with two words' ids swapped: loads fine, scores wrong."""
    data = orjson.loads(tokenizer_json)
    vocab = data["model"]["vocab"]
    vocab["what"], vocab["def"] = vocab["def"], vocab["what"]
    return orjson.dumps(data)


def _metadata(base: Path, **changes: object) -> bytes:
    meta = orjson.loads((base / "metadata.json").read_bytes())
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    return orjson.dumps(meta)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tokenizer-of-another-model", "do not belong together"),
        ("graph-of-another-model", "do not belong together"),
        ("zero-confidence-width", "confidence_width and length_cap_tokens must be > 0"),
        ("missing-calibration", r"metadata.json: missing or malformed field \(KeyError\('calibration'\)\)"),
        ("metadata-not-an-object", "metadata.json: not a JSON object"),
        ("tokenizer-not-json", "tokenizer.json: cannot load"),
    ],
)
def test_a_directory_that_does_not_hold_together_fails_at_load(
    tiny_model_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    """Each of these loaded before and then failed at every request, or gave plausible wrong scores."""
    files = {
        "tokenizer-of-another-model": {
            "tokenizer_json": _shuffled_vocabulary((SHIPPED / "tokenizer.json").read_bytes())
        },
        "graph-of-another-model": {"model_onnx": (tiny_model_dir / "model.onnx").read_bytes()},
        "zero-confidence-width": {"metadata_json": _metadata(tiny_model_dir, confidence_width=0)},
        "missing-calibration": {"metadata_json": _metadata(tiny_model_dir, calibration=None)},
        "metadata-not-an-object": {"metadata_json": b"[1, 2]"},
        "tokenizer-not-json": {"tokenizer_json": b"{not json"},
    }[case]
    with pytest.raises(ValueError, match=message):
        base = SHIPPED if "another" in case else tiny_model_dir  # the shipped model stores parity texts
        OnnxDifficultyModel.load(_mixed_dir(tmp_path, base, **files))


def test_a_lone_surrogate_is_an_unknown_word_not_an_error(shipped: OnnxDifficultyModel) -> None:
    for text in ("hello \ud800 world", "\ud83d\ude00", "zzqx\udcff"):
        prediction = shipped.predict(text)
        assert math.isfinite(prediction.difficulty) and 0.0 <= prediction.confidence <= 1.0


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


@pytest.mark.parametrize("graph", ["clipped", "clipped-folded"])
def test_adapt_reads_the_clipped_token_scores_of_either_graph(tiny_model_dir: Path, graph: str) -> None:
    """``adapt`` starts from the base model's per-token scores: those the graph really sums, clip included."""
    from classifier import train
    from classifier.adapt import read_base_head

    head = np.load(tiny_model_dir / "head.npy")
    want = train.Scorer.of(
        np.load(tiny_model_dir / "table.npy"), train.Head(weight=head[:-1], bias=float(head[-1])), 2.0, TINY_CLIP
    )
    base = read_base_head(tiny_model_dir / graph)
    np.testing.assert_allclose(base.token_score, want.token_score, atol=1e-6)
    assert float(np.abs(base.token_score).max()) == pytest.approx(TINY_CLIP)
    np.testing.assert_allclose(base.dense_weight, want.dense_weight, atol=1e-6)
