"""TLS key, CSR and certificate checks for the gateway's client certificate.

A certificate is installed only when it carries the gateway's own public key, chains to one
of the configured CA certificates, names the gateway, allows client authentication and is
inside its validity window (RFC 5280 §4.1.2.5, §4.2.1.12).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.fleetca import generate_p256

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = [
    "CertInfo",
    "CertificateError",
    "build_csr",
    "cert_fingerprint",
    "check_certificate",
    "check_csr",
    "common_name",
    "describe",
    "generate_tls_key",
    "key_pem",
    "load_certificates",
    "load_tls_key",
    "spki_fingerprint",
]


class CertificateError(Exception):
    """A certificate, CSR or TLS key that cannot be used, with the reason."""


@dataclasses.dataclass(frozen=True)
class CertInfo:
    """What ``provision status`` shows about a certificate."""

    subject: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 TLS key."""
    return generate_p256()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the file's 0600 mode and ownership protect it."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read the gateway's TLS key; it must be ECDSA P-256."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise CertificateError(f"{path}: expected an ECDSA P-256 key")
    return key


def build_csr(key: ec.EllipticCurvePrivateKey, gateway_id: str) -> x509.CertificateSigningRequest:
    """A PKCS#10 CSR (RFC 2986) with CN = gateway id, signed by ``key``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def check_csr(pem: bytes, gateway_id: str) -> ec.EllipticCurvePublicKey:
    """Parse a CSR, check its self-signature, key type and CN; return its key (platform side)."""
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise CertificateError("CSR signature does not verify (proof of key possession failed)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("CSR key must be ECDSA P-256")
    cn = common_name(csr.subject)
    if cn != gateway_id:
        raise CertificateError(f"CSR names {cn!r}, but the request is for {gateway_id!r}")
    return key


def load_certificates(pem: bytes, *, source: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; at least one."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateError(f"{source}: no PEM certificate found ({exc})") from None
    return certs


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER encoding, as ``SHA256:aa:bb:...`` (what openssl -fingerprint shows)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return "SHA256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def spki_fingerprint(public_key: PublicKeyTypes) -> str:
    """SHA-256 over the SubjectPublicKeyInfo DER (RFC 7469 §2.4 pin), in hex."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def describe(cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=cert_fingerprint(cert),
    )


def _same_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return isinstance(b, ec.EllipticCurvePublicKey) and a.public_bytes(*raw) == b.public_bytes(*raw)


def _issuer_of(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> x509.Certificate:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    names = ", ".join(ca.subject.rfc4514_string() for ca in cas) or "none"
    raise CertificateError(
        f"certificate issued by {cert.issuer.rfc4514_string()!r} does not chain to the "
        f"configured CA ({names}): it was signed by another CA")


def _check_window(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"certificate is not valid yet (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC);"
            " is the gateway clock set?")
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_usage(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise CertificateError("certificate does not allow TLS client authentication (EKU)")


def check_certificate(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                      cas: Sequence[x509.Certificate], *, gateway_id: str | None = None,
                      now: dt.datetime | None = None) -> x509.Certificate:
    """Raise :class:`CertificateError` unless ``cert`` is usable with ``key``; return its CA."""
    if not _same_key(key.public_key(), cert.public_key()):
        raise CertificateError("certificate does not match this gateway's TLS key "
                               "(it was issued for another CSR)")
    issuer = _issuer_of(cert, cas)
    _check_window(cert, now or dt.datetime.now(dt.UTC))
    _check_usage(cert)
    cn = common_name(cert.subject)
    if gateway_id is not None and cn != gateway_id:
        raise CertificateError(f"certificate is for {cn!r}, this gateway is {gateway_id!r}")
    return issuer
