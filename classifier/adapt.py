"""``model-router adapt``: refit the difficulty head on a deployment's own outcome records, in seconds.

Why: ``../shared/CLASSIFIER_NOTES.md`` measured that the pair-gap target (strong - weak outcome) that fails across
sources works well *within* one: a few hundred to a few thousand of a deployment's own labels beat both the generic
prior and the length rule. So the shipped model is a robust prior and this command specialises it cheaply and safely.

Method (everything but the head is the base model's, so serving cost, gaming resistance and the text contract stay):
- text: ``text_of`` is the live server's schema parsing (``extproc.cli.prompt_text_of_item``), passed in so this
  package does not import ``extproc``; items it would not classify, and items lacking either model's score, are
  skipped and counted;
- features: the base model's own :class:`~classifier.features.Featurizer` (cut, WordPiece, distinct ids, capped
  length) and its per-token score table (read from the base graph; a full-table base is folded first);
- head: ``raw = g1 * base_bag + g2 * length + g0 + sum(delta[token]) / (n_tokens + prior)``: the base bag score, the
  length and an intercept enter unpenalised, per-token corrections ``delta`` are ridge-penalised. It is exactly the
  shipped folded graph with a new token column (``token_score' = g1 * token_score + delta``), so the export reuses
  :func:`classifier.train.build_onnx_folded` and the output directory has the shipped format (same three files,
  same graph, same tokenizer bytes). The fit is kernel ridge in the dual (one ``n x n`` inverse: ~0.4 s at 1,000
  items, ~4-7 s at 4,000-4,500 on 2 cores; training items beyond :data:`MAX_TRAIN_ITEMS` are subsampled),
  deterministic (same data and seed: byte-identical files), numpy only. The penalty was chosen on two sources'
  random splits (ulab_llmrouter, mmlu_pro at 1,000 labels: .708 / .590 held-out APGR at 10; .673 / .584 at 1);
- target: the pair's gap ``strong - weak`` on the training split only;
- calibration (the scale contract of :mod:`classifier.model`): leave-one-out raw outputs of the training items
  (closed form for ridge) are quantile-mapped onto the base model's difficulties of the same items, and the base
  ``default_abilities`` are kept. The adapted model therefore re-orders prompts but keeps the base model's
  difficulty *distribution* on this traffic: with an unchanged catalog and quality target, the share of traffic
  each model receives stays what it was, only *which* prompts go up changes. That is the safe property for a
  rollout (no cost jump), and it keeps ``sigmoid(ability - difficulty)`` as calibrated as the base model was on this
  traffic. (Refitting abilities on the new scale would need outcomes of every catalog model, which a two-model
  outcome file does not have.)

Report: a k-fold cross-validation (``--folds``, default 5) of the procedure itself: APGR/CPT50/CPT80/S95, mean
± SD over folds, of the adapted head, the base model, the length rule, random and the oracle on the same folds. The
model written is then fitted on every record (more labels only help, see :data:`MIN_RECORDS`). ``adapt`` refuses,
unless ``--force``, below :data:`MIN_RECORDS` usable records, or when the adapted head's mean APGR does not beat the
better of the base model and the length rule: then there is too little signal, and the shipped model stays.
Writing needs ``onnx`` (the ``[dev]``/``[train]`` extra), as :mod:`classifier.train` does; serving the result needs
only onnxruntime.

Writing ``--out`` is atomic (:mod:`classifier.atomic_dir`): the files go into a hidden sibling
``.<name>.tmp-<pid>``, fsynced, which then replaces ``--out`` in one step (Linux ``renameat2`` exchange; elsewhere
rename aside, rename in). A reader of ``--out`` sees the complete old directory or the complete new one at any
instant, never a partial or mixed one (what a loader opening the files one by one across the swap can see: that
module's docstring); on any failure the temporary directory is removed and ``--out`` is left as it was. An existing
``--out`` is replaced only if it is a model directory (it holds ``metadata.json``) or empty; a file, a symlink or
another non-empty directory is refused (exit code 2), before anything is fitted and again just before the swap.

Safe rollout: write to a new ``--out`` directory; point ``classifier.model_dir`` at it in a *copy* of the config and
run ``model-router check-config --config COPY``; compare with ``model-router eval --model DIR --data FRESH.jsonl``
(or run a shadow router on the copy, or ``classifier.candidate_model_dir``); then edit the live config: hot reload
applies it, and an invalid model directory is rejected while the running config stays. Replacing the directory a
running router already loads is safe too (the swap is atomic) but takes effect only at its next load, with no
check-config in between.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import orjson

from classifier.atomic_dir import OutDirError, check_target, check_writable, publish_dir
from classifier.evaluate import choose_pair
from classifier.features import DENSE_NAMES, Features, Featurizer
from classifier.irt import CalibrationTable
from classifier.jsonl import READ_ERRORS, io_reason, read_jsonl, unit_score
from classifier.loader import DEFAULT_MODEL_DIR
from classifier.metrics import RouterMetrics, length_scores, oracle_scores, routing_curve
from classifier.onnx_model import OnnxDifficultyModel

__all__ = ["AdaptError", "AdaptedHead", "BaseHead", "fit_adapted_head", "read_base_head", "run_adapt"]

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
TextOf = Callable[[Mapping[str, Any]], str | None]

RIDGE_LAMBDA = 10.0
"""Ridge penalty on the per-token corrections, relative to the mean diagonal of the bag kernel (scale-free)."""
CALIBRATION_KNOTS = 20
MIN_TRAIN_ITEMS = 20
"""Below this nothing is fitted, even with ``--force`` (the calibration needs its quantiles)."""
MIN_RECORDS = 400
"""Below this ``adapt`` refuses unless forced. Measured (5 random draws of N records, scored on up to 2,000 others;
ulab_llmrouter and mmlu_pro, the notes' pairs): the adapted head beat both the base model and the length rule in
3/5 and 2/5 draws at 50, 5/5 and 2/5 at 100, 5/5 and 3/5 at 200, 5/5 and 5/5 at 400 and 800."""
MAX_TRAIN_ITEMS = 5000
CV_MAX_TRAIN_ITEMS = 2000
"""Each cross-validation fold fits on at most this many records, so the report takes seconds at 10k records; with
more records the report slightly understates the written model (fitted on up to :data:`MAX_TRAIN_ITEMS`)."""
_COLUMN_CHUNK = 2048
_RARE_DF = 24
"""Tokens in at most this many training prompts enter the kernel by pair enumeration, the rest by dense blocks."""


class AdaptError(Exception):
    """A problem with the inputs that the operator must fix; printed as one line, exit code 2."""


@dataclass(frozen=True, slots=True)
class BaseHead:
    """The base graph as a folded linear function: per-token scores, dense weights, bias."""

    token_score: F32Array
    dense_weight: F32Array
    bias: float


@dataclass(frozen=True, slots=True)
class AdaptedHead:
    """The refitted folded head plus the leave-one-out raw outputs of its training items (for calibration)."""

    head: BaseHead
    loo_raw: FloatArray
    in_sample_raw: FloatArray


def read_base_head(model_dir: Path) -> BaseHead:
    """Read the head from a base ``model.onnx``: folded graphs directly, full-table graphs folded exactly."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dense_n = len(DENSE_NAMES)
    if "token_score" in inits:
        return BaseHead(
            token_score=np.asarray(inits["token_score"], dtype=np.float32).reshape(-1),
            dense_weight=np.asarray(inits["dense_weight"], dtype=np.float32).reshape(dense_n),
            bias=float(np.asarray(inits["bias"]).reshape(-1)[0]),
        )
    if "table" in inits:
        table = np.asarray(inits["table"]).astype(np.float32) * np.asarray(inits["scale"], dtype=np.float32)
        dims = table.shape[1]
        if "token_weight" in inits:  # per-token scores, clipped if the graph clips them
            token_score = table @ np.asarray(inits["token_weight"], dtype=np.float32).reshape(dims)
            if "clip_max" in inits:
                token_score = np.clip(token_score, float(inits["clip_min"]), float(inits["clip_max"]))
            dense_weight = np.asarray(inits["dense_weight"], dtype=np.float32).reshape(dense_n)
        else:  # a full-table graph from before clipping: one weight vector over [pooled bag, dense]
            weight = np.asarray(inits["weight"], dtype=np.float32).reshape(-1)
            token_score, dense_weight = table @ weight[:dims], weight[dims:]
        return BaseHead(
            token_score=token_score.astype(np.float32),
            dense_weight=dense_weight.astype(np.float32),
            bias=float(np.asarray(inits["bias"]).reshape(-1)[0]),
        )
    raise AdaptError(f"{model_dir / 'model.onnx'}: not a graph written by classifier.train")


@dataclass(frozen=True, slots=True)
class _Bags:
    """Training features in sparse form: (item, token, weight) triples, the dense columns, the base bag score."""

    item: IntArray
    token: IntArray
    value: FloatArray
    dense: FloatArray
    base_bag: FloatArray

    @property
    def n(self) -> int:
        return len(self.dense)


def _bags(features: Sequence[Features], base: BaseHead, prior: float) -> _Bags:
    """The bag rows exactly as the graph pools them: each distinct id weighs ``1 / (count + prior)``."""
    items, tokens, values, dense, bag = [], [], [], [], []
    for i, f in enumerate(features):
        w = 1.0 / (len(f.ids) + prior)
        items.append(np.full(len(f.ids), i, dtype=np.int64))
        tokens.append(f.ids)
        values.append(np.full(len(f.ids), w))
        dense.append(f.dense.reshape(-1).astype(np.float64))
        bag.append(float(base.token_score[f.ids].astype(np.float64).sum()) * w)
    return _Bags(
        item=np.concatenate(items),
        token=np.concatenate(tokens).astype(np.int64),
        value=np.concatenate(values),
        dense=np.asarray(dense, dtype=np.float64),
        base_bag=np.asarray(bag, dtype=np.float64),
    )


def _gram(bags: _Bags) -> FloatArray:
    """``B B^T`` of the sparse bag matrix: pair enumeration for rare tokens, dense BLAS blocks for frequent ones.

    A dense product over every seen token costs ``n^2 x vocabulary`` (17 s at 4,500 items); most tokens occur in a
    handful of prompts, whose contribution is a few products each. Both parts are exact.
    """
    n = bags.n
    _, column, df = np.unique(bags.token, return_inverse=True, return_counts=True)
    column = column.reshape(-1)
    entry_df = df[column]
    flat = np.zeros(n * n)
    rare = entry_df <= _RARE_DF
    order = np.lexsort((bags.item[rare], column[rare]))
    r_item, r_val, r_df = (a[rare][order] for a in (bags.item, bags.value, entry_df))
    for d in np.unique(r_df).tolist():
        pick = r_df == d
        items = r_item[pick].reshape(-1, d)
        values = r_val[pick].reshape(-1, d)
        index = (items[:, :, None] * n + items[:, None, :]).reshape(-1)
        flat += np.bincount(index, weights=(values[:, :, None] * values[:, None, :]).reshape(-1), minlength=n * n)
    gram = flat.reshape(n, n)
    frequent_cols = np.unique(column[~rare])
    freq = ~rare
    for lo in range(0, len(frequent_cols), _COLUMN_CHUNK):
        cols = frequent_cols[lo : lo + _COLUMN_CHUNK]
        pick = freq & (column >= cols[0]) & (column <= cols[-1])
        block = np.zeros((n, len(cols)))
        block[bags.item[pick], np.searchsorted(cols, column[pick])] = bags.value[pick]
        gram += block @ block.T
    return gram


def fit_adapted_head(
    features: Sequence[Features], target: FloatArray, base: BaseHead, prior: float, ridge: float = RIDGE_LAMBDA
) -> AdaptedHead:
    """Kernel ridge on the bag with the base score, the dense columns and an intercept unpenalised (closed form).

    With ``K = B B^T + lam I`` and ``Z = [1, base_bag, dense]``: ``g = (Z^T K^-1 Z)^-1 Z^T K^-1 y``,
    ``a = K^-1 (y - Z g)``, ``delta = B^T a``. The leave-one-out residual of ridge is ``a_i / (K^-1)_ii``.
    """
    bags = _bags(features, base, prior)
    y = np.asarray(target, dtype=np.float64)
    gram = _gram(bags)
    lam = ridge * float(np.mean(np.diag(gram))) + 1e-9
    z = np.column_stack([np.ones(bags.n), bags.base_bag, bags.dense])
    k_inv = np.linalg.inv(gram + lam * np.eye(bags.n))
    k_inv = (k_inv + k_inv.T) / 2.0
    k_inv_z = k_inv @ z
    gamma = np.linalg.solve(z.T @ k_inv_z + 1e-9 * np.eye(z.shape[1]), k_inv_z.T @ y)
    alpha = k_inv @ (y - z @ gamma)
    fitted = z @ gamma + gram @ alpha
    loo = y - alpha / np.diag(k_inv)
    token_score = base.token_score.astype(np.float64) * gamma[1]
    token_score += np.bincount(bags.token, weights=bags.value * alpha[bags.item], minlength=len(token_score))
    head = BaseHead(
        token_score=token_score.astype(np.float32),
        dense_weight=gamma[2:].astype(np.float32),
        bias=float(np.float32(gamma[0])),
    )
    return AdaptedHead(head=head, loo_raw=loo, in_sample_raw=fitted)


def _raw_of(head: BaseHead, features: Sequence[Features], prior: float) -> FloatArray:
    """What the folded graph computes, in numpy (float32 table, float64 sums)."""
    return np.asarray(
        [
            float(head.token_score[f.ids].astype(np.float64).sum()) / (len(f.ids) + prior)
            + float(f.dense.reshape(-1).astype(np.float64) @ head.dense_weight.astype(np.float64))
            + head.bias
            for f in features
        ],
        dtype=np.float64,
    )


def quantile_calibration(raw: FloatArray, difficulty: FloatArray, knots: int = CALIBRATION_KNOTS) -> CalibrationTable:
    """Map raw quantiles onto the same quantiles of the base difficulties (strictly increasing, as serving needs)."""
    levels = (np.arange(knots) + 0.5) / knots
    r = np.quantile(raw, levels)
    d = np.maximum.accumulate(np.quantile(difficulty, levels))
    keep = np.concatenate([[True], np.diff(r) > 1e-9])
    r, d = r[keep], d[keep]
    if len(r) < 2:
        r, d = np.asarray([r[0] - 1.0, r[0] + 1.0]), np.asarray([d[0] - 1e-3, d[0] + 1e-3])
    d = d + 1e-3 * np.arange(len(d))
    return CalibrationTable(raw=tuple(round(float(v), 6) for v in r), difficulty=tuple(round(float(v), 6) for v in d))


@dataclass(frozen=True, slots=True)
class _Outcomes:
    """The usable items of an outcome file and how many were skipped, and why."""

    ids: list[str]
    texts: list[str]
    weak: FloatArray
    strong: FloatArray
    total: int
    missing_scores: int
    unclassifiable: int
    malformed_lines: list[int]
    models_seen: dict[str, int]
    duplicates: int = 0
    """Items whose id came earlier in the file (concatenated exports): the first one counts, the rest are skipped,
    or the same prompt would sit on both sides of a cross-validation fold."""

    def summary(self, source: Path, weak: str, strong: str) -> str:
        """One line on what was read and what was skipped, naming the first malformed line numbers."""
        malformed = ""
        if self.malformed_lines:
            first = ", ".join(map(str, self.malformed_lines[:10]))
            more = ", ..." if len(self.malformed_lines) > 10 else ""
            malformed = f", {len(self.malformed_lines)} malformed lines ({first}{more})"
        return (
            f"{source}: {self.total} items, {len(self.texts)} usable; skipped {self.missing_scores} without"
            f" scores for both {weak!r} and {strong!r} in [0, 1], {self.unclassifiable} not classifiable by the"
            f" server, {self.duplicates} duplicate ids{malformed}"
        )


def _score(scores: object, name: str) -> float | None:
    """One model's outcome, or None if absent, non-numeric or outside [0, 1] (as everywhere in the pipeline)."""
    return unit_score(scores.get(name)) if isinstance(scores, dict) else None


def _items(path: Path) -> Iterator[tuple[int, Any]]:
    """:func:`~classifier.jsonl.read_jsonl`, with a file that cannot be read as an :class:`AdaptError` worded as
    ``eval`` words it."""
    try:
        yield from read_jsonl(path)
    except READ_ERRORS as exc:
        raise AdaptError(f"cannot read --outcomes {path} ({io_reason(exc)})") from exc


def read_outcomes(path: Path, text_of: TextOf, weak: str, strong: str) -> _Outcomes:
    """Parse an EVAL.md outcome file: malformed lines, items lacking either score and items the server would not
    classify are counted and skipped; an unreadable file raises :class:`AdaptError`."""
    ids: list[str] = []
    texts: list[str] = []
    w: list[float] = []
    s: list[float] = []
    malformed: list[int] = []
    seen: dict[str, int] = {}
    kept: set[str] = set()
    total = missing = unclassifiable = duplicates = 0
    for lineno, item in _items(path):
        if not isinstance(item, dict):
            malformed.append(lineno)
            continue
        total += 1
        scores = item.get("scores")
        for name in scores if isinstance(scores, dict) else ():
            seen[str(name)] = seen.get(str(name), 0) + 1
        sw, ss = _score(scores, weak), _score(scores, strong)
        if sw is None or ss is None:
            missing += 1
            continue
        item_id = str(item.get("id", f"line {lineno}"))
        if item_id in kept:
            duplicates += 1
            continue
        text = text_of(item)
        if text is None:
            unclassifiable += 1
            continue
        kept.add(item_id)
        ids.append(item_id)
        texts.append(text)
        w.append(sw)
        s.append(ss)
    return _Outcomes(
        ids, texts, np.asarray(w), np.asarray(s), total, missing, unclassifiable, malformed, seen, duplicates
    )


def _fit_indices(n: int, seed: int, cap: int = MAX_TRAIN_ITEMS) -> IntArray:
    """All indices, or a seeded sample of ``cap`` (the dual fit is O(n^3) time, O(n^2) memory; beyond a few
    thousand labels the notes saw no gain)."""
    if n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Data:
    """Features and outcomes of the usable items, computed once for the folds and the final fit."""

    texts: list[str]
    features: list[Features]
    base_difficulty: FloatArray
    length: FloatArray
    weak: FloatArray
    strong: FloatArray

    @property
    def gap(self) -> FloatArray:
        return self.strong - self.weak


SCORERS = ("adapted", "base", "length", "random", "oracle")


def cross_validate(data: _Data, head: BaseHead, prior: float, folds: int, seed: int) -> dict[str, list[RouterMetrics]]:
    """K-fold estimate of the adapt procedure: fit on k-1 folds (at most :data:`CV_MAX_TRAIN_ITEMS` records of them),
    score the k-th with the folded head's exact function (the calibration that follows is monotonic, so it does not
    change the ranking), beside the base model, the length rule, random and the oracle on the same fold."""
    order = np.random.default_rng(seed).permutation(len(data.texts))
    out: dict[str, list[RouterMetrics]] = {name: [] for name in SCORERS}
    for k in range(folds):
        test = np.sort(order[k::folds])
        train_all = np.setdiff1d(order, test)
        train_idx = train_all[_fit_indices(len(train_all), seed + 1 + k, CV_MAX_TRAIN_ITEMS)]
        fit = fit_adapted_head([data.features[i] for i in train_idx], data.gap[train_idx], head, prior)
        w, s = data.weak[test], data.strong[test]
        scores = {
            "adapted": _raw_of(fit.head, [data.features[i] for i in test], prior),
            "base": data.base_difficulty[test],
            "length": data.length[test],
            "random": np.zeros(len(test)),
            "oracle": oracle_scores(w, s),
        }
        for name, score in scores.items():
            out[name].append(RouterMetrics.of(routing_curve(score, w, s)))
    return out


def _cv_lines(cv: Mapping[str, Sequence[RouterMetrics]]) -> list[str]:
    """Mean ± SD over folds of the EVAL.md figures."""
    lines = [f"{'scorer':<10} {'APGR':>13} {'CPT50':>13} {'CPT80':>13} {'S95':>13}"]
    for name, runs in cv.items():
        cells = []
        for field in ("apgr", "cpt50", "cpt80", "s95"):
            values = np.asarray([getattr(m, field) for m in runs])
            cells.append(f"{values.mean():6.3f} ± {values.std():.3f}")
        lines.append(f"{name:<10} " + " ".join(f"{c:>13}" for c in cells))
    return lines


def _mean_apgr(runs: Sequence[RouterMetrics]) -> float:
    return float(np.mean([m.apgr for m in runs]))


def run_adapt(
    data: Path,
    out: Path,
    weak: str | None,
    strong: str | None,
    base_dir: Path | None,
    text_of: TextOf,
    folds: int,
    seed: int,
    stdout: TextIO,
    force: bool = False,
    stderr: TextIO | None = None,
) -> int:
    """Cross-validate, then fit on every item and write an adapted model directory; exit code 0, or 2 with the
    reason (one ``model-router adapt: ...`` line on ``stderr``, default the process's) on bad input, too few records
    or too little signal (the last two unless ``force``); 130 on Ctrl-C (``out`` is left as it was). Without ``weak``
    or ``strong``, the pair is chosen from the file as ``model-router eval`` chooses it."""
    err = sys.stderr if stderr is None else stderr
    try:
        if weak is not None and weak == strong:
            raise AdaptError("--weak and --strong must name different models")
        if weak is None or strong is None:
            weak, strong = _default_pair(data, weak, strong)
            stdout.write(f"pair from the file's scores: weak {weak!r}, strong {strong!r}\n")
        return _run(data, out, weak, strong, base_dir or DEFAULT_MODEL_DIR, text_of, folds, seed, stdout, force)
    except AdaptError as exc:
        stdout.flush()  # the report so far, then the reason, in that order on a terminal
        err.write(f"model-router adapt: {exc}\n")
        return 2
    except KeyboardInterrupt:  # a long fit stopped by the operator: an exit, not a traceback
        stdout.flush()
        err.write(f"model-router adapt: interrupted; --out {out} is left as it was\n")
        return 130


def _default_pair(path: Path, weak: str | None, strong: str | None) -> tuple[str, str]:
    """The named model(s), completed by :func:`~classifier.evaluate.choose_pair` on the file's ``scores``."""
    scores = []
    for _, item in _items(path):
        if isinstance(item, dict) and isinstance(item.get("scores"), dict):
            scores.append({str(k): v for k, v in item["scores"].items() if _score(item["scores"], k) is not None})
    chosen = choose_pair(scores, weak, strong)
    if chosen is None:
        raise AdaptError(f"{path}: fewer than two models are scored on 90% of the records; name --weak and --strong")
    return chosen


def _check_models(outcomes: _Outcomes, weak: str, strong: str) -> None:
    unknown = [m for m in (weak, strong) if m not in outcomes.models_seen]
    if unknown and outcomes.total:
        common = sorted(outcomes.models_seen, key=lambda m: -outcomes.models_seen[m])[:8]
        raise AdaptError(f"no item has a score for {', '.join(map(repr, unknown))}; models in the file: {common}")


def _run(
    source: Path,
    out: Path,
    weak: str,
    strong: str,
    base_dir: Path,
    text_of: TextOf,
    folds: int,
    seed: int,
    stdout: TextIO,
    force: bool,
) -> int:
    """The body of :func:`run_adapt`; raises :class:`AdaptError` for what the operator must fix."""
    if not 2 <= folds <= 20:
        raise AdaptError(f"--folds must be between 2 and 20, got {folds}")
    _check_out(out)
    try:
        base = OnnxDifficultyModel.load(base_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise AdaptError(f"base model {base_dir}: {exc}") from exc
    outcomes = read_outcomes(source, text_of, weak, strong)
    stdout.write(outcomes.summary(source, weak, strong) + "\n")
    _check_models(outcomes, weak, strong)
    n = len(outcomes.texts)
    if n < MIN_TRAIN_ITEMS:
        raise AdaptError(f"only {n} usable records; at least {MIN_TRAIN_ITEMS} are needed to fit at all")
    if n < MIN_RECORDS and not force:
        raise AdaptError(
            f"only {n} usable records; below {MIN_RECORDS} the adapted head did not reliably beat the shipped"
            " model and the length rule in our measurements (README); --force to fit anyway"
        )
    if np.ptp(outcomes.strong - outcomes.weak) == 0.0:
        raise AdaptError(f"the gap {strong} - {weak} is the same on every record (one class): nothing to learn")

    started = time.perf_counter()
    featurizer = base.featurizer
    prior = featurizer.spec.prior_tokens
    base_head = read_base_head(base_dir)
    data = _Data(
        texts=outcomes.texts,
        features=[featurizer.encode(t) for t in outcomes.texts],
        base_difficulty=np.asarray([base.predict(t).difficulty for t in outcomes.texts]),
        length=np.asarray(length_scores(outcomes.texts), dtype=np.float64),
        weak=outcomes.weak,
        strong=outcomes.strong,
    )
    cv = cross_validate(data, base_head, prior, folds, seed)
    stdout.write(
        f"{folds}-fold cross-validation on {n} records (each fold fitted on at most {CV_MAX_TRAIN_ITEMS};"
        f" {time.perf_counter() - started:.1f} s), weak {weak} mean"
        f" {data.weak.mean():.3f}, strong {strong} mean {data.strong.mean():.3f}:\n"
    )
    for line in _cv_lines(cv):
        stdout.write(line + "\n")
    adapted, best_other = _mean_apgr(cv["adapted"]), max(_mean_apgr(cv["base"]), _mean_apgr(cv["length"]))
    if not (math.isfinite(adapted) and math.isfinite(best_other) and adapted > best_other):
        # NaN: a fold where both models scored the same on average has no APGR, so nothing was shown to work.
        verdict = f"the adapted head (APGR {adapted:.3f}) does not beat the better of base and length"
        verdict += f" ({best_other:.3f})"
        if not force:
            raise AdaptError(verdict + ": too little signal in these records; nothing written (--force to write)")
        stdout.write(f"warning: {verdict}; writing anyway (--force)\n")
    _write_adapted(source, out, weak, strong, base_dir, base_head, featurizer, data, seed, stdout)
    return 0


def _write_adapted(
    source: Path,
    out: Path,
    weak: str,
    strong: str,
    base_dir: Path,
    base_head: BaseHead,
    featurizer: Featurizer,
    data: _Data,
    seed: int,
    stdout: TextIO,
) -> None:
    """Fit on every record (up to :data:`MAX_TRAIN_ITEMS`), calibrate, and write the model directory in one step
    (:func:`~classifier.atomic_dir.publish_dir`: ``out`` is as it was unless this returns)."""
    from classifier import train

    started = time.perf_counter()
    prior = featurizer.spec.prior_tokens
    idx = _fit_indices(len(data.texts), seed)
    fit = fit_adapted_head([data.features[i] for i in idx], data.gap[idx], base_head, prior)
    table = quantile_calibration(fit.loo_raw, data.base_difficulty[idx])
    fit_seconds = time.perf_counter() - started
    graph = train.build_onnx_folded(
        train.StudentTable(
            quantized=np.ones((len(fit.head.token_score), 1), dtype=np.int8),
            scale=fit.head.token_score.reshape(-1, 1),
        ),
        train.Head(weight=np.concatenate([[1.0], fit.head.dense_weight]).astype(np.float32), bias=fit.head.bias),
        prior,
    )
    base_meta: dict[str, Any] = orjson.loads((base_dir / "metadata.json").read_bytes())
    parity_features = [featurizer.encode(t) for t in train.PARITY_TEXTS]
    parity_raw = _raw_of(fit.head, parity_features, prior)
    meta = dict(base_meta)
    meta["name"] = f"{base_meta['name']}+adapt-{hashlib.sha256(graph).hexdigest()[:8]}"
    meta["calibration"] = {"raw": list(table.raw), "difficulty": list(table.difficulty)}
    meta["parity"] = [
        {"text": text, "raw": round(raw, 7), "ids": f.ids.tolist()}
        for text, raw, f in zip(train.PARITY_TEXTS, parity_raw.tolist(), parity_features, strict=True)
    ]
    meta["training"] = {
        "adapted_from": str(base_meta["name"]),
        "base_training": base_meta.get("training", {}),
        "data": source.name,
        "weak": weak,
        "strong": strong,
        "target": "strong - weak outcome",
        "train_items": len(idx),
        "seed": seed,
        "ridge_lambda": RIDGE_LAMBDA,
        "calibration": "leave-one-out raw quantile-mapped onto the base model's difficulties; base abilities kept",
    }
    files = {
        "model.onnx": graph,
        "tokenizer.json": (base_dir / "tokenizer.json").read_bytes(),
        "metadata.json": orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n",
    }
    try:
        warnings = publish_dir(out, files)
    except OutDirError as exc:
        raise AdaptError(f"--out {exc}") from exc
    except OSError as exc:
        raise AdaptError(f"cannot write --out {out} ({io_reason(exc)}); it is left as it was") from exc
    stdout.write(
        f"wrote {out} ({meta['name']}): fitted on {len(idx)} records in {fit_seconds:.2f} s (ridge, calibration)\n"
    )
    for warning in warnings:
        stdout.write(f"warning: {warning}\n")


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that must not be replaced, or cannot be written, before spending time on the fit (checked
    again at the swap)."""
    try:
        check_writable(check_target(out))
    except OutDirError as exc:
        raise AdaptError(f"--out {exc}") from exc
    except OSError as exc:
        raise AdaptError(f"cannot write --out {out} ({io_reason(exc)})") from exc
