"""The signing-key file is read and written without cryptography's serialization package,
byte for byte as that package writes it, and every other PEM form still goes through it."""

from __future__ import annotations

import base64
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning import keys
from provisioning.keys import load_or_create_signing_key

if TYPE_CHECKING:
    from pathlib import Path


def _pkcs8(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_created_file_is_what_cryptography_writes(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    key = load_or_create_signing_key(path)
    assert path.read_bytes() == _pkcs8(key)
    for _ in range(50):
        other = Ed25519PrivateKey.generate()
        assert keys._pem(other.private_bytes_raw()) == _pkcs8(other)


def _variants(pem: bytes) -> list[bytes]:
    v2 = Ed25519PrivateKey.generate()  # another key: the first block is the one read
    return [pem, pem.replace(b"\n", b"\r\n"), b"  \n" + pem + b"\n\n", b"issued by ops\n" + pem,
            pem + _pkcs8(v2), pem.replace(b"\n", b"\n\n", 1)]


@pytest.mark.parametrize("index", range(6))
def test_any_pem_cryptography_reads_gives_the_same_key(tmp_path: Path, index: int) -> None:
    key = Ed25519PrivateKey.generate()
    data = _variants(_pkcs8(key))[index]
    path = tmp_path / "signing.key"
    path.write_bytes(data)
    path.chmod(0o600)
    loaded = load_or_create_signing_key(path)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()
    assert serialization.load_pem_private_key(data, None).private_bytes_raw() == (  # type: ignore[union-attr]
        key.private_bytes_raw())


@pytest.mark.parametrize("der_hex", [
    "302e020100300506032b65700422042000",  # seed one byte short
    "302e020100300506032b657104220420" + "11" * 32,  # X448's OID, not Ed25519's
])
def test_near_misses_go_to_the_full_parser(der_hex: str) -> None:
    pem = b"-----BEGIN PRIVATE KEY-----\n%s\n-----END PRIVATE KEY-----\n" % base64.b64encode(
        bytes.fromhex(der_hex))
    assert keys._parse_pem(pem) is None


def test_the_daemon_key_path_leaves_serialization_unimported(tmp_path: Path) -> None:
    # It imports cryptography's SSH, cipher and legacy modules: resident for months.
    code = ("import sys; from pathlib import Path; from provisioning.keys import "
            "load_or_create_signing_key, key_id; "
            f"k = load_or_create_signing_key(Path({str(tmp_path / 'k.key')!r})); "
            f"k = load_or_create_signing_key(Path({str(tmp_path / 'k.key')!r})); "
            "key_id(k.public_key()); "
            "print('cryptography.hazmat.primitives.serialization' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
