"""An immutable snapshot of everything a stream needs: settings, resolved catalog and the loaded model.

Each stream takes the current snapshot when it opens and keeps it; a reload builds a new one and swaps one
reference (``SnapshotRef``), so no stream ever sees half a config.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import orjson

from classifier.model import DifficultyModel
from extproc.config import Settings
from extproc.errors import ConfigError
from extproc.policy import ResolvedModel, fallback_models

__all__ = ["Snapshot", "SnapshotRef", "TenantView", "build_snapshot"]


@dataclass(frozen=True, slots=True)
class TenantView:
    """The catalog subset and defaults one tenant (or the global policy, ``name=None``) routes with."""

    name: str | None
    catalog: tuple[ResolvedModel, ...]
    default: ResolvedModel
    quality_target: float
    allowed_constraints: frozenset[str]
    shadow: bool
    fallbacks: Mapping[str, str]
    """Chosen model name -> the fallback filter's table for it (see :func:`fallback_table`)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Settings plus the derived, ready-to-use objects."""

    settings: Settings
    model: DifficultyModel
    candidate: DifficultyModel | None
    """``classifier.candidate_model_dir``'s model: decides beside ``model``, never routes."""
    catalog: tuple[ResolvedModel, ...]
    by_name: Mapping[str, ResolvedModel]
    routable: frozenset[str]
    tenants: Mapping[str | None, TenantView]
    widest_cluster: int
    """Characters of the longest catalog cluster name: the most a routing header adds (Envoy's header limits)."""
    config_digest: bytes | None = None
    """SHA-256 of the config file's bytes this snapshot was built from (None: not built from a file). The file
    watcher compares the file with it, so an edit made while the router was starting is not taken as seen."""

    @property
    def default_model(self) -> ResolvedModel:
        """The model used when the router cannot decide."""
        return self.by_name[self.settings.policy.default_model]

    def output_tokens(self, requested: int | None) -> int:
        """The output estimate of a request asking for ``requested`` tokens at most (None: the configured expectation).
        Capped at the catalog's largest context window: a larger cap excludes every model all the same, and one
        request's ``max_tokens: 2**63-1`` would otherwise price at 1e14 and swamp the estimated-cost counters."""
        expected = requested or self.settings.policy.expected_output_tokens
        return min(expected, max(m.context_window for m in self.catalog))

    def tenant_view(self, tenant: str | None) -> TenantView:
        """The view of ``tenant``; unknown or absent tenants get the global policy."""
        return self.tenants.get(tenant) or self.tenants[None]


def candidate_settings(settings: Settings) -> Settings | None:
    """The settings the candidate model is loaded with (an ONNX model from ``classifier.candidate_model_dir``), or
    None without a candidate."""
    path = settings.classifier.candidate_model_dir
    if path is None:
        return None
    classifier = settings.classifier.model_copy(update={"kind": "onnx", "model_dir": path, "candidate_model_dir": None})
    return settings.model_copy(update={"classifier": classifier})


def _load_candidate(settings: Settings, load_model: Callable[[Settings], DifficultyModel]) -> DifficultyModel | None:
    """The candidate model, loaded like the live one from its own directory; errors name its field."""
    candidate = candidate_settings(settings)
    if candidate is None:
        return None
    try:
        return load_model(candidate)
    except ConfigError as exc:
        raise ConfigError(
            [p.replace("classifier.model_dir", "classifier.candidate_model_dir", 1) for p in exc.problems]
        ) from exc


def _plain(name: str) -> bool:
    """True when ``name`` can go into the fallback filter's table: its JSON string is the name in quotes, so the Lua
    filter can splice it as is (this also rules out tabs and newlines, the table's separators)."""
    return orjson.dumps(name) == b'"' + name.encode() + b'"'


def fallback_table(models: tuple[ResolvedModel, ...], catalog: tuple[ResolvedModel, ...]) -> dict[str, str]:
    """For each model the router may choose, the model to ask for on each cluster a fallback may move it to, as
    the fallback filter reads it: one ``cluster<TAB>model`` line per cluster (a flat string is cheaper to put in
    every routed request's dynamic metadata than a nested struct). A chosen name that is not plain has no table and
    a substitute that is not plain an empty name (the filter then sends the body unchanged). A cluster with none of
    ``catalog``'s models (a tenant's subset) has no line: the filter answers 503 there rather than send a name that
    cluster does not serve.
    """
    table: dict[str, str] = {}
    for chosen in models:
        if _plain(chosen.name):
            by_cluster = fallback_models(chosen, catalog)
            # clusters: [A-Za-z0-9_.-]; an empty name: the filter sends the body unchanged
            lines = (f"{c}\t{m.name if _plain(m.name) else ''}" for c, m in by_cluster.items())
            table[chosen.name] = "\n".join(lines)
    return table


def build_snapshot(settings: Settings, load_model: Callable[[Settings], DifficultyModel]) -> Snapshot:
    """Load the model(s) and resolve every catalog ability; ``ConfigError`` names any model left without one."""
    model = load_model(settings)
    candidate = _load_candidate(settings, load_model)
    abilities = model.default_abilities
    problems: list[str] = []
    resolved: list[ResolvedModel] = []
    for i, entry in enumerate(settings.catalog):
        ability = entry.ability if entry.ability is not None else abilities.get(entry.name)
        if ability is None:
            problems.append(
                f"catalog[{i}].ability: required, {model.name} has no default ability for {entry.name!r} "
                f"(known: {', '.join(sorted(abilities)) or 'none'})"
            )
            continue
        resolved.append(
            ResolvedModel(
                name=entry.name,
                cluster=entry.cluster,
                tier=entry.tier,
                input_price_per_mtok=entry.input_price_per_mtok,
                output_price_per_mtok=entry.output_price_per_mtok,
                ability=ability,
                context_window=entry.context_window,
                latency_class=entry.latency_class,
            )
        )
    if problems:
        raise ConfigError(problems)
    catalog = tuple(resolved)
    by_name = {m.name: m for m in catalog}
    policy = settings.policy
    views: dict[str | None, TenantView] = {
        None: TenantView(
            name=None,
            catalog=catalog,
            default=by_name[policy.default_model],
            quality_target=policy.quality_target,
            allowed_constraints=frozenset(policy.allowed_constraints),
            shadow=policy.shadow,
            fallbacks=fallback_table(catalog, catalog),
        )
    }
    for name, rules in settings.tenants.items():
        subset = tuple(by_name[n] for n in rules.models) if rules.models else catalog
        allowed = rules.allowed_constraints if rules.allowed_constraints is not None else policy.allowed_constraints
        views[name] = TenantView(
            name=name,
            catalog=subset,
            default=by_name[rules.default_model or policy.default_model],
            quality_target=rules.quality_target if rules.quality_target is not None else policy.quality_target,
            allowed_constraints=frozenset(allowed),
            shadow=rules.shadow if rules.shadow is not None else policy.shadow,
            fallbacks=fallback_table(catalog, subset),
        )
    return Snapshot(
        settings=settings,
        model=model,
        candidate=candidate,
        catalog=catalog,
        by_name=by_name,
        routable=frozenset(policy.routable_models),
        tenants=views,
        widest_cluster=max(len(m.cluster) for m in catalog),
    )


class SnapshotRef:
    """The one mutable cell: the snapshot new streams start with (and the first one's settings, which set what only
    a restart changes)."""

    __slots__ = ("command_line", "current", "first", "rejected", "rejected_model")

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.first = snapshot.settings
        self.rejected: bytes | None = None
        """SHA-256 of the config content the last reload refused (None after a good one): the file watcher does not
        refuse it again after a SIGHUP did."""
        self.rejected_model: tuple[Settings, Hashable] | None = None
        """When the last reload was refused because a model failed to load: the settings it was loaded for and its
        files' key then (``reload._model_key``), so the watcher retries the same file once the model changes."""
        self.command_line: frozenset[str] = frozenset()
        """Config keys the command line overrides (``serve --listen``: ``server.listen``): neither a reload nor a
        restart with that command line changes them, so a reload that edits them needs no restart."""
