"""The effective policy for one request: tenant view + per-request constraint headers.

Pure: headers and a snapshot in, a :class:`RequestPolicy` out; when the config says malformed constraint headers are
rejected, the policy carries the :class:`ConstraintError` for the caller to answer once it knows the router decides
the request (a request the router only forwards is not its to refuse). Which headers a request may use depends on
its tenant's ``allowed_constraints``; a constraint that is not allowed is ignored, never an error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from extproc.policy import ResolvedModel
from extproc.snapshot import Snapshot, TenantView

__all__ = [
    "LATENCY_HEADER",
    "MAX_COST_HEADER",
    "QUALITY_HEADER",
    "ConstraintError",
    "RequestPolicy",
    "resolve_request_policy",
]

QUALITY_HEADER = "x-model-router-quality"
MAX_COST_HEADER = "x-model-router-max-cost"
LATENCY_HEADER = "x-model-router-latency"
_LATENCIES = ("interactive", "standard", "batch")
_LATENCY_EXPECTED = "one of " + ", ".join(_LATENCIES)


class ConstraintError(ValueError):
    """A constraint header is malformed and the config asks for a 400."""

    def __init__(self, header: str, message: str) -> None:
        self.header = header
        super().__init__(f"{header}: {message}")


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """What the policy applies to this request."""

    tenant: str | None
    catalog: tuple[ResolvedModel, ...]
    default: ResolvedModel
    quality_target: float
    max_cost: float | None
    interactive: bool
    shadow: bool
    ignored: tuple[str, ...]
    """Constraint headers present but not honoured (malformed in ignore mode, or not allowed)."""
    fallbacks: Mapping[str, str]
    """The tenant's fallback table (``TenantView.fallbacks``)."""
    invalid: ConstraintError | None = None
    """The first malformed constraint header, in reject mode: a request the router decides is answered 400."""

    def model(self, name: str | None) -> ResolvedModel | None:
        """The model called ``name`` in this request's catalog (a tenant's subset is all it may be sent to)."""
        return next((m for m in self.catalog if m.name == name), None)


_NUMBER = re.compile(r"\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""A plain decimal number: ``float`` alone also takes ``1_0``, full-width digits, ``-0``, ``nan`` and ``inf``."""


def _number(raw: str) -> float | None:
    return float(raw) if _NUMBER.fullmatch(raw) else None


def _parse_unit(raw: str) -> float | None:
    value = _number(raw)
    return value if value is not None and value <= 1.0 else None


def _parse_cost(raw: str) -> float | None:
    value = _number(raw)
    return value if value is not None and math.isfinite(value) else None


def _parse_latency(raw: str) -> str | None:
    value = raw.lower()
    return value if value in _LATENCIES else None


def resolve_request_policy(headers: Mapping[str, str], snap: Snapshot) -> RequestPolicy:
    """Combine the tenant's view with the request's constraint headers."""
    policy = snap.settings.policy
    tenant_header = policy.tenant_header
    tenant = headers.get(tenant_header) if tenant_header else None
    view: TenantView = snap.tenant_view(tenant)
    reject = policy.invalid_constraint == "reject" and not view.shadow  # shadow mode changes nothing, not even this
    ignored: list[str] = []
    invalid: ConstraintError | None = None
    values: dict[str, object] = {}
    # opted_in: headers that can raise a request's cost also need the operator's opt-in (max_cost only lowers it).
    for name, header, parse, expected, opted_in in (
        ("quality", QUALITY_HEADER, _parse_unit, "a number from 0 to 1", policy.quality_header),
        ("max_cost", MAX_COST_HEADER, _parse_cost, "a non-negative number (the catalog's currency)", True),
        ("latency", LATENCY_HEADER, _parse_latency, _LATENCY_EXPECTED, policy.latency_header),
    ):
        raw = headers.get(header)
        if raw is None:
            continue
        if not (opted_in and name in view.allowed_constraints):
            ignored.append(header)
            continue
        value = parse(raw.strip())
        if value is None:
            if reject:
                invalid = invalid or ConstraintError(header, f"expected {expected}, got {raw[:40]!r}")
            else:
                ignored.append(header)
            continue
        values[name] = value
    quality = values.get("quality")
    max_cost = values.get("max_cost")
    return RequestPolicy(
        tenant=view.name,
        catalog=view.catalog,
        default=view.default,
        quality_target=quality if isinstance(quality, float) else view.quality_target,
        max_cost=max_cost if isinstance(max_cost, float) else None,
        interactive=values.get("latency") == "interactive",
        shadow=view.shadow,
        ignored=tuple(ignored),
        fallbacks=view.fallbacks,
        invalid=invalid,
    )
