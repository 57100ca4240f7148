"""Offline enrollment: write the CSR, check and install the certificate that comes back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization

from provisioning._files import write_public
from provisioning.certs import (
    CertificateError,
    CertInfo,
    build_csr,
    check_certificate,
    describe,
    load_certificates,
    load_tls_key,
)
from provisioning.identity import StateLayout, ensure_keys, finish_pending, load_identity

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["install_certificate", "write_csr"]


def write_csr(state_dir: Path) -> tuple[Path, bytes]:
    """Write the CSR for the TLS key being enrolled (the pending key during a rotation).

    Creates the keys first if needed. Returns the CSR path and its PEM.
    """
    layout = StateLayout(state_dir)
    ident = load_identity(state_dir)
    ensure_keys(state_dir)
    rotating = layout.pending_key.exists()
    key = load_tls_key(layout.pending_key if rotating else layout.tls_key)
    pem = build_csr(key, ident.gateway_id).public_bytes(serialization.Encoding.PEM)
    path = layout.pending_csr if rotating else layout.tls_csr
    write_public(path, pem)
    return path, pem


def _matching_key(layout: StateLayout, cert: x509.Certificate
                  ) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The key the certificate was issued for and whether it is the pending one."""
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    wanted = cert.public_key().public_bytes(*der)
    for path, pending in ((layout.pending_key, True), (layout.tls_key, False)):
        if path.exists():
            key = load_tls_key(path)
            if key.public_key().public_bytes(*der) == wanted:
                return key, pending
    raise CertificateError("certificate does not match this gateway's TLS key (it was issued "
                           "for another CSR); send the CSR from `streetgate provision csr`")


def install_certificate(state_dir: Path, cert_pem: bytes, *, ca_pem: bytes | None = None
                        ) -> CertInfo:
    """Check ``cert_pem`` against the key, the CA and the clock, then install it.

    ``ca_pem`` replaces ``tls/ca.crt`` when given (after the certificate chains to it). A
    certificate for the pending (rotated) key swaps the key in: pending.crt is written first,
    then the key and the certificate are renamed, so an interruption is completed on the next
    read (:func:`provisioning.identity.finish_pending`).

    Raises:
        CertificateError: wrong key, wrong CA, outside its validity window, wrong gateway.
    """
    layout = StateLayout(state_dir)
    ident = load_identity(state_dir)
    finish_pending(layout)
    cert = load_certificates(cert_pem, source="certificate")[0]
    ca_bytes = ca_pem if ca_pem is not None else layout.ca_cert.read_bytes()
    cas = load_certificates(ca_bytes, source="CA certificate")
    key, pending = _matching_key(layout, cert)
    check_certificate(cert, key, cas, gateway_id=ident.gateway_id)
    if ca_pem is not None:
        write_public(layout.ca_cert, ca_pem)
    leaf = cert.public_bytes(serialization.Encoding.PEM)
    if not pending:
        write_public(layout.tls_cert, leaf)
        return describe(cert)
    write_public(layout.pending_cert, leaf)
    layout.pending_key.replace(layout.tls_key)
    layout.pending_cert.replace(layout.tls_cert)
    if layout.pending_csr.exists():
        layout.pending_csr.replace(layout.tls_csr)
    return describe(cert)
