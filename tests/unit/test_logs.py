"""Log lines: one JSON object each, and warnings a fault repeats per request written at most once a minute."""

from __future__ import annotations

import json
import logging

import pytest

from extproc.logs import THROTTLED, Throttle, _JsonFormatter, configure_logging


def _record(msg: str, *args: object, throttled: bool = True) -> logging.LogRecord:
    record = logging.LogRecord("model_router.stream", logging.WARNING, __file__, 1, msg, args, None)
    if throttled:
        record.__dict__.update(THROTTLED)
    return record


def test_a_throttled_warning_is_written_once_a_minute_with_the_count_held_back() -> None:
    now = [0.0]
    throttle = Throttle(every=60.0, clock=lambda: now[0])
    template = "classifier failed (%s); using fallback model %s"
    passed = []
    for t in (0.0, 1.0, 30.0, 59.9, 60.0, 61.0, 200.0):
        now[0] = t
        record = _record(template, "TimeoutError", "gpt-4o")
        if throttle.filter(record):
            passed.append((t, getattr(record, "suppressed", 0)))
    assert passed == [(0.0, 0), (60.0, 3), (200.0, 1)]


def test_other_messages_and_unmarked_records_are_not_held_back() -> None:
    throttle = Throttle(every=60.0, clock=lambda: 0.0)
    assert throttle.filter(_record("classifier failed (%s)", "TimeoutError"))
    assert throttle.filter(_record("classifier failed (%s)", "RuntimeError")), "another exception: another message"
    assert not throttle.filter(_record("classifier failed (%s)", "TimeoutError"))
    assert all(throttle.filter(_record("a %s", 3, throttled=False)) for _ in range(5)), "only marked records"


def test_messages_not_seen_for_a_minute_are_forgotten() -> None:
    now = [0.0]
    throttle = Throttle(every=60.0, clock=lambda: now[0], remembered=4)
    for i in range(4):
        assert throttle.filter(_record("ending stream: %s", i))
    now[0] = 61.0
    assert throttle.filter(_record("ending stream: %s", 99))  # the fifth: the four old ones go
    assert len(throttle._last) == 1


def test_the_line_says_how_many_were_held_back() -> None:
    record = _record("classifier failed (%s)", "TimeoutError")
    assert "suppressed" not in json.loads(_JsonFormatter().format(record))
    record.suppressed = 41
    line = json.loads(_JsonFormatter().format(record))
    assert (line["msg"], line["suppressed"], line["level"]) == ("classifier failed (TimeoutError)", 41, "warning")


def test_the_router_s_handler_throttles() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info")
        (handler,) = root.handlers
        assert any(isinstance(f, Throttle) for f in handler.filters)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_the_counts_held_back_are_written_when_the_router_stops(capsys: pytest.CaptureFixture[str]) -> None:
    """A burst followed by quiet never showed its count: the flush at exit writes it, once."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        flush = configure_logging("info")
        log = logging.getLogger("model_router.stream")
        for _ in range(5):
            log.warning("classifier failed (%s); using fallback model %s", "TimeoutError", "gpt-4o", extra=THROTTLED)
        log.warning("ending stream: %s", "bad message", extra=THROTTLED)  # written, nothing held back
        flush()
        flush()
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert [(line["msg"], line.get("suppressed")) for line in lines] == [
        ("classifier failed (TimeoutError); using fallback model gpt-4o", None),
        ("ending stream: bad message", None),
        ("classifier failed (TimeoutError); using fallback model gpt-4o", 4),
    ]
