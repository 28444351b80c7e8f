"""Feedback tokens: key files, signing, and everything a forged or damaged token can look like."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
import yaml

from devstack.stack import ENVOY_DIR
from extproc.cli import main
from extproc.errors import ConfigError
from extproc.feedback_token import TokenError, TokenSigner, load_signing_keys

KEY_A = "a" * 64
KEY_B = "b" * 32
FIELDS = {"d": "00000000000000aa", "r": "auto", "s": "gpt-4o-mini", "v": "gpt-4o-mini", "t": None, "u": 1.5}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "holds no key", id="empty"),
        pytest.param("# only a comment\n\n", "holds no key", id="comments-only"),
        pytest.param(f"{KEY_A}\nshort\n", "key 2 of", id="short-key"),
    ],
)
def test_bad_key_files_name_the_field(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_signing_keys(path)
    (message,) = err.value.problems
    assert message.startswith("feedback.signing_key_file: ") and problem in message
    assert KEY_A not in message, "a key never appears in an error"


def test_a_missing_key_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"feedback.signing_key_file: cannot read"):
        load_signing_keys(tmp_path / "absent")


def test_key_file_skips_blanks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# current\n{KEY_A}\n\n  {KEY_B}  \n")
    assert load_signing_keys(path) == (KEY_A.encode(), KEY_B.encode())


def test_round_trip_and_rotation() -> None:
    """The first key signs; during a rotation a replica that already has the new key first still accepts tokens
    signed with the old one, and one that has only the old key refuses the new one's."""
    old, rotating = TokenSigner([KEY_A.encode()]), TokenSigner([KEY_B.encode(), KEY_A.encode()])
    token = old.sign(FIELDS)
    assert old.verify(token) == FIELDS
    assert rotating.verify(token) == FIELDS
    with pytest.raises(TokenError, match="not signed"):
        old.verify(rotating.sign(FIELDS))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda t: t.replace("v1.", "v2.", 1), "unknown token version", id="version"),
        pytest.param(lambda t: t + ".x", "not a feedback token", id="extra-part"),
        pytest.param(lambda t: t.split(".", 1)[1], "not a feedback token", id="no-version"),
        pytest.param(lambda t: t[:-1] + "é", "not a feedback token", id="non-ascii"),
        pytest.param(lambda t: t + "A" * 3000, "not a feedback token", id="too-long"),
        pytest.param(lambda t: t.replace(t.split(".")[1], t.split(".")[1][::-1]), "not signed", id="payload"),
        pytest.param(lambda t: t[: t.rindex(".") + 1], "not signed", id="no-mac"),
    ],
)
def test_damaged_tokens_are_refused(damage: object, message: str) -> None:
    signer = TokenSigner([KEY_A.encode()])
    token = signer.sign(FIELDS)
    assert callable(damage)
    with pytest.raises(TokenError, match=message) as err:
        signer.verify(damage(token))
    assert token not in str(err.value), "the error never echoes the token"


def test_a_signed_payload_that_is_not_an_object_is_refused() -> None:
    """Only a key holder could sign one, but the check does not rely on that."""
    signed = "v1." + base64.urlsafe_b64encode(b"[1]").rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(KEY_A.encode(), signed.encode(), hashlib.sha256).digest()).rstrip(b"=")
    with pytest.raises(TokenError, match="not a feedback token"):
        TokenSigner([KEY_A.encode()]).verify(f"{signed}.{mac.decode()}")


@pytest.mark.parametrize(("keys", "code"), [(f"{KEY_A}\n", 0), ("short\n", 2)])
def test_check_config_reads_the_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: str, code: int
) -> None:
    config = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    (tmp_path / "keys").write_text(keys)
    config["classifier"] = {"kind": "heuristic"}
    config["feedback"] = {
        "enabled": True,
        "path": str(tmp_path / "f.jsonl"),
        "signing_key_file": str(tmp_path / "keys"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["check-config", "--config", str(tmp_path / "c.yaml")]) == code
    out = capsys.readouterr()
    if code:
        assert "feedback.signing_key_file: key 1 of" in out.err
    else:
        assert "1 feedback signing key(s)" in out.out


@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, False), (0o400, False), (0o640, False), (0o644, True), (0o660, True), (0o666, True)],
)
def test_a_key_file_others_can_read_or_change_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    """Loaded either way (a Kubernetes Secret mounts 0644 by default), but whoever reads a key can forge tokens."""
    path = tmp_path / "keys"
    path.write_text(KEY_A + "\n")
    path.chmod(mode)
    assert load_signing_keys(path) == (KEY_A.encode(),)
    assert (f"has mode {mode:04o}" in caplog.text) is warned
    assert KEY_A not in caplog.text, "the warning never shows a key"


def test_rekey_signs_with_the_new_first_key_and_forgets_removed_ones() -> None:
    old_key, new_key = b"o" * 32, b"n" * 32
    signer = TokenSigner([old_key])
    old = signer.sign({"d": "1"})
    assert signer.rekey([new_key, old_key]) is True
    assert signer.verify(old) == {"d": "1"}, "a key still listed still verifies"
    rotated = signer.sign({"d": "2"})
    assert signer.rekey([new_key]) is True and signer.rekey([new_key]) is False
    assert signer.verify(rotated) == {"d": "2"}
    with pytest.raises(TokenError, match="not signed by this deployment's key"):
        signer.verify(old)
    with pytest.raises(ValueError, match="at least one key"):
        signer.rekey([])
    assert signer.verify(rotated) == {"d": "2"}, "a refused rekey keeps the running keys"
