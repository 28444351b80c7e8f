"""TLS (optionally mutual) on the router's gRPC port, for deployments where Envoy reaches the router over a network.

On loopback or a Unix socket (``envoy/``, ``k8s/base``) plaintext is fine; in the Istio and Envoy Gateway overlays the
router is a Service, and every prompt crosses the pod network. The files are read at start (a missing or unreadable
one is a ``ConfigError`` naming the field) and again at the next handshake after any of them changes, so a rotation
(cert-manager renews the Secret in place) needs no restart; a rotation that fails to load keeps the current
certificate and logs why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc

from extproc.config import TlsSettings
from extproc.errors import ConfigError

__all__ = ["read_pem", "server_credentials"]

_log = logging.getLogger("model_router.tls")


def read_pem(name: str, path: Path) -> bytes:
    """The PEM file at ``path``; ``ValueError`` starting with ``name`` (a config field, a CLI option) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{name}: {path} is not PEM")
    return data


def _read(tls: TlsSettings) -> tuple[bytes, bytes, bytes | None]:
    """The key, the certificate chain and the client CA, as bytes; one ``ConfigError`` naming every bad file
    otherwise."""
    problems: list[str] = []

    def pem(field: str, path: Path) -> bytes:
        try:
            return read_pem(f"server.tls.{field}", path)
        except ValueError as exc:
            problems.append(str(exc))
            return b""

    cert = pem("cert_file", tls.cert_file)
    key = pem("key_file", tls.key_file)
    ca = pem("client_ca_file", tls.client_ca_file) if tls.client_ca_file else None
    if problems:
        raise ConfigError(problems)
    return key, cert, ca


def _stamp(paths: list[Path]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_ino))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)


class _CertificateFiles:
    """gRPC's certificate fetcher: called before each handshake; a new configuration only when a file changed."""

    def __init__(self, tls: TlsSettings) -> None:
        self._tls = tls
        self._paths = [p for p in (tls.key_file, tls.cert_file, tls.client_ca_file) if p is not None]
        self._seen = _stamp(self._paths)
        self.initial = self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key, cert, ca = _read(self._tls)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = _stamp(self._paths)
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            config = self._configuration()
        except ConfigError as exc:
            _log.warning("keeping the current TLS certificate: %s", exc)
            return None
        _log.info("reloaded the TLS certificate from %s", self._tls.cert_file)
        return config


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``: TLS 1.2+, client certificates required when ``client_ca_file`` is set."""
    files = _CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files, require_client_authentication=tls.client_ca_file is not None
    )
