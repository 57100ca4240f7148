"""Offline enrollment: CSR out, certificate in, every mismatch refused before install."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from provisioning import fleetca
from provisioning.certs import CertificateError, build_csr, check_csr
from provisioning.identity import Identity, StateLayout, ensure_keys, save_identity, tls_paths
from provisioning.install import install_certificate, write_csr
from provisioning.registrar import Registrar, RegistrarError
from tests.provisioning.conftest import Fleet, pem

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def state(tmp_path: Path, fleet: Fleet) -> Path:
    state = tmp_path / "state"
    save_identity(state, Identity(gateway_id="cab-off", broker="127.0.0.1:8883",
                                  enrollment="offline"))
    ensure_keys(state)
    StateLayout(state).ca_cert.write_bytes(fleet.ca.cert_pem)
    return state


def test_csr_names_gateway_and_proves_key(state: Path) -> None:
    path, pem_bytes = write_csr(state)
    assert path == StateLayout(state).tls_csr
    csr = x509.load_pem_x509_csr(pem_bytes)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=cab-off"
    assert b"PRIVATE" not in pem_bytes


def test_signed_certificate_installs(state: Path, fleet: Fleet) -> None:
    _path, csr = write_csr(state)
    cert = Registrar(fleet.dir).sign_offline("cab-off", csr)
    info = install_certificate(state, pem(cert))
    assert info.subject == "CN=cab-off"
    assert tls_paths(state) is not None


def _own_key_cert(state: Path, issuer: fleetca.FleetCA, name: str = "cab-off", *,
                  not_before: dt.datetime | None = None,
                  not_after: dt.datetime | None = None) -> bytes:
    _signing, key = ensure_keys(state)
    return pem(fleetca.issue_client_cert(issuer, key.public_key(), name, not_before=not_before,
                                         not_after=not_after))


def test_refuses_certificate_for_another_key(state: Path, fleet: Fleet) -> None:
    other = fleetca.generate_p256()
    cert = fleetca.issue_client_cert(fleet.ca, other.public_key(), "cab-off")
    with pytest.raises(CertificateError, match="does not match this gateway's TLS key"):
        install_certificate(state, pem(cert))
    assert tls_paths(state) is None


def test_refuses_foreign_ca(state: Path, fleet: Fleet) -> None:
    with pytest.raises(CertificateError, match="does not chain to the configured CA"):
        install_certificate(state, _own_key_cert(state, fleet.foreign))
    assert tls_paths(state) is None


def test_refuses_expired(state: Path, fleet: Fleet) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = _own_key_cert(state, fleet.ca, not_before=now - dt.timedelta(days=9),
                         not_after=now - dt.timedelta(days=2))
    with pytest.raises(CertificateError, match="certificate expired on"):
        install_certificate(state, cert)


def test_refuses_not_yet_valid(state: Path, fleet: Fleet) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = _own_key_cert(state, fleet.ca, not_before=now + dt.timedelta(days=2))
    with pytest.raises(CertificateError, match=r"not valid yet .* is the gateway clock set"):
        install_certificate(state, cert)


def test_refuses_other_gateway_name(state: Path, fleet: Fleet) -> None:
    with pytest.raises(CertificateError, match="certificate is for 'cab-other'"):
        install_certificate(state, _own_key_cert(state, fleet.ca, "cab-other"))


def test_refuses_server_only_certificate(state: Path, fleet: Fleet) -> None:
    _signing, key = ensure_keys(state)
    cert = (fleetca._leaf(fleet.ca, key.public_key(), x509.Name.from_rfc4514_string("CN=cab-off"),
                          dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
                          dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(fleet.ca.key, hashes.SHA256()))
    with pytest.raises(CertificateError, match="does not allow TLS client authentication"):
        install_certificate(state, pem(cert))


def test_install_with_new_ca_checks_against_it(state: Path, fleet: Fleet, tmp_path: Path) -> None:
    cert = _own_key_cert(state, fleet.foreign)
    install_certificate(state, cert, ca_pem=fleet.foreign.cert_pem)
    assert StateLayout(state).ca_cert.read_bytes() == fleet.foreign.cert_pem


def test_registrar_checks_csr(fleet: Fleet) -> None:
    key = fleetca.generate_p256()
    csr = pem(build_csr(key, "cab-x"))
    assert check_csr(csr, "cab-x") is not None
    with pytest.raises(CertificateError, match="CSR names 'cab-x', but the request is for 'cab-y'"):
        check_csr(csr, "cab-y")
    with pytest.raises(RegistrarError, match="invalid gateway id"):
        Registrar(fleet.dir).sign_offline("bad/id", csr)
    with pytest.raises(RegistrarError, match="not a PEM certificate signing request"):
        Registrar(fleet.dir).sign_offline("cab-x", b"junk")
