"""``model-router label``: read the options, show the estimate, run, print the summary.

Exit codes: 0 done (some models may be missing on some items: see the summary), 1 declined at the confirmation,
2 bad options or input file, 3 stopped by ``--max-cost`` (before starting, or with items left for a later run),
4 nothing labelled, or ``--out`` could not be written during the run, 130 interrupted (what was written stays;
run again to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import httpx

from classifier.atomic_file import clash
from classifier.jsonl import READ_ERRORS, io_reason
from extproc.labeling.client import ChatEndpoint
from extproc.labeling.cost import JUDGE, Budget, Estimate, Ledger, Price, estimate_run
from extproc.labeling.progress import Progress
from extproc.labeling.records import (
    PromptFile,
    PromptItem,
    RecordWriteError,
    RecordWriter,
    ResumeState,
    prepare_output,
    read_prompts,
)
from extproc.labeling.retry import RetryPolicy
from extproc.labeling.run import OVERRIDE_TOKEN_HEADER, Labeller, LabelSettings, RunStats, label_items
from extproc.spool import open_private_append

__all__ = ["Console", "UsageError", "run_label_command"]

TextOf = Callable[[Mapping[str, object]], str | None]
EXIT_DECLINED, EXIT_USAGE, EXIT_BUDGET, EXIT_FAILED, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
SHOWN_LINES = 20


class UsageError(Exception):
    """A bad option or input file: one line for the user, exit code 2."""


@dataclass(frozen=True, slots=True)
class Console:
    """Where the command reads confirmation from and writes to (estimate and summary: out; progress: err)."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


def parse_models(text: str) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``; two or more distinct names, or there is nothing to compare."""
    models = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if len(models) < 2:
        raise UsageError("--models needs two or more distinct model names")
    return models


def parse_headers(raw: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """``NAME=VALUE`` options as lower-case names; ``env:VAR`` reads a secret from the environment (not ``ps``)."""
    headers = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--header {item!r}: expected NAME=VALUE")
        if value.startswith("env:"):
            if value[4:] not in env:
                raise UsageError(f"--header {name.strip()}: environment variable {value[4:]} is not set")
            value = env[value[4:]]
        headers[name.strip().lower()] = value
    return headers


def bearer(key: str | None) -> dict[str, str]:
    """The authorization header for ``key``, none without one."""
    return {"authorization": f"Bearer {key}"} if key else {}


def catalog_prices(config: Path | None, models: Sequence[str], pin_alias: str | None) -> dict[str, Price]:
    """Answer prices from the router config's catalog (raises ``ConfigError`` on a bad file), once ``models`` and
    ``pin_alias`` are checked against it.

    A model outside the catalog is a typo or one the gateway has no cluster for (the router passes it to the default
    route, whatever model answers there). An alias outside ``policy.routable_models`` is passed through with no
    decision, so no pin is applied and every answer ends ``not_pinned``, each retry paid for.
    """
    if config is None:
        return {}
    from extproc.config import load_config

    router = load_config(config)
    prices = {m.name: Price(m.input_price_per_mtok, m.output_price_per_mtok) for m in router.catalog}
    unknown = [m for m in models if m not in prices]
    if unknown:
        raise UsageError(
            f"--models {', '.join(unknown)}: not in the catalog of --config {config} ({', '.join(prices)})"
        )
    routable = router.policy.routable_models
    if pin_alias is not None and pin_alias not in routable:
        raise UsageError(
            f"--pin-alias {pin_alias}: not in policy.routable_models of --config {config} ({', '.join(routable)}); "
            "the router would apply no pin"
        )
    return prices


def judge_price(args: argparse.Namespace) -> Price | None:
    """The judge's price, if both halves were given."""
    if (args.judge_price_in is None) != (args.judge_price_out is None):
        raise UsageError("--judge-price-in and --judge-price-out go together")
    return None if args.judge_price_in is None else Price(args.judge_price_in, args.judge_price_out)


def settings_of(args: argparse.Namespace, headers: Mapping[str, str]) -> LabelSettings:
    """The run's settings from the options."""
    has_token = OVERRIDE_TOKEN_HEADER in headers
    if args.pin_alias and not has_token:
        raise UsageError(f"--pin-alias needs the override secret: --header {OVERRIDE_TOKEN_HEADER}=env:VAR")
    models = parse_models(args.models)
    prices = catalog_prices(args.config, models, args.pin_alias)
    settings = LabelSettings(
        models=models,
        judge_model=args.judge_model,
        pin_alias=args.pin_alias,
        send_override=has_token,
        max_tokens=args.max_tokens or None,
        expected_output_tokens=args.expected_output_tokens,
        retry=RetryPolicy(retries=args.retries, base_delay=args.backoff),
        prices=prices,
        judge_price=judge_price(args),
        max_cost=args.max_cost,
        concurrency=args.concurrency,
    )
    unpriced = [m for m in settings.models if m not in prices] + ([JUDGE] if settings.judge_price is None else [])
    if settings.max_cost is not None and unpriced:
        raise UsageError(
            f"--max-cost needs every price; none for {', '.join(unpriced)} (answer prices come from --config's "
            "catalog, the judge's from --judge-price-in/--judge-price-out; 0 is a valid price)"
        )
    return settings


def _lines(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:SHOWN_LINES])
    return shown + (f", ... ({len(numbers) - SHOWN_LINES} more)" if len(numbers) > SHOWN_LINES else "")


def input_notes(prompts: PromptFile, resume: ResumeState, out: Path) -> list[str]:
    """What was wrong with the input and the existing output file, with line numbers."""
    notes = []
    if prompts.malformed:
        shown = "; ".join(f"{n}: {why}" for n, why in prompts.malformed[:SHOWN_LINES])
        notes.append(f"{len(prompts.malformed)} malformed input lines skipped ({shown})")
    if prompts.no_text:
        notes.append(f"{len(prompts.no_text)} input items without user text skipped (lines {_lines(prompts.no_text)})")
    if prompts.duplicates:
        notes.append(f"{len(prompts.duplicates)} duplicate input ids skipped (lines {_lines(prompts.duplicates)})")
    if resume.corrupt_lines:
        notes.append(
            f"{out}: {len(resume.corrupt_lines)} unreadable lines left as they are "
            f"(lines {_lines(resume.corrupt_lines)})"
        )
    if resume.dropped_tail is not None:
        line, size = resume.dropped_tail
        notes.append(f"{out}: removed an incomplete last line (line {line}, {size} bytes, from an interrupted run)")
    return notes


def not_asked(prompts: PromptFile, resume: ResumeState, models: Sequence[str]) -> dict[str, int]:
    """Per model, the items skipped as done whose record has neither a score nor a ``missing`` reason for it.

    Resume is by id: a model added to ``--models`` since a record was written is not asked for that item. Asking it
    would put a second record with the same id in the file (records are appended, one per item), and the readers of
    EVAL.md files count, refuse or overwrite duplicate ids. So such models are counted as missing and named instead
    of passing unseen.
    """
    skipped = [resume.covered.get(item.key, frozenset()) for item in prompts.items if item.key in resume.done]
    counts = {model: sum(1 for have in skipped if model not in have) for model in models}
    return {model: n for model, n in counts.items() if n}


def not_asked_notes(counts: Mapping[str, int]) -> list[str]:
    """One line per model that skipped records lack (see :func:`not_asked`)."""
    return [
        f"{n} skipped records have no score for {model} (resume is by id: a model added to --models after a record "
        "was written is not asked; delete those lines to label them again)"
        for model, n in counts.items()
    ]


def format_estimate(estimate: Estimate, settings: LabelSettings, items: int) -> list[str]:
    """The lines printed before starting."""
    lines = [
        f"estimate for {items} items x {len(settings.models)} models, each answer graded by {settings.judge_model} "
        f"(tokens ~ characters / 4; answers ~{settings.expected_output_tokens} tokens):"
    ]
    for name, (tokens_in, tokens_out) in estimate.tokens.items():
        cost = estimate.costs[name]
        label = f"judge {settings.judge_model}" if name == JUDGE else name
        shown = "unknown (no price)" if cost is None else f"{cost:.4f}"
        lines.append(f"  {label:<32} in {tokens_in:>12,} out {tokens_out:>12,}  cost {shown}")
    unpriced = f" (+ unpriced: {', '.join(estimate.unpriced)})" if estimate.unpriced else ""
    lines.append(f"  total cost {estimate.total:.4f}{unpriced}")
    return lines


def format_summary(
    stats: RunStats, ledger: Ledger, settings: LabelSettings, skipped: int, unasked: Mapping[str, int], out: Path
) -> list[str]:
    """The lines printed at the end; ``unasked``: skipped records without a model, missing as ``not_asked``."""
    lines = [f"labelled {stats.written} items -> {out}"]
    if stats.not_written:
        lines.append(f"{stats.not_written} items not written: no model got a grade (a rerun retries them)")
    lines.append(f"skipped {skipped} items already in {out}")
    for model in settings.models:
        reasons = stats.missing.get(model, Counter()) + Counter(not_asked=unasked.get(model, 0))
        detail = ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items()))
        lines.append(f"missing {model}: {reasons.total()}" + (f" ({detail})" if detail else ""))
    if stats.not_started:
        lines.append(
            f"stopped by --max-cost {settings.max_cost}: {stats.not_started} items not started "
            "(run again with a higher --max-cost to continue)"
        )
    called = [k for k in [*settings.models, JUDGE] if k in ledger.spent]
    unpriced = [k for k in called if k not in ledger.prices]  # the ledger counts them as 0: unknown, as estimated
    parts = ", ".join(
        f"{'judge' if k == JUDGE else k} {'unknown' if k in unpriced else f'{ledger.spent[k]:.4f}'}" for k in called
    )
    total = f"{ledger.total:.4f}" + (" + unknown" if unpriced else "")
    if called and unpriced == called:
        total = "unknown"
    lines.append(f"actual cost {total}" + (f" ({parts})" if parts else ""))
    if ledger.usage_estimated:
        lines.append(f"{ledger.usage_estimated} responses reported no usage: priced from characters")
    lines.append(f"retries {stats.retries}")
    return lines


def confirmed(console: Console, yes: bool) -> bool:
    """Ask on a terminal; never block when stdin is not one (a pipe or a job runner: proceed)."""
    if yes or not console.stdin.isatty():
        return True
    console.stderr.write("proceed? [y/N] ")
    console.stderr.flush()
    try:
        answer = console.stdin.readline()
    except KeyboardInterrupt:  # Ctrl-C at the question is a no, not a traceback
        console.stderr.write("\n")
        return False
    return answer.strip().lower() in {"y", "yes"}


async def _label(
    args: argparse.Namespace,
    settings: LabelSettings,
    headers: Mapping[str, str],
    todo: Sequence[PromptItem],
    ledger: Ledger,
    stats: RunStats,
    console: Console,
    env: Mapping[str, str],
    transport: httpx.AsyncBaseTransport | None,
    out: BinaryIO,
) -> None:
    limits = httpx.Limits(max_connections=2 * settings.concurrency + 2)
    limiter = asyncio.Semaphore(settings.concurrency)
    gateway_key = args.api_key or env.get("MODEL_ROUTER_API_KEY") or env.get("OPENAI_API_KEY")
    judge_key = args.judge_api_key or env.get("MODEL_ROUTER_JUDGE_API_KEY")
    async with httpx.AsyncClient(transport=transport, limits=limits) as http:
        answers = ChatEndpoint(
            http, args.base_url, {**bearer(gateway_key), **headers}, args.timeout, limiter, time.time
        )
        # The gateway headers (override secret included) are never sent to the judge, which may be another party.
        judge = ChatEndpoint(http, args.judge_base_url, bearer(judge_key), args.judge_timeout, limiter, time.time)
        labeller = Labeller(answers, judge, settings, ledger, asyncio.sleep, random.Random().random, stats)
        progress = Progress(len(todo), console.stderr, time.monotonic, console.stderr.isatty())
        await label_items(todo, labeller, RecordWriter(out), Budget(settings.max_cost, ledger), progress)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything checked and read before the estimate: settings, gateway headers, the input, the output open and
    locked, and the resume state."""

    settings: LabelSettings
    headers: Mapping[str, str]
    prompts: PromptFile
    out: BinaryIO
    created: bool
    """``out`` did not exist before this run: a run that writes nothing before it starts removes it again."""
    resume: ResumeState


def check_paths(args: argparse.Namespace) -> None:
    """Bad URLs and output paths are usage errors now, not a run of connection errors later."""
    for option, url in (("--base-url", args.base_url), ("--judge-base-url", args.judge_base_url)):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"{option} {url!r}: expected an http:// or https:// URL")
    if args.out.suffix == ".gz":
        raise UsageError("--out must be a plain .jsonl file (records are appended)")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: directory {args.out.parent} does not exist")
    if args.out.exists() and not args.out.is_file():  # /dev/null would swallow paid labels; /dev/full never ends
        raise UsageError(f"cannot write --out {args.out} (not a regular file)")
    if (message := clash(("--out", args.out), [("the --data file", args.data)])) is not None:
        raise UsageError(message)


def open_out(path: Path) -> tuple[BinaryIO, bool]:
    """``path`` open for appending and locked, and whether it was created; a usage error if either fails.

    Done before the estimate, so an unwritable path (``/proc``, a read-only mount) or another run is refused before
    anyone is asked to confirm a cost. Owner-only, as the capture and feedback files: each record holds the prompt it
    labels. One run per ``--out`` at a time: a second one would read the same resume state and label everything
    again.
    """
    existed = path.exists()
    try:
        out = os.fdopen(open_private_append(path), "ab")
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else io_reason(exc)
        raise UsageError(f"cannot write --out {path} ({reason})") from None
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        out.close()
        raise UsageError(f"another label run is writing {path}; wait for it or use another --out") from None
    return out, not existed


def plan(args: argparse.Namespace, text_of: TextOf, env: Mapping[str, str]) -> Plan:
    """Check the options and read the input and the output so far; raise ``UsageError`` on anything wrong."""
    headers = parse_headers(args.header, env)
    settings = settings_of(args, headers)
    check_paths(args)
    try:
        prompts = read_prompts(args.data, text_of)
    except READ_ERRORS as exc:
        raise UsageError(f"cannot read --data {args.data} ({io_reason(exc)})") from None
    if not prompts.items:  # the wrong file (e.g. prompts without ids): say so instead of labelling nothing, exit 0
        notes = "; ".join(input_notes(prompts, ResumeState(), args.out)) or "the file is empty"
        raise UsageError(
            f"--data {args.data}: no usable item ({notes}); each line must be an object with an id and the "
            "request's messages (or prompt/input), as `model-router serve` captures them"
        )
    out, created = open_out(args.out)
    try:
        resume = prepare_output(args.out, repair=False)  # repaired once the run goes ahead
    except OSError as exc:
        out.close()
        raise UsageError(f"--out {args.out}: {io_reason(exc)}") from None
    return Plan(settings, headers, prompts, out, created, resume)


def discard_unused(p: Plan, path: Path) -> None:
    """Remove ``--out`` if this run created it and wrote nothing (declined, or over ``--max-cost``): it was opened
    only to be checked. Called holding the lock, so no other run is appending to it."""
    if p.created and os.fstat(p.out.fileno()).st_size == 0:
        path.unlink(missing_ok=True)


def run_label_command(
    args: argparse.Namespace,
    text_of: TextOf,
    console: Console,
    env: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """Run ``model-router label`` with parsed ``args``; ``text_of`` is the live server's prompt extraction."""
    env = os.environ if env is None else env
    try:
        p = plan(args, text_of, env)
    except UsageError as exc:
        console.stderr.write(f"model-router label: {exc}\n")
        return EXIT_USAGE
    settings, out = p.settings, console.stdout
    with p.out as lock:  # held from before the estimate to the end of the run
        todo = [item for item in p.prompts.items if item.key not in p.resume.done][: args.limit]
        unasked = not_asked(p.prompts, p.resume, settings.models)
        notes = [f"note: {note}" for note in [*input_notes(p.prompts, p.resume, args.out), *not_asked_notes(unasked)]]
        estimate = estimate_run(
            todo, settings.models, settings.prices, settings.judge_price, settings.expected_output_tokens
        )
        out.write("\n".join([*notes, *format_estimate(estimate, settings, len(todo))]) + "\n")
        out.flush()
        if settings.max_cost is not None and estimate.total > settings.max_cost:
            out.write(
                f"estimate {estimate.total:.4f} exceeds --max-cost {settings.max_cost}: not started "
                "(raise --max-cost, or label part of the file with --limit)\n"
            )
            discard_unused(p, args.out)
            return EXIT_BUDGET
        if todo and not confirmed(console, args.yes):
            discard_unused(p, args.out)
            return EXIT_DECLINED
        ledger = Ledger({**settings.prices, **({JUDGE: settings.judge_price} if settings.judge_price else {})})
        stats, code = RunStats(), 0
        prepare_output(args.out)  # only now that the run goes ahead is a torn last line cut off
        try:
            try:
                if todo:
                    asyncio.run(_label(args, settings, p.headers, todo, ledger, stats, console, env, transport, lock))
            except* RecordWriteError as failed:  # raised in one worker: the task group stopped the others
                console.stderr.write(
                    f"model-router label: cannot write --out {args.out} ({failed.exceptions[0]}): stopped; the"
                    " records written so far are kept: run the same command again to resume\n"
                )
                code = EXIT_FAILED
        except KeyboardInterrupt:
            out.write("interrupted: records written so far are kept; run the same command again to resume\n")
            code = EXIT_INTERRUPTED
    skipped = sum(1 for item in p.prompts.items if item.key in p.resume.done)
    out.write("\n".join([*format_summary(stats, ledger, settings, skipped, unasked, args.out), *notes]) + "\n")
    if not code and stats.not_written and not stats.written:
        out.write("nothing was labelled: check the keys, URLs and models in the missing reasons above\n")
        code = EXIT_FAILED
    return code or (EXIT_BUDGET if stats.not_started else 0)
