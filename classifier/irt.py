"""Item-response theory on outcome records: P(model m succeeds on item i) = sigmoid(ability_m - difficulty_i).

Used twice: by training, to turn many models' outcomes into a model-agnostic per-prompt difficulty target and to
calibrate the student's output onto the ability scale; and by operators, to fit a catalog model's ability from their
own outcome records (``python -m classifier.irt --data FILE.jsonl``), so a new model joins any catalog without
retraining the classifier. numpy only, so it runs wherever the router runs.

Scores may be fractional (0..1 task metrics): the loss is the Bernoulli cross-entropy with a soft target.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

__all__ = [
    "AbilityFit",
    "CalibrationTable",
    "Factor",
    "RaschFit",
    "SuccessCurve",
    "canonical_model_name",
    "fit_abilities",
    "fit_additive_logit",
    "fit_rasch",
    "fit_success_curve",
    "main",
    "sigmoid",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Outcome data spells model names as its sources do; catalogs use API names. Only unambiguous aliases go here.
_ALIASES: Mapping[str, str] = {
    "gpt-4o-2024-05-13": "gpt-4o",
    "gpt-4o-2024-05-13_early": "gpt-4o",
    "gpt-4o-2024-08-06": "gpt-4o-2024-08-06",
    "chatgpt-4o-latest-24-09-07": "chatgpt-4o-latest",
    "gpt-4o-mini-2024-07-18": "gpt-4o-mini",
    "gpt-4-turbo-2024-04-09": "gpt-4-turbo",
    "gpt-4-0314": "gpt-4",
    "gpt-3.5-turbo-0125": "gpt-3.5-turbo",
    "o1-mini-2024-09-12": "o1-mini",
    "o1-preview-2024-09-12": "o1-preview",
    "claude-3-haiku-20240307": "claude-3-haiku",
    "claude-3-sonnet-20240229": "claude-3-sonnet",
    "claude-3-opus-20240229": "claude-3-opus",
    "claude-3-5-sonnet-20240620": "claude-3-5-sonnet",
    "gemini-1.5-flash": "gemini-1.5-flash",
    "gemini-1.5-flash-002": "gemini-1.5-flash",
    "gemini-1.5-pro": "gemini-1.5-pro",
    "gemini-1.5-pro-002": "gemini-1.5-pro",
    "Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct",
    "Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct",
    "Meta-Llama-3_1-8B-Instruct": "llama-3.1-8b-instruct",
    "llama-3.1-8b-instruct": "llama-3.1-8b-instruct",
    "Meta-Llama-3.1-70B-Instruct": "llama-3.1-70b-instruct",
    "Meta-Llama-3_1-70B-Instruct": "llama-3.1-70b-instruct",
    "Llama-3.1-405B-Inst@sambanova": "llama-3.1-405b-instruct",
    "Meta-Llama-3-8B-Instruct": "llama-3-8b-instruct",
    "Meta-Llama-3-70B-Instruct": "llama-3-70b-instruct",
    "Mistral-7B-Instruct-v0.2": "mistral-7b-instruct-v0.2",
    "mistral-7b-instruct-v0.3": "mistral-7b-instruct-v0.3",
    "Mistral-Large-2": "mistral-large-2",
    "Phi-3-mini-4k-instruct": "phi-3-mini-4k-instruct",
    "Phi-3.5-mini-instruct": "phi-3.5-mini-instruct",
    "Qwen2.5-7B-Instruct": "qwen2.5-7b-instruct",
    "qwen2.5-7b-instruct": "qwen2.5-7b-instruct",
    "Qwen2.5-72B-Instruct": "qwen2.5-72b-instruct",
    "Qwen2-72B-Instruct": "qwen2-72b-instruct",
    "gemma-2-9b-it": "gemma-2-9b-it",
    "gemma-2-27b-it": "gemma-2-27b-it",
    "gemma-2-2b-it": "gemma-2-2b-it",
    "deepseek-v2.5-0908": "deepseek-v2.5",
    "reka-core-20240501": "reka-core",
    "jamba-1.5-large": "jamba-1.5-large",
    "llama-3.1-nemotron-51b-instruct": "llama-3.1-nemotron-51b-instruct",
    "llama-3.3-nemotron-super-49b-v1": "llama-3.3-nemotron-super-49b-v1",
}


def canonical_model_name(name: str) -> str:
    """Map a model name as an outcome source spells it to the API name a catalog uses (lower case otherwise).

    Provider suffixes (``@hyperbolic``) are kept apart: a quantised or differently served copy is another model.
    """
    return _ALIASES.get(name, name.lower())


def sigmoid(x: FloatArray) -> FloatArray:
    """The logistic function, overflow-free."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Factor:
    """One additive term of a logit: ``sign * values[index]`` per observation, with a N(0, prior_sd²) prior."""

    index: IntArray
    size: int
    sign: float
    prior_sd: float


def fit_additive_logit(
    y: FloatArray,
    factors: Sequence[Factor],
    *,
    weights: FloatArray | None = None,
    offset: FloatArray | None = None,
    iterations: int = 300,
    tolerance: float = 1e-7,
) -> list[FloatArray]:
    """Fit ``logit P(y) = offset + sum_f sign_f * theta_f[index_f]`` by block-coordinate Newton steps.

    Each block is diagonal given the others, so a step is two ``bincount`` calls; the Gaussian priors make
    all-correct and all-wrong items finite. Returns one parameter vector per factor.
    """
    w = np.ones_like(y) if weights is None else weights
    base = np.zeros_like(y) if offset is None else offset
    thetas = [np.zeros(f.size) for f in factors]
    for _ in range(iterations):
        largest = 0.0
        for f, theta in zip(factors, thetas, strict=True):
            logit = base + sum(g.sign * t[g.index] for g, t in zip(factors, thetas, strict=True))
            p = sigmoid(np.asarray(logit, dtype=np.float64))
            grad = f.sign * np.bincount(f.index, weights=w * (p - y), minlength=f.size) + theta / f.prior_sd**2
            hess = np.bincount(f.index, weights=w * p * (1.0 - p), minlength=f.size) + 1.0 / f.prior_sd**2
            step = grad / hess
            theta -= step
            largest = max(largest, float(np.max(np.abs(step))) if step.size else 0.0)
        if largest < tolerance:
            break
    return thetas


@dataclass(frozen=True, slots=True)
class CalibrationTable:
    """Monotone map from the head's raw output to difficulty on the ability scale.

    Linear between knots and, beyond the outermost knots, linear with the table's overall slope, so the map stays
    strictly increasing (no ties that would blur the ranking) without trusting the steep or flat end segments.
    """

    raw: tuple[float, ...]
    difficulty: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.raw) < 2 or len(self.raw) != len(self.difficulty):
            raise ValueError("a calibration table needs at least two (raw, difficulty) knots")
        if any(b <= a for a, b in zip(self.raw, self.raw[1:], strict=False)) or any(
            b <= a for a, b in zip(self.difficulty, self.difficulty[1:], strict=False)
        ):
            raise ValueError("calibration knots must be strictly increasing")

    @property
    def slope(self) -> float:
        """The overall slope, used beyond the knots."""
        return (self.difficulty[-1] - self.difficulty[0]) / (self.raw[-1] - self.raw[0])

    def apply(self, raw: float) -> float:
        """Difficulty of one raw output (pure Python: a numpy call on one scalar costs more than the search)."""
        knots, values = self.raw, self.difficulty
        if raw <= knots[0]:
            return values[0] + self.slope * (raw - knots[0])
        if raw >= knots[-1]:
            return values[-1] + self.slope * (raw - knots[-1])
        i = bisect.bisect_right(knots, raw)
        x0, x1, y0, y1 = knots[i - 1], knots[i], values[i - 1], values[i]
        return y0 + (y1 - y0) * (raw - x0) / (x1 - x0)

    def apply_many(self, raw: FloatArray) -> FloatArray:
        """Difficulty of many raw outputs (same map as :meth:`apply`)."""
        r = np.asarray(raw, dtype=np.float64)
        out = np.interp(r, self.raw, self.difficulty)
        out = np.where(r < self.raw[0], self.difficulty[0] + self.slope * (r - self.raw[0]), out)
        out = np.where(r > self.raw[-1], self.difficulty[-1] + self.slope * (r - self.raw[-1]), out)
        return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RaschFit:
    """Per-item difficulties and per-model abilities of one source, on that source's own logit scale."""

    difficulty: FloatArray
    ability: FloatArray


def fit_rasch(item: IntArray, model: IntArray, y: FloatArray, n_items: int, n_models: int) -> RaschFit:
    """Fit the one-parameter IRT model to long-format outcomes (one row per item x model)."""
    item_f = Factor(index=item, size=n_items, sign=-1.0, prior_sd=3.0)
    model_f = Factor(index=model, size=n_models, sign=1.0, prior_sd=5.0)
    difficulty, ability = fit_additive_logit(y, [item_f, model_f])
    return RaschFit(difficulty=difficulty, ability=ability)


@dataclass(frozen=True, slots=True)
class AbilityFit:
    """A model's fitted ability and how many outcome records it rests on."""

    ability: float
    records: int


MIN_ABILITY_RECORDS = 100
"""Records a model needs before the CLI prints its ability: with a weak prior one record puts it at ±2.3 logits (past
every shipped model), three at ±3.1, so a handful of feedback scores, which any client may send for its own
decisions, would reroute every tenant. At 100 the ability's standard error is about 0.2 logits."""


def fit_abilities(records: Iterable[tuple[str, float, float]], prior_sd: float = 5.0) -> dict[str, AbilityFit]:
    """Fit each model's ability from ``(model, predicted difficulty, score in [0, 1])`` records.

    The difficulties are the classifier's, so the abilities land on the classifier's scale, which is what the
    router's ``sigmoid(ability - difficulty)`` needs; the classifier's calibration absorbs its own noise.
    """
    names: dict[str, int] = {}
    idx: list[int] = []
    diff: list[float] = []
    score: list[float] = []
    for name, difficulty, value in records:
        idx.append(names.setdefault(name, len(names)))
        diff.append(difficulty)
        score.append(min(1.0, max(0.0, value)))
    if not names:
        return {}
    index = np.asarray(idx, dtype=np.int64)
    (theta,) = fit_additive_logit(
        np.asarray(score, dtype=np.float64),
        [Factor(index=index, size=len(names), sign=1.0, prior_sd=prior_sd)],
        offset=-np.asarray(diff, dtype=np.float64),
    )
    counts = np.bincount(index, minlength=len(names))
    return {n: AbilityFit(ability=float(theta[i]), records=int(counts[i])) for n, i in names.items()}


@dataclass(frozen=True, slots=True)
class SuccessCurve:
    """One model's success probability as a logistic curve of the classifier's difficulty.

    The one-parameter form ``sigmoid(ability - difficulty)`` is the special case ``slope = -1``. Fitting the slope
    too lets a deployment correct how sharply the generic difficulty separates *its* prompts, from a few hundred
    outcome records, without retraining anything.
    """

    intercept: float
    slope: float

    def probability(self, difficulty: FloatArray) -> FloatArray:
        """P(success) at each difficulty."""
        return sigmoid(self.intercept + self.slope * np.asarray(difficulty, dtype=np.float64))


def fit_success_curve(difficulty: FloatArray, score: FloatArray, prior_sd: float = 10.0) -> SuccessCurve:
    """Logistic regression of a model's (0..1) scores on difficulty, by Newton's method with a weak ridge prior."""
    x = np.stack([np.ones(len(difficulty)), np.asarray(difficulty, dtype=np.float64)], axis=1)
    y = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    theta = np.zeros(2)
    ridge = np.eye(2) / prior_sd**2
    for _ in range(100):
        p = sigmoid(x @ theta)
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess, x.T @ (p - y) + ridge @ theta)
        theta = theta - step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return SuccessCurve(intercept=float(theta[0]), slope=float(theta[1]))


def main(argv: Sequence[str] | None = None, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """CLI: fit catalog abilities on a model's scale from an EVAL.md-format file whose items carry ``scores``.

    Items are read as ``model-router eval`` and ``adapt`` read them: the text is the live server's extraction
    (``extproc.cli.prompt_text_of_item``), a multi-turn item's difficulty is at least its first user turn's (the
    floor the live server keeps), so abilities are fitted on the difficulties the router acts on; lines that are not
    JSON (a torn last line), items the server would not classify and items whose id an earlier item has (the first
    item with an id counts, as in ``eval``) are skipped and counted. Scores must be numbers
    in [0, 1]; others are skipped and counted, never clamped. Models with fewer than ``--min-records`` records are
    left out and named on stderr. An unreadable file (missing, a truncated ``.gz``) or model, or no usable record
    (or model with enough), is one line on stderr and exit 2.
    """
    parser = argparse.ArgumentParser(prog="python -m classifier.irt", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="JSON Lines (plain or gzip, known by its content) as in EVAL.md"
    )
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped one)")
    parser.add_argument(
        "--min-records",
        type=int,
        default=MIN_ABILITY_RECORDS,
        help=f"leave out models with fewer outcome records (default {MIN_ABILITY_RECORDS})",
    )
    args = parser.parse_args(argv)

    import orjson

    from classifier.jsonl import NOT_JSON, READ_ERRORS, first_of_each_id, io_reason, read_jsonl, unit_score
    from classifier.loader import load_difficulty_model

    # The server's own parsing, as extproc/cli.py hands it to eval and adapt (this CLI has no caller to pass it).
    from extproc.cli import opening_text_of_item, prompt_text_of_item

    def fail(message: str) -> int:
        print(f"{parser.prog}: {message}", file=stderr)
        return 2

    try:
        model = load_difficulty_model("onnx", args.model)
    except (OSError, ValueError) as exc:  # what OnnxDifficultyModel.load raises for a missing or malformed directory
        return fail(f"cannot load --model {args.model or 'the shipped model'} ({exc})")
    try:
        lines: list[Any] = [item for _, item in read_jsonl(args.data)]
    except READ_ERRORS as exc:
        return fail(f"cannot read --data {args.data} ({io_reason(exc)})")
    not_json = sum(item is NOT_JSON for item in lines)
    read = [item if isinstance(item, dict) else {} for item in lines if item is not NOT_JSON]
    first, again = first_of_each_id(read)  # as eval scores them: the first item with an id, once
    records: list[tuple[str, float, float]] = []
    no_text = bad_scores = multi_turn = 0
    for item in (read[i] for i in first):
        text = prompt_text_of_item(item)
        scores = item.get("scores")
        if text is None or not isinstance(scores, dict):
            no_text += 1
            continue
        difficulty = model.predict(text).difficulty
        if (opening := opening_text_of_item(item)) is not None:
            multi_turn += 1
            difficulty = max(difficulty, model.predict(opening).difficulty)
        for name, value in scores.items():
            score = unit_score(value)
            if score is None:
                bad_scores += 1
            else:
                records.append((str(name), difficulty, score))
    print(
        f"{len(records)} outcome records from {len(first)} items; skipped {no_text} items without scores or text the"
        f" server classifies, {not_json} lines that are not JSON, "
        + (f"{len(again)} items whose id an earlier item has (the first one counts), " if again else "")
        + f"{bad_scores} scores that are not numbers in [0, 1]"
        + (f"; {multi_turn} multi-turn items scored at least as their first user turn" if multi_turn else ""),
        file=stderr,
    )
    if not records:
        return fail(f"no usable outcome records in --data {args.data}")
    fits = fit_abilities(records)
    few = sorted(name for name, f in fits.items() if f.records < args.min_records)
    if few:
        counts = ", ".join(f"{name} ({fits[name].records})" for name in few)
        print(f"left out, fewer than {args.min_records} records (--min-records): {counts}", file=stderr)
    fits = {name: f for name, f in fits.items() if name not in few}
    if not fits:
        return fail(f"no model has {args.min_records} outcome records in --data {args.data} (--min-records)")
    out = {name: {"ability": round(f.ability, 3), "records": f.records} for name, f in sorted(fits.items())}
    stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if math.isfinite(sum(f.ability for f in fits.values())) else 1


if __name__ == "__main__":
    raise SystemExit(main())
