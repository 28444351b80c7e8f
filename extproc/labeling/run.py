"""Labelling itself: ask every model through the gateway, have the judge grade each answer, write one record per item.

Never a wrong label: an answer is kept only if it can be attributed to the model asked for (the router did not
re-route it, and, when the gateway reports it, Envoy did not retry it on another cluster), and a grade only if the
judge's reply holds one in 1..10. Anything else leaves that model's key out of ``scores`` and says why in
``missing``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc.labeling.client import ChatEndpoint, ChatReply
from extproc.labeling.cost import JUDGE, Budget, Ledger, Price, item_cost
from extproc.labeling.grading import RUBRIC_VERSION, judge_messages, parse_grade, render_conversation, score_of_grade
from extproc.labeling.progress import Progress
from extproc.labeling.records import PromptItem, RecordWriter
from extproc.labeling.retry import CallError, RetryPolicy, with_retries

__all__ = [
    "ATTEMPTS_HEADER",
    "OVERRIDE_HEADER",
    "OVERRIDE_TOKEN_HEADER",
    "ROUTER_MODEL_HEADER",
    "LabelSettings",
    "Labeller",
    "ModelOutcome",
    "RunStats",
    "build_record",
    "label_items",
]

OVERRIDE_HEADER = "x-model-router-override"
OVERRIDE_TOKEN_HEADER = "x-model-router-override-token"
ROUTER_MODEL_HEADER = "x-model-router-model"
"""Set by the gateway from the router's decision (README "How a request flows")."""
ATTEMPTS_HEADER = "x-envoy-attempt-count"
FALLBACK_MODEL_HEADER = "x-model-router-fallback-model"
"""Set by the gateway's fallback filter when another cluster's model answered (README "Upstream fallback")."""
"""Sent by Envoy when the route's virtual host sets ``include_attempt_count_in_response``."""

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LabelSettings:
    """What to ask, of whom, and within which limits."""

    models: tuple[str, ...]
    judge_model: str
    pin_alias: str | None = None
    """Send ``model: <alias>`` (a routable model such as ``auto``) and pin the real model with the override header."""
    send_override: bool = False
    """Send ``x-model-router-override: <model>`` (the caller has the override token among its headers)."""
    max_tokens: int | None = 1024
    expected_output_tokens: int = 300
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prices: Mapping[str, Price] = field(default_factory=dict)
    judge_price: Price | None = None
    max_cost: float | None = None
    concurrency: int = 4


@dataclass(frozen=True, slots=True)
class ModelOutcome:
    """One model's result on one item: a grade, or why there is none (``transient``: a later run may succeed)."""

    model: str
    grade: float | None = None
    answer_chars: int | None = None
    missing: str | None = None
    transient: bool = False


@dataclass(slots=True)
class RunStats:
    """Counts for the summary."""

    written: int = 0
    not_written: int = 0
    """Items every model failed on for a transient reason: left out so that a later run retries them."""
    not_started: int = 0
    """Items never started because ``--max-cost`` was reached."""
    retries: int = 0
    missing: dict[str, Counter[str]] = field(default_factory=dict)

    def count_missing(self, outcome: ModelOutcome) -> None:
        """Tally one missing outcome by model and reason."""
        if outcome.missing is not None:
            self.missing.setdefault(outcome.model, Counter())[outcome.missing] += 1


def unattributable(reply: ChatReply, model: str, pinned: bool) -> CallError | None:
    """Why ``reply`` may not be ``model``'s answer, or None if it is.

    - the router says it chose another model (e.g. the override token was not accepted): ``rerouted``;
    - pinning through a routable alias and no router decision came back (router down: the gateway failed open and
      the alias went to the default route): ``not_pinned``;
    - Envoy needed more than one attempt, or its fallback filter says another cluster's model answered (also after
      an outlier ejection, in one attempt): ``gateway_retried``.

    The last two are retried, as a 5xx is: each comes from a failure that may pass (a router restarting, a cluster
    failing or ejected for a while), and one reply cannot tell a brief one from a lasting one. ``rerouted`` is not:
    the router chose on purpose (a refused secret), and would again. A cause that never passes is refused before the
    run where it can be seen (a ``--pin-alias`` outside ``--config``'s routable models); a shadow tenant cannot be.
    """
    routed = reply.headers.get(ROUTER_MODEL_HEADER)
    if routed is not None and routed != model:
        return CallError("rerouted", retryable=False)
    if pinned and routed is None:
        return CallError("not_pinned", retryable=True)
    if reply.headers.get(ATTEMPTS_HEADER, "1").strip() != "1" or FALLBACK_MODEL_HEADER in reply.headers:
        return CallError("gateway_retried", retryable=True)
    return None


@dataclass(slots=True)
class Labeller:
    """Labels one item: every model's answer through the gateway, then the judge's grade of each answer."""

    answers: ChatEndpoint
    judge: ChatEndpoint
    settings: LabelSettings
    ledger: Ledger
    sleep: Sleep
    rand: Callable[[], float]
    stats: RunStats

    async def label(self, item: PromptItem) -> list[ModelOutcome]:
        """Every model's outcome on ``item`` (the models run concurrently, within the shared request limit)."""
        return list(await asyncio.gather(*(self._outcome(item, m) for m in self.settings.models)))

    async def _outcome(self, item: PromptItem, model: str) -> ModelOutcome:
        try:
            reply = await self._retrying(lambda: self._answer(item, model))
        except CallError as exc:
            return ModelOutcome(model, missing=exc.reason, transient=exc.retryable)
        try:
            grade = await self._retrying(lambda: self._grade(item, reply.text))
        except CallError as exc:
            return ModelOutcome(
                model, answer_chars=len(reply.text), missing=f"judge_{exc.reason}", transient=exc.retryable
            )
        return ModelOutcome(model, grade=grade, answer_chars=len(reply.text))

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        def count(_: CallError) -> None:
            self.stats.retries += 1

        return await with_retries(call, self.settings.retry, self.sleep, self.rand, count)

    async def _answer(self, item: PromptItem, model: str) -> ChatReply:
        """One attempt at ``model``'s answer; paid for even when it is then refused as unattributable."""
        alias = self.settings.pin_alias
        body: dict[str, Any] = {"model": alias or model, "messages": item.messages}
        if self.settings.max_tokens:
            body["max_tokens"] = self.settings.max_tokens
        headers = {OVERRIDE_HEADER: model} if alias or self.settings.send_override else {}
        reply = await self.answers.complete(body, headers)
        self.ledger.add(model, reply.input_tokens, reply.output_tokens, (item.prompt_chars, len(reply.text)))
        problem = unattributable(reply, model, pinned=alias is not None)
        if problem is not None:
            raise problem
        return reply

    async def _grade(self, item: PromptItem, answer: str) -> float:
        """One attempt at the judge's grade of ``answer``."""
        messages = judge_messages(item.messages, answer)
        body = {"model": self.settings.judge_model, "messages": messages, "temperature": 0}
        reply = await self.judge.complete(body)
        sent = len(render_conversation(messages))
        self.ledger.add(JUDGE, reply.input_tokens, reply.output_tokens, (sent, len(reply.text)))
        grade = parse_grade(reply.text)
        if grade is None:
            raise CallError("unparseable", retryable=True)
        return grade


def _number(value: float) -> float | int:
    """``7.0`` -> ``7``: grades are integers unless the judge said otherwise."""
    return int(value) if value.is_integer() else value


def build_record(item: PromptItem, outcomes: Sequence[ModelOutcome], judge_model: str) -> dict[str, Any]:
    """The EVAL.md record of one item: ``scores`` holds only graded models; ``missing`` says why the others lack one."""
    record: dict[str, Any] = {"id": item.id, "messages": item.messages}
    if item.category is not None:
        record["category"] = item.category
    record["scores"] = {o.model: score_of_grade(o.grade) for o in outcomes if o.grade is not None}
    record["missing"] = {o.model: o.missing for o in outcomes if o.missing is not None}
    record["grades"] = {o.model: _number(o.grade) for o in outcomes if o.grade is not None}
    record["answers_chars"] = {o.model: o.answer_chars for o in outcomes if o.answer_chars is not None}
    record["judge"] = judge_model
    record["rubric"] = RUBRIC_VERSION
    return record


def worth_writing(outcomes: Iterable[ModelOutcome]) -> bool:
    """False when no model got a grade: written, the item would count as done and never be retried, and a wrong key
    or URL (every call refused the same way) would mark a whole file done with nothing in it."""
    return any(o.grade is not None for o in outcomes)


async def label_items(
    items: Sequence[PromptItem],
    labeller: Labeller,
    writer: RecordWriter,
    budget: Budget,
    progress: Progress,
) -> RunStats:
    """Label ``items`` with ``settings.concurrency`` workers, writing each record as soon as it is complete."""
    settings, stats = labeller.settings, labeller.stats
    pending = iter(items)
    started = 0

    def status() -> str:
        return f"spent {budget.ledger.total:.4f}"

    async def worker() -> None:
        nonlocal started
        for item in pending:
            estimate = item_cost(
                item, settings.models, settings.prices, settings.judge_price, settings.expected_output_tokens
            )
            reserved = budget.try_start(estimate)
            if reserved is None:
                return
            started += 1
            try:
                outcomes = await labeller.label(item)
            finally:
                budget.finish(reserved)
            for outcome in outcomes:
                stats.count_missing(outcome)
            if worth_writing(outcomes):
                writer.write(build_record(item, outcomes, settings.judge_model))
                stats.written += 1
            else:
                stats.not_written += 1
            progress.advance(status())

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, settings.concurrency)):
            group.create_task(worker())
    stats.not_started = len(items) - started
    progress.close(status())
    return stats
