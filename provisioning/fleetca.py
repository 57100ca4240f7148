"""The fleet CA: issue gateway client certificates, broker server certificates and CRLs.

The platform runs it inside ``streetgate registrar``; tests use it to build every kind of
certificate a broker may see (valid, expired, revoked, foreign). Keys are ECDSA P-256 and
certificates are X.509 v3 profiled as in RFC 5280 §4.2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import secrets
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning._files import write_private, write_public

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = [
    "FleetCA",
    "Revoked",
    "create_ca",
    "generate_p256",
    "issue_client_cert",
    "issue_server_cert",
    "load_ca",
    "make_crl",
    "save_ca",
]

CA_KEY = "ca.key"
CA_CERT = "ca.crt"


@dataclasses.dataclass(frozen=True)
class FleetCA:
    """A CA key and its self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass(frozen=True)
class Revoked:
    """One revoked certificate serial and when it was revoked."""

    serial: int
    when: dt.datetime


def generate_p256() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (FIPS 186-4 curve secp256r1)."""
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def create_ca(name: str, *, days: int = 3650, not_before: dt.datetime | None = None,
              key: ec.EllipticCurvePrivateKey | None = None) -> FleetCA:
    """A self-signed CA certificate (basicConstraints CA, keyCertSign + cRLSign)."""
    key = key or generate_p256()
    start = not_before or _now() - dt.timedelta(minutes=5)
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return FleetCA(key, cert)


def _leaf(ca: FleetCA, public_key: ec.EllipticCurvePublicKey, subject: x509.Name,
          not_before: dt.datetime, not_after: dt.datetime) -> x509.CertificateBuilder:
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
    )


def issue_client_cert(ca: FleetCA, public_key: ec.EllipticCurvePublicKey, gateway_id: str, *,
                      days: int = 365, not_before: dt.datetime | None = None,
                      not_after: dt.datetime | None = None) -> x509.Certificate:
    """A TLS client certificate whose CN is the gateway id (the broker's user name)."""
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=days)
    builder = _leaf(ca, public_key, _name(gateway_id), start, end).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def issue_server_cert(ca: FleetCA, hosts: Sequence[str] = ("127.0.0.1", "localhost"), *,
                      days: int = 365) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A broker certificate: CN ``hosts[0]``, every host (DNS name or IP address) in its SAN.

    Clients match the address they dial against the SAN only (RFC 6125 §6.4.4, RFC 2818 §3.1:
    an IP address must be an iPAddress entry, never a DNS name or the CN).
    """
    key = generate_p256()
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        names.append(name)
    start = _now() - dt.timedelta(minutes=5)
    cert = (
        _leaf(ca, key.public_key(), _name(hosts[0]), start, start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return key, cert


def make_crl(ca: FleetCA, revoked: Iterable[Revoked], *,
             days: int = 7) -> x509.CertificateRevocationList:
    """A CRL (RFC 5280 §5) listing ``revoked``, valid for ``days``."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(secrets.randbits(63)), critical=False)
    )
    for item in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(item.serial)
            .revocation_date(item.when).build())
    return builder.sign(ca.key, hashes.SHA256())


def save_ca(ca: FleetCA, directory: Path) -> None:
    """Write ``ca.key`` (0600) and ``ca.crt`` into ``directory``."""
    write_private(directory / CA_KEY, ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    write_public(directory / CA_CERT, ca.cert_pem)


def load_ca(directory: Path) -> FleetCA:
    """Read the CA written by :func:`save_ca`."""
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{directory / CA_KEY}: expected an ECDSA key")
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    return FleetCA(key, cert)
