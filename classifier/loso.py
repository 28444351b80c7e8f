"""Leave-one-source-out report: ``python -m classifier.loso`` (the ``[train]`` extra).

For every source: train the head and its calibration on the other sources (same recipe and features as the shipped
model; the distilled token table is label-free and shared), score the held-out source, and compare routers on
several weak → strong pairs of that source (the first is the pair of ``CLASSIFIER_NOTES.md``):
- ``router``: the predicted difficulty, no label of the held-out source used (the strict transfer number);
- ``router-gain``: the expected gain ``sigmoid(a_strong - d) - sigmoid(a_weak - d)`` (an experiment: the live
  policy and ``eval`` rank by difficulty; see the model card), with the abilities the fold's calibration fitted on
  the *training* sources; a pair with a model those sources never scored falls back to the difficulty. No label of
  the held-out source is used;
- ``router+fit``: expected gain from the two models' success curves on the difficulty, cross-fitted on the held-out
  source (half the items fit the curves, the other half is scored; 5 random halvings) — what a deployment gets
  after fitting its catalog from its own outcome records;
- ``length`` (characters), ``random`` (exactly 0.5 by tie-averaging; its noise SD by permutation) and ``oracle``;
- ``irt``: the held-out source's own IRT difficulty (the training target, fitted on its labels): what a *perfect*
  difficulty predictor would score, so the router's shortfall from it is the predictor's and the rest is the pair's.

``--pairs all`` scores every pair of a source with a clear gap instead of the four listed ones (:func:`gap_pairs`),
so the spread is not a choice of pairs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from classifier import train as t
from classifier.evaluate import pair_gain_scores
from classifier.features import NEUTRAL_WORDS, Features, FeatureSpec, Featurizer
from classifier.irt import canonical_model_name
from classifier.metrics import length_scores, oracle_scores, routing_curve
from classifier.model import expected_gain
from classifier.tokenize import TextCut, WordPieceTokenizer

__all__ = ["PAIRS", "PairResult", "format_report", "gap_pairs", "main", "run_loso", "unit_bags"]

FloatArray = npt.NDArray[np.float64]

PAIRS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "mmlu_pro": (
        ("Mixtral-8x7B-Instruct-v0.1", "gpt-4o-2024-05-13_early"),
        ("Meta-Llama-3_1-8B-Instruct", "gpt-4o-2024-05-13_early"),
        ("Mistral-7B-Instruct-v0.2", "Meta-Llama-3_1-70B-Instruct"),
        ("Qwen1.5-72B-Chat", "gemini-1.5-pro-002"),
    ),
    "zeroeval_math-l5": (
        ("Meta-Llama-3.1-8B-Instruct", "gpt-4o-2024-05-13"),
        ("claude-3-haiku-20240307", "claude-3-5-sonnet-20240620"),
        ("gpt-3.5-turbo-0125", "gpt-4o-mini-2024-07-18"),
        ("gemma-2-9b-it", "Qwen2.5-72B-Instruct"),
    ),
    "zeroeval_crux": (
        ("Meta-Llama-3.1-8B-Instruct", "gpt-4o-2024-05-13"),
        ("claude-3-haiku-20240307", "claude-3-5-sonnet-20240620"),
        ("gpt-3.5-turbo-0125", "gpt-4o-mini-2024-07-18"),
        ("gemini-1.5-flash", "gemini-1.5-pro-exp-0827"),
    ),
    "ulab_llmrouter": (
        ("mistral-7b-instruct-v0.3", "llama-3.1-nemotron-51b-instruct"),
        ("codegemma-7b", "llama-3.1-8b-instruct"),
        ("llama3-chatqa-1.5-8b", "qwen2.5-7b-instruct"),
        ("llama3-chatqa-1.5-70b", "llama-3.3-nemotron-super-49b-v1"),
    ),
}
"""Per source: the pair of ``CLASSIFIER_NOTES.md`` first, then three more with a clear gap (>= .15 in mean outcome),
so APGR's denominator is not noise."""
MIN_GAP = 0.15
"""Smallest difference in mean outcome for a pair to be scored: below it APGR's denominator is mostly noise."""
MIN_COVERAGE = 0.9
"""Share of the source's prompts both models of a pair must have outcomes for."""
FIT_SEEDS = 5
RANDOM_DRAWS = 200
PAIR_MODES = ("listed", "all")


@dataclass(frozen=True, slots=True)
class PairResult:
    """APGR of each router on one held-out source and pair."""

    source: str
    weak: str
    strong: str
    items: int
    router: float
    router_gain: float
    gain_abilities: tuple[float, float] | None
    """The (weak, strong) abilities ``router_gain`` used; None if it fell back to the difficulty."""
    router_fit: float
    router_fit_sd: float
    length: float
    random_sd: float
    oracle: float
    irt: float
    """APGR of the held-out source's own IRT difficulty (uses its labels: the ceiling of a difficulty predictor)."""


def gap_pairs(
    outcomes: Sequence[Mapping[str, float]], min_gap: float = MIN_GAP, min_coverage: float = MIN_COVERAGE
) -> list[tuple[str, str]]:
    """Every (weak, strong) pair of models scored on ``min_coverage`` of the prompts whose means differ by ``min_gap``.

    ``outcomes`` holds one source's prompts (model -> outcome). Weak is the model with the lower mean over the prompts
    both have; the order is sorted by name, so the list does not depend on the data's order.
    """
    models = sorted({m for row in outcomes for m in row})
    pairs: list[tuple[str, str]] = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            both = [(row[a], row[b]) for row in outcomes if a in row and b in row]
            if not both or len(both) < min_coverage * len(outcomes):
                continue
            mean_a, mean_b = np.mean(both, axis=0).tolist()
            if abs(mean_b - mean_a) >= min_gap:
                pairs.append((a, b) if mean_a < mean_b else (b, a))
    return pairs


def _source_pairs(source: str, outcomes: Sequence[Mapping[str, float]], mode: str) -> list[tuple[str, str]]:
    """The pairs scored for one held-out source: the listed ones, or the notes' pair first and then every gap pair."""
    if mode == "listed":
        return list(PAIRS[source])
    first = PAIRS[source][0]
    return [first, *(p for p in gap_pairs(outcomes) if p != first)]


def _apgr(score: FloatArray, weak: FloatArray, strong: FloatArray) -> float:
    """APGR of one scoring."""
    return routing_curve(score, weak, strong).apgr


def _gain_scores(difficulty: FloatArray, weak_ability: float, strong_ability: float) -> FloatArray:
    return np.asarray([expected_gain(weak_ability, strong_ability, d) for d in difficulty.tolist()], dtype=np.float64)


def _fold_abilities(calibration: t.Calibration, train_data: t.Dataset) -> dict[str, float]:
    """Abilities of the models the training sources scored (a model seen only in the held-out source is unknown)."""
    seen = np.unique(train_data.obs_model)
    return {train_data.models[i]: calibration.abilities[train_data.models[i]] for i in seen.tolist()}


def _pair_abilities(abilities: Mapping[str, float], weak: str, strong: str) -> tuple[float, float] | None:
    """The pair's abilities by canonical name, or None if either model is unknown."""
    w, s = abilities.get(canonical_model_name(weak)), abilities.get(canonical_model_name(strong))
    return None if w is None or s is None else (w, s)


def _on_rows(
    raw: Callable[[t.Head, npt.NDArray[np.int64]], FloatArray],
    rows_of_all: npt.NDArray[np.int64],
    head: t.Head,
    rows: npt.NDArray[np.int64],
) -> FloatArray:
    """``raw`` on a subset's ``rows``, given where the subset's rows are among all prompts."""
    return raw(head, rows_of_all[rows])


def unit_bags(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The ``--normalise-bag`` ablation: each row's bag columns (all but the last, the length) scaled to unit L2 norm.

    Cosine geometry, as model2vec's own ``encode`` normalises; the shipped graph does not do this (model card).
    An all-zero bag stays zero.
    """
    bag = x[:, :-1]
    norms = np.linalg.norm(bag, axis=1, keepdims=True)
    return np.concatenate([bag / np.where(norms > 0, norms, 1.0), x[:, -1:]], axis=1).astype(np.float32)


def run_loso(
    data_dir: Path,
    cache: Path,
    spec: FeatureSpec,
    alpha: float = t.RIDGE_ALPHA,
    use_length: bool = True,
    pca_dims: int = t.PCA_DIMS,
    target_kind: str = t.TARGETS[0],
    normalise_bag: bool = False,
    pairs: str = PAIR_MODES[0],
    token_clip: float = t.TOKEN_SCORE_CLIP,
) -> list[PairResult]:
    """Train without each source in turn and score it on its pairs (``pairs``: one of :data:`PAIR_MODES`;
    ``token_clip``: the per-token score clip, inf for none; the normalised-bag ablation is never clipped)."""
    data = t.load_dataset(data_dir, target_kind)
    table, tokenizer_path = t.distil_table(cache, pca_dims)
    featurizer = Featurizer(WordPieceTokenizer.from_file(tokenizer_path), spec)
    features = t.encode_all(featurizer, data.prompts, "features")
    if not use_length:  # a constant column gets no weight: the ablation without the length feature
        features = [Features(f.ids, np.zeros_like(f.dense)) for f in features]
    x = t.pooled(table.dequantized, features, spec.prior_tokens)
    if normalise_bag:
        x = unit_bags(x)

    def raw(head: t.Head, rows: npt.NDArray[np.int64]) -> FloatArray:
        if normalise_bag:
            return head.predict(x[rows])
        scorer = t.Scorer.of(table.dequantized, head, spec.prior_tokens, token_clip)
        return scorer.raw([features[i] for i in rows.tolist()])

    sources = np.asarray(data.sources)
    rng = np.random.default_rng(t.SEED)
    results: list[PairResult] = []
    for source in t._progress(sorted(PAIRS), desc="held-out sources"):
        train_mask = sources != source
        train_data = t.subset(data, train_mask)
        train_rows = np.nonzero(train_mask)[0]
        raw_oof = t.out_of_fold(
            x[train_mask],
            train_data.target,
            train_data.sources,
            alpha=alpha,
            score=functools.partial(_on_rows, raw, train_rows),
        )
        calibration = t.fit_calibration(raw_oof, train_data)
        weights = t.source_weights(train_data.sources)
        head = t.fit_head(x[train_mask], train_data.target, alpha=alpha, weights=weights)
        held = np.nonzero(~train_mask)[0]
        difficulty = calibration.difficulty(raw(head, held))
        abilities = _fold_abilities(calibration, train_data)
        draws = RANDOM_DRAWS if pairs == "listed" else RANDOM_DRAWS // 10  # hundreds of pairs: a coarser noise SD
        for weak_name, strong_name in _source_pairs(source, [data.raw_models[i] for i in held], pairs):
            rows = [
                j for j, i in enumerate(held) if weak_name in data.raw_models[i] and strong_name in data.raw_models[i]
            ]
            idx = held[rows]
            d = difficulty[rows]
            weak = np.asarray([data.raw_models[i][weak_name] for i in idx])
            strong = np.asarray([data.raw_models[i][strong_name] for i in idx])
            pair_abilities = _pair_abilities(abilities, weak_name, strong_name)
            gain = d if pair_abilities is None else _gain_scores(d, *pair_abilities)
            fits = [_apgr(pair_gain_scores(d, weak, strong, seed=s), weak, strong) for s in range(FIT_SEEDS)]
            randoms = [_apgr(rng.permutation(len(idx)).astype(np.float64), weak, strong) for _ in range(draws)]
            results.append(
                PairResult(
                    source=source,
                    weak=weak_name,
                    strong=strong_name,
                    items=len(idx),
                    router=_apgr(d, weak, strong),
                    router_gain=_apgr(gain, weak, strong),
                    gain_abilities=pair_abilities,
                    router_fit=float(np.mean(fits)),
                    router_fit_sd=float(np.std(fits)),
                    length=_apgr(length_scores([data.prompts[i] for i in idx]), weak, strong),
                    random_sd=float(np.std(randoms)),
                    oracle=_apgr(oracle_scores(weak, strong), weak, strong),
                    irt=_apgr(data.target[idx], weak, strong),
                )
            )
    return results


ROUTERS = ("router", "router_gain", "router_fit", "length", "irt", "oracle")
BAR_MARGIN = 0.03
"""The quality bar: mean APGR over sources above the length rule's, and no source more than this below it."""


def _label(key: str) -> str:
    """Column name of a router field."""
    return key.replace("_fit", "+fit").replace("_gain", "-gain")


def _bar(rows: Sequence[PairResult], key: str) -> str:
    """Whether ``key`` meets the bar against length on these rows (one per source): mean and worst source."""
    if not rows:
        return f"{_label(key)}: no pairs"
    gaps = [getattr(r, key) - r.length for r in rows]
    mean = float(np.mean([getattr(r, key) for r in rows]))
    ok = mean > float(np.mean([r.length for r in rows])) and min(gaps) >= -BAR_MARGIN
    return f"{_label(key)}: mean {mean:.3f}, worst source {min(gaps):+.3f} vs length -> {'meets' if ok else 'fails'}"


def _source_means(results: Sequence[PairResult]) -> list[PairResult]:
    """One pseudo-row per source holding the mean over its pairs (for the all-pairs bar)."""
    out = []
    for source in sorted({r.source for r in results}):
        rs = [r for r in results if r.source == source]
        means = {k: float(np.mean([getattr(r, k) for r in rs])) for k in (*ROUTERS, "router_fit_sd", "random_sd")}
        out.append(PairResult(source, "*", "*", sum(r.items for r in rs), gain_abilities=None, **means))
    return out


def _main_table(main_rows: Sequence[PairResult]) -> list[str]:
    """The notes' pair per source, with the random router's noise and the mean row."""
    lines = [
        "Main pair per source (APGR; router+fit ± SD over 5 cross-fit halvings; random = 0.500 ± SD of permutations;"
        " irt uses the held-out labels)",
        "",
        "| held-out source | pair | n | router | router-gain | router+fit | length | random | irt | oracle |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in main_rows:
        lines.append(
            f"| {r.source} | {r.weak} → {r.strong} | {r.items} | {r.router:.3f} | {r.router_gain:.3f} |"
            f" {r.router_fit:.3f} ± {r.router_fit_sd:.3f} | {r.length:.3f} | 0.500 ± {r.random_sd:.3f} |"
            f" {r.irt:.3f} | {r.oracle:.3f} |"
        )
    mean = {k: float(np.mean([getattr(r, k) for r in main_rows])) for k in ROUTERS}
    lines.append(
        f"| **mean** | | | {mean['router']:.3f} | {mean['router_gain']:.3f} | {mean['router_fit']:.3f} |"
        f" {mean['length']:.3f} | 0.500 | {mean['irt']:.3f} | {mean['oracle']:.3f} |"
    )
    return lines


def _header(first: Sequence[str]) -> list[str]:
    """A markdown table header: the given leading columns, then one per router."""
    names = [*first, *(_label(k) for k in ROUTERS)]
    return [f"| {' | '.join(names)} |", "|" + "---|" * len(names)]


def _source_rows(results: Sequence[PairResult], sources: Sequence[str], spread: bool) -> list[str]:
    """One row per source: its pair count, the share where the router beats length, each router's mean (± SD)."""
    lines = []
    for source in sources:
        rs = [r for r in results if r.source == source]
        if not rs:
            lines.append(f"| {source} | 0 | | " + " | ".join("" for _ in ROUTERS) + " |")
            continue
        values = [[getattr(r, k) for r in rs] for k in ROUTERS]
        cells = [f"{np.mean(v):.3f} ± {np.std(v):.3f}" if spread else f"{np.mean(v):.3f}" for v in values]
        wins = np.mean([r.router > r.length for r in rs])
        lines.append(f"| {source} | {len(rs)} | {wins:.2f} | " + " | ".join(cells) + " |")
    return lines


def _source_table(results: Sequence[PairResult]) -> list[str]:
    """Mean ± SD over the pairs of each source, the share of pairs where the router beats length, the mean row."""
    means = [f"{np.mean([getattr(r, k) for r in _source_means(results)]):.3f}" for k in ROUTERS]
    return [
        f"All pairs ({len(results)}): mean ± SD over the pairs of each source; 'router > length': share of its pairs",
        "",
        *_header(["held-out source", "pairs", "router > length"]),
        *_source_rows(results, sorted({r.source for r in results}), spread=True),
        "| **mean of sources** | | | " + " | ".join(means) + " |",
    ]


def _difficulty_pairs(results: Sequence[PairResult]) -> list[PairResult]:
    """The pairs where ranking by difficulty is the right signal at all: the held-out source's own difficulty beats
    random on them. Selecting them uses held-out labels; scoring the routers on them does not."""
    return [r for r in results if r.irt > 0.5]


def _difficulty_pairs_table(results: Sequence[PairResult]) -> list[str]:
    """The mean of each router over :func:`_difficulty_pairs`, per source (a source without such pairs stays empty)."""
    kept = _difficulty_pairs(results)
    return [
        f"Pairs where the held-out source's own difficulty beats random (irt > 0.5): {len(kept)} of {len(results)}",
        "",
        *_header(["held-out source", "pairs", "router > length"]),
        *_source_rows(kept, sorted({r.source for r in results}), spread=False),
    ]


MAX_PAIR_ROWS = 40
"""Longer reports (``--pairs all``) leave out the per-pair table; ``--json`` keeps every pair."""


def _pair_table(results: Sequence[PairResult]) -> list[str]:
    """Every pair, with the abilities router-gain used."""
    if len(results) > MAX_PAIR_ROWS:
        return [f"({len(results)} pairs: per-pair rows only with --json FILE)"]
    lines = [
        f"| held-out source | pair | {' | '.join(_label(k) for k in ROUTERS)} | gain abilities (weak, strong) |",
        "|" + "---|" * (len(ROUTERS) + 3),
    ]
    for r in results:
        ab = "difficulty (unknown model)" if r.gain_abilities is None else "{:+.2f}, {:+.2f}".format(*r.gain_abilities)
        row = " | ".join(f"{getattr(r, k):.3f}" for k in ROUTERS)
        lines.append(f"| {r.source} | {r.weak} → {r.strong} | {row} | {ab} |")
    return lines


def format_report(results: Sequence[PairResult]) -> list[str]:
    """Markdown tables: the notes' pair per source, mean ± SD over all pairs per source, the pairs where difficulty
    is the right ranking, every pair, and the bar on each of these views."""
    main_rows = [next(r for r in results if r.source == s) for s in sorted({r.source for r in results})]
    lines = [*_main_table(main_rows), "", *_source_table(results), "", *_difficulty_pairs_table(results), ""]
    lines += [*_pair_table(results), "", f"Bar (mean above length, no source more than {BAR_MARGIN} below it):"]
    difficulty_pairs = _source_means(_difficulty_pairs(results))
    for key in ("router", "router_gain", "router_fit"):
        lines.append(
            f"- main pairs, {_bar(main_rows, key)}; all pairs, {_bar(_source_means(results), key)};"
            f" pairs where difficulty beats random ({len(difficulty_pairs)} sources), {_bar(difficulty_pairs, key)}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: print the report (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m classifier.loso", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=t.REPO / ".." / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "model-router-train")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--head-chars", type=int, default=TextCut().head_chars)
    parser.add_argument("--tail-chars", type=int, default=TextCut().tail_chars)
    parser.add_argument("--prior-tokens", type=float, default=t.PRIOR_TOKENS)
    parser.add_argument("--length-cap", type=int, default=t.LENGTH_CAP_TOKENS)
    parser.add_argument("--no-neutral", action="store_true", help="keep every word in the bag (ablation)")
    parser.add_argument("--no-length", action="store_true", help="drop the length feature (ablation)")
    parser.add_argument(
        "--normalise-bag", action="store_true", help="scale each bag to unit L2 length (ablation; not in the graph)"
    )
    parser.add_argument("--alpha", type=float, default=t.RIDGE_ALPHA, help="ridge penalty of the head")
    parser.add_argument(
        "--token-clip", type=float, default=t.TOKEN_SCORE_CLIP, help="per-token score clip (inf: none; ablation)"
    )
    parser.add_argument("--pca-dims", type=int, default=t.PCA_DIMS, help="dimensions of the distilled table")
    parser.add_argument("--target", choices=t.TARGETS, default=t.TARGETS[0], help="training target (default: shipped)")
    parser.add_argument(
        "--pairs",
        choices=PAIR_MODES,
        default=PAIR_MODES[0],
        help=f"score the four listed pairs per source, or every pair with a mean-outcome gap >= {MIN_GAP}",
    )
    args = parser.parse_args(argv)
    t.check_data_dir(parser, args.data)
    spec = FeatureSpec(
        cut=TextCut(head_chars=args.head_chars, tail_chars=args.tail_chars),
        length_cap_tokens=args.length_cap,
        prior_tokens=args.prior_tokens,
        neutral_words=() if args.no_neutral else NEUTRAL_WORDS,
    )
    results = run_loso(
        args.data,
        args.cache,
        spec,
        alpha=args.alpha,
        use_length=not args.no_length,
        pca_dims=args.pca_dims,
        target_kind=args.target,
        normalise_bag=args.normalise_bag,
        pairs=args.pairs,
        token_clip=args.token_clip,
    )
    print("\n".join(format_report(results)))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps([_as_dict(r) for r in results]))
    return 0


def _as_dict(result: PairResult) -> dict[str, object]:
    """A JSON-ready copy of one result."""
    return {k: getattr(result, k) for k in PairResult.__slots__}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
