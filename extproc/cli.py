"""The ``model-router`` command: ``serve``, ``check-config``, ``eval``, ``report``, ``explain``, ``adapt``, ``label``,
``outcomes``, ``fail-open-lua``, ``inject-webhook``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from extproc.errors import CANNOT_START, ConfigError
from extproc.labeling.options import add_label_parser

if TYPE_CHECKING:
    from extproc.health_http import Health
    from extproc.request import ParsedRequest

__all__ = ["main", "opening_text_of_item", "prompt_text_of_item"]

_T = TypeVar("_T")

_EVAL_PATH = "/v1/chat/completions"
_EVAL_MODEL = "auto"
# --help is plain text: no reStructuredText markup (the module docstrings are written for the code's readers).
_DESCRIPTION = (
    "Content-aware LLM model router: an Envoy ext_proc sidecar that sends each prompt to the cheapest good-enough "
    "model, and the tools around it."
)


def _command(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line help is also the description its own --help shows."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-router", description=_DESCRIPTION, epilog="model-router COMMAND --help: the command's options"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = _command(sub, "serve", "run the ext_proc gRPC server")
    serve.add_argument("--config", type=Path, required=True, help="YAML config file")
    serve.add_argument("--listen", help="override server.listen (host:port, [::1]:port or unix:/absolute/path)")
    serve.add_argument(
        "--health-listen",
        help="also serve GET /healthz on this host:port (probes that cannot reach a loopback gRPC port)",
    )
    serve.add_argument(
        "--wait-for-config",
        action="store_true",
        help="a missing or invalid config is logged and read again every 2 s instead of exiting (for sidecars: "
        "the pod's Envoy starts and fails open)",
    )
    check = _command(
        sub, "check-config", "validate a config file and load its classifier; optionally cross-check an Envoy bootstrap"
    )
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--envoy-config",
        type=Path,
        metavar="FILE",
        help="a static Envoy bootstrap (YAML or JSON, as envoy -c takes it): check that it agrees with the config"
        " (README 'Envoy settings'); errors exit 2, warnings and notes do not",
    )
    check.add_argument(
        "--listen",
        help="with --envoy-config: the router's address when serve --listen overrides server.listen (sidecars)",
    )
    ev = _command(sub, "eval", "score an EVAL.md file with the live request path and report APGR etc.")
    ev.add_argument(
        "--data",
        type=Path,
        required=True,
        help="JSON Lines (plain or gzip, known by its content) in the EVAL.md format",
    )
    ev.add_argument("--out", type=Path, required=True, help="where to write one {id, score} line per item")
    scorer = ev.add_mutually_exclusive_group()  # --heuristic ignored --model: the table named the wrong scorer
    scorer.add_argument("--model", type=Path, help="ONNX model directory (default: the shipped model)")
    scorer.add_argument("--heuristic", action="store_true", help="evaluate the heuristic classifier instead")
    ev.add_argument("--weak", help="the cheap model's name in the items' scores (default: chosen from the file)")
    ev.add_argument("--strong", help="the strong model's name in the items' scores (default: the best-scoring one)")
    ev.add_argument("--plot", type=Path, help="write the cost-quality curve to this PNG")
    report = _command(sub, "report", "savings per tenant and model from the router's JSON decision logs")
    report.add_argument("logs", type=Path, nargs="+", help="log files (plain or gzip, known by its content)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument("--html", type=Path, help="also write a self-contained HTML report to this file")
    report.add_argument(
        "--eval", type=Path, dest="eval_scores", help="scores written by model-router eval --out (with --html)"
    )
    report.add_argument("--data", type=Path, help="the EVAL.md data the scores were computed on (with --eval)")
    report.add_argument("--weak", help="the cheap model's name in the data's scores (with --eval)")
    report.add_argument("--strong", help="the strong model's name in the data's scores (with --eval)")
    report.add_argument(
        "--envoy-log",
        type=Path,
        nargs="+",
        action="extend",
        dest="envoy_logs",
        metavar="ENVOY_LOG",
        help="Envoy access logs (plain or gzip) of every gateway pod over the same period: totals as Envoy applied"
        " them (after the router logs: it takes every file that follows)",
    )
    explain = _command(sub, "explain", "what the router would do with a prompt or request body, and why")
    explain.add_argument(
        "prompt",
        nargs="?",
        help="prompt text, sent in the body shape of the --path API (default: stdin; a JSON object there is a body)",
    )
    explain.add_argument("-f", "--file", help="a request body (JSON) file; - for stdin")
    explain.add_argument("--path", default="/v1/chat/completions", help="the request path (default: %(default)s)")
    explain.add_argument(
        "--model",
        help="requested model for a prompt (default: auto; in-process, the config's first routable model if auto is not"
        " one)",
    )
    explain.add_argument(
        "-H", "--header", action="append", default=[], metavar="NAME:VALUE", help="a request header (repeatable)"
    )
    explain.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="router config to decide with in-process (default: envoy/model-router.yaml of the source checkout "
        "model-router runs from, else /etc/model-router/model-router.yaml as in the image; not with --target)",
    )
    explain.add_argument("--target", metavar="HOST:PORT", help="ask a running router's Decide instead")
    explain.add_argument("--json", action="store_true", help="print the DecideResponse as JSON")
    tls = explain.add_argument_group("TLS to --target (a router with server.tls)")
    tls.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA bundle (PEM) that verifies the router: use TLS")
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM) for mutual TLS")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="the client certificate's private key (PEM)")
    tls.add_argument("--tls-server-name", metavar="NAME", help="the name to check in the router's certificate")
    adapt = _command(sub, "adapt", "fit a deployment-specific classifier head from outcome records (seconds)")
    adapt.add_argument(
        "--outcomes",
        "--data",
        dest="data",
        type=Path,
        required=True,
        help="EVAL.md JSON Lines (plain or gzip) with scores",
    )
    adapt.add_argument("--weak", help="the cheap model's name in the scores (default: chosen as eval chooses it)")
    adapt.add_argument("--strong", help="the strong model's name in the scores (default: the best-scoring model)")
    adapt.add_argument(
        "--out",
        type=Path,
        required=True,
        help="model directory to write (new, or a model directory: replaced in one step)",
    )
    adapt.add_argument("--base", type=Path, help="base model directory (default: the shipped model)")
    adapt.add_argument("--seed", type=int, default=0, help="seed of the folds (default: %(default)s)")
    adapt.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)")
    adapt.add_argument("--force", action="store_true", help="write even with too few records or too little signal")
    add_label_parser(sub)
    outcomes = _command(sub, "outcomes", "join captured prompts with feedback into EVAL.md outcome records")
    outcomes.add_argument("--capture", type=Path, nargs="+", required=True, help="capture files (plain or gzip)")
    outcomes.add_argument("--feedback", type=Path, nargs="+", required=True, help="feedback files (plain or gzip)")
    outcomes.add_argument("--out", type=Path, required=True, help="the EVAL.md JSON Lines file to write (mode 0600)")
    outcomes.add_argument("--keep-unscored", action="store_true", help="also write captured prompts without feedback")
    which = outcomes.add_mutually_exclusive_group()
    which.add_argument("--tenant", nargs="+", metavar="TENANT", help="join only the decisions of these tenants")
    which.add_argument("--exclude-tenant", nargs="+", default=[], metavar="TENANT", help="leave these tenants out")
    lua = _command(
        sub, "fail-open-lua", "print the Lua of Envoy's fail-open filter for a config (README 'Envoy settings')"
    )
    lua.add_argument("--config", type=Path, required=True, help="the router's YAML config")
    lua.add_argument(
        "--max-body-bytes",
        type=int,
        default=4194304,
        help="the largest body Envoy accepts on the router's routes: its buffer filter's max_request_bytes, or the"
        " listener's per_connection_buffer_limit_bytes without one (default: %(default)s)",
    )
    inject = _command(sub, "inject-webhook", "serve the Kubernetes sidecar-injection admission webhook (TLS)")
    inject.add_argument("--config", type=Path, required=True, help="webhook YAML config (see k8s/injector/)")
    return parser


def _parsed_item(item: Mapping[str, Any]) -> ParsedRequest | None:
    """An EVAL item's ``messages`` read as the live server reads a Chat Completions request, or None if it would not
    route it."""
    from extproc.request import ParsedRequest, parse_request

    raw = orjson.dumps({"model": _EVAL_MODEL, "messages": item.get("messages")})
    parsed = parse_request(_EVAL_PATH, raw, frozenset({_EVAL_MODEL}))
    return parsed if isinstance(parsed, ParsedRequest) else None


def prompt_text_of_item(item: Mapping[str, Any]) -> str | None:
    """The text the live server would classify for an EVAL item's ``messages``, or None if it would not."""
    parsed = _parsed_item(item)
    if parsed is None or not parsed.prompt_text.strip():
        return None
    return parsed.prompt_text


def opening_text_of_item(item: Mapping[str, Any]) -> str | None:
    """The first user turn of a multi-turn EVAL item, whose decision the live server (stickiness on, the default)
    makes the conversation's floor; None if there is none, or it is the classified turn."""
    parsed = _parsed_item(item)
    if parsed is None or not parsed.opening_text.strip() or parsed.opening_text == parsed.prompt_text:
        return None
    return parsed.opening_text


def _serve(args: argparse.Namespace) -> int:
    # Before the imports below (≈0.5 s): a reload sent while the process starts or its model loads would kill it. The
    # server's handler replaces this once it listens, and the watcher then compares the file with what was loaded.
    # (The console script and `python -m extproc` did this already, before importing this module.)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # gRPC's C core logs each failed TLS handshake (any client can cause one) on stderr as a non-JSON INFO line.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from extproc.config import parse_listen
    from extproc.health_http import Health, start_health_server
    from extproc.logs import configure_logging
    from extproc.reload import load_snapshot
    from extproc.server import serve
    from extproc.snapshot import SnapshotRef
    from extproc.wsgi_server import ListenError

    health = Health()
    stop_health = None
    if args.health_listen:  # before the config: the probe port can then say "waiting for a valid config"
        try:
            parse_listen(args.health_listen)
        except ValueError as exc:
            raise ConfigError([f"--health-listen: {exc}"]) from None
        try:
            stop_health = start_health_server(args.health_listen, health)
        except ListenError as exc:
            raise ConfigError([f"--health-listen: {exc}"], CANNOT_START) from None
    waiting = _ConfigWait(health) if args.wait_for_config else None
    try:
        with _event_loop_runner() as runner:
            while True:
                try:
                    snapshot = load_snapshot(args.config)
                    flush_logs = configure_logging(snapshot.settings.server.log_level)
                    try:
                        runner.run(serve(args.config, SnapshotRef(snapshot), args.listen, health))
                    finally:
                        flush_logs()  # warnings held back by the throttle: their counts, before the process ends
                    return 0
                except ConfigError as exc:  # the config, its model, or what the server opens at start
                    if waiting is None:
                        raise
                    waiting.failed(exc)
    finally:
        if stop_health is not None:
            stop_health()


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.Runner()


class _ConfigWait:
    """``serve --wait-for-config``: a start that fails on the config (invalid or missing file, a model that does not
    load, a listener, key or capture file it names that cannot be used) is reported once per distinct problem, the
    probe port says so, and the start is tried again from the file every ``poll_seconds``."""

    def __init__(self, health: Health, poll_seconds: float = 2.0) -> None:
        self._health = health
        self._poll_seconds = poll_seconds
        self._reported: str | None = None

    def failed(self, exc: ConfigError) -> None:
        from extproc.health_http import RouterState

        if str(exc) != self._reported:
            self._reported = str(exc)
            # One JSON line, as the running router logs (a log pipeline would split plain multi-line text); the
            # config's own log level is not known yet.
            from extproc.logs import configure_logging

            configure_logging("info")
            # A port or file another process holds is no config problem: the same file is tried again all the same.
            then = "trying again" if exc.heading == CANNOT_START else "waiting for a valid config"
            logging.getLogger("model_router.config").error("%s; %s", exc, then)
        self._health.state = RouterState.WAITING
        try:
            time.sleep(self._poll_seconds)
        except KeyboardInterrupt:  # Ctrl-C while waiting: an exit, not a traceback
            raise SystemExit(130) from None


def _check(args: argparse.Namespace) -> int:
    """Validate the config, then load what it names (classifier, signing keys, TLS files) and report every problem
    of those three at once: each is checked even when another failed. With ``--envoy-config``, then cross-check the
    bootstrap against the config (:mod:`extproc.envoy_check`), one finding per line."""
    from extproc.config import load_config

    envoy = _envoy_config(args)  # before the classifier loads: a wrong path or address fails at once
    if isinstance(envoy, str):
        print(f"model-router check-config: {envoy}", file=sys.stderr)
        return 2
    from extproc.feedback_token import load_signing_keys
    from extproc.reload import load_model_for
    from extproc.snapshot import build_snapshot
    from extproc.spool import SpoolPathError, check_spool_path
    from extproc.telemetry import span_export_options
    from extproc.tls import server_credentials

    settings = load_config(args.config)  # field problems: nothing below can be checked without valid settings
    problems: list[str] = []

    def attempt(load: Callable[[], _T]) -> _T | None:
        try:
            return load()
        except ConfigError as exc:
            problems.extend(exc.problems)
            return None

    snapshot = attempt(lambda: build_snapshot(settings, load_model_for))
    key_file, tls = settings.feedback.signing_key_file, settings.server.tls
    keys = attempt(lambda: load_signing_keys(key_file)) if key_file else ()
    if tls:
        attempt(lambda: server_credentials(tls))  # reads the PEM files: an unreadable one names its field
    attempt(lambda: span_export_options(settings.telemetry, os.environ))  # the OTEL_* variables serve would read
    for field, spool in (("capture", settings.capture), ("feedback", settings.feedback)):
        if spool.enabled and spool.path is not None:
            try:
                check_spool_path(spool.path)
            except SpoolPathError as exc:
                problems.append(f"{field}.path: {exc}")
    if problems or snapshot is None or keys is None:
        raise ConfigError(problems)
    mode = ("; TLS with client certificates" if tls.client_ca_file else "; TLS") if tls else ""
    names = ", ".join(f"{m.name} ({m.tier}, ability {m.ability:.2f})" for m in snapshot.catalog)
    signing = f"; {len(keys)} feedback signing key(s)" if key_file else ""
    print(f"ok: classifier {snapshot.model.name}; catalog: {names}{signing}{mode}")
    if envoy is None:
        return 0
    from extproc.envoy_check import check_envoy

    findings = check_envoy(settings, envoy, args.listen)
    for finding in findings:
        print(finding)
    if any(f.severity == "error" for f in findings):
        return 2
    counts = ", ".join(
        f"{n} {kind}{'s' if n != 1 else ''}"
        for kind in ("warning", "note")
        if (n := sum(f.severity == kind for f in findings))
    )
    print(f"ok: --envoy-config {args.envoy_config} agrees with the config" + (f" ({counts})" if counts else ""))
    return 0


def _envoy_config(args: argparse.Namespace) -> Mapping[str, Any] | str | None:
    """The ``--envoy-config`` bootstrap (JSON is YAML too; None without the option), or the one line that says why
    it cannot be checked."""
    from extproc.config import load_yaml, parse_listen

    path: Path | None = args.envoy_config
    if args.listen is not None:
        if path is None:
            return "--listen is the router's address for --envoy-config: give --envoy-config FILE"
        try:
            parse_listen(args.listen, unix=True)
        except ValueError as exc:
            return f"--listen: {exc}"
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read --envoy-config {path} ({exc.strerror})"
    try:
        envoy = load_yaml(path, data)
    except ConfigError as exc:  # not UTF-8, not YAML, nested too deeply; YAML's own message spans lines
        return "--envoy-config " + " ".join(exc.problems[0].removeprefix("<file>: ").split())
    if not isinstance(envoy, dict):
        what = "empty" if envoy is None else f"a {type(envoy).__name__}"
        return f"--envoy-config {path} is {what}, not a mapping (an Envoy bootstrap is one)"
    return envoy


def _eval(args: argparse.Namespace) -> int:
    from classifier.evaluate import run_eval
    from classifier.loader import DEFAULT_MODEL_DIR, load_difficulty_model

    try:
        model = load_difficulty_model("heuristic" if args.heuristic else "onnx", args.model)
    except (OSError, ValueError) as exc:  # what OnnxDifficultyModel.load raises for a missing or malformed directory
        what = f"--model {args.model}" if args.model else f"the shipped model {DEFAULT_MODEL_DIR}"
        print(f"model-router eval: cannot load {what} ({exc})", file=sys.stderr)
        return 2
    code: int = run_eval(
        data=args.data,
        out=args.out,
        model=model,
        text_of=prompt_text_of_item,
        opening_of=opening_text_of_item,
        weak=args.weak,
        strong=args.strong,
        plot=args.plot,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )
    return code


def _report(args: argparse.Namespace) -> int:
    from extproc.report import EvalInput, write_report

    if (args.eval_scores is None) != (args.data is None):
        print("model-router report: --eval and --data go together", file=sys.stderr)
        return 2
    if args.eval_scores is not None and args.html is None:  # else they would be read, checked and shown nowhere
        print(
            "model-router report: --eval and --data draw a curve in the --html page: give --html FILE", file=sys.stderr
        )
        return 2
    if args.eval_scores is None and (args.weak or args.strong):
        print(
            "model-router report: --weak and --strong name models of --eval's data: give --eval and --data",
            file=sys.stderr,
        )
        return 2
    evaluation = EvalInput(args.eval_scores, args.data, args.weak, args.strong) if args.eval_scores else None
    return write_report(
        args.logs,
        sys.stdout,
        as_json=args.json,
        html=args.html,
        evaluation=evaluation,
        err=sys.stderr,
        envoy_logs=args.envoy_logs,
    )


def _explain(args: argparse.Namespace) -> int:
    # gRPC's C core would log a failed handshake on stderr itself; explain's one error line already carries the reason.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from extproc.explain import ExplainInput, RemoteTls, run_explain

    headers = []
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            print(f"model-router explain: --header {raw!r}: expected NAME:VALUE", file=sys.stderr)
            return 2
        headers.append((name.strip().lower(), value.strip()))
    source = ExplainInput(args.prompt, args.file, args.path, args.model, tuple(headers))
    tls = RemoteTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return run_explain(source, args.config, args.target, args.json, sys.stdin, sys.stdout, sys.stderr, tls)


def _adapt(args: argparse.Namespace) -> int:
    from classifier.adapt import run_adapt

    code: int = run_adapt(
        data=args.data,
        out=args.out,
        weak=args.weak,
        strong=args.strong,
        base_dir=args.base,
        text_of=prompt_text_of_item,
        folds=args.folds,
        seed=args.seed,
        stdout=sys.stdout,
        force=args.force,
        stderr=sys.stderr,
    )
    return code


def _label(args: argparse.Namespace) -> int:
    from extproc.labeling.command import Console, run_label_command

    return run_label_command(args, prompt_text_of_item, Console(sys.stdin, sys.stdout, sys.stderr))


def _outcomes(args: argparse.Namespace) -> int:
    from extproc.outcomes import TenantFilter, run_outcomes

    only = frozenset(args.tenant) if args.tenant is not None else None
    tenants = TenantFilter(only, frozenset(args.exclude_tenant))
    return run_outcomes(args.capture, args.feedback, args.out, args.keep_unscored, sys.stdout, sys.stderr, tenants)


def _fail_open_lua(args: argparse.Namespace) -> int:
    from extproc.config import load_config
    from extproc.fail_open_lua import render_fail_open_lua

    if args.max_body_bytes < 1:  # the filter renames nothing whose body exceeds it: 0 would fail open on everything
        size = args.max_body_bytes
        print(f"model-router fail-open-lua: --max-body-bytes {size}: must be at least 1", file=sys.stderr)
        return 2
    sys.stdout.write(render_fail_open_lua(load_config(args.config), args.max_body_bytes))
    return 0


def _inject_webhook(args: argparse.Namespace) -> int:
    from extproc.webhook import run_webhook

    code: int = run_webhook(args.config)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI on ``argv`` (the console script calls it through ``extproc.__main__.run``)."""
    args = _parser().parse_args(argv)
    commands = {
        "serve": _serve,
        "check-config": _check,
        "eval": _eval,
        "report": _report,
        "adapt": _adapt,
        "explain": _explain,
        "label": _label,
        "outcomes": _outcomes,
        "fail-open-lua": _fail_open_lua,
        "inject-webhook": _inject_webhook,
    }
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"model-router: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `model-router report ... | head`: the reader left early, which is not a crash
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not raise again
        return 141  # what a shell reports for a process ended by SIGPIPE
