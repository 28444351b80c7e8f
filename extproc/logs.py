"""Structured JSON log lines on stderr; no prompt text is ever passed to a logger."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

__all__ = ["THROTTLED", "Throttle", "configure_logging"]

THROTTLED: Mapping[str, object] = MappingProxyType({"throttle": True})
"""``extra=`` for a warning that one request can cause, so a fault can cause thousands a second (a classifier that
misses its deadline under CPU overload): written at most once a minute per message, with how many were held back;
the metrics count every one."""


class Throttle(logging.Filter):
    """Lets a record logged with ``extra=THROTTLED`` through at most once per ``every`` seconds per message (another
    exception type is another message), and tells the next one that goes through how many were held back
    (``suppressed``). Messages not seen for ``every`` seconds are forgotten once more than ``remembered`` are kept."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic, remembered: int = 256) -> None:
        super().__init__()
        self._every = every
        self._remembered = remembered
        self._clock = clock
        self._lock = threading.Lock()  # records come from the event loop and from worker threads
        self._last: dict[str, tuple[float, int]] = {}  # message -> (time written, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "throttle", False):
            return True
        now, key = self._clock(), record.getMessage()
        with self._lock:
            written, held = self._last.get(key, (None, 0))
            if written is not None and now - written < self._every:
                self._last[key] = (written, held + 1)
                return False
            self._last[key] = (now, 0)
            if len(self._last) > self._remembered:  # e.g. protocol errors naming many message kinds
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self._every}
        if held:
            record.suppressed = held
        return True

    def flush(self, handler: logging.Handler) -> None:
        """Write, through ``handler``, one line per message that has records held back since it was last written
        (with ``suppressed``): at exit, or a burst that ended in quiet would never show its count in the logs."""
        with self._lock:
            pending = [(key, held) for key, (_, held) in self._last.items() if held]
            self._last = {key: (written, 0) for key, (written, _) in self._last.items()}
        for key, held in pending:
            record = logging.LogRecord("model_router.logs", logging.WARNING, __file__, 0, key, None, None)
            record.suppressed = held
            handler.handle(record)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{") and message.endswith("}"):
            try:
                body = json.loads(message)  # already structured (decision records)
            except ValueError:
                body = {"msg": message}
        else:
            body = {"msg": message}
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **body,
        }
        suppressed = getattr(record, "suppressed", 0)  # held back by Throttle since the last one written
        if suppressed:
            line["suppressed"] = suppressed
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str) -> Callable[[], None]:
    """Send every log record to stderr as one JSON line (the ones marked :data:`THROTTLED` at most once a minute);
    return the function that writes what the throttle still holds back (call it when the process stops)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    throttle = Throttle()
    handler.addFilter(throttle)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("grpc").setLevel(logging.WARNING)  # grpc's own debug chatter is not ours to emit
    return lambda: throttle.flush(handler)
