"""server.tls: the PEM files are checked at start (errors name the field) and re-read after they change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.config import TlsSettings
from extproc.errors import ConfigError
from extproc.tls import _CertificateFiles, server_credentials
from tests.certs import TestCA


@pytest.fixture
def files(tmp_path: Path) -> tuple[TestCA, TlsSettings]:
    ca = TestCA(tmp_path)
    cert, key = ca.issue("router", server=True)
    return ca, TlsSettings(cert_file=cert, key_file=key, client_ca_file=ca.path)


@pytest.mark.parametrize("field", ["cert_file", "key_file", "client_ca_file"])
def test_a_missing_or_non_pem_file_is_a_config_error_naming_the_field(
    files: tuple[TestCA, TlsSettings], field: str, tmp_path: Path
) -> None:
    _, tls = files
    with pytest.raises(ConfigError, match=rf"server\.tls\.{field}: cannot read"):
        server_credentials(tls.model_copy(update={field: tmp_path / "missing.pem"}))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=rf"server\.tls\.{field}: .* is not PEM"):
        server_credentials(tls.model_copy(update={field: tmp_path / "junk.pem"}))


def test_every_bad_file_is_named_at_once(files: tuple[TestCA, TlsSettings], tmp_path: Path) -> None:
    _, tls = files
    (tmp_path / "junk.pem").write_text("not a certificate")
    broken = {
        "cert_file": tmp_path / "cert.pem",
        "key_file": tmp_path / "key.pem",
        "client_ca_file": tmp_path / "junk.pem",
    }
    with pytest.raises(ConfigError) as info:
        server_credentials(tls.model_copy(update=broken))
    assert info.value.problems == [
        f"server.tls.cert_file: cannot read {tmp_path}/cert.pem: No such file or directory",
        f"server.tls.key_file: cannot read {tmp_path}/key.pem: No such file or directory",
        f"server.tls.client_ca_file: {tmp_path}/junk.pem is not PEM",
    ]


def test_a_rotated_certificate_is_picked_up_and_a_broken_one_is_not(files: tuple[TestCA, TlsSettings]) -> None:
    ca, tls = files
    fetch = _CertificateFiles(tls)
    assert fetch() is None, "nothing changed"
    ca.issue("router", server=True)  # cert-manager renews both files in place
    _touch_later(tls.cert_file, tls.key_file)
    assert fetch() is not None
    assert fetch() is None, "only once per change"
    tls.key_file.write_text("half-written")
    _touch_later(tls.key_file)
    assert fetch() is None, "a broken rotation keeps the current certificate"


def _touch_later(*paths: Path) -> None:
    for path in paths:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
