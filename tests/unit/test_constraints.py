"""Effective per-request policy: tenant views and constraint headers, ignore or reject."""

from __future__ import annotations

import pytest

from extproc.config import parse_config
from extproc.constraints import ConstraintError, resolve_request_policy
from extproc.snapshot import Snapshot, build_snapshot
from tests.fakes import FakeDifficultyModel

CATALOG = [
    {
        "name": "llama-3.1-8b-instruct",
        "cluster": "small",
        "tier": "small",
        "input_price_per_mtok": 0.05,
        "output_price_per_mtok": 0.08,
        "latency_class": "fast",
    },
    {
        "name": "gpt-4o-mini",
        "cluster": "cheap",
        "tier": "cheap",
        "input_price_per_mtok": 0.15,
        "output_price_per_mtok": 0.6,
    },
    {
        "name": "gpt-4o",
        "cluster": "frontier",
        "tier": "frontier",
        "input_price_per_mtok": 2.5,
        "output_price_per_mtok": 10,
        "latency_class": "slow",
    },
]


def snap(invalid: str = "ignore") -> Snapshot:
    settings = parse_config(
        {
            "policy": {
                "default_model": "gpt-4o",
                "tenant_header": "x-tenant",
                "invalid_constraint": invalid,
                "quality_header": True,
                "latency_header": True,
            },
            "catalog": CATALOG,
            "tenants": {
                "frugal": {
                    "models": ["llama-3.1-8b-instruct", "gpt-4o-mini"],
                    "default_model": "gpt-4o-mini",
                    "quality_target": 0.6,
                    "allowed_constraints": ["latency"],
                },
                "watcher": {"shadow": True},
            },
        }
    )
    return build_snapshot(settings, lambda _s: FakeDifficultyModel())


@pytest.mark.parametrize(
    ("headers", "tenant", "models", "quality", "max_cost", "interactive", "shadow", "ignored"),
    [
        pytest.param({}, None, 3, 0.8, None, False, False, (), id="global-defaults"),
        pytest.param(
            {
                "x-model-router-quality": "0.95",
                "x-model-router-max-cost": "0.01",
                "x-model-router-latency": "interactive",
            },
            None,
            3,
            0.95,
            0.01,
            True,
            False,
            (),
            id="all-honoured",
        ),
        pytest.param(
            {"x-model-router-quality": "high"},
            None,
            3,
            0.8,
            None,
            False,
            False,
            ("x-model-router-quality",),
            id="malformed-ignored",
        ),
        pytest.param({"x-tenant": "frugal"}, "frugal", 2, 0.6, None, False, False, (), id="tenant-view"),
        pytest.param(
            {"x-tenant": "frugal", "x-model-router-quality": "0.99", "x-model-router-latency": "interactive"},
            "frugal",
            2,
            0.6,
            None,
            True,
            False,
            ("x-model-router-quality",),
            id="tenant-not-allowed",
        ),
        pytest.param({"x-tenant": "watcher"}, "watcher", 3, 0.8, None, False, True, (), id="tenant-shadow"),
        pytest.param({"x-tenant": "stranger"}, None, 3, 0.8, None, False, False, (), id="unknown-tenant-global"),
    ],
)
def test_resolve(
    headers: dict[str, str],
    tenant: str | None,
    models: int,
    quality: float,
    max_cost: float | None,
    interactive: bool,
    shadow: bool,
    ignored: tuple[str, ...],
) -> None:
    policy = resolve_request_policy(headers, snap())
    got = (
        policy.tenant,
        len(policy.catalog),
        policy.quality_target,
        policy.max_cost,
        policy.interactive,
        policy.shadow,
        policy.ignored,
    )
    assert got == (tenant, models, quality, max_cost, interactive, shadow, ignored)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-model-router-quality", "1.5"),
        ("x-model-router-max-cost", "-1"),
        ("x-model-router-max-cost", "nan"),
        ("x-model-router-latency", "asap"),
        ("x-model-router-quality", "0.9_5"),
        ("x-model-router-quality", "\uff11"),  # a full-width 1: float() reads it
        ("x-model-router-quality", "-0"),
        ("x-model-router-max-cost", "1e309"),
        ("x-model-router-max-cost", "0.5, 0.01"),  # the header sent twice (stream.py joins repeats)
    ],
)
def test_reject_mode_names_the_header(header: str, value: str) -> None:
    """The error is carried, not raised: the stream answers it only for a request the router decides."""
    policy = resolve_request_policy({header: value}, snap("reject"))
    assert isinstance(policy.invalid, ConstraintError) and str(policy.invalid).startswith(header)
    assert policy.ignored == ()
    assert resolve_request_policy({header: value}, snap("ignore")).invalid is None


def test_tenant_config_errors_name_fields() -> None:
    from extproc.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "policy": {"default_model": "gpt-4o"},
                "catalog": CATALOG,
                "tenants": {"t": {"models": ["gpt-4o-mini", "nope"]}},
            }
        )
    assert info.value.problems == [
        "tenants.t.models[1]: 'nope' is not in catalog",
        "tenants.t.default_model: required, policy.default_model 'gpt-4o' is not among the tenant's models",
        "policy.tenant_header: required when tenants are configured",
    ]


def _lines(table: str) -> dict[str, str]:
    """The fallback filter's table as {cluster: model}, read the way its Lua reads it."""
    return dict(line.split("\t") for line in table.split("\n") if line)


def test_fallback_table_follows_the_tenant_catalog() -> None:
    """A tenant's fallback names only its own models; the global default stays reachable as a chosen model."""
    s = snap()
    everyone = resolve_request_policy({}, s).fallbacks
    frugal = resolve_request_policy({"x-tenant": "frugal"}, s).fallbacks
    assert _lines(everyone["llama-3.1-8b-instruct"]) == {
        "small": "llama-3.1-8b-instruct",
        "cheap": "gpt-4o-mini",
        "frontier": "gpt-4o",
    }
    assert _lines(frugal["llama-3.1-8b-instruct"]) == {"small": "llama-3.1-8b-instruct", "cheap": "gpt-4o-mini"}
    assert _lines(frugal["gpt-4o"]) == {"frontier": "gpt-4o", "small": "llama-3.1-8b-instruct", "cheap": "gpt-4o-mini"}


@pytest.mark.parametrize("odd", ['mini"quoted', "mini\\back"])  # control characters: refused by the config
def test_fallback_table_leaves_out_names_it_cannot_splice(odd: str) -> None:
    """The Lua fallback filter splices names between quotes (and splits its table on tabs and newlines, which no
    model name may hold), so a model name needing JSON escapes is never offered (cluster names are restricted by the
    config already); its cluster keeps an empty name (the body goes there unchanged), as no line would mean no model
    there (a 503)."""
    odd_model = {**CATALOG[1], "name": odd, "cluster": "cheap2", "ability": 1.0}
    settings = parse_config({"policy": {"default_model": "gpt-4o"}, "catalog": [*CATALOG, odd_model]})
    table = build_snapshot(settings, lambda _s: FakeDifficultyModel()).tenant_view(None).fallbacks
    assert odd not in table
    small = _lines(table["llama-3.1-8b-instruct"])
    assert small["cheap2"] == "" and small["cheap"] == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("header", "value", "opt_in"),
    [
        ("x-model-router-quality", "0.99", "quality_header"),
        ("x-model-router-latency", "interactive", "latency_header"),
    ],
)
def test_a_header_that_raises_cost_is_ignored_unless_the_config_trusts_it(header: str, value: str, opt_in: str) -> None:
    """Off by default: any client could otherwise ask for the dearest model (quality), or skip the slow models that
    may be the cheap ones (latency), although both are in the default ``allowed_constraints``."""
    for trusted in (False, True):
        policy_settings = {"default_model": "gpt-4o", opt_in: trusted}
        settings = parse_config({"policy": policy_settings, "catalog": CATALOG})
        s = build_snapshot(settings, lambda _s: FakeDifficultyModel())
        policy = resolve_request_policy({header: value}, s)
        honoured = (policy.quality_target, policy.interactive) != (0.8, False)
        assert (honoured, policy.ignored) == (trusted, () if trusted else (header,))


@pytest.mark.parametrize(
    ("headers", "quality", "max_cost", "interactive"),
    [
        pytest.param({"x-model-router-quality": " 0.9 "}, 0.9, None, False, id="whitespace-stripped"),
        pytest.param({"x-model-router-quality": "1"}, 1.0, None, False, id="quality-one"),
        pytest.param({"x-model-router-quality": "0"}, 0.0, None, False, id="quality-zero"),
        pytest.param({"x-model-router-quality": ".5"}, 0.5, None, False, id="leading-dot"),
        pytest.param({"x-model-router-max-cost": "1e-3"}, 0.8, 0.001, False, id="exponent"),
        pytest.param({"x-model-router-max-cost": "+2"}, 0.8, 2.0, False, id="plus-sign"),
        pytest.param({"x-model-router-latency": "Interactive"}, 0.8, None, True, id="latency-any-case"),
    ],
)
def test_constraint_values_as_clients_write_them(
    headers: dict[str, str], quality: float, max_cost: float | None, interactive: bool
) -> None:
    policy = resolve_request_policy(headers, snap("reject"))
    assert (policy.quality_target, policy.max_cost, policy.interactive) == (quality, max_cost, interactive)
