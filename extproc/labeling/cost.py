"""Prices, the cost estimate shown before a run, the actual cost from reported usage, and the ``--max-cost`` budget.

Tokens are estimated from characters (about 4 per token for English; code and other scripts use more tokens, so
the estimate is a guide, not a bound). The actual cost uses the ``usage`` the endpoints report; a response without
usage is priced from its characters and counted, so the summary says how much of the figure is estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from extproc.labeling.grading import RUBRIC
from extproc.labeling.records import PromptItem

__all__ = ["CHARS_PER_TOKEN", "Budget", "Estimate", "Ledger", "Price", "estimate_run", "estimate_tokens"]

CHARS_PER_TOKEN = 4.0
JUDGE_OUTPUT_TOKENS = 20
"""A ``{"grade": N}`` reply, with room for a short preamble."""
JUDGE_FRAMING_CHARS = 200
"""The tags and closing instruction around the conversation and the answer (``grading.judge_messages``)."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Per chat message: role and separators, as OpenAI counts them."""


@dataclass(frozen=True, slots=True)
class Price:
    """Catalog currency per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


def estimate_tokens(chars: int) -> int:
    """Tokens for ``chars`` characters of text."""
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class ItemEstimate:
    """Estimated tokens of one item's calls: per answer (same for every model) and per judge call."""

    answer_in: int
    answer_out: int
    judge_in: int
    judge_out: int


def estimate_item(item: PromptItem, expected_output_tokens: int) -> ItemEstimate:
    """Token estimate for asking one model and having its answer judged."""
    prompt = estimate_tokens(item.prompt_chars) + MESSAGE_OVERHEAD_TOKENS * len(item.messages)
    judge_in = (
        prompt
        + expected_output_tokens
        + estimate_tokens(len(RUBRIC) + JUDGE_FRAMING_CHARS)
        + 2 * MESSAGE_OVERHEAD_TOKENS
    )
    return ItemEstimate(prompt, expected_output_tokens, judge_in, JUDGE_OUTPUT_TOKENS)


@dataclass(frozen=True, slots=True)
class Estimate:
    """The estimated tokens and cost of a run, per answer model and for the judge; ``None`` = price unknown."""

    tokens: Mapping[str, tuple[int, int]]
    costs: Mapping[str, float | None]

    @property
    def unpriced(self) -> list[str]:
        """Names whose price is unknown (their cost counts as 0 in ``total``)."""
        return [name for name, cost in self.costs.items() if cost is None]

    @property
    def total(self) -> float:
        """Sum of the known costs."""
        return sum(cost for cost in self.costs.values() if cost is not None)


JUDGE = "judge"
"""The key of the judge's line in an :class:`Estimate` and a :class:`Ledger`."""


def estimate_run(
    items: Sequence[PromptItem],
    models: Sequence[str],
    prices: Mapping[str, Price],
    judge_price: Price | None,
    expected_output_tokens: int,
) -> Estimate:
    """The estimate printed before a run: every item answered by every model, every answer judged once."""
    per_item = [estimate_item(item, expected_output_tokens) for item in items]
    answer_in = sum(e.answer_in for e in per_item)
    answer_out = sum(e.answer_out for e in per_item)
    judge_in = sum(e.judge_in for e in per_item) * len(models)
    judge_out = sum(e.judge_out for e in per_item) * len(models)
    tokens = {m: (answer_in, answer_out) for m in models}
    tokens[JUDGE] = (judge_in, judge_out)
    costs: dict[str, float | None] = {m: prices[m].cost(answer_in, answer_out) if m in prices else None for m in models}
    costs[JUDGE] = judge_price.cost(judge_in, judge_out) if judge_price is not None else None
    return Estimate(tokens, costs)


def item_cost(
    item: PromptItem,
    models: Sequence[str],
    prices: Mapping[str, Price],
    judge: Price | None,
    expected_output_tokens: int,
) -> float:
    """The estimated cost of labelling one item (unknown prices count as 0)."""
    return estimate_run([item], models, prices, judge, expected_output_tokens).total


@dataclass(slots=True)
class Ledger:
    """What the run has actually spent, per answer model and for the judge, from the usage each response reports."""

    prices: Mapping[str, Price]
    spent: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    usage_estimated: int = 0
    """Responses without usage, priced from characters."""

    def add(self, name: str, input_tokens: int | None, output_tokens: int | None, chars: tuple[int, int]) -> None:
        """Record one paid response of ``name`` (a model or :data:`JUDGE`); ``chars`` = (request, reply) text."""
        if input_tokens is None or output_tokens is None:
            self.usage_estimated += 1
            input_tokens = estimate_tokens(chars[0]) if input_tokens is None else input_tokens
            output_tokens = estimate_tokens(chars[1]) if output_tokens is None else output_tokens
        count = self.tokens.setdefault(name, [0, 0])
        count[0] += input_tokens
        count[1] += output_tokens
        price = self.prices.get(name)
        self.spent[name] = self.spent.get(name, 0.0) + (price.cost(input_tokens, output_tokens) if price else 0.0)

    @property
    def total(self) -> float:
        """Everything spent so far (unpriced names count as 0)."""
        return sum(self.spent.values())


@dataclass(slots=True)
class Budget:
    """``--max-cost``: whether the next item may start, given actual spend and what items in flight will cost.

    An item about to start, and each item in flight, is counted at its estimate or at the mean actual cost of the
    items finished so far, whichever is higher (the character-based estimate can be far off; what the run has
    really paid per item is the better guide once there is one). In-flight costs arrive in the ledger while their
    reservation is still held, so the check errs on the side of stopping early. Items already started always
    finish: their answers are paid for.
    """

    max_cost: float | None
    ledger: Ledger
    reserved: float = 0.0
    finished: int = 0
    stopped: bool = False

    def expected(self, estimate: float) -> float:
        """What one item will likely cost: its estimate, or the mean actual cost per finished item if higher."""
        return max(estimate, self.ledger.total / self.finished) if self.finished else estimate

    def try_start(self, estimate: float) -> float | None:
        """Reserve one more item and return the amount reserved, or stop for good if it would exceed the budget."""
        if self.stopped:
            return None
        amount = self.expected(estimate)
        if self.max_cost is not None and self.ledger.total + self.reserved + amount > self.max_cost:
            self.stopped = True
            return None
        self.reserved += amount
        return amount

    def finish(self, reserved: float) -> None:
        """Release an item's reservation (its actual cost is in the ledger)."""
        self.reserved = max(self.reserved - reserved, 0.0)
        self.finished += 1
