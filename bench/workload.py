"""The request bodies wrk sends: real prompts from ``../shared/data/prompts.jsonl.gz`` in the OpenAI chat shape.

wrk's Lua cannot read gzip or build JSON cheaply, so the bodies are written here once, one compact JSON body per
line (orjson escapes newlines inside strings, so a body never spans lines). A fixed seed picks the same prompts
every run, spread over every source and category.
"""

from __future__ import annotations

import gzip
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["DEFAULT_PROMPTS", "Workload", "chat_body", "write_bodies"]

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "prompts.jsonl.gz"


@dataclass(frozen=True, slots=True)
class Workload:
    """Where the bodies are and what they look like."""

    path: Path
    count: int
    median_bytes: int
    p90_bytes: int
    max_bytes: int


def chat_body(prompt: str) -> bytes:
    """The body an OpenAI client sends for one user turn to the routable model ``auto``."""
    return orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": prompt}]})


def write_bodies(out: Path, prompts: Path = DEFAULT_PROMPTS, count: int = 1000, seed: int = 12) -> Workload:
    """Write ``count`` bodies sampled with ``seed`` from ``prompts`` to ``out``, one per line."""
    with gzip.open(prompts, "rb") as f:
        texts = [str(orjson.loads(line)["prompt"]) for line in f if line.strip()]
    picked = random.Random(seed).sample(texts, min(count, len(texts)))
    bodies = [chat_body(t) for t in picked]
    out.write_bytes(b"\n".join(bodies) + b"\n")
    sizes = sorted(len(b) for b in bodies)
    return Workload(
        path=out,
        count=len(bodies),
        median_bytes=int(statistics.median(sizes)),
        p90_bytes=sizes[int(0.9 * (len(sizes) - 1))],
        max_bytes=sizes[-1],
    )
