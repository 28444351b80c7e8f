"""Classification off the event loop, with a deadline, on dedicated threads.

Why not ``loop.run_in_executor`` + ``asyncio.wait_for``: measured on this project's classifier (2-core VM, uvloop),
that hop added ~140 µs CPU and latency per prompt to a ~75 µs inference: a ``concurrent.futures.Future``, its
wrapping asyncio future, a Task for ``wait_for`` and its timeout handle. Here a request is one tuple on a
``SimpleQueue``; the worker hands the result back with one ``call_soon_threadsafe``, and the deadline is one
``call_later`` on the asyncio future itself: ~75 µs of overhead, with the same semantics (the prompt is classified
off the loop, a missed deadline raises ``TimeoutError`` at once, the worker's late result is dropped).

Inference stays off the loop because a slow or stuck model must not stall every other stream (the fault tests
inject one); the deadline is what turns it into a fallback.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from classifier.model import DifficultyModel, Prediction

__all__ = ["ClassifierOverloaded", "ClassifierThreads"]

_log = logging.getLogger("model_router.classify")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Prediction]", DifficultyModel, str]


def _settle(future: asyncio.Future[Prediction], result: Prediction | None, error: BaseException | None) -> None:
    """On the loop: deliver the worker's outcome unless the deadline (or a cancellation) came first."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]  # result is set whenever error is None


def _expire(future: asyncio.Future[Prediction], timeout: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"classifier missed its {timeout * 1000:.0f} ms deadline"))


class ClassifierOverloaded(RuntimeError):
    """More prompts are waiting than the workers can classify within a deadline: the request falls back at once."""


class ClassifierThreads:
    """A :data:`~extproc.stream.Classify` callable backed by ``workers`` threads; :meth:`close` stops them.

    At most ``max_queued`` prompts wait for a worker. Past that, a call fails at once (the stream falls back) instead
    of joining a queue whose every job would miss its deadline: a stuck or slow model would otherwise hold every
    waiting prompt's text in memory, and the workers, taking the oldest job first, would finish each one too late.
    """

    def __init__(self, workers: int = 2, name: str = "classify", max_queued: int = 64) -> None:
        self._max_queued = max_queued
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    async def __call__(self, model: DifficultyModel, text: str, timeout: float) -> Prediction:
        """Classify ``text`` with ``model`` on a worker thread; ``TimeoutError`` after ``timeout`` seconds."""
        if self._jobs.qsize() >= self._max_queued:
            raise ClassifierOverloaded(f"{self._max_queued} prompts already wait for the classifier")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        self._jobs.put((loop, future, model, text))
        deadline = loop.call_later(timeout, _expire, future, timeout)
        try:
            return await future
        finally:
            deadline.cancel()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, model, text = job
            if future.done():  # expired or cancelled while queued: skip the work (a benign cross-thread read)
                continue
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (model.predict(text), None)
            except Exception as exc:  # delivered to the awaiting stream, which falls back
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop closed while we worked: nobody is waiting
                _log.debug("event loop closed before a classification finished")

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers once the queued jobs are done (they are daemon threads: a stuck model never blocks
        the process from exiting)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
