"""COSE_Sign1 with EdDSA/Ed25519: the signed envelope around every batch (RFC 9052 §4.2).

Exceptions::

    VerifyError                 anything that makes a message unacceptable
    ├── CoseFormatError         not a well-formed tagged COSE_Sign1 we can check
    ├── UnknownKeyError         its kid names no key we trust
    └── SignatureError          the signature does not verify
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import cbor2
from cryptography.exceptions import InvalidSignature

from provisioning.keys import key_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "ALG_EDDSA",
    "COSE_SIGN1_TAG",
    "CoseFormatError",
    "SignatureError",
    "UnknownKeyError",
    "VerifyError",
    "kid_for",
    "open1",
    "sign1",
    "strict_loads",
]

COSE_SIGN1_TAG = 18  # RFC 9052 §2, Table 1
ALG_EDDSA = -8  # RFC 9053 §2.2
_H_ALG, _H_CRIT, _H_KID = 1, 2, 4  # RFC 9052 §3.1, Table 3
_PROTECTED = cbor2.dumps({_H_ALG: ALG_EDDSA})  # h'a10127'
_SIG_LEN = 64  # RFC 8032 §5.1.6


class VerifyError(Exception):
    """A message that must not be accepted."""


class CoseFormatError(VerifyError):
    """Not a well-formed tagged COSE_Sign1 with EdDSA and a kid."""


class UnknownKeyError(VerifyError):
    """The kid is not among the trusted keys."""


class SignatureError(VerifyError):
    """The signature does not verify with the key the kid names."""


def _reject_tag(_value: Any, _immutable: bool) -> Any:
    raise cbor2.CBORDecodeError("semantic tags other than bignums are not allowed")


# Tags cbor2 would otherwise turn into objects (dates, shared references, string references,
# sets, ...). Only bignums (RFC 8949 §3.4.3) may appear in a batch; other tags reach tag_hook.
_BUILTIN_TAGS = (0, 1, 4, 5, 25, 28, 29, 30, 32, 35, 36, 37, 38, 52, 54, 100, 256, 258, 260,
                 261, 262, 263, 1004, 55799)
_STRICT_TAGS = dict.fromkeys(_BUILTIN_TAGS, _reject_tag)


def _keep_tag(tag: cbor2.CBORTag, _immutable: bool) -> cbor2.CBORTag:
    return tag


def strict_loads(data: bytes, *, what: str, allow_tags: bool = False) -> Any:
    """Decode exactly one CBOR item: definite lengths, unique map keys, no trailing bytes.

    Tags other than bignums are refused unless ``allow_tags`` (then returned as CBORTag).
    Raises ValueError naming ``what`` on any problem.
    """
    fp = io.BytesIO(data)
    hook = _keep_tag if allow_tags else _reject_unknown_tag
    try:
        item = cbor2.CBORDecoder(fp, tag_hook=hook, semantic_decoders=_STRICT_TAGS,
                                 max_depth=16, allow_indefinite=False,
                                 allow_duplicate_keys=False).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ValueError(f"{what}: not valid CBOR ({exc})") from exc
    if fp.tell() != len(data):
        raise ValueError(f"{what}: {len(data) - fp.tell()} trailing byte(s) after the CBOR item")
    return item


def _reject_unknown_tag(tag: cbor2.CBORTag, _immutable: bool) -> Any:
    raise cbor2.CBORDecodeError(f"semantic tag {tag.tag} is not allowed here")


def kid_for(public_key: Ed25519PublicKey) -> bytes:
    """The 8-byte key id: SHA-256 of the raw public key, first 8 bytes."""
    return key_id(public_key)


def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
    # Sig_structure for COSE_Sign1, external_aad empty (RFC 9052 §4.4).
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign1(payload: bytes, key: Ed25519PrivateKey, kid: bytes) -> bytes:
    """A tagged COSE_Sign1: protected {1: -8}, unprotected {4: kid} (RFC 9052 §4.2, §4.4)."""
    signature = key.sign(_to_be_signed(_PROTECTED, payload))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [_PROTECTED, {_H_KID: kid}, payload,
                                                      signature]))


def _envelope(message: bytes) -> Sequence[Any]:
    try:
        item = strict_loads(message, what="COSE_Sign1", allow_tags=True)
    except ValueError as exc:
        raise CoseFormatError(str(exc)) from None
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        raise CoseFormatError("COSE_Sign1: expected CBOR tag 18 (RFC 9052 §4.2)")
    body = item.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise CoseFormatError("COSE_Sign1: expected an array of 4 items (RFC 9052 §4.2)")
    return body


def _headers(protected: Any, unprotected: Any) -> tuple[Mapping[Any, Any], Mapping[Any, Any]]:
    # Inside a tag cbor2 decodes immutably: arrays as tuples, maps as frozendict (a Mapping).
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise CoseFormatError("COSE_Sign1: headers must be a bstr and a map (RFC 9052 §3)")
    try:
        prot = strict_loads(protected, what="COSE_Sign1 protected header") if protected else {}
    except ValueError as exc:
        raise CoseFormatError(str(exc)) from None
    if not isinstance(prot, dict):
        raise CoseFormatError("COSE_Sign1: protected header is not a map (RFC 9052 §3)")
    if prot.keys() & unprotected.keys():
        raise CoseFormatError("COSE_Sign1: a header label appears in both buckets (RFC 9052 §3)")
    if _H_CRIT in prot or _H_CRIT in unprotected:
        raise CoseFormatError("COSE_Sign1: critical headers are not supported (RFC 9052 §3.1)")
    if prot.get(_H_ALG) != ALG_EDDSA:
        raise CoseFormatError(f"COSE_Sign1: protected alg must be EdDSA (-8); got "
                              f"{prot.get(_H_ALG)!r} (RFC 9053 §2.2)")
    return prot, unprotected


def open1(message: bytes, keys: Mapping[bytes, Ed25519PublicKey]) -> tuple[bytes, bytes]:
    """Check a tagged COSE_Sign1 and return ``(kid, payload)``.

    Raises:
        CoseFormatError: not a well-formed tagged EdDSA COSE_Sign1 with a kid and a payload.
        UnknownKeyError: the kid is not in ``keys``.
        SignatureError: the signature does not verify.
    """
    protected, unprotected, payload, signature = _envelope(message)
    prot, unprot = _headers(protected, unprotected)
    kid = prot.get(_H_KID, unprot.get(_H_KID))
    if not isinstance(kid, bytes):
        raise CoseFormatError("COSE_Sign1: no kid (label 4) byte string in the headers")
    if not isinstance(payload, bytes):
        raise CoseFormatError("COSE_Sign1: detached or non-bstr payload is not supported")
    if not isinstance(signature, bytes) or len(signature) != _SIG_LEN:
        raise CoseFormatError("COSE_Sign1: Ed25519 signature must be a 64-byte bstr")
    public_key = keys.get(kid)
    if public_key is None:
        raise UnknownKeyError(f"COSE_Sign1: unknown key id {kid.hex()}")
    try:
        public_key.verify(signature, _to_be_signed(protected, payload))
    except InvalidSignature:
        raise SignatureError(f"COSE_Sign1: bad signature for key {kid.hex()}") from None
    return kid, payload
