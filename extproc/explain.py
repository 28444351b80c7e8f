"""``model-router explain``: what the router would do with one prompt or request body, and why, on one screen.

In-process by default (loads ``--config`` and runs :func:`extproc.decide.decide`, the live request path, forwarding
nothing and logging nothing); ``--target HOST:PORT`` asks a running router's ``Decide`` instead, over TLS when
``--tls-ca`` is given (``server.tls``; ``--tls-cert``/``--tls-key`` for mutual TLS). Both print the same
``DecideResponse``: as a table, or as its canonical proto3 JSON with ``--json``.

Without ``--config`` (and without ``--target``) the first of :data:`DEFAULT_CONFIGS` that exists is used: the dev
stack's ``envoy/model-router.yaml`` of the source checkout this package runs from, then
``/etc/model-router/model-router.yaml``, where the image and the k8s manifests mount the router's config (so
``kubectl exec ... -c model-router -- model-router explain "..."`` explains with the live config).

A prompt (on the command line, or plain text on stdin) is sent as the minimal request body of the API that
``--path`` selects (:data:`PROMPT_BODIES`, one function per schema of :mod:`extproc.schemas`), so it is read the way
a real request to that path would be. Its model is ``auto``, or the config's first routable model when ``auto`` is
not one (in-process: a running router's config is not known here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import orjson
from google.protobuf import json_format

from classifier.model import DifficultyModel, Prediction
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.decision_proto import label
from extproc.record import DiscardSink
from extproc.schemas import schema_for_path
from extproc.schemas.openai_chat import OpenAIChat
from extproc.stream import add_header

__all__ = [
    "DEFAULT_CONFIGS",
    "ExplainError",
    "ExplainInput",
    "RemoteTls",
    "TlsCredentials",
    "decide_local",
    "decide_remote",
    "default_config",
    "default_configs",
    "default_model",
    "prompt_body",
    "read_input",
    "render",
    "run_explain",
]

DEFAULT_PATH = "/v1/chat/completions"
DEFAULT_MODEL = "auto"
_BOM = b"\xef\xbb\xbf"


def default_configs(root: Path) -> tuple[Path, ...]:
    """Where to look for a config, ``root`` being the directory that holds the ``extproc`` package: in a source
    checkout, the dev stack's config; installed, ``root`` is site-packages, whose ``envoy`` directory is another
    package's, so only the image's and the k8s manifests' config mount."""
    checkout = (root / "envoy" / "model-router.yaml",) if (root / "pyproject.toml").is_file() else ()
    return (*checkout, Path("/etc/model-router/model-router.yaml"))


DEFAULT_CONFIGS = default_configs(Path(__file__).resolve().parents[1])
_REASONS = {
    "cheapest_meeting_target": "the cheapest model predicted to reach the quality target",
    "none_meets_target_most_able": "no model left in (see meets) is predicted to reach the quality target: the most "
    "able one",
    "classifier_failed": "the classifier failed or missed its deadline: the fallback model",
    "no_eligible_model": "no model fits the context: the one with the widest window",
    "no_prompt_text": "no text to classify: the fallback model",
    "trusted_override": "a trusted caller pinned the model",
    "budget_too_low_cheapest": "no model fits the request's cost ceiling: the cheapest one",
    "sticky_conversation": (
        "the conversation already used a model this able, or its first user turn needs one (or the most able one"
        " left in)"
    ),
    "no_interactive_model": "only slow models fit this interactive request: the usual choice among them",
    "invalid_constraint": "a malformed constraint header: the router answers 400",
    "body_too_large": "the body is over limits.max_body_bytes (or would be, with the model renamed): not classified",
    "token_count": "a token count: nothing to decide, but no provider serves an alias",
}


class ExplainError(Exception):
    """Bad input or an unreachable router: one line for the user, exit code 2."""


@dataclass(frozen=True, slots=True)
class ExplainInput:
    """Where the request comes from: a prompt, a body file (``-`` for stdin), or stdin. ``model`` None: the default
    (:func:`default_model`)."""

    prompt: str | None
    file: str | None
    path: str
    model: str | None
    headers: tuple[tuple[str, str], ...] = ()

    def usage_error(self) -> str | None:
        """What is wrong with ``path``, in one line; None if nothing. A request path always starts with ``/``: any
        other is never one of the router's APIs (explained as ``unknown_path``), and ``Decide`` refuses an empty
        one."""
        if not self.path.startswith("/"):
            return f"--path {self.path!r}: a request path starts with / (e.g. {DEFAULT_PATH})"
        return None


@dataclass(frozen=True, slots=True)
class RemoteTls:
    """``--tls-*``: reach a ``--target`` whose gRPC port has ``server.tls``. ``ca`` switches to a secure channel that
    verifies the router's certificate against it; ``cert`` and ``key`` are a client certificate for mutual TLS
    (``server.tls.client_ca_file``); ``server_name`` is the name checked against the certificate instead of the host
    in ``--target`` (``grpc.ssl_target_name_override``)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def _given(self) -> list[str]:
        options = (
            ("--tls-ca", self.ca),
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
            ("--tls-server-name", self.server_name),
        )
        return [option for option, value in options if value is not None]

    def usage_error(self, target: str | None) -> str | None:
        """What is wrong with these options beside ``target``, in one line; None if nothing."""
        given = self._given()
        if not given:
            return None
        if target is None:
            return f"{', '.join(given)}: only with --target (the in-process explain opens no connection)"
        if (self.cert is None) != (self.key is None):
            return "--tls-cert and --tls-key go together (a client certificate and its private key)"
        if self.ca is None:
            return f"{', '.join(given)}: only with --tls-ca (the CA that verifies the router's certificate)"
        if not self.server_name and self.server_name is not None:
            return "--tls-server-name: empty name"
        return None

    def load(self) -> TlsCredentials | None:
        """The PEM files read (None without ``ca``: plaintext); ``ExplainError`` naming the option and the path if one
        is unreadable or not PEM."""
        if self.ca is None:
            return None
        root = _read_pem("--tls-ca", self.ca)
        key = _read_pem("--tls-key", self.key) if self.key is not None else None
        chain = _read_pem("--tls-cert", self.cert) if self.cert is not None else None
        return TlsCredentials(self, root, key, chain)


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """What :meth:`RemoteTls.load` read: the arguments of ``grpc.ssl_channel_credentials``, and the options."""

    options: RemoteTls
    root: bytes
    key: bytes | None
    chain: bytes | None


def _read_pem(option: str, path: Path) -> bytes:
    from extproc.tls import read_pem  # grpc, only for --target

    try:
        return read_pem(option, path)
    except ValueError as exc:
        raise ExplainError(str(exc)) from None


def default_config() -> Path | None:
    """The first of :data:`DEFAULT_CONFIGS` that is a file, or None."""
    return next((path for path in DEFAULT_CONFIGS if path.is_file()), None)


def prompt_body(prompt: str, model: str, path: str) -> bytes:
    """A minimal request body for ``path`` with ``prompt`` as the user's turn. A path no schema reads gets a chat
    body: the router passes it through untouched whatever it holds (``unknown_path``)."""
    schema = schema_for_path(path) or OpenAIChat()
    return orjson.dumps(schema.prompt_body(prompt, model))


def _check_body(raw: bytes, where: str) -> bytes:
    """``raw`` if it is a JSON object, else ``ExplainError``. A byte order mark is left on: the router treats it as
    ``invalid_json``, which is what explain must show (an object behind it is checked all the same)."""
    try:
        body = orjson.loads(raw.removeprefix(_BOM))
    except orjson.JSONDecodeError as exc:
        raise ExplainError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ExplainError(f"{where}: a request body must be a JSON object, not {type(body).__name__}")
    return raw


def _utf8(text: str, where: str) -> str:
    """``text`` if it can be sent as UTF-8, else ``ExplainError``: bytes that are not UTF-8 reach Python as lone
    surrogates (from the command line, or a non-UTF-8 stdin), which no JSON body can carry. Refused rather than
    replaced: a client sends UTF-8, and a prompt with U+FFFD in it is not the one the user meant."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ExplainError(f"{where} is not valid UTF-8 (character {exc.start + 1}): convert it first") from None
    return text


def _stdin_text(stdin: TextIO) -> str:
    """stdin decoded as UTF-8; ``ExplainError`` if it is not (read as bytes, so a locale's encoding plays no part)."""
    if not hasattr(stdin, "buffer"):
        return _utf8(stdin.read(), "the prompt on stdin")
    raw: bytes = stdin.buffer.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExplainError(f"the prompt on stdin is not valid UTF-8 (byte {exc.start + 1}): convert it first") from None


def read_input(source: ExplainInput, stdin: TextIO) -> api.DecideRequest:
    """The ``DecideRequest`` for ``source``; stdin holding a JSON object is a request body, otherwise prompt text."""
    if source.prompt is not None and source.file is not None:
        raise ExplainError("give a prompt or --file, not both")
    model = source.model if source.model is not None else DEFAULT_MODEL
    if source.file is not None:
        if source.file == "-":
            raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
            body = _check_body(raw, "stdin")
        else:
            try:
                raw = Path(source.file).read_bytes()
            except OSError as exc:
                raise ExplainError(f"cannot read {source.file}: {exc.strerror or exc}") from None
            body = _check_body(raw, source.file)
    elif source.prompt is not None:
        body = prompt_body(_utf8(source.prompt, "the prompt"), model, source.path)
    else:
        text = _stdin_text(stdin)
        if not text.strip():
            raise ExplainError("nothing to explain: give a prompt, --file FILE, or text on stdin")
        if text.lstrip().removeprefix("\ufeff").startswith("{"):  # a body with a byte order mark is a body too
            body = _check_body(text.encode(), "stdin")
        else:
            body = prompt_body(text, model, source.path)
    headers: dict[str, str] = {}
    for name, value in source.headers:  # repeated -H: as the router reads the same headers from Envoy
        add_header(headers, name, value)
    return api.DecideRequest(path=source.path, headers=headers, body=body, dry_run=True)


async def _inline_classify(model: DifficultyModel, text: str, timeout: float) -> Prediction:
    return model.predict(text)  # one prompt, no event loop to protect: no executor, no deadline


def default_model(config: Path | None) -> str:
    """The model of a prompt's body: ``auto``, or the first of the config's ``policy.routable_models`` if ``auto`` is
    not one of them (a prompt sent as ``auto`` would then only show ``model_not_routable``)."""
    if config is None:
        return DEFAULT_MODEL
    from extproc.config import load_config

    routable = load_config(config).policy.routable_models
    return DEFAULT_MODEL if DEFAULT_MODEL in routable else routable[0]


def decide_local(request: api.DecideRequest, config: Path) -> api.DecideResponse:
    """Load ``config`` (and its classifier) and decide in this process."""
    from extproc.decide import decide
    from extproc.reload import load_snapshot

    snapshot = load_snapshot(config)
    return asyncio.run(decide(request, snapshot, _inline_classify, DiscardSink()))


def _hint(code: str, details: str, tls: RemoteTls | None, target: str) -> str:
    """What to try when the router cannot be reached, from gRPC's connection error (empty if nothing to add)."""
    if code != "UNAVAILABLE" or "Connection refused" in details:
        return ""
    if "errors resolving" in details or "DNS resolution failed" in details:  # the name, not TLS: details say so
        return ""
    if tls is None:
        return "; if the router has server.tls, give --tls-ca"
    if "WRONG_VERSION_NUMBER" in details:
        return "; the router's port does not speak TLS: drop the --tls-* options"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return f"; the router's certificate does not verify against --tls-ca {tls.ca}"
    if "Hostname Verification" in details:
        name = tls.server_name or target.rpartition(":")[0]
        return f"; the router's certificate is not for {name!r} (--tls-server-name sets the name checked)"
    if tls.cert is None:
        return "; if the router requires client certificates (server.tls.client_ca_file), give --tls-cert and --tls-key"
    return f"; the router may not accept the client certificate in --tls-cert {tls.cert}"


def decide_remote(
    request: api.DecideRequest,
    target: str,
    timeout: float = 10.0,
    tls: TlsCredentials | None = None,
) -> api.DecideResponse:
    """Ask the router at ``target`` (``host:port``): over TLS with ``tls``, plaintext without."""
    import grpc

    from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc

    if tls is not None:
        credentials = grpc.ssl_channel_credentials(tls.root, tls.key, tls.chain)
        name = tls.options.server_name
        channel = grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", name)] if name else []
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply: api.DecideResponse = api_grpc.ModelRouterServiceStub(channel).Decide(request, timeout=timeout)
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
            hint = _hint(code, details, tls.options if tls else None, target)
            raise ExplainError(f"{target}: {code}: {details}{hint}") from None
    return reply


def _max_difficulty(ability: float, target: float) -> float:
    """The hardest prompt a model of ``ability`` is predicted to answer at ``target`` (sigmoid(a - d) >= target)."""
    if target >= 1.0:
        return -math.inf
    if target <= 0.0:
        return math.inf
    return ability - math.log(target / (1.0 - target))


_EXCLUDED = {"context": "ctx", "latency": "slow", "max_cost": "cost"}
"""The ``meets`` column for a model the policy left out (``ModelEstimate.excluded_by``), and why."""


def render(response: api.DecideResponse, headers: Mapping[str, str] | None = None) -> str:
    """One screen: the decision, its reason, the constraint headers the router ignored (``ignored_constraints``,
    with their values from the request's ``headers``), the score against each model's threshold, and each model's
    cost."""
    d = response.decision
    outcome = label("outcome", d.outcome) if d.outcome else "unknown"
    reason = label("reason", d.reason) if d.reason else "unspecified"
    lines = [f"decision   {d.decision_id}  {outcome}"]
    if d.selected_model:
        lines[0] += f" -> {d.selected_model} (tier {d.tier}, cluster {d.cluster})"
    lines.append(f"reason     {reason}" + (f": {_REASONS[reason]}" if reason in _REASONS else ""))
    if outcome == "passthrough":
        if d.selected_model and d.selected_model != d.requested_model:
            where = f"with its model renamed to {d.selected_model}, to cluster {d.cluster}"
        elif d.cluster:
            where = f"untouched, to its model's cluster {d.cluster}"
        else:
            where = "untouched, to the default route"
        lines.append(f"           the request is forwarded {where}")
        return "\n".join(lines) + "\n"
    schema = label("api_schema", d.api_schema) if d.api_schema else "?"
    tokens = d.estimated_input_tokens if d.HasField("estimated_input_tokens") else "?"
    lines.append(f"request    model {d.requested_model!r} ({schema}), ~{tokens} input tokens, tenant {d.tenant or '-'}")
    sent = {k.lower(): v for k, v in (headers or {}).items()}
    for name in response.ignored_constraints:
        value = sent.get(name, "")
        lines.append(f"ignored    {name}: {value[:40]!r} (malformed, or a constraint the tenant may not set)")
    target = d.quality_target if d.HasField("quality_target") else None
    if d.HasField("difficulty"):
        score = f"difficulty {d.difficulty:+.2f}"
        if d.HasField("confidence"):
            score += f" (confidence {d.confidence:.2f})"
        if target is not None:
            score += f"; quality target {target:.2f}: a model qualifies if difficulty <= its max difficulty"
        lines.append(f"score      {score}")
    else:
        lines.append("score      not classified")
    if d.HasField("estimated_cost_selected") and d.HasField("estimated_cost_requested"):
        before, after = d.estimated_cost_requested, d.estimated_cost_selected
        pct = 100 * (before - after) / before if before else 0.0
        lines.append(f"cost       {after:.6f} instead of {before:.6f} unrouted ({pct:.0f}% saved)")
    if response.models:
        lines.append("")
        lines.append(
            f"  {'model':<26} {'tier':<10} {'ability':>7} {'max diff.':>9} {'meets':>5} {'P(ok)':>6} {'est. cost':>11}"
        )
        if any(m.excluded_by for m in response.models):
            lines.append("  (meets: ctx = too small a context window, slow = left out for an interactive request, cost")
            lines.append("   = over the request's max cost; the policy chose among the others)")
        for m in response.models:
            limit = _max_difficulty(m.ability, target) if target is not None else None
            meets = "-" if limit is None or not d.HasField("difficulty") else ("yes" if d.difficulty <= limit else "no")
            meets = _EXCLUDED.get(m.excluded_by, meets) if m.excluded_by else ("ctx" if not m.fits_context else meets)
            p = f"{m.success_probability:.2f}" if m.HasField("success_probability") else "-"
            mark = "<" if m.name == d.selected_model else " "
            lim = f"{limit:+9.2f}" if limit is not None else f"{'-':>9}"
            lines.append(
                f"{mark} {m.name:<26} {m.tier:<10} {m.ability:>7.2f} {lim} {meets:>5} {p:>6} {m.estimated_cost:>11.6f}"
            )
    return "\n".join(lines) + "\n"


def _config_for(config: Path | None, target: str | None) -> Path | None:
    """The readable config to decide with in-process (None with ``target``); ``ExplainError`` if there is none."""
    if target is not None:
        if config is not None:
            raise ExplainError("--config: only without --target (a running router decides with its own config)")
        return None
    if config is None:
        config = default_config()
        if config is None:
            looked = ", ".join(str(p) for p in DEFAULT_CONFIGS)
            raise ExplainError(f"no --config given and no default config ({looked}): give --config FILE, or --target")
    try:
        config.open("rb").close()
    except OSError as exc:
        raise ExplainError(f"cannot read --config {config} ({exc.strerror or exc})") from None
    return config


def run_explain(
    source: ExplainInput,
    config: Path | None,
    target: str | None,
    as_json: bool,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    tls: RemoteTls | None = None,
) -> int:
    """Explain one request; 0 on success, 2 with a one-line error on bad options or input or an unreachable router.

    ``config`` None: the first of :data:`DEFAULT_CONFIGS` that exists (in-process only: with ``target`` a config is
    an error, the running router has its own)."""
    from extproc.errors import ConfigError

    problem = (tls.usage_error(target) if tls is not None else None) or source.usage_error()
    if problem:
        print(f"model-router explain: {problem}", file=stderr)
        return 2
    try:
        config = _config_for(config, target)  # before reading stdin, as the TLS files: fail fast
        credentials = tls.load() if tls is not None and target else None  # before reading stdin: fail fast
        if source.model is None:
            source = dataclasses.replace(source, model=default_model(config))
        request = read_input(source, stdin)
        if config is None:
            assert target is not None
            response = decide_remote(request, target, tls=credentials)
        else:
            response = decide_local(request, config)
    except ExplainError as exc:
        print(f"model-router explain: {exc}", file=stderr)
        return 2
    except ConfigError as exc:
        print(f"model-router explain: --config {config}: {'; '.join(exc.problems)}", file=stderr)
        return 2
    except OSError as exc:
        print(f"model-router explain: --config {config}: {exc}", file=stderr)
        return 2
    if as_json:
        out = json_format.MessageToJson(response, preserving_proto_field_name=True, indent=2)
        print(out, file=stdout)
    else:
        print(render(response, request.headers), end="", file=stdout)
    return 0
