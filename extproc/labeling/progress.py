"""A small progress display on stderr: a redrawn bar on a terminal, a line every few seconds in a log.

Why not tqdm: it is not a runtime dependency, and a log file (CI, ``nohup``) wants plain periodic lines instead of
carriage-return animation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Progress"]

BAR_WIDTH = 30


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass(slots=True)
class Progress:
    """Counts finished items and redraws at most every ``interval`` seconds (``clock`` is monotonic seconds)."""

    total: int
    stream: TextIO
    clock: Callable[[], float]
    tty: bool
    interval: float = 0.0
    done: int = 0
    _start: float = 0.0
    _last: float | None = None
    _drawn: int = -1

    def __post_init__(self) -> None:
        self.interval = self.interval or (0.1 if self.tty else 10.0)
        self._start = self.clock()

    def line(self, extra: str = "") -> str:
        """The current status: count, share, rate, time left and ``extra`` (e.g. the spend so far)."""
        elapsed = max(self.clock() - self._start, 1e-9)
        share = self.done / self.total if self.total else 1.0
        rate = self.done / elapsed
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        text = f"{self.done}/{self.total} {share:4.0%} {rate:.2f}/s eta {eta}"
        if self.tty:
            filled = int(BAR_WIDTH * share)
            text = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
        return f"{text} {extra}".rstrip()

    def advance(self, extra: str = "") -> None:
        """One more item finished; redraw if it is time."""
        self.done += 1
        now = self.clock()
        if self._last is None or now - self._last >= self.interval or self.done == self.total:
            self._last = now
            self._draw(extra)

    def close(self, extra: str = "") -> None:
        """The final state, unless a log line already shows it (and a newline after a terminal bar)."""
        if self.tty or self._drawn != self.done:
            self._draw(extra)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, extra: str) -> None:
        self._drawn = self.done
        if self.tty:
            self.stream.write("\r" + self.line(extra) + "\x1b[K")
        else:
            self.stream.write("label: " + self.line(extra) + "\n")
        self.stream.flush()
