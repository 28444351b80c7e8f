"""Classifier latency, load time and memory: ``python bench/classifier_bench.py [--model DIR]``.

Pinned to one core (``sched_setaffinity``) with onnxruntime at one thread, as the sidecar runs it. Prompts are real
prompts from ``../shared/data`` cut or concatenated to exact lengths. Each call is timed with ``perf_counter_ns``
around ``predict`` (cut + tokenise + graph + calibration). RSS is the process's resident set after loading and
after the timed runs, next to the interpreter + numpy baseline measured before importing the classifier.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

__all__ = ["main"]


def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_us(call: Callable[[str], object], text: str) -> float:
    """Thread CPU time of ``call(text)`` in µs."""
    start = time.thread_time_ns()
    call(text)
    return (time.thread_time_ns() - start) / 1000


def prompts_of_length(pool: list[str], length: int, count: int, rng: random.Random) -> list[str]:
    """``count`` texts of exactly ``length`` characters, each starting at a random prompt of the pool."""
    out = []
    for _ in range(count):
        text = ""
        while len(text) < length:
            text += rng.choice(pool) + "\n\n"
        out.append(text[:length])
    return out


NON_ASCII = {
    "russian": "Объясните, пожалуйста, теорему Пифагора и приведите её доказательство.",
    "chinese": "请解释一下量子纠缠的基本原理，并举例说明它在量子计算中的应用。",  # noqa: RUF001  (Chinese comma)
    "arabic": "اشرح لي نظرية فيثاغورس مع البرهان من فضلك.",
    "emoji": "🙂🚀 hello 🎉🔥",
}
"""One sentence per script for the stress rows (the shared prompts are almost all English)."""


def repeated(text: str, length: int, gap: str) -> str:
    """``text`` repeated with ``gap`` between copies, cut to exactly ``length`` characters."""
    return ((text + gap) * (length // (len(text) + len(gap)) + 1))[:length]


def stress_shapes(pool: list[str], length: int, count: int, rng: random.Random) -> dict[str, list[str]]:
    """Texts the cut's de-duplication reads widest: one prompt repeated to ``length`` (by line or within a line),
    and non-English sentences repeated. Not the bar's distribution: they show how far the cost moves with the text."""
    short = [p for p in pool if 40 <= len(p) <= 400]
    prompts = [rng.choice(short) for _ in range(count)]
    shapes = {
        "one prompt repeated, by line": [repeated(p, length, "\n\n") for p in prompts],
        "one prompt repeated, in line": [repeated(p, length, " ") for p in prompts],
        "numbered copies of one prompt": ["".join(f"{i}. {p}\n" for i in range(1, 400))[:length] for p in prompts],
        "a filler word, then a prompt": [("um " * length)[: length - len(p)] + p for p in prompts],
        "a filler phrase, then a prompt": [
            ("please answer carefully " * length)[: length - len(p)] + p for p in prompts
        ],
    }
    for script, sentence in NON_ASCII.items():
        shapes[f"{script} repeated, in line"] = [repeated(sentence, length, " ")] * count
    return shapes


def main() -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    with gzip.open(args.data / "prompts.jsonl.gz", "rb") as fh:
        pool = [str(orjson.loads(line)["prompt"]) for line in fh]
    rng = random.Random(0)
    sizes = (100, 1000, 8000)
    texts_by_size = {n: prompts_of_length(pool, n, args.runs, rng) for n in sizes}
    shapes = stress_shapes(pool, sizes[-1], args.runs // 4, rng)
    del pool
    baseline = rss_mb()

    from classifier.loader import load_difficulty_model

    imported = time.perf_counter()
    model = load_difficulty_model("onnx", args.model)
    loaded = time.perf_counter()
    after_load = rss_mb()

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine is shared)")
    print(f"model {model.name}; one core (cpu {args.cpu}); {args.runs} runs per length after 200 warm-up calls")
    print(f"load (incl. onnxruntime import): {1000 * (loaded - imported):.0f} ms")
    print("wall = perf_counter around predict; cpu = thread CPU time (excludes time preempted by other processes)")
    print(f"each length is timed in {args.rounds} interleaved rounds; the table shows the median round")
    print(f"{'chars':>6} {'wall p50':>9} {'wall p99':>9} {'cpu p50':>8} {'cpu p99':>8}   (µs)")
    for text in texts_by_size[sizes[-1]][:200]:
        model.predict(text)
    stats: dict[int, list[tuple[float, float, float, float]]] = {n: [] for n in sizes}
    for _ in range(args.rounds):
        for length in sizes:
            texts = texts_by_size[length]
            wall = np.empty(len(texts))
            cpu = np.empty(len(texts))
            for i, text in enumerate(texts):
                c0 = time.thread_time_ns()
                t0 = time.perf_counter_ns()
                model.predict(text)
                wall[i] = (time.perf_counter_ns() - t0) / 1000
                cpu[i] = (time.thread_time_ns() - c0) / 1000
            w50, w99 = np.percentile(wall, [50, 99])
            c50, c99 = np.percentile(cpu, [50, 99])
            stats[length].append((float(w50), float(w99), float(c50), float(c99)))
    for length in sizes:
        w50, w99, c50, c99 = np.median(np.asarray(stats[length]), axis=0)
        print(f"{length:>6} {w50:9.0f} {w99:9.0f} {c50:8.0f} {c99:8.0f}")
    print(f"stress shapes at {sizes[-1]} characters (one round; thread CPU µs):")
    for name, texts in shapes.items():
        cpu = np.asarray([cpu_us(model.predict, text) for text in texts])
        c50, c99 = np.percentile(cpu, [50, 99])
        print(f"  {name:<32} p50 {c50:5.0f}  p99 {c99:5.0f}")
    print(
        f"RSS: interpreter+numpy {baseline:.0f} MB, after load {after_load:.0f} MB, after runs {rss_mb():.0f} MB"
        f" (classifier share {after_load - baseline:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
