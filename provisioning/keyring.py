"""A directory of Ed25519 signing public keys, looked up by ``kid``.

Layout (the registrar writes it, ``streetgate verify --keys DIR`` reads it, and a gateway keeps
its retired keys the same way under ``<state>/keys/retired``)::

    DIR/<kid>.pub.pem      SubjectPublicKeyInfo PEM of one key
    DIR/registry.json      {"keys": {"<kid>": {"gateway_id": "...", "added": "<ISO 8601>"}}}

A key is never removed when its gateway rotates, so batches signed before a rotation still
verify. ``kid`` is derived from the key itself (:func:`kid_for`), never chosen by a client.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning._files import write_public
from provisioning.keys import fingerprint

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["KID_PATTERN", "KeyringError", "KnownKey", "kid_for", "load_key_directory",
           "load_public_pem", "lookup", "public_pem", "record_key", "verifier_keys"]

#: 16 lower-case hex digits: the first 64 bits of SHA-256 over the raw 32-byte public key.
KID_PATTERN = r"[0-9a-f]{16}"
REGISTRY = "registry.json"


class KeyringError(Exception):
    """A key file that cannot be read, or a kid that names the wrong key."""


@dataclasses.dataclass(frozen=True)
class KnownKey:
    """One signing public key and the gateway it belongs to (``None`` when not recorded)."""

    kid: str
    public_key: ed25519.Ed25519PublicKey
    gateway_id: str | None
    added: str | None


def kid_for(public_key: ed25519.Ed25519PublicKey) -> str:
    """The COSE ``kid`` (RFC 9052 §3.1) in hex: :func:`provisioning.keys.key_id` of the key."""
    return fingerprint(public_key)


def public_pem(public_key: ed25519.Ed25519PublicKey) -> bytes:
    # Imported here: the daemon never needs it, and it costs about 1 MB of RSS.
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_pem(pem: bytes, *, source: str = "public key") -> ed25519.Ed25519PublicKey:
    """Parse an Ed25519 SubjectPublicKeyInfo PEM."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see public_pem

    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyringError(f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyringError(f"{source}: expected an Ed25519 public key")
    return key


def _read_registry(directory: Path) -> dict[str, dict[str, Any]]:
    path = directory / REGISTRY
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeyringError(f"{path}: not valid JSON ({exc})") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, dict):
        raise KeyringError(f'{path}: expected {{"keys": {{...}}}}')
    return keys


def record_key(directory: Path, public_key: ed25519.Ed25519PublicKey, *,
               gateway_id: str | None = None) -> str:
    """Add ``public_key`` to the directory (idempotent) and return its kid."""
    kid = kid_for(public_key)
    directory.mkdir(parents=True, exist_ok=True)
    pem_path = directory / f"{kid}.pub.pem"
    if not pem_path.exists():
        write_public(pem_path, public_pem(public_key))
    registry = _read_registry(directory)
    entry = registry.get(kid)
    if entry is not None and gateway_id is not None and entry.get("gateway_id") not in (
            None, gateway_id):
        raise KeyringError(f"kid {kid} is already registered to gateway "
                           f"{entry.get('gateway_id')!r}, not {gateway_id!r}")
    if entry is None or (gateway_id is not None and entry.get("gateway_id") is None):
        registry[kid] = {"gateway_id": gateway_id,
                         "added": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        text = json.dumps({"keys": registry}, indent=2, sort_keys=True) + "\n"
        write_public(directory / REGISTRY, text.encode())
    return kid


def load_key_directory(directory: Path) -> dict[str, KnownKey]:
    """Every key in ``directory`` by kid; a file whose name and key disagree is an error."""
    registry = _read_registry(directory) if directory.exists() else {}
    found: dict[str, KnownKey] = {}
    for path in sorted(directory.glob("*.pub.pem")):
        kid = path.name.removesuffix(".pub.pem")
        if not re.fullmatch(KID_PATTERN, kid):
            continue
        known = lookup(directory, kid, registry)
        if known is not None:
            found[kid] = known
    return found


def lookup(directory: Path, kid: str,
           registry: dict[str, dict[str, Any]] | None = None) -> KnownKey | None:
    """One key by kid, or ``None``."""
    path = directory / f"{kid}.pub.pem"
    if not re.fullmatch(KID_PATTERN, kid) or not path.exists():
        return None
    key = load_public_pem(path.read_bytes(), source=str(path))
    if kid_for(key) != kid:
        raise KeyringError(f"{path}: holds the key with kid {kid_for(key)}, not {kid}")
    entry = (_read_registry(directory) if registry is None else registry).get(kid, {})
    return KnownKey(kid, key, entry.get("gateway_id"), entry.get("added"))


def verifier_keys(directory: Path) -> dict[bytes, ed25519.Ed25519PublicKey]:
    """``{kid bytes: key}`` for a COSE verifier (the kid header is the 8 raw bytes)."""
    return {bytes.fromhex(kid): k.public_key for kid, k in load_key_directory(directory).items()}
