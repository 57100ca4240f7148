"""Commands down to a cabinet and their results back up (docs/wire-format.md, "Commands").

A command is a COSE_Sign1 (Ed25519) signed by a platform command key the gateway pins; its
payload is a CBOR map naming the gateway, a unique command id, when it was issued and when it
expires, and what to do: write a value to a point, run a named action, or apply a config file.
A result is a CBOR map signed with the gateway's own key, like a batch. Both ends use this
module: the daemon to check commands and sign results, ``streetgate command`` to make commands
and check results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2

from gateway.cose import VerifyError, kid_for, open1, sign1, strict_loads

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from drivers.api import Value

__all__ = [
    "FINAL",
    "K_RESULTS",
    "REASONS",
    "STATUSES",
    "Command",
    "CommandFormatError",
    "Result",
    "VerifyError",
    "decode_command",
    "decode_result",
    "encode_command",
    "encode_result",
    "open_command",
    "open_result",
    "sign_command",
    "signature_ref",
]

VERSION = 1
#: Batch map key of the signed command results a batch carries (docs/wire-format.md).
K_RESULTS = 12
# Command map keys.
C_VERSION, C_GATEWAY, C_ID, C_ISSUED, C_EXPIRES, C_POINT, C_VALUE, C_ACTION, C_CONFIG = range(9)
# Result map keys.
R_VERSION, R_GATEWAY, R_ID, R_STATUS, R_TS, R_POINT, R_VALUE, R_REASON, R_DETAIL, R_CODE, \
    R_REF = range(11)

#: What a result can say. ``accepted`` is progress (the command is valid and waits for its
#: device); every command gets exactly one of the others, its final result.
STATUSES = ("accepted", "done", "rejected", "failed", "expired")
FINAL = frozenset(STATUSES[1:])
#: Why a command was rejected (device untouched) or failed (device trouble; see WriteError).
REASONS = frozenset({
    # rejected
    "bad-signature", "unknown-key", "malformed", "wrong-gateway", "expired", "replayed",
    "not-writable", "out-of-range", "not-allowed", "rate-limited", "unknown-action",
    "no-driver", "commands-disabled", "invalid-config",
    # failed (drivers.api.WRITE_FAILURES) and config outcomes
    "bad-value", "device-error", "timeout", "unavailable", "mismatch", "interrupted",
    "rolled-back",
})
MAX_ID = 64
MAX_CONFIG = 256 * 1024


class CommandFormatError(ValueError):
    """A command or result payload that is not what docs/wire-format.md describes."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command. Exactly one of ``point`` (with ``value``), ``action`` or ``config``."""

    gateway: str
    id: str
    issued: int  # ms since the epoch
    expires: int  # ms since the epoch
    point: str | None = None
    value: Value = None
    action: str | None = None
    config: bytes | None = None

    @property
    def kind(self) -> str:
        return "write" if self.point is not None else "action" if self.action else "config"

    def describe(self) -> str:
        if self.point is not None:
            return f"{self.point} = {self.value!r}"
        if self.action is not None:
            return f"action {self.action}"
        return f"config ({len(self.config or b'')} bytes)"


@dataclass(frozen=True, slots=True)
class Result:
    """The gateway's answer to one command (``ref``: the first 16 bytes of the command's
    signature, so a result names the exact message it answers)."""

    gateway: str
    id: str
    status: str
    ts: int
    ref: bytes = b""
    point: str | None = None
    value: Value = None
    reason: str | None = None
    detail: str | None = None
    code: int | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _value_ok(v: object) -> bool:
    return v is None or type(v) in (bool, int, float, str, bytes)


def encode_command(cmd: Command) -> bytes:
    doc: dict[int, Any] = {C_VERSION: VERSION, C_GATEWAY: cmd.gateway, C_ID: cmd.id,
                           C_ISSUED: cmd.issued, C_EXPIRES: cmd.expires}
    kinds = (cmd.point is not None) + (cmd.action is not None) + (cmd.config is not None)
    if kinds != 1:
        raise CommandFormatError("a command has exactly one of point, action or config")
    if cmd.point is not None:
        if not _value_ok(cmd.value):
            raise CommandFormatError(f"value {cmd.value!r}: expected bool, int, float, text, "
                                     "bytes or null")
        doc[C_POINT], doc[C_VALUE] = cmd.point, cmd.value
    elif cmd.action is not None:
        doc[C_ACTION] = cmd.action
    else:
        doc[C_CONFIG] = cmd.config
    _check_command(doc)
    return cbor2.dumps(doc, canonical=True)


def _text(doc: Mapping[int, Any], key: int, what: str, limit: int = 256) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or not 1 <= len(v) <= limit:
        raise CommandFormatError(f"{what} (key {key}): expected a text of 1 to {limit} "
                                 f"characters; got {v!r}"[:300])
    return v


def _ms(doc: Mapping[int, Any], key: int, what: str) -> int:
    v = doc.get(key)
    if type(v) is not int or not 0 <= v < 1 << 63:
        raise CommandFormatError(f"{what} (key {key}): expected ms since the epoch; got {v!r}")
    return v


def _check_command(doc: Any) -> Command:
    if not isinstance(doc, dict):
        raise CommandFormatError("command: expected a CBOR map")
    if doc.get(C_VERSION) != VERSION:
        raise CommandFormatError(f"command: version {doc.get(C_VERSION)!r}; expected {VERSION}")
    unknown = set(doc) - set(range(9))
    if unknown:
        raise CommandFormatError(f"command: unknown keys {sorted(map(str, unknown))}")
    gateway = _text(doc, C_GATEWAY, "gateway")
    cid = _text(doc, C_ID, "command id", MAX_ID)
    issued, expires = _ms(doc, C_ISSUED, "issued"), _ms(doc, C_EXPIRES, "expires")
    if expires < issued:
        raise CommandFormatError("command: expires before it was issued")
    return _what(doc, gateway, cid, issued, expires)


def _what(doc: dict[Any, Any], gateway: str, cid: str, issued: int, expires: int) -> Command:
    has = [k for k in (C_POINT, C_ACTION, C_CONFIG) if k in doc]
    if len(has) != 1:
        raise CommandFormatError("command: expected exactly one of point (5), action (7) or "
                                 "config (8)")
    if C_VALUE in doc and C_POINT not in doc:
        raise CommandFormatError("command: a value (6) needs a point (5)")
    if C_POINT in doc:
        if not _value_ok(doc.get(C_VALUE)):
            raise CommandFormatError("command: value must be bool, int, float, text, bytes or "
                                     "null")
        return Command(gateway, cid, issued, expires, point=_text(doc, C_POINT, "point"),
                       value=doc.get(C_VALUE))
    if C_ACTION in doc:
        return Command(gateway, cid, issued, expires, action=_text(doc, C_ACTION, "action", 64))
    config = doc[C_CONFIG]
    if not isinstance(config, bytes) or not 0 < len(config) <= MAX_CONFIG:
        raise CommandFormatError(f"command: config must be 1 byte to {MAX_CONFIG // 1024} KiB "
                                 "of TOML")
    return Command(gateway, cid, issued, expires, config=config)


def decode_command(payload: bytes) -> Command:
    try:
        doc = strict_loads(payload, what="command")
    except ValueError as exc:
        raise CommandFormatError(str(exc)) from None
    return _check_command(doc)


def sign_command(cmd: Command, key: Ed25519PrivateKey) -> bytes:
    """The COSE_Sign1 message to publish on ``<prefix>/<gateway>/cmd``."""
    return sign1(encode_command(cmd), key, kid_for(key.public_key()))


def open_command(message: bytes, keys: Mapping[bytes, Ed25519PublicKey],
                 ) -> tuple[Command, bytes, bytes]:
    """``(command, ref, kid of the key that signed it)``; raises :class:`VerifyError`
    (signature, key) or :class:`CommandFormatError`."""
    kid, payload = open1(message, keys)
    return decode_command(payload), signature_ref(message), kid


def signature_ref(message: bytes) -> bytes:
    """The first 16 bytes of a COSE_Sign1's signature (Ed25519 signs deterministically, so the
    same message always has the same ref), or the message's last 16 bytes if it is not one."""
    try:
        item = strict_loads(message, what="COSE_Sign1", allow_tags=True)
        sig = item.value[3]
        if isinstance(sig, bytes) and len(sig) >= 16:
            return bytes(sig[:16])
    except (ValueError, AttributeError, IndexError, TypeError, KeyError):
        pass
    return bytes(message[-16:])


def encode_result(res: Result) -> bytes:
    if res.status not in STATUSES:
        raise CommandFormatError(f"result status {res.status!r}")
    doc: dict[int, Any] = {R_VERSION: VERSION, R_GATEWAY: res.gateway, R_ID: res.id,
                           R_STATUS: res.status, R_TS: res.ts, R_REF: res.ref}
    if res.point is not None:
        doc[R_POINT] = res.point
    if res.value is not None and _value_ok(res.value):
        doc[R_VALUE] = res.value
    if res.reason is not None:
        doc[R_REASON] = res.reason
    if res.detail is not None:
        doc[R_DETAIL] = res.detail[:500]
    if res.code is not None:
        doc[R_CODE] = res.code
    return cbor2.dumps(doc, canonical=True)


def decode_result(payload: bytes) -> Result:
    try:
        doc = strict_loads(payload, what="command result")
    except ValueError as exc:
        raise CommandFormatError(str(exc)) from None
    if not isinstance(doc, dict) or doc.get(R_VERSION) != VERSION:
        raise CommandFormatError("command result: expected a version 1 map")
    status = doc.get(R_STATUS)
    if status not in STATUSES:
        raise CommandFormatError(f"command result: unknown status {status!r}")
    ref = doc.get(R_REF, b"")
    code = doc.get(R_CODE)
    return Result(gateway=_text(doc, R_GATEWAY, "gateway"), id=_text(doc, R_ID, "id", MAX_ID),
                  status=status, ts=_ms(doc, R_TS, "ts"),
                  ref=ref if isinstance(ref, bytes) else b"",
                  point=doc.get(R_POINT) if isinstance(doc.get(R_POINT), str) else None,
                  value=doc.get(R_VALUE) if _value_ok(doc.get(R_VALUE)) else None,
                  reason=doc.get(R_REASON) if isinstance(doc.get(R_REASON), str) else None,
                  detail=doc.get(R_DETAIL) if isinstance(doc.get(R_DETAIL), str) else None,
                  code=code if type(code) is int else None)


def open_result(message: bytes, keys: Mapping[bytes, Ed25519PublicKey]) -> Result:
    """Check a signed result with the gateways' keys; raises VerifyError or
    CommandFormatError."""
    _kid, payload = open1(message, keys)
    return decode_result(payload)

