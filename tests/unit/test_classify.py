"""``ClassifierThreads``: results, errors and deadlines come back to the awaiting stream; late work is dropped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from classifier.model import Prediction
from extproc.classify import ClassifierThreads
from tests.fakes import FAKE_ABILITIES, FakeDifficultyModel


@pytest.fixture
def threads() -> Iterator[ClassifierThreads]:
    pool = ClassifierThreads(2)
    yield pool
    pool.close(timeout=0)


class Gate:
    """A model that blocks until released, and records the thread it ran on."""

    name = "gate"
    default_abilities = FAKE_ABILITIES

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def predict(self, text: str) -> Prediction:
        self.calls.append(threading.current_thread().name)
        self.release.wait(5)
        return Prediction(1.0, 0.5)


async def test_prediction_comes_back_from_a_worker_thread(threads: ClassifierThreads) -> None:
    model = Gate()
    model.release.set()
    assert await threads(model, "hard question", 1.0) == Prediction(1.0, 0.5)
    assert model.calls and model.calls[0].startswith("classify-")


async def test_model_error_is_raised_to_the_caller(threads: ClassifierThreads) -> None:
    with pytest.raises(RuntimeError, match="onnx exploded"):
        await threads(FakeDifficultyModel(error=RuntimeError("onnx exploded")), "x", 1.0)


async def test_deadline_raises_timeout_and_the_late_result_is_dropped(threads: ClassifierThreads) -> None:
    model = Gate()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError, match="20 ms deadline"):
        await threads(model, "slow", 0.02)
    assert loop.time() - start < 0.5
    model.release.set()  # the worker finishes later; settling an expired future must be a no-op
    await asyncio.sleep(0.05)
    model2 = Gate()
    model2.release.set()
    assert await threads(model2, "next", 1.0) == Prediction(1.0, 0.5)  # the pool still works


async def test_queued_job_whose_deadline_passed_is_skipped() -> None:
    one = ClassifierThreads(1)
    try:
        blocker, queued = Gate(), Gate()
        queued.release.set()
        first = asyncio.ensure_future(one(blocker, "blocks the only worker", 1.0))
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await one(queued, "waits behind it", 0.02)
        blocker.release.set()
        await first
        await asyncio.sleep(0.05)
        assert queued.calls == [], "work for an expired request was done anyway"
    finally:
        one.close(timeout=0)


async def test_concurrent_requests_all_resolve(threads: ClassifierThreads) -> None:
    model = FakeDifficultyModel()
    results = await asyncio.gather(*(threads(model, f"medium {i}", 1.0) for i in range(50)))
    assert all(r == Prediction(-0.5, 0.5) for r in results)
    assert len(model.seen) == 50


async def test_a_full_backlog_fails_at_once_and_drains_when_the_model_recovers() -> None:
    """A stuck model: past max_queued waiting prompts a call fails immediately (the stream falls back) instead of
    queueing more text behind work that can only finish too late."""
    from extproc.classify import ClassifierOverloaded

    one = ClassifierThreads(1, max_queued=3)
    try:
        stuck = Gate()
        running = asyncio.ensure_future(one(stuck, "occupies the worker", 5.0))
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(one(stuck, f"queued {n}", 0.05)) for n in range(3)]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ClassifierOverloaded, match="3 prompts already wait"):
            await one(stuck, "one too many", 5.0)
        assert loop.time() - start < 0.01, "refused at once, not after the deadline"
        for task in waiting:
            with pytest.raises(TimeoutError):
                await task
        stuck.release.set()
        assert await running == Prediction(1.0, 0.5)
        await asyncio.sleep(0.05)  # the expired jobs are skipped, the queue is empty again
        recovered = Gate()
        recovered.release.set()
        assert await one(recovered, "after recovery", 1.0) == Prediction(1.0, 0.5)
    finally:
        one.close(timeout=0)
