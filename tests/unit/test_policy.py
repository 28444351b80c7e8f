"""The policy as a table: one row per rule."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from classifier.model import Prediction, success_probability
from extproc.policy import (
    Reason,
    RequestFacts,
    ResolvedModel,
    choose_model,
    estimate_cost,
    exclusions,
    fallback_decision,
    fallback_models,
)


def _model(name: str, ability: float, price: float, window: int = 128_000) -> ResolvedModel:
    return ResolvedModel(
        name=name,
        cluster=f"c-{name}",
        tier=name,
        input_price_per_mtok=price,
        output_price_per_mtok=price * 4,
        ability=ability,
        context_window=window,
    )


SMALL = _model("small", 0.0, 0.05, window=8_000)
BATCH = ResolvedModel("batch", "c-batch", "batch", 0.01, 0.04, 2.0, 128_000, latency_class="slow")
CHEAP = _model("cheap", 1.0, 0.15)
FRONTIER = _model("frontier", 3.0, 2.5)
CATALOG = (FRONTIER, SMALL, CHEAP)  # order must not matter


def facts(
    tokens: int = 100,
    target: float = 0.8,
    max_cost: float | None = None,
    interactive: bool = False,
    min_ability: float | None = None,
) -> RequestFacts:
    return RequestFacts("auto", tokens, 300, target, max_cost, interactive, min_ability)


@pytest.mark.parametrize(
    ("difficulty", "request_facts", "want", "reason"),
    [
        pytest.param(-3.0, facts(), "small", Reason.CHEAPEST_MEETING_TARGET, id="trivial-prompt-goes-smallest"),
        pytest.param(-1.0, facts(), "cheap", Reason.CHEAPEST_MEETING_TARGET, id="easy-prompt-goes-cheap"),
        pytest.param(1.5, facts(), "frontier", Reason.CHEAPEST_MEETING_TARGET, id="hard-prompt-goes-frontier"),
        pytest.param(5.0, facts(), "frontier", Reason.NONE_MEETS_TARGET, id="too-hard-for-all-goes-most-able"),
        pytest.param(-1.0, facts(target=0.95), "frontier", Reason.CHEAPEST_MEETING_TARGET, id="high-target-escalates"),
        pytest.param(1.5, facts(target=0.3), "cheap", Reason.CHEAPEST_MEETING_TARGET, id="low-target-saves"),
        pytest.param(-3.0, facts(tokens=20_000), "cheap", Reason.CHEAPEST_MEETING_TARGET, id="context-window-filters"),
        pytest.param(0.0, facts(tokens=10**6), "frontier", Reason.NO_ELIGIBLE_MODEL, id="nothing-fits-falls-back"),
        pytest.param(1.5, facts(max_cost=0.0005), "cheap", Reason.NONE_MEETS_TARGET, id="budget-caps-the-choice"),
        pytest.param(1.5, facts(max_cost=0.0), "small", Reason.BUDGET_TOO_LOW, id="budget-below-all-cheapest"),
        pytest.param(-3.0, facts(min_ability=1.0), "cheap", Reason.STICKY_CONVERSATION, id="sticky-floor"),
        pytest.param(1.5, facts(min_ability=1.0), "frontier", Reason.CHEAPEST_MEETING_TARGET, id="sticky-no-cap"),
        pytest.param(-3.0, facts(min_ability=9.0), "frontier", Reason.STICKY_CONVERSATION, id="sticky-unreachable"),
        # frontier (the floor) costs 0.00325 here, cheap 0.000195: the cap wins, and the closest to the floor serves.
        pytest.param(
            -3.0, facts(max_cost=0.001, min_ability=3.0), "cheap", Reason.STICKY_CONVERSATION, id="sticky-capped"
        ),
        pytest.param(-3.0, facts(max_cost=0.0, min_ability=3.0), "small", Reason.BUDGET_TOO_LOW, id="sticky-no-budget"),
    ],
)
def test_choose_model(difficulty: float, request_facts: RequestFacts, want: str, reason: Reason) -> None:
    decision = choose_model(Prediction(difficulty, 1.0), request_facts, CATALOG, FRONTIER)
    assert (decision.model.name, decision.reason) == (want, reason)
    assert decision.fallback is (reason is Reason.NO_ELIGIBLE_MODEL)


# Equally able; A is cheap to read and dear to write, B the reverse: which is cheaper depends on the request's sizes.
READS_CHEAP = ResolvedModel("reads-cheap", "c-a", "a", 0.1, 10.0, 1.0, 128_000)
WRITES_CHEAP = ResolvedModel("writes-cheap", "c-b", "b", 5.0, 0.5, 1.0, 128_000)


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "want"),
    [
        pytest.param(10_000, 300, "reads-cheap", id="long-prompt-short-answer"),  # 0.0040 vs 0.0502
        pytest.param(100, 4_000, "writes-cheap", id="short-prompt-long-answer"),  # 0.0400 vs 0.0025
    ],
)
def test_cost_weighs_input_and_output_prices_by_the_request(input_tokens: int, output_tokens: int, want: str) -> None:
    request_facts = RequestFacts("auto", input_tokens, output_tokens, 0.8)
    decision = choose_model(Prediction(-3.0, 1.0), request_facts, (READS_CHEAP, WRITES_CHEAP), READS_CHEAP)
    assert decision.model.name == want


def test_a_model_exactly_at_the_target_meets_it() -> None:
    """P(ok) = sigmoid(0) = 0.5 against a target of 0.5: "reaches the target" includes equality."""
    decision = choose_model(Prediction(1.0, 1.0), facts(target=0.5), CATALOG, FRONTIER)
    assert (decision.model.name, decision.success_probability) == ("cheap", 0.5)


@pytest.mark.parametrize("max_cost", [None, 0.0], ids=["target-met", "budget-too-low"])
def test_price_tie_goes_to_more_able_model_in_any_catalog_order(max_cost: float | None) -> None:
    twin = _model("twin", 2.0, 0.15)
    for catalog in ((CHEAP, twin), (twin, CHEAP)):
        decision = choose_model(Prediction(-2.0, 1.0), facts(max_cost=max_cost), catalog, FRONTIER)
        assert decision.model.name == "twin"


@pytest.mark.parametrize(
    ("default", "floor", "want"),
    [
        (SMALL, None, "small"),
        (SMALL, 0.0, "small"),
        (SMALL, 1.0, "cheap"),  # the cheapest model at least as able as the conversation's floor
        (SMALL, 2.5, "frontier"),
        (SMALL, 9.0, "frontier"),  # none reaches it: the most able
        (FRONTIER, 1.0, "frontier"),  # already above: unchanged
    ],
)
def test_a_fallback_respects_the_conversation_floor(default: ResolvedModel, floor: float | None, want: str) -> None:
    decision = fallback_decision(default, Reason.CLASSIFIER_FAILED, CATALOG, floor)
    assert (decision.model.name, decision.reason, decision.fallback) == (want, Reason.CLASSIFIER_FAILED, True)


TIGHT = _model("tight", 2.0, 0.1, window=8_000)  # able and cheap, but a small window


@pytest.mark.parametrize(
    ("default", "floor", "tokens", "want"),
    [
        (SMALL, None, 100, "small"),
        (SMALL, None, 20_000, "cheap"),  # small (8k) would refuse it: the cheapest fitting model no less able
        (SMALL, 1.5, 100, "tight"),  # the floor, by estimated cost
        (SMALL, 1.5, 20_000, "frontier"),  # the floor among the models it fits (tight was picked, and refused it)
        (TIGHT, None, 20_000, "frontier"),
        (SMALL, None, 200_000, "cheap"),  # fits nothing: the widest window (among equals the default, else the cheaper)
    ],
)
def test_a_fallback_never_goes_to_a_window_the_request_does_not_fit(
    default: ResolvedModel, floor: float | None, tokens: int, want: str
) -> None:
    """Found by review: a floor turn whose classifier failed took the cheapest model that able by list price, an
    8k-window model for a 15k-token turn (certain refusal) while others fit."""
    catalog = (*CATALOG, TIGHT)
    decision = fallback_decision(default, Reason.CLASSIFIER_FAILED, catalog, floor, facts(tokens=tokens))
    assert (decision.model.name, decision.reason, decision.fallback) == (want, Reason.CLASSIFIER_FAILED, True)


@pytest.mark.parametrize(
    ("ability", "difficulty", "want"),
    [(0.0, 0.0, 0.5), (800.0, 0.0, 1.0), (-800.0, 0.0, 0.0), (1.0, 0.0, 0.7310585786)],
)
def test_success_probability(ability: float, difficulty: float, want: float) -> None:
    assert success_probability(ability, difficulty) == pytest.approx(want)


def test_estimate_cost_uses_both_prices() -> None:
    assert estimate_cost(CHEAP, 1_000_000, 1_000_000) == pytest.approx(0.15 + 0.60)


def test_estimate_cost_bills_the_output_of_every_completion_and_the_input_once() -> None:
    assert estimate_cost(CHEAP, 1_000_000, 1_000_000, completions=3) == pytest.approx(0.15 + 3 * 0.60)


def _times(request_facts: RequestFacts, completions: int) -> RequestFacts:
    return dataclasses.replace(request_facts, completions=completions)


@pytest.mark.parametrize(
    ("request_facts", "catalog", "want", "reason"),
    [
        # 10,000 in, 300 out: reads-cheap .0040 vs writes-cheap .0502; twenty choices: .0610 vs .0530.
        pytest.param(
            RequestFacts("auto", 10_000, 300, 0.8),
            (READS_CHEAP, WRITES_CHEAP),
            "reads-cheap",
            Reason.CHEAPEST_MEETING_TARGET,
            id="one-choice",
        ),
        pytest.param(
            RequestFacts("auto", 10_000, 300, 0.8, completions=20),
            (READS_CHEAP, WRITES_CHEAP),
            "writes-cheap",
            Reason.CHEAPEST_MEETING_TARGET,
            id="twenty-choices-reverse-the-order",
        ),
        # cheap costs .000195 for one choice, within .0005; three choices cost .000555 and small .000185.
        pytest.param(facts(max_cost=0.0005), CATALOG, "cheap", Reason.NONE_MEETS_TARGET, id="cap-fits-one-choice"),
        pytest.param(
            _times(facts(max_cost=0.0005), 3), CATALOG, "small", Reason.NONE_MEETS_TARGET, id="cap-counts-every-choice"
        ),
        # The window is per completion: 7,500 + 300 fits small's 8,000 however many choices there are.
        pytest.param(
            _times(facts(tokens=7_500, target=0.5), 50),
            CATALOG,
            "small",
            Reason.CHEAPEST_MEETING_TARGET,
            id="fit-is-per-completion",
        ),
    ],
)
def test_completions_multiply_the_price_not_the_fit(
    request_facts: RequestFacts, catalog: tuple[ResolvedModel, ...], want: str, reason: Reason
) -> None:
    difficulty = -3.0 if reason is Reason.CHEAPEST_MEETING_TARGET else 1.5
    decision = choose_model(Prediction(difficulty, 1.0), request_facts, catalog, catalog[0])
    assert (decision.model.name, decision.reason) == (want, reason)


def test_exclusions_price_every_completion() -> None:
    assert exclusions(_times(facts(max_cost=0.0005), 3), CATALOG) == {"cheap": "max_cost", "frontier": "max_cost"}


@pytest.mark.parametrize(
    ("interactive", "want"),
    [
        pytest.param(False, "batch", id="batch-ok-when-not-interactive"),
        pytest.param(True, "cheap", id="interactive-skips-slow"),
    ],
)
def test_latency_class(interactive: bool, want: str) -> None:
    decision = choose_model(Prediction(-1.0, 1.0), facts(interactive=interactive), (CHEAP, BATCH, FRONTIER), FRONTIER)
    assert decision.model.name == want


LONG = _model("long", 1.0, 1.0, window=1_000_000)
SLOW = ResolvedModel("slow", "c-slow", "slow", 0.01, 0.04, 2.0, 1_000_000, latency_class="slow")
SLOW_WEAK = ResolvedModel("slow-weak", "c-slow-weak", "slow", 0.001, 0.004, 0.5, 128_000, latency_class="slow")


@pytest.mark.parametrize(
    ("request_facts", "catalog", "default", "want"),
    [
        pytest.param(facts(tokens=10**6), CATALOG, FRONTIER, "frontier", id="none-fits-default-among-widest"),
        pytest.param(facts(tokens=10**6), CATALOG, SMALL, "cheap", id="none-fits-default-narrower-cheapest-widest"),
        pytest.param(facts(tokens=2 * 10**6), (*CATALOG, LONG), FRONTIER, "long", id="none-fits-widest-window"),
        # Unchanged when nothing fits, whatever the request asks: no relaxing of the latency, no conversation floor.
        pytest.param(
            facts(tokens=2 * 10**6, interactive=True), (*CATALOG, SLOW, LONG), FRONTIER, "slow", id="none-fits-slow"
        ),
        pytest.param(
            facts(tokens=2 * 10**6, min_ability=2.5), (*CATALOG, LONG), FRONTIER, "long", id="none-fits-no-floor"
        ),
    ],
)
def test_no_eligible_model_still_goes_where_the_request_fits(
    request_facts: RequestFacts, catalog: tuple[ResolvedModel, ...], default: ResolvedModel, want: str
) -> None:
    decision = choose_model(Prediction(0.0, 1.0), request_facts, catalog, default)
    assert (decision.model.name, decision.reason, decision.fallback) == (want, Reason.NO_ELIGIBLE_MODEL, True)
    assert decision.success_probability is None


# Only slow models fit a 20k-token prompt: SMALL is the one fast model and its window is 8k.
SLOW_MAX = ResolvedModel("slow-max", "c-slow-max", "slow", 5.0, 20.0, 4.0, 128_000, latency_class="slow")
ONLY_SLOW_FIT = (SMALL, SLOW_WEAK, BATCH, SLOW_MAX)


def interactive(max_cost: float | None = None, min_ability: float | None = None) -> RequestFacts:
    return facts(tokens=20_000, max_cost=max_cost, interactive=True, min_ability=min_ability)


@pytest.mark.parametrize(
    ("difficulty", "request_facts", "catalog", "default", "want"),
    [
        pytest.param(-3.0, interactive(), ONLY_SLOW_FIT, SMALL, "slow-weak", id="easy-goes-cheap-slow"),
        pytest.param(0.0, interactive(), ONLY_SLOW_FIT, SMALL, "batch", id="medium-goes-middle-slow"),
        pytest.param(1.5, interactive(), ONLY_SLOW_FIT, SMALL, "slow-max", id="hard-goes-strong-slow"),
        pytest.param(9.0, interactive(), ONLY_SLOW_FIT, SMALL, "slow-max", id="too-hard-goes-most-able-slow"),
        pytest.param(-3.0, interactive(), ONLY_SLOW_FIT, SLOW_MAX, "slow-weak", id="a-fitting-default-not-preferred"),
        pytest.param(1.5, interactive(max_cost=0.001), ONLY_SLOW_FIT, SMALL, "batch", id="budget-caps-the-choice"),
        pytest.param(1.5, interactive(max_cost=0.0), ONLY_SLOW_FIT, SMALL, "slow-weak", id="budget-below-all-cheapest"),
        pytest.param(-3.0, interactive(min_ability=1.5), ONLY_SLOW_FIT, SMALL, "batch", id="sticky-floor"),
        pytest.param(-3.0, interactive(min_ability=9.0), ONLY_SLOW_FIT, SMALL, "slow-max", id="sticky-unreachable"),
        pytest.param(
            1.5, facts(tokens=500_000, interactive=True), (*CATALOG, SLOW), FRONTIER, "slow", id="only-slow-fits"
        ),
    ],
)
def test_interactive_decides_among_slow_models_when_only_they_fit(
    difficulty: float,
    request_facts: RequestFacts,
    catalog: tuple[ResolvedModel, ...],
    default: ResolvedModel,
    want: str,
) -> None:
    decision = choose_model(Prediction(difficulty, 1.0), request_facts, catalog, default)
    assert (decision.model.name, decision.reason, decision.fallback) == (want, Reason.LATENCY_RELAXED, False)
    assert decision.success_probability == pytest.approx(success_probability(decision.model.ability, difficulty))
    # The same choice as for a request that does not ask for interactive latency, bar the reason.
    relaxed = dataclasses.replace(request_facts, interactive=False)
    assert choose_model(Prediction(difficulty, 1.0), relaxed, catalog, default).model == decision.model


# A second model on the frontier cluster, more able and dearer, and one on the cheap cluster that is weaker.
FRONTIER_MAX = ResolvedModel("frontier-max", "c-frontier", "frontier", 10.0, 40.0, 4.0, 128_000)
CHEAP_LITE = ResolvedModel("cheap-lite", "c-cheap", "cheap", 0.1, 0.4, 0.5, 128_000)
FALLBACK_CATALOG = (FRONTIER_MAX, FRONTIER, SMALL, CHEAP_LITE, CHEAP)


@pytest.mark.parametrize(
    ("chosen", "want"),
    [
        # Stronger clusters: the least able model that is no worse than the chosen one.
        pytest.param(SMALL, {"c-small": "small", "c-cheap": "cheap-lite", "c-frontier": "frontier"}, id="from-small"),
        pytest.param(CHEAP, {"c-small": "small", "c-cheap": "cheap", "c-frontier": "frontier"}, id="from-cheap"),
        # No model on a cluster is as able: its most able one. The chosen cluster keeps the chosen model.
        pytest.param(
            FRONTIER_MAX, {"c-small": "small", "c-cheap": "cheap", "c-frontier": "frontier-max"}, id="from-strongest"
        ),
        pytest.param(
            CHEAP_LITE, {"c-small": "small", "c-cheap": "cheap-lite", "c-frontier": "frontier"}, id="weaker-on-cluster"
        ),
    ],
)
def test_fallback_models(chosen: ResolvedModel, want: dict[str, str]) -> None:
    got = fallback_models(chosen, FALLBACK_CATALOG)
    assert {cluster: m.name for cluster, m in got.items()} == want
    assert fallback_models(chosen, tuple(reversed(FALLBACK_CATALOG))) == got  # order must not matter


def test_fallback_models_prefer_a_window_the_request_fits() -> None:
    """Found by review: a 20k-token request on a 128k model was retried under an 8k model's name (certain refusal)
    while the same cluster had a 128k model."""
    chosen = ResolvedModel("cheap-128k", "c-cheap", "cheap", 0.15, 0.6, 1.0, 128_000)
    small_window = ResolvedModel("frontier-8k", "c-frontier", "frontier", 2.5, 10.0, 3.0, 8_000)
    roomy = ResolvedModel("frontier-128k", "c-frontier", "frontier", 5.0, 15.0, 4.0, 128_000)
    assert fallback_models(chosen, (chosen, small_window, roomy))["c-frontier"] == roomy
    assert fallback_models(chosen, (chosen, small_window))["c-frontier"] == small_window  # the only one there


def test_fallback_models_ability_tie_goes_to_the_cheaper() -> None:
    twin = ResolvedModel("frontier-twin", "c-frontier", "frontier", 1.0, 4.0, FRONTIER.ability, 128_000)
    assert fallback_models(CHEAP, (CHEAP, FRONTIER, twin))["c-frontier"] == twin


def test_fallback_models_include_a_chosen_model_outside_the_catalog() -> None:
    assert fallback_models(BATCH, CATALOG)["c-batch"] == BATCH


@pytest.mark.parametrize(
    ("request_facts", "catalog", "want"),
    [
        pytest.param(facts(), CATALOG, {}, id="none"),
        pytest.param(facts(tokens=20_000), CATALOG, {"small": "context"}, id="context"),
        pytest.param(
            facts(tokens=10**6), CATALOG, dict.fromkeys(("small", "cheap", "frontier"), "context"), id="none-fit"
        ),
        pytest.param(facts(interactive=True), (*CATALOG, BATCH), {"batch": "latency"}, id="latency"),
        pytest.param(interactive(), ONLY_SLOW_FIT, {"small": "context"}, id="latency-relaxed-when-only-slow-fit"),
        pytest.param(facts(max_cost=0.001), CATALOG, {"frontier": "max_cost"}, id="max-cost"),
        pytest.param(facts(max_cost=0.0), CATALOG, {}, id="max-cost-relaxed-when-none-within"),
    ],
)
def test_exclusions_name_the_filter_that_left_a_model_out(
    request_facts: RequestFacts, catalog: tuple[ResolvedModel, ...], want: dict[str, str]
) -> None:
    assert exclusions(request_facts, catalog) == want


@given(
    difficulty=st.floats(-6, 6),
    tokens=st.sampled_from([100, 20_000, 200_000, 10**6]),
    max_cost=st.one_of(st.none(), st.floats(0, 0.01)),
    interactive=st.booleans(),
    min_ability=st.one_of(st.none(), st.floats(-1, 5)),
)
def test_the_chosen_model_is_never_one_the_exclusions_name(
    difficulty: float, tokens: int, max_cost: float | None, interactive: bool, min_ability: float | None
) -> None:
    """``explain`` shows these exclusions beside the decision: they must agree with what the policy did."""
    catalog = (*CATALOG, BATCH, *ONLY_SLOW_FIT)
    request_facts = facts(tokens=tokens, max_cost=max_cost, interactive=interactive, min_ability=min_ability)
    decision = choose_model(Prediction(difficulty, 1.0), request_facts, catalog, FRONTIER)
    if not decision.fallback:
        assert decision.model.name not in exclusions(request_facts, catalog)
