"""The ``model-router label`` command line (argparse only, so building the parser imports nothing heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_label_parser"]

HELP = "label prompts with outcome scores: ask models through the gateway, grade the answers with a judge model"


def _float(minimum: float) -> Any:
    def parse(text: str) -> float:
        value = float(text)
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value

    return parse


def _int(minimum: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value

    return parse


def add_label_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``label`` subcommand to ``sub`` (an ``add_subparsers()`` result) and return its parser."""
    p: argparse.ArgumentParser = sub.add_parser("label", help=HELP, description=HELP)
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--data", type=Path, required=True, help="prompts: EVAL.md JSON Lines (plain or gzip, known by its content)"
    )
    io.add_argument("--out", type=Path, required=True, help="records are appended here; ids already in it are skipped")
    io.add_argument("--limit", type=_int(1), help="label at most this many new items")
    models = p.add_argument_group("models, through the gateway")
    models.add_argument("--models", required=True, help="comma-separated catalog model names (two or more)")
    models.add_argument("--base-url", required=True, help="the gateway's OpenAI base URL, e.g. http://gw:10000/v1")
    models.add_argument(
        "--api-key", help="bearer key for the gateway (default: $MODEL_ROUTER_API_KEY, then $OPENAI_API_KEY)"
    )
    models.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra gateway header (repeatable); VALUE env:VAR reads $VAR. With x-model-router-override-token set, "
        "each request also pins its model with x-model-router-override",
    )
    models.add_argument(
        "--pin-alias",
        metavar="MODEL",
        help="request this routable model (e.g. auto) and pin the real one with the override header (needs the token)",
    )
    models.add_argument("--max-tokens", type=_int(0), default=1024, help="answer length limit (0: none; %(default)s)")
    models.add_argument("--timeout", type=_float(0.001), default=120.0, help="seconds per answer (%(default)s)")
    judge = p.add_argument_group("judge (any OpenAI-compatible endpoint)")
    judge.add_argument("--judge-base-url", required=True, help="e.g. https://api.openai.com/v1")
    judge.add_argument("--judge-model", required=True)
    judge.add_argument("--judge-api-key", help="bearer key for the judge (default: $MODEL_ROUTER_JUDGE_API_KEY)")
    judge.add_argument("--judge-timeout", type=_float(0.001), default=60.0, help="seconds per grade (%(default)s)")
    cost = p.add_argument_group("cost")
    cost.add_argument(
        "--config",
        type=Path,
        help="router config: answer prices from its catalog, which must hold --models (and its "
        "policy.routable_models --pin-alias)",
    )
    cost.add_argument("--judge-price-in", type=_float(0), help="judge price per million input tokens")
    cost.add_argument("--judge-price-out", type=_float(0), help="judge price per million output tokens")
    cost.add_argument(
        "--expected-output-tokens", type=_int(1), default=300, help="answer length for the estimate (%(default)s)"
    )
    cost.add_argument("--max-cost", type=_float(0), help="do not start, or stop starting items, beyond this spend")
    cost.add_argument("--yes", action="store_true", help="do not ask for confirmation after the estimate")
    run = p.add_argument_group("run")
    run.add_argument("--concurrency", type=_int(1), default=4, help="requests in flight at most (%(default)s)")
    run.add_argument("--retries", type=_int(0), default=3, help="retries per call (%(default)s)")
    run.add_argument("--backoff", type=_float(0), default=1.0, help="first retry delay in seconds (%(default)s)")
    return p
