"""Signing-key files: created owner-only, refused when exposed, with the fix in the message."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cose import kid_for
from provisioning import keys
from provisioning.keys import (
    KeyFormatError,
    KeyPermissionError,
    check_key_file,
    fingerprint,
    load_or_create_signing_key,
    load_public_key,
    load_public_keys,
    public_key_pem,
)

if TYPE_CHECKING:
    from pathlib import Path

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def test_created_0600_in_a_0700_directory_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys" / "signing.key"
    old = os.umask(0)  # even a permissive umask must not widen the key's mode
    try:
        key = load_or_create_signing_key(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert _raw(load_or_create_signing_key(path)) == _raw(key)
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp file left
    check_key_file(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604, 0o660])
def test_exposed_key_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    load_or_create_signing_key(path)
    path.chmod(mode)
    with pytest.raises(KeyPermissionError) as info:
        load_or_create_signing_key(path)
    text = str(info.value)
    assert str(path) in text
    assert f"{mode:04o}" in text
    assert f"chmod 600 {path}" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a file to another user")
def test_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    load_or_create_signing_key(path)
    os.chown(path, NOBODY, -1)
    with pytest.raises(KeyPermissionError) as info:
        load_or_create_signing_key(path)
    text = str(info.value)
    assert str(path) in text
    assert f"uid {NOBODY}" in text
    assert "chown root" in text


def test_a_directory_in_place_of_the_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "signing.key").mkdir(mode=0o700)
    with pytest.raises(KeyPermissionError, match="not a regular file"):
        load_or_create_signing_key(tmp_path / "signing.key")


def test_an_existing_key_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    first = load_or_create_signing_key(path)
    before = path.read_bytes()
    keys._create(path)  # a racing second creator loses: link() never replaces
    assert path.read_bytes() == before
    assert _raw(load_or_create_signing_key(path)) == _raw(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key"]


def _write_0600(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def test_wrong_key_kinds_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    _write_0600(tmp_path / "ec.key", ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(KeyFormatError, match="not Ed25519"):
        load_or_create_signing_key(tmp_path / "ec.key")
    _write_0600(tmp_path / "enc.key", Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(KeyFormatError, match="encrypted"):
        load_or_create_signing_key(tmp_path / "enc.key")
    _write_0600(tmp_path / "junk.key", b"not a key")
    with pytest.raises(KeyFormatError, match="not a PEM private key"):
        load_or_create_signing_key(tmp_path / "junk.key")


def test_public_key_files_and_fingerprint(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "k" / "signing.key")
    pem = public_key_pem(key)
    assert pem == public_key_pem(key.public_key())
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "cab-1.pem").write_text(pem)
    pub = load_public_key(tmp_path / "cab-1.pem")
    assert _raw(key) == pub.public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)
    assert fingerprint(pub) == kid_for(pub).hex()
    assert len(fingerprint(pub)) == 16
    assert list(load_public_keys([tmp_path / "cab-1.pem"])) == [kid_for(pub)]
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(KeyFormatError, match=r"bad\.pem"):
        load_public_key(tmp_path / "bad.pem")
