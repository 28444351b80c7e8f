"""Signed feedback tokens: feedback any replica can accept, for a decision another replica made.

The decision store is per process, so feedback that reaches another replica (a load balancer in front of several
gateway pods) finds no decision. With ``feedback.signing_key_file``, a router signs what feedback needs to know about
each decision it remembers (the :class:`~extproc.feedback.DecisionEntry` and its id) into a token; Envoy returns it as
the ``x-model-router-feedback-token`` response header, and every replica holding the key accepts feedback carrying
it, without having seen the decision.

Signed (HMAC-SHA256), not encrypted: the token holds the decision id, model names, tenant and decision time, which the
client already learns from the response headers and its own identity, and never request text. Format:
``v1.<base64url(JSON fields)>.<base64url(HMAC-SHA256(key, "v1." + payload))>``. The key file holds one key per line:
the first signs, every one verifies (rotation: add the new key first on every replica, drop the old one a TTL later).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from extproc.errors import ConfigError

__all__ = ["MIN_KEY_CHARS", "TokenError", "TokenSigner", "load_signing_keys"]

_log = logging.getLogger("model_router.feedback")

MIN_KEY_CHARS = 32
"""A key line's minimum length, e.g. ``openssl rand -hex 32`` (64 characters)."""
_VERSION = "v1"
_MAX_TOKEN_CHARS = 2048
_FIELD = "feedback.signing_key_file"


class TokenError(Exception):
    """A token that is malformed or not signed by any of this router's keys; the message never echoes the token."""


def load_signing_keys(path: Path) -> tuple[bytes, ...]:
    """The keys in ``path`` (one per line; blank lines and ``#`` comments skipped); ``ConfigError`` names the field.

    A file any local user may read (or group/others may write) is logged as a warning, not refused: whoever reads a
    key can sign feedback for any decision, but a Kubernetes Secret mounts 0644 unless ``defaultMode`` says otherwise.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{_FIELD}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"]) from None
    if mode & 0o026:
        _log.warning(
            "%s: %s has mode %04o: other users can read (or change) the keys that sign feedback tokens; chmod 600, "
            "or set defaultMode: 0440 (with the pod's fsGroup) on the Secret volume",
            _FIELD,
            path,
            stat.S_IMODE(mode),
        )
    lines = [line.strip() for line in text.splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ConfigError([f"{_FIELD}: {path} holds no key"])
    short = [i + 1 for i, key in enumerate(keys) if len(key) < MIN_KEY_CHARS]
    if short:
        raise ConfigError([f"{_FIELD}: key {short[0]} of {path} is shorter than {MIN_KEY_CHARS} characters"])
    return tuple(key.encode() for key in keys)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(keyed: hmac.HMAC, signed: str) -> str:
    mac = keyed.copy()  # the key is processed once, in __init__ (a fresh hmac.digest costs 4x more)
    mac.update(signed.encode("ascii"))
    return _b64(mac.digest())


class TokenSigner:
    """Signs with the first key, verifies with any; thread-safe (each call works on a copy of the keyed HMACs)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self._keys: tuple[hmac.HMAC, ...] = ()
        self._given: tuple[bytes, ...] = ()
        self.rekey(keys)

    def rekey(self, keys: Sequence[bytes]) -> bool:
        """Sign with the new first key and verify with only the new keys from now on; True if they differ from the
        current ones. One atomic swap: a call in flight uses the old set or the new one, never a mix."""
        if not keys:
            raise ValueError("at least one key")
        changed = tuple(keys) != self._given
        self._given = tuple(keys)
        self._keys = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)
        return changed

    def sign(self, fields: dict[str, Any]) -> str:
        """A token carrying ``fields`` (JSON-serialisable)."""
        signed = f"{_VERSION}.{_b64(orjson.dumps(fields))}"
        return f"{signed}.{_mac(self._keys[0], signed)}"

    def verify(self, token: str) -> dict[str, Any]:
        """The fields of a token one of the keys signed; ``TokenError`` otherwise."""
        if len(token) > _MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
            raise TokenError("not a feedback token")
        version, payload, mac = token.split(".")
        if version != _VERSION:
            raise TokenError("unknown token version")
        signed = f"{version}.{payload}"
        if not any(hmac.compare_digest(_mac(key, signed), mac) for key in self._keys):
            raise TokenError("not signed by this deployment's key")
        try:
            fields = orjson.loads(_unb64(payload))
        except (binascii.Error, ValueError, orjson.JSONDecodeError):
            raise TokenError("not a feedback token") from None
        if not isinstance(fields, dict):
            raise TokenError("not a feedback token")
        return fields
