"""Typed, validated settings. ``load_config`` returns ``Settings`` or raises one ``ConfigError`` naming every field.

No config is read at import time and nothing here is global: the server builds a ``Snapshot`` from ``Settings``.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from contextlib import suppress
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, overload

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from extproc.errors import ConfigError
from extproc.spool import lock_path, rotated_path

__all__ = [
    "CaptureSettings",
    "CatalogModel",
    "ClassifierSettings",
    "FeedbackSettings",
    "LimitSettings",
    "OverrideSettings",
    "PolicySettings",
    "SecuritySettings",
    "ServerSettings",
    "Settings",
    "StickinessSettings",
    "TelemetrySettings",
    "TenantPolicy",
    "load_config",
    "load_yaml",
    "parse_config",
    "parse_listen",
    "validate_model",
]

Price = Annotated[float, Field(strict=True, ge=0, le=10_000)]
LatencyClass = Literal["fast", "standard", "slow"]
Constraint = Literal["quality", "max_cost", "latency"]
"""The per-request constraint headers a tenant may be allowed to send."""
Unit = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


@overload
def parse_listen(value: str) -> tuple[str, int]: ...
@overload
def parse_listen(value: str, unix: bool) -> tuple[str, int] | None: ...
def parse_listen(value: str, unix: bool = False) -> tuple[str, int] | None:
    """``(host, port)`` of a listen address ``host:port`` (IPv6 as ``[::1]:port``, returned without brackets), or
    None for ``unix:/absolute/path`` where ``unix`` allows one; else a ``ValueError`` saying what is wrong.

    The host is required: a bare port would listen on every interface, which must be asked for explicitly
    (``0.0.0.0:port``, ``[::]:port``). Config validation and the code that binds both parse here.
    """
    form = "host:port ([::1]:port for IPv6)" + (" or unix:/absolute/path" if unix else "")
    if unix and value.startswith("unix:/"):
        return None
    host, sep, port = value.rpartition(":")
    if value.startswith("unix:") or not (sep or value.isdigit()):  # a bare port: "has no host", below
        raise ValueError(f"expected {form}, got {value!r}")
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f"{value!r}: the port must be a number 0..65535")
    if not host:
        raise ValueError(f"{value!r} has no host; write 127.0.0.1:{port}, or 0.0.0.0:{port} for every interface")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    try:
        ok = ipaddress.ip_address(bare).version == (6 if bracketed else 4)
    except ValueError:  # a host name (digits and dots only: a mistyped IPv4 address)
        ok = not bracketed and bool(_HOSTNAME.fullmatch(host)) and not host.replace(".", "").isdigit()
    if not ok:
        raise ValueError(f"expected {form}, got {value!r}")
    return bare, int(port)


def check_otlp_endpoint(value: str) -> str:
    """``http(s)://host[:port]`` or ``host[:port]`` (port 4317 by default, as :mod:`extproc.otlp` reads it), and
    nothing else (credentials, a path or a query would be dropped unsaid): a typo would otherwise only show as spans
    that never arrive."""
    parsed = urllib.parse.urlsplit(value if "://" in value else "//" + value)
    host = parsed.hostname or ""
    try:
        ipaddress.ip_address(host)
        valid_host = True
    except ValueError:
        valid_host = bool(_HOSTNAME.fullmatch(host))
    try:
        port_ok = parsed.port != 0
    except ValueError:
        port_ok = False
    if parsed.username is not None:  # not echoed: the message goes to logs
        raise ValueError("credentials in the URL would not be sent: use OTEL_EXPORTER_OTLP_HEADERS")
    extras = parsed.query or parsed.fragment or parsed.path not in ("", "/")
    if parsed.scheme not in ("", "http", "https") or not valid_host or not port_ok or extras:
        raise ValueError(f"expected http(s)://host[:port] or host[:port], got {value!r}")
    return value


def _poll_interval(seconds: float) -> float:
    if 0 < seconds < 0.1:
        raise ValueError("must be 0 (reload on SIGHUP only) or at least 0.1")
    return seconds


def _check_model_name(name: str) -> str:
    if name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(
            f"{name!r}: a model name has no leading or trailing space and no control character (it is written into"
            " request bodies and response headers)"
        )
    return name


ModelName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_model_name)]
"""A catalog model's or a routable alias's name: matched exactly against the request's ``model``, so ``"llama\\n"``
would never match and, once chosen, would put a newline into a response header."""


def _listen(unix: bool) -> AfterValidator:
    def check(value: str) -> str:
        parse_listen(value, unix)
        return value

    return AfterValidator(check)


TcpListen = Annotated[str, _listen(unix=False)]
"""``host:port`` of an HTTP endpoint (:func:`parse_listen`)."""


class _Strict(BaseModel):
    # allow_inf_nan: every float here has bounds, and .nan failed them as "less than or equal to 1", not as NaN
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CatalogModel(_Strict):
    """One upstream model: where Envoy sends it, what it costs and how able it is."""

    name: ModelName
    cluster: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]
    tier: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_\-]+$")]
    input_price_per_mtok: Price
    output_price_per_mtok: Price
    ability: Annotated[float, Field(strict=True, ge=-10, le=10)] | None = None
    """On the classifier's difficulty scale; omitted = the classifier's default for this model name."""
    context_window: Annotated[int, Field(strict=True, gt=0)] = 128_000
    latency_class: LatencyClass = "standard"
    """``slow`` models are excluded from requests that ask for ``interactive`` latency."""


class TlsSettings(_Strict):
    """TLS on the gRPC port (PEM files; re-read at the next handshake after they change)."""

    cert_file: Path
    """The server certificate chain; its names must match what Envoy checks (SAN, or SNI on the cluster)."""
    key_file: Path
    client_ca_file: Path | None = None
    """Require a client certificate signed by this CA (mutual TLS): only callers holding one (the gateway) get in."""


class ServerSettings(_Strict):
    """Where and how the gRPC server listens."""

    listen: Annotated[str, _listen(unix=True)] = "127.0.0.1:50051"
    """``host:port`` (``[::1]:port`` for IPv6) or ``unix:/absolute/path.sock``; one router per address."""
    classifier_timeout_ms: Annotated[float, Field(strict=True, gt=0, le=1000)] = 50.0
    """Deadline for one classification; keep it well below Envoy's ``message_timeout``."""
    decision_api: bool = True
    """Serve ``model_router.v1.ModelRouterService`` (Decide) and gRPC reflection on the router's port."""
    decision_headers_on_response: bool = False
    """Add the decision headers (``x-model-router-model``, ``-tier``, ``-decision-id``) to the response itself, when
    Envoy sends the router the response headers (``response_header_mode: SEND``): for gateways that cannot build them
    from the router's dynamic metadata, as ``envoy/envoy.yaml`` does. Each routed request then holds its decision
    stream until its response headers arrive; with ``response_header_mode: SKIP`` (as shipped) none arrive, and each
    holds it to the end of the response: leave it off there. Off: the router ends each decision stream as soon as
    the request is decided, and Envoy sends it nothing more."""
    grace_seconds: Annotated[float, Field(strict=True, ge=0, le=300)] = 10.0
    """On SIGTERM, how long in-flight streams may take before the server stops."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    config_poll_seconds: Annotated[float, Field(strict=True, ge=0, le=3600), AfterValidator(_poll_interval)] = 2.0
    """How often to check the config file for changes (0 = only on SIGHUP; else at least 0.1 s: each poll reads and
    hashes the file, and 0.001 kept an idle router at 15% of a core)."""
    tls: TlsSettings | None = None
    """TLS on ``listen`` (null: plaintext, for loopback or a Unix socket). Needs a restart to turn on or off."""


class ClassifierSettings(_Strict):
    """Which difficulty model to load."""

    kind: Literal["onnx", "heuristic"] = "onnx"
    model_dir: Path | None = None
    """ONNX only; default: the model shipped inside the package."""
    candidate_model_dir: Path | None = None
    """An ONNX model directory (e.g. from ``model-router adapt``) that decides beside the live model on every
    classified request without routing anything: its choice is recorded next to the live one (decision log, span,
    ``model_router_candidate_decisions_total``) so ``model-router report`` can show where they disagree before it
    is promoted. It uses the live catalog's abilities and costs one more classification per request. Promote it by
    moving the path to ``model_dir`` (hot reload, no dropped streams)."""


class LimitSettings(_Strict):
    """Bounds on what the router reads; a request over a bound passes through unclassified."""

    max_body_bytes: Annotated[int, Field(strict=True, gt=0, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    """Bodies larger than this pass through (Envoy's own buffer limit answers 413 first)."""
    max_json_depth: Annotated[int, Field(strict=True, ge=4, le=1000)] = 64
    """Deeper JSON passes through (orjson itself refuses more than 1024 levels)."""
    max_json_containers: Annotated[int, Field(strict=True, ge=100, le=10_000_000)] = 50_000
    """Bodies with more arrays and objects pass through unparsed: parsing millions of tiny containers takes seconds
    of the event loop, which every other request shares. 2,000 messages with tool calls stay well below."""
    max_messages: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] = 2000
    """Chat requests with more messages pass through."""
    max_request_headers: Annotated[int, Field(strict=True, gt=0, le=10_000)] = 100
    """Envoy's limit on a request's headers (its ``common_http_protocol_options.max_headers_count``): Envoy answers
    500 to a header change past it, so a request with no room for ``x-model-router-cluster`` is answered 431
    (``headers_full``)."""
    max_request_headers_kb: Annotated[int, Field(strict=True, gt=0, le=8192)] = 60
    """Envoy's limit on their size (its ``max_request_headers_kb``), for the same reason."""


class OverrideSettings(_Strict):
    """A per-request model pin, honoured only from callers that prove they are trusted."""

    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """SHA-256 (hex) of the shared secret a caller sends in ``x-model-router-override-token``; null = disabled."""


class SecuritySettings(_Strict):
    """What clients may influence."""

    override: OverrideSettings = OverrideSettings()


class TelemetrySettings(_Strict):
    """Metrics, traces and what they may contain."""

    metrics_listen: TcpListen | None = "127.0.0.1:9464"
    """``host:port`` of the Prometheus ``/metrics`` endpoint; null disables it."""
    otlp_endpoint: Annotated[str, AfterValidator(check_otlp_endpoint)] | None = None
    """OTLP/gRPC collector, e.g. ``http://otel-collector:4317``; null = ``OTEL_EXPORTER_OTLP_ENDPOINT`` or no traces."""
    sampling_ratio: Unit = 1.0
    """Share of decisions traced when no parent span decides (a sampled Envoy parent is always followed)."""
    service_name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    """The spans' ``service.name``; null = ``OTEL_SERVICE_NAME``, else ``model-router``."""
    response_usage: bool = False
    """Read real token usage from upstream responses (JSON and SSE) into metrics and logs. Needs Envoy's
    observability-mode filter ``model_router_usage`` enabled (README "Real usage"), which sends the router a copy of
    every response on the routed paths; the response itself does not wait for the router."""
    decision_log: bool = False
    """Log one JSON line per decision at info level (otherwise at debug); ``model-router report`` reads them."""
    log_prompts: bool = False
    """Put prompt text (cut to 200 characters) into decision logs and spans. Off: prompts may hold personal data."""


class CaptureSettings(_Strict):
    """Opt-in capture of prompts of decided requests, to label them later (README "Learning from your traffic").

    Captured prompts are personal data: off by default, kept in one local file (mode 0600) bounded in size and age.
    Every key applies on reload.
    """

    enabled: bool = False
    sample_rate: Unit = 0.1
    """Share of decided requests (routed, fallback, shadow) whose prompt is captured."""
    path: Path | None = None
    """The JSON Lines file (required when enabled); its rotated predecessor is ``<path>.1``."""
    ttl_hours: Annotated[float, Field(strict=True, gt=0, le=24 * 366)] = 72.0
    """No captured line is kept longer than this (lines live between half of it and all of it)."""
    max_bytes: Annotated[int, Field(strict=True, ge=4096, le=1 << 40)] = 256 * 1024 * 1024
    """Disk bound of the capture: the live file and ``<path>.1`` together."""
    include_decide: bool = True
    """Also capture prompts of ``Decide`` calls. On: a gateway that routes itself with ``Decide`` serves real traffic
    through it. Off: only requests that went through ext_proc are captured. A ``dry_run`` request is never captured."""


class FeedbackSettings(_Strict):
    """Scores for recent decisions, over gRPC (``Feedback``) and HTTP (``POST /v1/feedback``). Needs a restart."""

    enabled: bool = False
    listen: TcpListen | None = "127.0.0.1:9465"
    """``host:port`` of the HTTP feedback endpoint; null serves feedback over gRPC only."""
    path: Path | None = None
    """The JSON Lines file accepted feedback is appended to (required when enabled); rotated to ``<path>.1``."""
    max_bytes: Annotated[int, Field(strict=True, ge=4096, le=1 << 40)] = 64 * 1024 * 1024
    """Disk bound of the feedback file and ``<path>.1`` together."""
    decision_ttl_seconds: Annotated[float, Field(strict=True, gt=0, le=30 * 86400)] = 3600.0
    """How long after a decision feedback for it is accepted."""
    max_decisions: Annotated[int, Field(strict=True, gt=0, le=10_000_000)] = 50_000
    """Bound of the in-memory decision store (oldest evicted first; about 330 bytes each): size it as decision
    rate x the delay before feedback arrives."""
    max_scores_per_decision: Annotated[int, Field(strict=True, gt=0, le=1000)] = 10
    """Accepted scores per decision (re-scores and other models' scores included); more are refused (429), so one
    decision's scores cannot flood the bounded feedback file and rotate the others out."""
    signing_key_file: Path | None = None
    """A file of shared keys (one per line, each >= 32 characters; the first signs): each decision gets a signed
    ``x-model-router-feedback-token`` that any replica with the key accepts (README "Several replicas")."""


class StickinessSettings(_Strict):
    """Conversations that escalated to a stronger model do not fall back to a weaker one mid-conversation."""

    enabled: bool = True
    session_header: Annotated[str, Field(pattern=r"^[a-z0-9\-]+$")] | None = None
    """A request header carrying the conversation id (e.g. ``x-session-id``), honoured only when named here: any client
    could send another conversation's id and inherit its floor (cost, not trust; SECURITY.md). Without it, or when a
    request lacks it, the key is a hash of every message up to and including the first assistant reply (prefixed by
    the tenant header's value); before that reply there is no key."""
    max_entries: Annotated[int, Field(strict=True, gt=0, le=10_000_000)] = 100_000
    ttl_seconds: Annotated[float, Field(strict=True, gt=0, le=7 * 86400)] = 3600.0


class PolicySettings(_Strict):
    """How difficulty, prices and the quality target become a choice."""

    routable_models: Annotated[tuple[ModelName, ...], Field(min_length=1)] = ("auto",)
    """Requested ``model`` values the router may change; every other model passes through untouched."""
    default_model: str
    """Used when the router cannot decide (classifier failure, nothing eligible)."""
    quality_target: Unit = 0.8
    """Pick the cheapest model whose predicted success probability reaches this."""
    quality_header: bool = False
    """Honour ``x-model-router-quality`` (0..1) per request. Off unless set: any client could otherwise ask for the
    most able (dearest) model, and client-supplied routing headers are ignored unless explicitly trusted."""
    latency_header: bool = False
    """Honour ``x-model-router-latency`` per request. Off unless set, like ``quality_header``: ``interactive`` skips
    ``slow`` models, which may be the cheap ones, so any client could raise its cost. (``x-model-router-max-cost``
    can only lower the cost, and is honoured by default.)"""
    expected_output_tokens: Annotated[int, Field(strict=True, gt=0, le=1_000_000)] = 300
    """Used for cost estimates when the request sets no output limit."""
    allowed_constraints: tuple[Constraint, ...] = ("quality", "max_cost", "latency")
    """Constraint headers honoured for requests without a tenant (``x-model-router-quality``, ``-max-cost``,
    ``-latency``)."""
    invalid_constraint: Literal["ignore", "reject"] = "ignore"
    """A malformed constraint header is ignored, or answered with a 400 from the router."""
    shadow: bool = False
    """Decide and record, but leave every request untouched (see the savings with ``model-router report``)."""
    tenant_header: Annotated[str, Field(pattern=r"^[a-z0-9\-]+$")] | None = None
    """Request header naming the tenant; it must be set by the gateway (e.g. from a JWT claim), not the client."""
    stickiness: StickinessSettings = StickinessSettings()


class TenantPolicy(_Strict):
    """What one tenant may use and wants by default."""

    models: Annotated[tuple[str, ...], Field(min_length=1)] | None = None
    """Catalog subset for this tenant (null = the whole catalog; an empty list is an error, not "everything")."""
    default_model: str | None = None
    quality_target: Unit | None = None
    allowed_constraints: tuple[Constraint, ...] | None = None
    shadow: bool | None = None


class Settings(_Strict):
    """The whole configuration file; :func:`parse_config` validates it, checks between fields included."""

    server: ServerSettings = ServerSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    limits: LimitSettings = LimitSettings()
    security: SecuritySettings = SecuritySettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    policy: PolicySettings
    catalog: Annotated[tuple[CatalogModel, ...], Field(min_length=1)]
    tenants: dict[Annotated[str, Field(min_length=1, max_length=200)], TenantPolicy] = {}
    capture: CaptureSettings = CaptureSettings()
    feedback: FeedbackSettings = FeedbackSettings()


_Loc = tuple[int | str, ...]
"""Where a value sits in the loaded YAML, as pydantic reports it: ``("catalog", 0, "name")``."""


class _Failed(Exception):
    """A check between fields read a field that failed validation itself: the check is skipped."""


@cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """Validates one field of ``model`` alone, with its constraints and validators."""
    field = model.model_fields[name]
    form: Any = Annotated[field.annotation, field]  # built at run time: no static type
    return TypeAdapter(form)


class _Fields:
    """Single fields of the loaded YAML, each validated alone: what the checks between fields read. A field that
    failed validation skips only the checks that read it; the rest of its section is still checked."""

    def __init__(self, data: dict[str, Any], failed: list[_Loc]) -> None:
        self._data = data
        self._failed = failed  # where pydantic reported a problem

    def get(self, model: type[BaseModel], *loc: int | str) -> Any:
        """Field ``loc[-1]`` of ``model``: validated, or its default where the YAML omits it; ``_Failed`` if a
        problem was reported for it, for a part of it or for a section holding it."""
        if any(loc[: len(f)] == f or f[: len(loc)] == loc for f in self._failed):
            raise _Failed
        node: Any = self._data
        for key in loc:  # each section on the way validated as a mapping (list), or is absent
            if isinstance(node, dict) and key not in node:
                return model.model_fields[str(loc[-1])].get_default(call_default_factory=True)
            node = node[key]
        return _adapter(model, str(loc[-1])).validate_python(node)

    def keys(self, section: str) -> list[Any]:
        """The tenant names or catalog indices; ``_Failed`` if the section failed as a whole."""
        if (section,) in self._failed:
            raise _Failed
        node = self._data.get(section, ())
        return list(range(len(node))) if isinstance(node, list) else list(node)


def _cross_checks(v: _Fields) -> list[str]:
    """The checks between fields, in a fixed order. A ``suppress(_Failed)`` block ends where it reads a field that
    failed validation: a broken field is named once, not again by every check that reads it."""
    problems: list[str] = []
    catalog: set[str] = set()
    catalog_known = True  # every model name is valid: "not in catalog" can be told
    windows: list[int] = []
    windows_known = True
    try:
        entries = v.keys("catalog")
    except _Failed:
        entries, catalog_known = [], False
    for i in entries:
        try:
            name = v.get(CatalogModel, "catalog", i, "name")
        except _Failed:
            catalog_known = False  # a reference to the broken entry's model is not "not in catalog"
            continue
        if name in catalog:
            problems.append(f"catalog[{i}].name: duplicate model name {name!r}")
        catalog.add(name)
        try:
            windows.append(v.get(CatalogModel, "catalog", i, "context_window"))
        except _Failed:
            windows_known = False  # named already; the widest window is not known

    def not_in_catalog(name: str) -> bool:
        if not catalog_known:
            raise _Failed
        return name not in catalog

    def policy(name: str) -> Any:
        return v.get(PolicySettings, "policy", name)

    def rule(tenant: Any, name: str) -> Any:
        return v.get(TenantPolicy, "tenants", tenant, name)

    with suppress(_Failed):
        if not_in_catalog(default := policy("default_model")):
            problems.append(f"policy.default_model: {default!r} is not in catalog")
    with suppress(_Failed):
        # It counts in the context fit of every request that sets no output limit: at the widest window no such
        # request would fit any model (each a no_eligible_model fallback, priced as a whole window of output).
        if windows_known and windows and (expected := policy("expected_output_tokens")) >= max(windows):
            problems.append(
                f"policy.expected_output_tokens: {expected} leaves no room for a prompt in any catalog model's "
                f"context window (the widest: {max(windows)})"
            )
    tenants: list[Any] = []
    with suppress(_Failed):
        tenants = v.keys("tenants")
    for tenant in tenants:
        with suppress(_Failed):
            for j, name in enumerate(rule(tenant, "models") or ()):
                if not_in_catalog(name):
                    problems.append(f"tenants.{tenant}.models[{j}]: {name!r} is not in catalog")
        with suppress(_Failed):
            models, default = rule(tenant, "models"), rule(tenant, "default_model")
            if default is not None and (default not in models if models else not_in_catalog(default)):
                problems.append(f"tenants.{tenant}.default_model: {default!r} is not among the tenant's models")
            elif default is None and models and (fallback := policy("default_model")) not in models:
                problems.append(
                    f"tenants.{tenant}.default_model: required, policy.default_model "
                    f"{fallback!r} is not among the tenant's models"
                )
    with suppress(_Failed):
        if tenants and policy("tenant_header") is None:
            problems.append("policy.tenant_header: required when tenants are configured")
    return problems + _learning_checks(v)


def _learning_checks(v: _Fields) -> list[str]:
    """Capture and feedback need their files, and must not share a file or the metrics port."""
    problems: list[str] = []

    def capture(name: str) -> Any:
        return v.get(CaptureSettings, "capture", name)

    def feedback(name: str) -> Any:
        return v.get(FeedbackSettings, "feedback", name)

    with suppress(_Failed):
        if capture("enabled") and capture("path") is None:
            problems.append("capture.path: required when capture.enabled is true")
    with suppress(_Failed):
        if feedback("enabled") and feedback("path") is None:
            problems.append("feedback.path: required when feedback.enabled is true")
    with suppress(_Failed):
        if capture("path") is not None and feedback("path") is not None:
            # Each file rotates to <path>.1 and is locked through <path>.lock: the six names must be six files,
            # however they are spelled.
            def names(path: Path) -> set[Path]:
                full = Path(os.path.abspath(path))
                return {full, rotated_path(full), lock_path(full)}

            if names(capture("path")) & names(feedback("path")):
                problems.append(
                    "feedback.path: must differ from capture.path and from each other's <path>.1 and <path>.lock"
                )
    with suppress(_Failed):
        listens = {
            "server.listen": v.get(ServerSettings, "server", "listen"),
            "telemetry.metrics_listen": v.get(TelemetrySettings, "telemetry", "metrics_listen"),
            "feedback.listen": feedback("listen") if feedback("enabled") else None,
        }
        problems.extend(_listen_clashes(listens))
    return problems


def _bind_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """``host`` as an address where it is one (``[::0]`` is ``::``; ``localhost`` is 127.0.0.1), else the name."""
    try:
        return ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return host


def _overlap(a: str, b: str) -> bool:
    """Whether listening on host ``a`` and host ``b`` (same port) would collide: the same address, or a wildcard
    of the other's family (``[::]`` takes IPv4 too on Linux's default dual stack; ``0.0.0.0`` leaves ``::1``)."""
    x, y = _bind_host(a), _bind_host(b)
    if x == y:
        return True
    if any(not isinstance(h, str) and h.version == 6 and h.is_unspecified for h in (x, y)):
        return True
    if isinstance(x, str) or isinstance(y, str):  # a host name: only the same name is known to collide
        return False
    return x.version == y.version and (x.is_unspecified or y.is_unspecified)


def _listen_clashes(listens: Mapping[str, str | None]) -> list[str]:
    """Two listeners on one port of one address (or of every address): caught here, the second bind would fail at
    start as if another process held the port, naming whichever field was bound second."""
    bound = [(field, parse_listen(value, unix=True)) for field, value in listens.items() if value is not None]
    problems = []
    for i, (field, at) in enumerate(bound):
        for earlier, other in bound[:i]:
            if at and other and at[1] == other[1] != 0 and _overlap(at[0], other[0]):
                problems.append(f"{field}: must differ from {earlier} (both on port {at[1]})")
    return problems


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


ModelT = TypeVar("ModelT", bound=BaseModel)


def _validate(model: type[ModelT], data: object) -> tuple[ModelT | None, list[str], list[_Loc]]:
    """``model`` validated from ``data``, or None, every problem with its field path and where each sits."""
    if not isinstance(data, dict):
        return None, ["<root>: expected a mapping at the top of the file"], [()]
    try:
        return model.model_validate(data), [], []
    except ValidationError as exc:
        errors = exc.errors()
    item_paths = {_field_path(tuple(e["loc"][:1])) for e in errors if len(e["loc"]) > 1}
    problems: list[str] = []
    failed: list[_Loc] = []
    for err in errors:
        path = _field_path(tuple(err["loc"]))
        if err["type"] == "too_short" and path in item_paths:
            continue  # pydantic also reports an empty tuple when its only items are invalid
        msg = err["msg"].removeprefix("Value error, ")
        problems.extend(line if not path else f"{path}: {line}" for line in msg.split("\n"))
        failed.append(tuple(err["loc"]))
    return None, problems, failed


def validate_model(model: type[ModelT], data: object) -> ModelT:
    """Validate loaded YAML into ``model``; raise one ``ConfigError`` listing every problem with its field path."""
    value, problems, _ = _validate(model, data)
    if value is None:
        raise ConfigError(problems)
    return value


def parse_config(data: object) -> Settings:
    """Validate already-loaded YAML data; raise one ``ConfigError`` listing every problem with its field path: the
    fields' own, then those between fields (:func:`_cross_checks`) that do not read a field already named."""
    settings, problems, failed = _validate(Settings, data)
    if isinstance(data, dict):
        problems += _cross_checks(_Fields(data, failed))
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML has it (every wheel): the pure-Python one held the GIL for 1.8 s on a 3,000-tenant
file (0.4 s here), during which live requests missed their classifier deadline."""

MAX_YAML_DEPTH = 64
"""Nesting a config file may have (the schema needs 5): libyaml builds nodes recursively in C, and a file nested
100,000 deep crashed the process; the events are counted first, which libyaml produces without recursing."""


def _named(text: str, path: Path) -> io.StringIO:
    """``text`` as a stream named ``path``: YAML's errors then say where (``in "<unicode string>"`` for a string)."""
    stream = io.StringIO(text)
    stream.name = str(path)
    return stream


def _too_deep(stream: io.StringIO) -> bool:
    depth = 0
    for event in yaml.parse(stream, Loader=_SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return True
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return False


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one, silently: a second
    ``limits:`` block would replace the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                continue  # a list or mapping as a key: PyYAML refuses it below ("found unhashable key")
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


# YAML 1.1 (PyYAML) reads an exponent without a dot or without a sign, ``1e5`` or ``1.5e3``, as a string; YAML 1.2
# and every other reader take it as a number, and the strict number fields would refuse the string.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_config_file(path: Path) -> bytes:
    """The file's bytes; an unreadable file is a ``ConfigError`` naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"]) from None


def load_yaml(path: Path, data: bytes | None = None) -> object:
    """Read a YAML file (or parse ``data``, the bytes already read from it); an unreadable or malformed file is a
    ``ConfigError`` naming the file."""
    try:
        text = (read_config_file(path) if data is None else data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"<file>: {path} is not UTF-8 text (byte {exc.start})"]) from None
    try:
        if _too_deep(_named(text, path)):
            raise RecursionError
        return yaml.load(_named(text, path), Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([f"<file>: {path} is not valid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"<file>: {path} is nested too deeply"]) from None


def load_config(path: Path, data: bytes | None = None) -> Settings:
    """Read and validate a YAML config file (``data``: its bytes, already read)."""
    return parse_config(load_yaml(path, data))
