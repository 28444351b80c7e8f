"""Builds, reconfigures and stops the server's learning-from-traffic pieces: prompt capture and feedback.

``capture.*`` applies on reload (:meth:`Learning.reconfigure`); ``feedback.*`` is read once at start, like the
listen addresses. On SIGTERM the server calls :meth:`Learning.close` after the gRPC server has drained, so every
queued line is written before the process exits.

Each file has one writer (:mod:`extproc.spool` locks ``<path>.lock``): a ``capture.path`` or ``feedback.path`` that
another process is writing, or whose lock file cannot be created, refuses the start with a
:class:`~extproc.errors.ConfigError` naming the field (unless capture is off, when the files are left alone), and a
reload onto such a capture path is rejected as a whole (the running config stays in force).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from extproc import capture as capture_mod
from extproc import feedback as feedback_mod
from extproc.capture import PromptCapture
from extproc.config import CaptureSettings, Settings
from extproc.errors import CANNOT_START, ConfigError
from extproc.feedback import DecisionStore, FeedbackRecorder
from extproc.feedback_http import start_feedback_server
from extproc.feedback_token import TokenSigner, load_signing_keys
from extproc.spool import Spool, SpoolBusyError, SpoolPathError, SpoolTarget
from extproc.tap import LearningTap

__all__ = ["Learning", "start_learning"]

_log = logging.getLogger("model_router.learning")


def _configure_capture(capture: PromptCapture, settings: CaptureSettings) -> None:
    """Apply ``settings``; a ``ConfigError`` naming ``capture.path`` if this process cannot write it (another process
    does, or its lock file cannot be created) and capture is on (then the writer keeps its current file), else only
    logged."""
    try:
        capture.configure(settings)
    except SpoolPathError as exc:
        if settings.enabled:
            raise _spool_error("capture.path", exc) from None
        _log.warning("capture.path: %s; capture is off here, so files left there are not expired by this router", exc)


def _spool_error(field: str, exc: SpoolPathError) -> ConfigError:
    """A path another process writes is no config mistake (``cannot start``, as for a busy port: look for that
    process); any other is one (``invalid configuration``)."""
    if isinstance(exc, SpoolBusyError):
        return ConfigError([f"{field}: {exc}"], CANNOT_START)
    return ConfigError([f"{field}: {exc}"])


@dataclass(frozen=True, slots=True)
class Learning:
    """The running pieces; ``feedback`` is None when ``feedback.enabled`` was off at start."""

    tap: LearningTap
    capture: PromptCapture
    feedback: FeedbackRecorder | None
    stop_http: Callable[[], None]
    signer: TokenSigner | None = None
    key_file: Path | None = None
    """``feedback.signing_key_file`` as read at start; its content is read again on every reload."""

    def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded config's ``capture`` section and re-read the feedback signing keys, before the config is
        swapped in (:func:`extproc.reload.reload_snapshot`'s ``apply``). The server reloads when the key file changes
        too, so replacing a leaked key in the Secret revokes it without a restart.

        Raises :class:`~extproc.errors.ConfigError` naming ``capture.path`` if another process writes that path, or
        ``feedback.signing_key_file`` if it no longer holds valid keys; nothing is changed then and the reload is
        rejected, so config, file and keys agree.
        """
        keys = None
        if self.signer is not None and settings.feedback.signing_key_file == self.key_file is not None:
            keys = load_signing_keys(self.key_file)  # a new path is restart-only (feedback.*): keep these keys
        _configure_capture(self.capture, settings.capture)
        if keys is not None and self.signer is not None and self.signer.rekey(keys):
            _log.info("feedback.signing_key_file: new keys from %s (%d), the first signs", self.key_file, len(keys))

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking feedback, then write every queued line and close the files."""
        self.stop_http()
        self.capture.close(timeout)
        if self.feedback is not None:
            self.feedback.close(timeout)


def start_learning(
    settings: Settings,
    catalog: Callable[[], Collection[str]],
    on_drop: Callable[[str], None],
    on_feedback: Callable[[str, str], None] = lambda result, source: None,
) -> Learning:
    """Start the capture writer and, if feedback is on, the decision store, its writer and its HTTP endpoint.

    ``catalog`` returns the current catalog's model names (feedback may name any of them); ``on_drop`` counts what
    a writer could not keep (``model_router_errors_total{reason}``); ``on_feedback(result, source)`` counts every
    feedback submission (``model_router_feedback_total``).
    """
    with contextlib.ExitStack() as undo:  # a failure closes what was started (and releases its file) first
        capture = PromptCapture(Spool("capture", capture_mod.TIME_KEY, on_drop))
        undo.callback(capture.close)
        _configure_capture(capture, settings.capture)
        cfg = settings.feedback
        if not cfg.enabled or cfg.path is None:
            undo.pop_all()
            return Learning(LearningTap(None, capture), capture, None, lambda: None)
        signer = TokenSigner(load_signing_keys(cfg.signing_key_file)) if cfg.signing_key_file else None
        decisions = DecisionStore(cfg.max_decisions, cfg.decision_ttl_seconds)
        spool = Spool("feedback", feedback_mod.TIME_KEY, on_drop)
        undo.callback(spool.close)
        try:
            spool.configure(SpoolTarget(cfg.path, cfg.max_bytes))
        except SpoolPathError as exc:
            raise _spool_error("feedback.path", exc) from None
        recorder = FeedbackRecorder(
            decisions,
            spool,
            catalog,
            on_result=on_feedback,
            signer=signer,
            token_ttl_seconds=cfg.decision_ttl_seconds,
            max_scores_per_decision=cfg.max_scores_per_decision,
        )
        stop_http = start_feedback_server(cfg.listen, recorder) if cfg.listen else (lambda: None)
        undo.pop_all()
    tap = LearningTap(decisions, capture, signer=signer)
    return Learning(tap, capture, recorder, stop_http, signer, cfg.signing_key_file)
