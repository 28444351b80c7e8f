"""The routing decision as a pure function: prediction + request facts + catalog -> Decision.

No I/O, no clock, no environment, no randomness: every rule is testable with a table (tests/unit/test_policy.py).
Rule: among catalog models whose context window fits the prompt, pick the cheapest whose predicted success
probability ``sigmoid(ability - difficulty)`` reaches the quality target; if none does, the most able one. An
``interactive`` request skips slow models unless only slow ones fit (then the rule runs over those,
``no_interactive_model``); a prompt no model fits goes to the widest window (``no_eligible_model``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from classifier.model import Prediction, success_probability

__all__ = [
    "Decision",
    "Reason",
    "RequestFacts",
    "ResolvedModel",
    "choose_model",
    "estimate_cost",
    "exclusions",
    "fallback_decision",
    "fallback_models",
    "pinned_decision",
]


class Reason(enum.StrEnum):
    """Why the decision came out as it did; a closed set, safe as a metric label."""

    CHEAPEST_MEETING_TARGET = "cheapest_meeting_target"
    NONE_MEETS_TARGET = "none_meets_target_most_able"
    CLASSIFIER_FAILED = "classifier_failed"
    NO_ELIGIBLE_MODEL = "no_eligible_model"
    NO_PROMPT_TEXT = "no_prompt_text"
    TRUSTED_OVERRIDE = "trusted_override"
    BUDGET_TOO_LOW = "budget_too_low_cheapest"
    STICKY_CONVERSATION = "sticky_conversation"
    LATENCY_RELAXED = "no_interactive_model"
    """Only slow models fit an interactive request; beats the inner reason, so this label counts every such one."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A catalog entry with its ability resolved (from config or the classifier's defaults)."""

    name: str
    cluster: str
    tier: str
    input_price_per_mtok: float
    output_price_per_mtok: float
    ability: float
    context_window: int
    latency_class: str = "standard"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the policy needs to know about one request, besides the prompt's difficulty."""

    requested_model: str
    input_tokens: int
    output_tokens: int
    quality_target: float
    max_cost: float | None = None
    """Per-request cost ceiling in the catalog's currency."""
    interactive: bool = False
    """The caller needs interactive latency: ``slow`` models are excluded."""
    min_ability: float | None = None
    """The conversation already used a model this able: never pick a weaker one."""
    completions: int = 1
    """Completions the request asks for (``n``, a list prompt's prompts): each is billed its output, and each must
    fit the window on its own, so the count multiplies the price and not the fit."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of the policy for one request."""

    model: ResolvedModel
    reason: Reason
    fallback: bool
    success_probability: float | None
    """Predicted success of the chosen model; None when no prediction was used."""


def estimate_cost(model: ResolvedModel, input_tokens: int, output_tokens: int, completions: int = 1) -> float:
    """Estimated price of one request in the catalog's currency: its input once (``input_tokens`` already counts
    every prompt of a list prompt), ``output_tokens`` for each of its ``completions``."""
    output = output_tokens * completions
    return (input_tokens * model.input_price_per_mtok + output * model.output_price_per_mtok) / 1e6


def _cost(model: ResolvedModel, facts: RequestFacts) -> float:
    """:func:`estimate_cost` of the request ``facts`` describes: the one price every choice below compares."""
    return estimate_cost(model, facts.input_tokens, facts.output_tokens, facts.completions)


def _list_price(m: ResolvedModel) -> float:
    """Input plus output price per million tokens: the order of models when no request sizes are known."""
    return m.input_price_per_mtok + m.output_price_per_mtok


def fallback_models(chosen: ResolvedModel, catalog: Sequence[ResolvedModel]) -> dict[str, ResolvedModel]:
    """The model to ask for on each catalog cluster if Envoy's fallback chain moves ``chosen``'s request there.

    Envoy retries a failing cluster on the next one of its chain with the body the router wrote; its fallback filter
    then swaps in the name chosen here (README "Envoy settings"). On each cluster: the least able model that is at
    least as able as ``chosen`` (the closest substitute that is no worse), else the most able one there; ties go to
    the cheaper. Models with a window at least ``chosen``'s come first (the request fit that one; the table is not
    per request). ``chosen``'s own cluster maps to ``chosen``.
    """

    by_cluster: dict[str, list[ResolvedModel]] = {}
    for m in catalog:
        by_cluster.setdefault(m.cluster, []).append(m)
    out: dict[str, ResolvedModel] = {}
    for cluster, members in by_cluster.items():
        models = [m for m in members if m.context_window >= chosen.context_window] or members
        no_worse = [m for m in models if m.ability >= chosen.ability]
        if no_worse:
            out[cluster] = min(no_worse, key=lambda m: (m.ability, _list_price(m)))
        else:
            out[cluster] = max(models, key=lambda m: (m.ability, -_list_price(m)))
    out[chosen.cluster] = chosen
    return out


def pinned_decision(model: ResolvedModel) -> Decision:
    """A trusted caller pinned ``model``: no classification, no policy."""
    return Decision(model=model, reason=Reason.TRUSTED_OVERRIDE, fallback=False, success_probability=None)


def fallback_decision(
    default: ResolvedModel,
    reason: Reason,
    catalog: Sequence[ResolvedModel] = (),
    min_ability: float | None = None,
    facts: RequestFacts | None = None,
) -> Decision:
    """The decision used when the router cannot decide on the merits: ``default``, unless ``catalog`` holds a better
    substitute. A conversation that already used a model of ``min_ability`` never falls back to a weaker one, and a
    request (``facts``) never goes to a model whose window it does not fit while one fits: then the cheapest fitting
    model at least that able (and at least as able as ``default``), else the most able that fits; if none fits, the
    widest window. Stickiness and the window hold whether or not the classifier could answer."""
    pool = list(catalog) if facts is None else [m for m in catalog if _fits(m, facts)]
    if catalog and not pool:
        return replace(_no_eligible_model(default, catalog), reason=reason)
    need = default.ability if facts is not None and not _fits(default, facts) else None
    if min_ability is not None and default.ability < min_ability:
        need = min_ability
    if need is not None and pool:

        def cost(m: ResolvedModel) -> float:
            return _cost(m, facts) if facts else _list_price(m)

        able = [m for m in pool if m.ability >= need]
        default = min(able, key=lambda m: (cost(m), -m.ability)) if able else max(pool, key=lambda m: m.ability)
    return Decision(model=default, reason=reason, fallback=True, success_probability=None)


def _pick(difficulty: float, facts: RequestFacts, models: Sequence[ResolvedModel]) -> Decision:
    scored = [(m, success_probability(m.ability, difficulty)) for m in models]
    meeting = [(m, p) for m, p in scored if p >= facts.quality_target]
    if meeting:
        model, p = min(meeting, key=lambda mp: (_cost(mp[0], facts), -mp[0].ability))
        return Decision(model=model, reason=Reason.CHEAPEST_MEETING_TARGET, fallback=False, success_probability=p)
    model, p = max(scored, key=lambda mp: (mp[0].ability, -_cost(mp[0], facts)))
    return Decision(model=model, reason=Reason.NONE_MEETS_TARGET, fallback=False, success_probability=p)


def _no_eligible_model(default: ResolvedModel, catalog: Sequence[ResolvedModel]) -> Decision:
    """The fallback when no model fits the *estimate* (which errs high): the model with the widest window, the default
    among equals, else the cheaper; a default with a smaller window would certainly be refused."""
    widest = max(catalog, key=lambda m: (m.context_window, m.name == default.name, -_list_price(m), m.ability))
    return fallback_decision(widest, Reason.NO_ELIGIBLE_MODEL)


def _decide(difficulty: float, facts: RequestFacts, models: Sequence[ResolvedModel]) -> Decision:
    """The decision on the merits among ``models`` (non-empty, all fit the context): ``max_cost`` excludes dearer
    ones (if it excludes all, the cheapest is chosen and the reason says so), then the rule, then a conversation's
    ``min_ability`` excludes weaker models if any is that able, else the most able one is chosen."""

    if facts.max_cost is not None:
        affordable = [m for m in models if _cost(m, facts) <= facts.max_cost]
        if not affordable:
            cheapest = min(models, key=lambda m: (_cost(m, facts), -m.ability))  # ties: the more able
            p = success_probability(cheapest.ability, difficulty)
            return Decision(model=cheapest, reason=Reason.BUDGET_TOO_LOW, fallback=False, success_probability=p)
        models = affordable
    decision = _pick(difficulty, facts, models)
    if facts.min_ability is not None and decision.model.ability < facts.min_ability:
        floor = [m for m in models if m.ability >= facts.min_ability]
        if floor:
            sticky = _pick(difficulty, facts, floor)
            return Decision(sticky.model, Reason.STICKY_CONVERSATION, False, sticky.success_probability)
        # No allowed model is that able (a cost cap or the latency class excludes them, or a reload removed the
        # model): the closest to the floor, as a fallback does, not the rule's cheapest.
        closest = max(models, key=lambda m: (m.ability, -_cost(m, facts)))
        if closest.ability > decision.model.ability:
            p = success_probability(closest.ability, difficulty)
            return Decision(closest, Reason.STICKY_CONVERSATION, False, p)
    return decision


def _fits(model: ResolvedModel, facts: RequestFacts) -> bool:
    """The request's prompt and expected output fit ``model``'s context window."""
    return model.context_window >= facts.input_tokens + facts.output_tokens


def _eligible(facts: RequestFacts, catalog: Sequence[ResolvedModel]) -> tuple[list[ResolvedModel], list[ResolvedModel]]:
    """The models whose context window fits the request, and of those the ones its latency allows (an interactive
    request: not ``slow``); :func:`choose_model` and :func:`exclusions` filter alike through this one place."""
    fits = [m for m in catalog if _fits(m, facts)]
    return fits, ([m for m in fits if m.latency_class != "slow"] if facts.interactive else fits)


def exclusions(facts: RequestFacts, catalog: Sequence[ResolvedModel]) -> dict[str, str]:
    """Why :func:`choose_model`'s filters leave each excluded model out for this request (``explain`` shows it):
    ``context`` (the request does not fit its window), ``latency`` (a slow model, for an interactive request while a
    faster one fits) or ``max_cost`` (over the request's cap while another fitting model is within it). A filter
    that would exclude every model is relaxed, as in :func:`choose_model`, and excludes none."""

    fits, fast = _eligible(facts, catalog)
    out = {m.name: "context" for m in catalog if m not in fits}
    if not fits:
        return out
    out.update({m.name: "latency" for m in fits if fast and m not in fast})
    pool = fast or fits
    if facts.max_cost is not None and any(_cost(m, facts) <= facts.max_cost for m in pool):
        out.update({m.name: "max_cost" for m in pool if _cost(m, facts) > facts.max_cost})
    return out


def choose_model(
    prediction: Prediction,
    facts: RequestFacts,
    catalog: Sequence[ResolvedModel],
    default: ResolvedModel,
) -> Decision:
    """Pick the cheapest model predicted to meet the quality target; ties go to the more able model.

    Filters, in order: the context window must fit (if none does: the widest window, a fallback); ``interactive``
    excludes slow models, unless that excludes all, in which case the decision is made among the slow ones that fit
    and its reason is ``LATENCY_RELAXED``; ``max_cost`` excludes dearer ones (if it excludes all, the cheapest
    remaining model is chosen and the reason says so); a conversation's ``min_ability`` then excludes weaker models.
    """
    fits, fast = _eligible(facts, catalog)
    if not fits:
        return _no_eligible_model(default, catalog)
    if fast:
        return _decide(prediction.difficulty, facts, fast)
    return replace(_decide(prediction.difficulty, facts, fits), reason=Reason.LATENCY_RELAXED)
