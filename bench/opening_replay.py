"""What replaying a conversation's opening turn costs one decision, in process (no Envoy, no gRPC framing).

A multi-turn request with no remembered floor (the second turn of a conversation without a session header) has its
first user turn classified beside its last one (README, *Stickiness*). This drives the router's own per-stream
handler with the shipped ONNX model on its classifier threads, one decision at a time, for three request shapes:
one user turn; two user turns with stickiness on (the opening is classified too: every request here is a
conversation's second turn, with no memory); the same two turns with stickiness off (no replay). Prompts are real
(``../shared/data/prompts.jsonl.gz``, the wrk workload's seeded sample). Wall time per decision (p50, p99) and the
process's CPU per decision (all threads) are printed; the first ``--warmup`` decisions of each shape are not counted.

``python -m bench.opening_replay [--decisions 3000] [--warmup 500]``
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import time
from collections.abc import Sequence

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from bench.workload import DEFAULT_PROMPTS
from classifier.loader import load_difficulty_model
from devstack.stack import ENVOY_DIR
from extproc.classify import ClassifierThreads
from extproc.config import Settings, load_config
from extproc.record import DiscardSink
from extproc.service import new_decision_id
from extproc.snapshot import build_snapshot
from extproc.stream import StreamHandler

__all__ = ["main"]

_REPLY = {"role": "assistant", "content": "Here is my answer."}
_CHAT_HEADERS = ((":method", b"POST"), (":path", b"/v1/chat/completions"), ("content-type", b"application/json"))
_HEADERS = pb.ProcessingRequest(
    request_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in _CHAT_HEADERS])
    )
)


def _with_stickiness(settings: Settings, enabled: bool) -> Settings:
    sticky = settings.policy.stickiness.model_copy(update={"enabled": enabled})
    return settings.model_copy(update={"policy": settings.policy.model_copy(update={"stickiness": sticky})})


def _bodies(prompts: Sequence[str], two_turns: bool, n: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(n):
        last = {"role": "user", "content": prompts[i % len(prompts)]}
        opening = {"role": "user", "content": prompts[(i + 7) % len(prompts)]}
        messages = [opening, _REPLY, last] if two_turns else [last]
        out.append(orjson.dumps({"model": "auto", "messages": messages}))
    return out


async def _run(prompts: Sequence[str], decisions: int, warmup: int) -> None:
    model = load_difficulty_model("onnx")
    settings = load_config(ENVOY_DIR / "model-router.yaml")
    classify = ClassifierThreads(workers=2)
    shapes = [
        ("one user turn", True, False),
        ("two turns, opening replayed", True, True),
        ("two turns, stickiness off", False, True),
    ]
    print(f"{'request':<30} {'wall p50 µs':>11} {'wall p99 µs':>11} {'CPU µs/decision':>15}")
    try:
        for label, sticky, two_turns in shapes:
            snap = build_snapshot(_with_stickiness(settings, sticky), lambda _s: model)
            walls: list[float] = []
            cpu = 0.0
            for i, body in enumerate(_bodies(prompts, two_turns, warmup + decisions)):
                handler = StreamHandler(snap, classify, DiscardSink(), new_decision_id, time.perf_counter)
                c0, w0 = time.process_time(), time.perf_counter()
                await handler.handle(_HEADERS)
                await handler.handle(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
                w1, c1 = time.perf_counter(), time.process_time()
                if i >= warmup:
                    walls.append((w1 - w0) * 1e6)
                    cpu += (c1 - c0) * 1e6
            walls.sort()
            p50, p99 = walls[len(walls) // 2], walls[int(0.99 * (len(walls) - 1))]
            print(f"{label:<30} {p50:>11.0f} {p99:>11.0f} {cpu / len(walls):>15.0f}")
    finally:
        classify.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=500)
    args = p.parse_args(argv)
    with gzip.open(DEFAULT_PROMPTS, "rb") as f:
        texts = [str(orjson.loads(line)["prompt"]) for line in f if line.strip()]
    prompts = random.Random(12).sample(texts, 2000)
    asyncio.run(_run(prompts, args.decisions, args.warmup))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
