"""The README's adaptation table: ``model-router adapt`` on 1,000 records of one benchmark, scored on the rest of it.

For each source and pair: a seeded sample of 1,000 records (EVAL.md form, built from ``../shared/data/``) goes to
``run_adapt`` (its 5-fold report is printed); the written model directory is then loaded as the server loads it and
scored on every other record of that source, beside the shipped model and the length rule. Run:
``.venv/bin/python -m bench.adapt_table [--train 1000]`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from classifier.adapt import FloatArray, run_adapt
from classifier.loader import DEFAULT_MODEL_DIR
from classifier.metrics import RouterMetrics, length_scores, routing_curve
from classifier.onnx_model import OnnxDifficultyModel
from extproc.cli import prompt_text_of_item

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "outcomes.jsonl.gz"
PAIRS = (
    ("ulab_llmrouter", "mistral-7b-instruct-v0.3", "llama-3.1-nemotron-51b-instruct"),
    ("mmlu_pro", "Mixtral-8x7B-Instruct-v0.1", "gpt-4o-2024-05-13_early"),
)


def _items(source: str, weak: str, strong: str) -> list[dict[str, object]]:
    with gzip.open(DATA, "rb") as fh:
        rows = [orjson.loads(line) for line in fh]
    return [
        {"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}], "scores": r["scores"]}
        for r in sorted(rows, key=lambda r: str(r["id"]))
        if r["source"] == source and weak in r["scores"] and strong in r["scores"]
    ]


def main() -> None:
    """Print each pair's adapt report, then one markdown table of the held-out figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = OnnxDifficultyModel.load(DEFAULT_MODEL_DIR)
    table = [
        "| source (weak → strong) | records adapted / scored | scorer | APGR | CPT50 | S95 |",
        "|---|---|---|---|---|---|",
    ]
    for source, weak, strong in PAIRS:
        items = _items(source, weak, strong)
        random.Random(args.seed).shuffle(items)
        train, rest = items[: args.train], items[args.train :]
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "outcomes.jsonl"
            data.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in train))
            report = io.StringIO()
            code = run_adapt(data, Path(tmp) / "model", weak, strong, None, prompt_text_of_item, 5, 0, report)
            print(f"## {source}: {weak} -> {strong}\n{report.getvalue()}")
            if code != 0:
                continue
            adapted = OnnxDifficultyModel.load(Path(tmp) / "model")
            texts = [prompt_text_of_item(i) or "" for i in rest]
            w = np.asarray([i["scores"][weak] for i in rest], dtype=np.float64)  # type: ignore[index]
            s = np.asarray([i["scores"][strong] for i in rest], dtype=np.float64)  # type: ignore[index]
            scorers: dict[str, Sequence[float] | FloatArray] = {
                "adapted": [adapted.predict(t).difficulty for t in texts],
                "shipped": [base.predict(t).difficulty for t in texts],
                "length": length_scores(texts),
            }
            for name, score in scorers.items():
                m = RouterMetrics.of(routing_curve(score, w, s))
                cells = (f"{source} ({weak} → {strong})", f"{len(train):,} / {len(rest):,}", name)
                table.append(f"| {' | '.join(cells)} | {m.apgr:.3f} | {m.cpt50:.3f} | {m.s95:.3f} |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
