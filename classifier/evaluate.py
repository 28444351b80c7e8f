"""``model-router eval``: score an EVAL.md file with a difficulty model and print the routing metrics.

The CLI glue (``extproc/cli.py``) passes ``text_of``, which runs the live server's schema parsing, so what is scored
here is exactly what the router would classify. The written score is the model's difficulty: the live policy sends a
prompt to the strong model iff its difficulty exceeds a threshold, so ranking by difficulty *is* the live router.

When the file carries outcomes, two router rows are printed:
- ``router``: the difficulty as is (no labels of this file used);
- ``router+fit``: the expected gain ``P(strong ok) - P(weak ok)``, with each of the two models' success curve on the
  difficulty fitted from this file's outcomes, cross-fitted (each half scored with curves fitted on the other half).
  It shows what fitting the catalog to a deployment's own outcome records buys (see ``classifier/irt.py``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import orjson

from classifier.atomic_file import clash, write_whole
from classifier.irt import fit_success_curve
from classifier.jsonl import NOT_JSON, NOT_UTF8, READ_ERRORS, first_of_each_id, io_reason, read_jsonl, unit_score
from classifier.metrics import Curve, RouterMetrics, length_scores, oracle_scores, routing_curve
from classifier.model import DifficultyModel

__all__ = [
    "EvalError",
    "NotJsonLine",
    "choose_pair",
    "last_user_text",
    "load_items",
    "pair_gain_scores",
    "read_items",
    "run_eval",
]

FloatArray = npt.NDArray[np.float64]
TextOf = Callable[[Mapping[str, Any]], str | None]


class EvalError(Exception):
    """What the operator must fix (unreadable ``--data``, unwritable ``--out`` or ``--plot``): one line, exit 2."""


class NotJsonLine(ValueError):
    """A line of a JSON Lines file that does not parse: ``path`` and its 1-based line ``number``."""

    def __init__(self, path: Path, number: int) -> None:
        super().__init__(f"{path}:{number}: not JSON")
        self.path = path
        self.number = number


def read_items(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSON Lines file (gzip if the name ends in ``.gz``); blank lines are skipped, a
    line that is not JSON raises :class:`NotJsonLine` (a ``ValueError``) naming it, a JSON value that is not an
    object is ``{"_invalid": v}``. A file that cannot be read raises ``OSError`` or ``EOFError`` (truncated .gz)."""
    for number, item in read_jsonl(path):
        if item is NOT_JSON:
            raise NotJsonLine(path, number)
        yield item if isinstance(item, dict) else {"_invalid": item}


def last_user_text(item: Mapping[str, Any]) -> str | None:
    """A stand-in for the server's parsing: the text of the last user message (string or text parts)."""
    messages = item.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            texts = [p for p in parts if isinstance(p, str)]
            return "\n".join(texts) if texts else None
        return None
    return None


def choose_pair(
    scores: Sequence[Mapping[str, float]], weak: str | None = None, strong: str | None = None
) -> tuple[str, str] | None:
    """Default weak/strong models: strong = best mean outcome; weak = the median model by mean outcome.

    The weakest model is often a broken baseline that nothing needs routing away from; the median model is the
    "good enough for most" tier a router is meant to fall back on. Only models scored on >= 90% of items count. A
    model already named (``weak`` or ``strong``) is kept and never chosen for the other side: ``--weak`` naming the
    best model must not make it its own strong model, and ``--strong`` naming a middling one gets the median of the
    models below it as weak. None if no such pair exists.
    """
    totals: dict[str, list[float]] = {}
    for sc in scores:
        for name, value in sc.items():
            totals.setdefault(name, []).append(value)
    eligible = {n: float(np.mean(v)) for n, v in totals.items() if len(v) >= 0.9 * len(scores)}
    ranked = sorted((n for n in eligible if n not in (weak, strong)), key=lambda n: (eligible[n], n))
    if strong is None:
        if not ranked:
            return None
        strong = ranked.pop()
    if weak is None:
        below = [n for n in ranked if strong in eligible and eligible[n] < eligible[strong]]
        candidates = below or ranked  # a named strong model: the median of those it beats, if any
        if not candidates:
            return None
        weak = candidates[len(candidates) // 2]
    return weak, strong


def pair_gain_scores(
    difficulty: FloatArray, weak: FloatArray, strong: FloatArray, seed: int = 0, folds: int = 2
) -> FloatArray:
    """Cross-fitted expected gain ``P(strong ok | d) - P(weak ok | d)`` from per-model success curves."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(difficulty)) % folds
    out = np.zeros(len(difficulty))
    for k in range(folds):
        fit, score = fold != k, fold == k
        w = fit_success_curve(difficulty[fit], weak[fit])
        s = fit_success_curve(difficulty[fit], strong[fit])
        out[score] = s.probability(difficulty[score]) - w.probability(difficulty[score])
    return out


@dataclass(frozen=True, slots=True)
class _Row:
    """One line of the metrics table."""

    label: str
    curve: Curve


def _format(rows: Sequence[_Row]) -> list[str]:
    """A fixed-width table of the EVAL.md figures."""
    lines = [f"{'scorer':<12} {'APGR':>6} {'CPT50':>6} {'CPT80':>6} {'S95':>6}"]
    for row in rows:
        m = RouterMetrics.of(row.curve)
        lines.append(f"{row.label:<12} {m.apgr:6.3f} {m.cpt50:6.3f} {m.cpt80:6.3f} {m.s95:6.3f}")
    return lines


def _check_plot(plot: Path) -> None:
    """Checked before any scoring: ``--plot`` needs matplotlib, which only the dev and train extras install, and a
    ``.png`` name that is not a directory (matplotlib would add a suffix of its own, or write the format a suffix
    names, and so write a file other than the one named)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EvalError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
    if plot.is_dir():
        raise EvalError(f"--plot {plot} is a directory; name a .png file")
    if plot.suffix.lower() != ".png":
        raise EvalError(f"--plot {plot} must end in .png (the plot is a PNG)")


def _check_distinct(data: Path, out: Path, plot: Path | None) -> None:
    """Refuse an output that is an input, or two outputs that are one file: writing it would destroy the other."""
    outputs = [(("--out", out), [("the --data file", data)])]
    if plot is not None:
        outputs.append((("--plot", plot), [("the --data file", data), ("the --out file", out)]))
    for output, inputs in outputs:
        if (message := clash(output, inputs)) is not None:
            raise EvalError(message)


def _plot(rows: Sequence[_Row], path: Path, title: str) -> None:
    """Quality against the share sent to the strong model, one line per router (matplotlib imported lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        ax.plot(row.curve.fraction, row.curve.quality, label=f"{row.label} (APGR {row.curve.apgr:.3f})")
    ax.set_xlabel("share of prompts sent to the strong model")
    ax.set_ylabel("mean outcome")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120, format="png")  # the format named, never guessed from the suffix
    except OSError as exc:
        raise EvalError(f"cannot write --plot {path} ({io_reason(exc)})") from None
    finally:
        plt.close(fig)


def _eval_items(option: str, path: Path) -> tuple[list[dict[str, Any]], list[int], dict[int, str]]:
    """``path``'s items (a JSON value that is not an object is ``{"_invalid": v}``), their line numbers, and for each
    line that cannot be read, its position in the list -> why (``not JSON``, ``not UTF-8``; ``eval`` still scores
    it: EVAL.md asks for a line per item). :class:`EvalError` naming ``option`` if the file cannot be read."""
    items: list[dict[str, Any]] = []
    lines: list[int] = []
    unread: dict[int, str] = {}
    try:
        for number, item in read_jsonl(path, not_utf8=True):
            if item is NOT_JSON or item is NOT_UTF8:
                unread[len(items)] = "not UTF-8" if item is NOT_UTF8 else "not JSON"
            items.append(item if isinstance(item, dict) else {"_invalid": item})
            lines.append(number)
    except READ_ERRORS as exc:
        raise EvalError(f"cannot read {option} {path} ({io_reason(exc)})") from None
    return items, lines, unread


def load_items(option: str, path: Path, skip_torn: bool = False) -> list[dict[str, Any]]:
    """Every item of the EVAL.md file ``path`` given as ``option``; :class:`EvalError` naming both (and the line
    that cannot be read) if it cannot be read. ``skip_torn`` leaves lines that cannot be read out instead (``eval``
    scores them with no id, so nothing can be joined to them)."""
    items, lines, unread = _eval_items(option, path)
    if unread and not skip_torn:
        first = min(unread)
        raise EvalError(f"cannot read {option} {path} (line {lines[first]} is {unread[first]})")
    return [item for i, item in enumerate(items) if i not in unread]


def _listed(values: Sequence[object], limit: int = 5) -> str:
    """The first ``limit`` values, comma-separated, with ``...`` if there are more."""
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def run_eval(
    data: Path,
    out: Path,
    model: DifficultyModel,
    text_of: TextOf,
    weak: str | None,
    strong: str | None,
    plot: Path | None,
    stdout: TextIO,
    stderr: TextIO | None = None,
    opening_of: TextOf | None = None,
) -> int:
    """Score every item of ``data`` into ``out`` (one ``{"id", "score"}`` line each) and print the metrics.

    ``opening_of`` gives a multi-turn item's first user turn, whose decision the live server makes the conversation's
    floor: the item's score is then the higher of the two turns' difficulties, the one the live policy acts on. Outcome
    scores that are not numbers in [0, 1] (``NaN``, ``Infinity``, 50) are no score: left out and counted.

    Items whose text the server would not classify get the file's maximum score (such requests go to the default model),
    as does a line that is not JSON or not UTF-8 (torn by a crash or a full disk); if no item is classifiable there is
    no maximum and every item scores 0.0. They are counted in a summary line. An item without an id (a torn line has
    none) is written as ``{"id": null, "line": N, "score": S}``, N its line number: an invented id could collide with a
    real one. An id seen before is counted on ``stderr`` and its item left out (only the first item with an id is
    scored). ``out`` is replaced whole once written (:func:`classifier.atomic_file.write_whole`). Without ``weak`` or
    ``strong`` the pair is chosen from the file (:func:`choose_pair`); if the two models tie on average, PGR is
    undefined and the metrics are skipped with a line saying so. Exit code: 0 on success; 2, with one ``model-router
    eval: ...`` line on ``stderr`` (default: the process's), if ``data`` cannot be read or is empty, ``out`` or ``plot``
    cannot be written or is an input, ``plot`` is not a ``.png`` name, ``weak`` and ``strong`` are one model, or the
    named models are missing everywhere.
    """
    err = sys.stderr if stderr is None else stderr
    try:
        _check_distinct(data, out, plot)
        if weak is not None and weak == strong:
            raise EvalError("--weak and --strong must name different models")
        if plot is not None:
            _check_plot(plot)
        items, lines, unread = _eval_items("--data", data)
        if not items:
            raise EvalError(f"--data {data} has no items")
        first, again = first_of_each_id(items)
        if again:
            unread = {new: unread[old] for new, old in enumerate(first) if old in unread}
            items, lines = [items[i] for i in first], [lines[i] for i in first]
            err.write(
                f"model-router eval: {len(again)} duplicate ids ({_listed(list(dict.fromkeys(again)))}): only the"
                " first item with an id is scored, the later ones are left out of --out and the metrics\n"
            )
        texts: list[str | None] = [None if i in unread else text_of(item) for i, item in enumerate(items)]
        difficulty = np.asarray(
            [model.predict(t).difficulty if t is not None else math.nan for t in texts], dtype=np.float64
        )
        openings = [
            None if i in unread or texts[i] is None or opening_of is None else opening_of(item)
            for i, item in enumerate(items)
        ]
        for i, opening in enumerate(openings):
            if opening is not None:
                difficulty[i] = max(difficulty[i], model.predict(opening).difficulty)
        unparsed = np.isnan(difficulty)
        fallback = float(np.nanmax(difficulty)) if not unparsed.all() else 0.0
        as_fallback = "scored as the maximum" if not unparsed.all() else "scored 0.0, as no item is classifiable"
        difficulty[unparsed] = fallback
        records = []
        for item, number, score in zip(items, lines, difficulty.tolist(), strict=True):
            item_id = item.get("id")
            key = {"id": item_id} if item_id is not None else {"id": None, "line": number}
            records.append(orjson.dumps({**key, "score": round(score, 6)}) + b"\n")
        try:
            write_whole(out, lambda fh: fh.writelines(records))
        except OSError as exc:
            raise EvalError(f"cannot write --out {out} ({io_reason(exc)})") from None
        stdout.write(f"model {model.name}: scored {len(items)} items into {out}\n")
        for reason in ("not JSON", "not UTF-8"):
            if numbers := [lines[i] for i, why in unread.items() if why == reason]:
                stdout.write(f"{reason}: {len(numbers)} lines ({_listed(numbers)}; {as_fallback}, id null)\n")
        if len(unread) < int(unparsed.sum()):
            stdout.write(f"not classifiable by the server: {int(unparsed.sum()) - len(unread)} items ({as_fallback})\n")
        if multi_turn := sum(o is not None for o in openings):
            stdout.write(f"multi-turn: {multi_turn} items scored at least as their first user turn (its floor)\n")

        outcomes = [_scores_of(item) for item in items]
        if invalid := sum(_invalid_scores(item) for item in items):
            stdout.write(f"scores that are not numbers in [0, 1]: {invalid} (left out)\n")
        if weak is None or strong is None:
            pair = choose_pair([o for o in outcomes if o], weak, strong)
            if pair is None:
                stdout.write("no outcome scores for two models: metrics skipped\n")
                if plot is not None:
                    err.write("model-router eval: --plot not written: no outcome scores\n")
                return 0
            weak, strong = pair
        keep = np.asarray([weak in o and strong in o for o in outcomes])
        if not keep.any():
            raise EvalError(f"no item of --data {data} has scores for both {weak!r} and {strong!r}")
        w = np.asarray([o[weak] for o, k in zip(outcomes, keep, strict=True) if k], dtype=np.float64)
        s = np.asarray([o[strong] for o, k in zip(outcomes, keep, strict=True) if k], dtype=np.float64)
        d = difficulty[keep]
        kept_texts = [t or "" for t, k in zip(texts, keep, strict=True) if k]
        stdout.write(
            f"pair: weak {weak} (mean {w.mean():.3f}) -> strong {strong} (mean {s.mean():.3f})"
            f" on {int(keep.sum())} items ({int((~keep).sum())} without both scores left out)\n"
        )
        router = routing_curve(d, w, s)
        if math.isnan(router.apgr):  # PGR divides by the gap between the two means
            stdout.write("the two models tie on average: PGR is undefined, metrics skipped\n")
            if plot is not None:
                err.write("model-router eval: --plot not written: the two models tie on average\n")
            return 0
        if s.mean() < w.mean():
            stdout.write(
                f"warning: the strong model scores below the weak one here (--weak/--strong swapped?): the metrics"
                f" measure sending prompts to {strong}, the worse model\n"
            )
        rows = [
            _Row("router", router),
            _Row("router+fit", routing_curve(pair_gain_scores(d, w, s), w, s)),
            _Row("length", routing_curve(length_scores(kept_texts), w, s)),
            _Row("random", routing_curve(np.zeros(len(d)), w, s)),
            _Row("oracle", routing_curve(oracle_scores(w, s), w, s)),
        ]
        for line in _format(rows):
            stdout.write(line + "\n")
        if plot is not None:
            _plot([r for r in rows if r.label != "router+fit"] + rows[1:2], plot, f"{data.name}\n{weak} → {strong}")
            stdout.write(f"plot written to {plot}\n")
        return 0
    except EvalError as exc:
        stdout.flush()  # what was printed so far, then the reason, in that order on a terminal
        print(f"model-router eval: {exc}", file=err)
        return 2


def _scores_of(item: Mapping[str, Any]) -> dict[str, float]:
    """The item's outcome per model; entries that are not numbers in [0, 1] are no score."""
    scores = item.get("scores")
    if not isinstance(scores, dict):
        return {}
    return {str(k): n for k, v in scores.items() if (n := unit_score(v)) is not None}


def _invalid_scores(item: Mapping[str, Any]) -> int:
    """How many of the item's scores are not numbers in [0, 1] (a non-numeric entry such as null counts too)."""
    scores = item.get("scores")
    return sum(unit_score(v) is None for v in scores.values()) if isinstance(scores, dict) else 0
