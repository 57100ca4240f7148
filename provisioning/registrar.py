"""The platform side: sign gateway CSRs with the fleet CA and record signing keys.

Registrar directory (``--dir``)::

    ca.key, ca.crt       the fleet CA (``streetgate registrar init-ca``), key 0600
    claims.json          per gateway: SHA-256 of its claim token, when it was used, its serial
    issued/<serial>.pem  every certificate issued (gateways' and the broker's)
    revoked.json, crl.pem  revoked serials and the CRL the broker loads (``crlfile``)
    keys/                signing public keys by kid (:mod:`provisioning.keyring`)

A claim is accepted once: token matches (constant-time), not used before. A repeat of the
same request after a lost response (same CSR key) gets the same certificate back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import logging
import re
import secrets
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning import _protocol
from provisioning._files import ensure_dir, write_private, write_public
from provisioning.certs import CertificateError, check_csr, spki_fingerprint
from provisioning.fleetca import (
    Revoked,
    issue_client_cert,
    issue_server_cert,
    load_ca,
    make_crl,
)
from provisioning.identity import GATEWAY_ID_PATTERN, RESERVED_IDS
from provisioning.keyring import KeyringError, kid_for, load_public_pem, lookup, record_key

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["Registrar", "RegistrarError"]

_log = logging.getLogger("streetgate.registrar")


class RegistrarError(Exception):
    """A request the registrar refuses; the message goes back to the gateway."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Registrar:
    """The registrar's state and decisions; :mod:`provisioning._registrar_mqtt` serves it."""

    def __init__(self, directory: Path, *, keys_dir: Path | None = None,
                 cert_days: int = 365) -> None:
        self.dir = directory
        self.keys_dir = keys_dir or directory / "keys"
        self.cert_days = cert_days
        self.ca = load_ca(directory)

    # -- claims file --------------------------------------------------------------------------
    @property
    def claims_path(self) -> Path:
        return self.dir / "claims.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # `registrar add-claim` may run while `registrar run` answers a claim: serialize every
        # read-modify-write of claims.json, revoked.json and the key registry.
        with (self.dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _claims(self) -> dict[str, dict[str, Any]]:
        if not self.claims_path.exists():
            return {}
        data = json.loads(self.claims_path.read_text())
        claims: dict[str, dict[str, Any]] = data["claims"]
        return claims

    def _save_claims(self, claims: dict[str, dict[str, Any]]) -> None:
        text = json.dumps({"claims": claims}, indent=2, sort_keys=True) + "\n"
        write_private(self.claims_path, text.encode())

    def add_claim(self, gateway_id: str, token: str | None = None) -> str:
        """Create (or replace an unused) claim for ``gateway_id``; return the token."""
        _check_id(gateway_id)
        with self._locked():
            claims = self._claims()
            if claims.get(gateway_id, {}).get("used_at"):
                raise RegistrarError(f"gateway {gateway_id!r} is already enrolled; revoke its "
                                     "certificate first to enroll it again")
            token = token or secrets.token_urlsafe(32)
            claims[gateway_id] = {"token_sha256": _hash(token), "created": _now(),
                                  "used_at": None}
            self._save_claims(claims)
        return token

    # -- signing ------------------------------------------------------------------------------
    def issue(self, gateway_id: str, csr_pem: bytes) -> x509.Certificate:
        """Check the CSR and issue a client certificate for ``gateway_id``."""
        try:
            public = check_csr(csr_pem, gateway_id)
        except CertificateError as exc:
            raise RegistrarError(str(exc)) from None
        cert = issue_client_cert(self.ca, public, gateway_id, days=self.cert_days)
        write_public(self.dir / "issued" / f"{cert.serial_number:x}.pem",
                     cert.public_bytes(serialization.Encoding.PEM))
        return cert

    def sign_offline(self, gateway_id: str, csr_pem: bytes, *,
                     signing_key_pem: bytes | None = None) -> x509.Certificate:
        """``registrar sign``: issue without a token (the operator vouches) and record it.

        With ``signing_key_pem`` the gateway's signing public key is registered in the same
        step; a key registered to another gateway refuses the whole request, before issuing.
        """
        _check_id(gateway_id)
        try:
            check_csr(csr_pem, gateway_id)
        except CertificateError as exc:
            raise RegistrarError(str(exc)) from None
        with self._locked():
            kid = (self._record_signing_key(gateway_id, _text(signing_key_pem))
                   if signing_key_pem is not None else None)
            cert = self.issue(gateway_id, csr_pem)
            claims = self._claims()
            entry = claims.setdefault(gateway_id, {"token_sha256": None, "created": _now()})
            entry.update(used_at=_now(), serial=f"{cert.serial_number:x}",
                         tls_key=spki_fingerprint(cert.public_key()))
            if kid is not None:
                entry["kid"] = kid
            self._save_claims(claims)
        return cert

    def add_signing_key(self, gateway_id: str, pem: bytes) -> tuple[str, bool]:
        """``registrar add-key``: record a gateway's signing public key (offline enrollment or
        offline rotation) in the registry online enrollment writes. ``(kid, newly added)``.

        Raises:
            RegistrarError: an invalid id, not an Ed25519 public key, or a key registered to
                another gateway.
        """
        _check_id(gateway_id)
        text = _text(pem)
        with self._locked():
            known = lookup(self.keys_dir, kid_for(_public(text)))
            kid = self._record_signing_key(gateway_id, text)
        _log.info("signing key %s registered to %s", kid, gateway_id)
        return kid, known is None or known.gateway_id is None

    def _record_signing_key(self, gateway_id: str, pem: str) -> str:
        try:
            return record_key(self.keys_dir, load_public_pem(pem.encode(), source="signing_key"),
                              gateway_id=gateway_id)
        except KeyringError as exc:
            raise RegistrarError(str(exc)) from None

    def issue_server(self, name: str, *, addresses: Sequence[str] = (),
                     dns_names: Sequence[str] = (), days: int = 365
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The broker's TLS server certificate (CN ``name``; every name and address in its
        subject alternative names); kept under ``issued/`` like the gateways'."""
        key, cert = issue_server_cert(self.ca, [name, *dns_names, *addresses], days=days)
        write_public(self.dir / "issued" / f"{cert.serial_number:x}.pem",
                     cert.public_bytes(serialization.Encoding.PEM))
        _log.info("server certificate %x issued for %s", cert.serial_number, name)
        return key, cert

    def handle_claim(self, gateway_id: str, payload: bytes) -> dict[str, Any]:
        """Decide one claim request; return the response message (without nonce)."""
        msg = _protocol.decode(payload, ("gateway_id", "token", "csr", "signing_key"))
        if msg["gateway_id"] != gateway_id:
            raise RegistrarError("gateway_id in the payload differs from the topic")
        claims = self._claims()
        entry = claims.get(gateway_id)
        if entry is None or not entry.get("token_sha256"):
            raise RegistrarError(f"no claim registered for gateway {gateway_id!r}")
        if not hmac.compare_digest(entry["token_sha256"], _hash(msg["token"])):
            raise RegistrarError("claim token invalid")
        if entry.get("used_at"):
            return self._repeat(gateway_id, entry, msg)
        cert = self.issue(gateway_id, msg["csr"].encode())
        kid = self._record_signing_key(gateway_id, msg["signing_key"])
        entry.update(used_at=_now(), serial=f"{cert.serial_number:x}", kid=kid,
                     tls_key=spki_fingerprint(cert.public_key()))
        self._save_claims(claims)
        _log.info("claim: issued certificate %x to %s, signing kid %s", cert.serial_number,
                  gateway_id, kid)
        return self._ok(cert, kid)

    def _repeat(self, gateway_id: str, entry: dict[str, Any], msg: dict[str, Any]
                ) -> dict[str, Any]:
        # The gateway may have missed our response; the same key gets the same certificate.
        try:
            public = check_csr(msg["csr"].encode(), gateway_id)
        except CertificateError as exc:
            raise RegistrarError(str(exc)) from None
        same = spki_fingerprint(public) == entry.get("tls_key")
        issued = self.dir / "issued" / f"{entry.get('serial')}.pem"
        try:
            kid = kid_for(load_public_pem(msg["signing_key"].encode(), source="signing_key"))
        except KeyringError as exc:
            raise RegistrarError(str(exc)) from None
        # Same TLS key and same signing key as the first time, or it is someone else.
        if not same or kid != entry.get("kid") or not issued.exists():
            raise RegistrarError("claim token already used")
        _log.info("claim: repeated response for %s", gateway_id)
        return self._ok(x509.load_pem_x509_certificate(issued.read_bytes()), kid)

    def handle_rekey(self, gateway_id: str, payload: bytes) -> dict[str, Any]:
        """A rotation request; the broker ACL has already proven it comes from ``gateway_id``."""
        msg = _protocol.decode(payload, ("gateway_id",))
        if msg["gateway_id"] != gateway_id:
            raise RegistrarError("gateway_id in the payload differs from the topic")
        claims = self._claims()
        entry = claims.get(gateway_id)
        if entry is None or not entry.get("used_at"):
            raise RegistrarError(f"gateway {gateway_id!r} is not enrolled")
        response: dict[str, Any] = {"status": "ok"}
        if isinstance(msg.get("signing_key"), str):
            response["kid"] = self._record_signing_key(gateway_id, msg["signing_key"])
        if isinstance(msg.get("csr"), str):
            cert = self.issue(gateway_id, msg["csr"].encode())
            response["certificate"] = cert.public_bytes(serialization.Encoding.PEM).decode()
            entry.update(serial=f"{cert.serial_number:x}",
                         tls_key=spki_fingerprint(cert.public_key()))
            self._save_claims(claims)
        _log.info("rekey for %s: %s", gateway_id, ", ".join(sorted(response)))
        return response

    def _ok(self, cert: x509.Certificate, kid: str) -> dict[str, Any]:
        return {"status": "ok", "kid": kid,
                "certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}

    def respond(self, kind: str, gateway_id: str, payload: bytes) -> dict[str, Any] | None:
        """The response to one request (``None`` when it cannot even carry a nonce)."""
        try:
            nonce = _protocol.decode(payload)["nonce"]
        except _protocol.ProtocolError as exc:
            _log.warning("%s request for %s dropped: %s", kind, gateway_id, exc)
            return None
        try:
            _check_id(gateway_id)
            handler = self.handle_claim if kind == "claim" else self.handle_rekey
            with self._locked():
                return {**handler(gateway_id, payload), "nonce": nonce}
        except (RegistrarError, _protocol.ProtocolError) as exc:
            _log.warning("%s request for %s refused: %s", kind, gateway_id, exc)
            return {"status": "error", "error": str(exc), "nonce": nonce}

    # -- revocation ---------------------------------------------------------------------------
    def revoke(self, serial_hex: str) -> Path:
        """Add a serial to the CRL and rewrite ``crl.pem``; the broker must reload it."""
        path = self.dir / "revoked.json"
        with self._locked():
            revoked: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
            revoked.setdefault(serial_hex.lower(), _now())
            write_public(path, (json.dumps(revoked, indent=2, sort_keys=True) + "\n").encode())
            return self.write_crl()

    def write_crl(self, *, days: int = 7) -> Path:
        path = self.dir / "revoked.json"
        revoked: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        crl = make_crl(self.ca, [Revoked(int(s, 16), dt.datetime.fromisoformat(t))
                                 for s, t in sorted(revoked.items())], days=days)
        ensure_dir(self.dir)
        write_public(self.dir / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
        return self.dir / "crl.pem"


def _text(pem: bytes) -> str:
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError:
        raise RegistrarError("signing_key: not a PEM public key") from None


def _public(pem: str) -> Any:
    try:
        return load_public_pem(pem.encode(), source="signing_key")
    except KeyringError as exc:
        raise RegistrarError(str(exc)) from None


def _check_id(gateway_id: str) -> None:
    if not re.fullmatch(GATEWAY_ID_PATTERN, gateway_id) or gateway_id in RESERVED_IDS:
        raise RegistrarError(f"invalid gateway id {gateway_id!r}")
