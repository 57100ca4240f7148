"""COSE_Sign1: interoperable with another COSE library, and no altered byte gets through."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages.sign1message import Sign1Message

from gateway.batch import encode_batch
from gateway.cose import (
    CoseFormatError,
    SignatureError,
    UnknownKeyError,
    VerifyError,
    kid_for,
    open1,
    sign1,
)
from tests.wire.workload import demo_rows


def _raw(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    d = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return d, x


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def message(key: Ed25519PrivateKey) -> bytes:
    payload = encode_batch(gateway_id="cab-7", epoch=1, batch_seq=1,
                           rows=demo_rows(points=8, readings=40))
    return sign1(payload, key, kid_for(key.public_key()))


def test_kid_is_the_first_8_bytes_of_sha256_of_the_raw_key(key: Ed25519PrivateKey) -> None:
    import hashlib  # noqa: PLC0415

    assert kid_for(key.public_key()) == hashlib.sha256(_raw(key)[1]).digest()[:8]


def test_envelope_is_tagged_sign1_with_eddsa_and_kid(key: Ed25519PrivateKey,
                                                     message: bytes) -> None:
    item = cbor2.loads(message)
    assert message[0] == 0xD2  # tag 18 (RFC 9052 §2)
    assert item.tag == 18
    protected, unprotected, payload, signature = item.value
    assert protected == b"\xa1\x01\x27"  # {1: -8}
    assert dict(unprotected) == {4: kid_for(key.public_key())}
    assert len(signature) == 64
    assert open1(message, {kid_for(key.public_key()): key.public_key()}) == (
        kid_for(key.public_key()), payload)


def _pycose_decode(message: bytes) -> Sign1Message:
    # pycose 1.1 expects cbor2 to return a list for the tagged array, but cbor2 >= 6 returns a
    # tuple (TimothyClaeys/pycose#141), so Sign1Message.decode fails for every message. Unwrap
    # the tag here and let pycose do the rest: header parsing, Sig_structure and the check.
    item = cbor2.loads(message)
    assert item.tag == Sign1Message.cbor_tag
    protected, unprotected, payload, signature = item.value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature],
                                     allow_unknown_attributes=False)
    assert isinstance(msg, Sign1Message)
    return msg


def test_pycose_verifies_our_message(key: Ed25519PrivateKey, message: bytes) -> None:
    msg = _pycose_decode(message)
    msg.key = OKPKey(crv=Ed25519, x=_raw(key)[1])
    assert msg.verify_signature()
    assert msg.phdr[Algorithm] is EdDSA
    assert msg.uhdr[KID] == kid_for(key.public_key())
    assert msg.payload is not None
    msg.payload = msg.payload[:-1] + bytes([msg.payload[-1] ^ 1])
    assert not msg.verify_signature()  # pycose really checks: one altered bit fails


def test_open1_verifies_a_pycose_message(key: Ed25519PrivateKey) -> None:
    d, x = _raw(key)
    kid = kid_for(key.public_key())
    msg = Sign1Message(phdr={Algorithm: EdDSA}, uhdr={KID: kid}, payload=b"from pycose")
    msg.key = OKPKey(crv=Ed25519, d=d, x=x)
    assert open1(msg.encode(), {kid: key.public_key()}) == (kid, b"from pycose")


def test_every_flipped_byte_is_rejected(key: Ed25519PrivateKey, message: bytes) -> None:
    keys = {kid_for(key.public_key()): key.public_key()}
    accepted = []
    for i in range(len(message)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(message)
            damaged[i] ^= mask
            try:
                open1(bytes(damaged), keys)
            except VerifyError:
                continue
            accepted.append((i, mask))
    assert accepted == []


def test_truncated_or_extended_messages_are_malformed(key: Ed25519PrivateKey,
                                                      message: bytes) -> None:
    keys = {kid_for(key.public_key()): key.public_key()}
    for cut in range(0, len(message), 7):
        with pytest.raises(CoseFormatError):
            open1(message[:cut], keys)
    with pytest.raises(CoseFormatError, match="trailing"):
        open1(message + b"\x00", keys)


def test_unknown_kid_and_wrong_key(key: Ed25519PrivateKey, message: bytes) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(UnknownKeyError, match=kid_for(key.public_key()).hex()):
        open1(message, {kid_for(other): other})
    with pytest.raises(SignatureError):
        open1(message, {kid_for(key.public_key()): other})


def _envelope(protected: object, unprotected: object, payload: object = b"x",
              signature: object = b"s" * 64, tag: int = 18) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected, payload, signature]))


@pytest.mark.parametrize(("message", "reason"), [
    (cbor2.dumps([b"\xa1\x01\x27", {4: b"k"}, b"x", b"s" * 64]), "tag 18"),
    (_envelope(b"\xa1\x01\x27", {4: b"k"}, tag=98), "tag 18"),
    (_envelope(cbor2.dumps({1: -7}), {4: b"k"}), "EdDSA"),
    (_envelope(cbor2.dumps({1: -8, 2: [99]}), {4: b"k"}), "critical"),
    (_envelope(cbor2.dumps({1: -8, 4: b"k"}), {4: b"k"}), "both buckets"),
    (_envelope(b"\xa1\x01\x27", {}), "no kid"),
    (_envelope(b"\xa1\x01\x27", {4: b"k"}, payload=None), "detached"),
    (_envelope(b"\xa1\x01\x27", {4: b"k"}, signature=b"s"), "64-byte"),
    (cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x27", {4: b"k"}, b"x"])), "4 items"),
])
def test_malformed_envelopes_say_why(message: bytes, reason: str) -> None:
    with pytest.raises(CoseFormatError, match=reason):
        open1(message, {})
