"""Rotation of the signing key and the TLS key: nothing buffered lost, old batches verify."""
# ruff: noqa: S106 - claim tokens and passwords here are test fixtures

from __future__ import annotations

import hashlib
import stat
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from buffer.store import Store
from drivers.api import Reading
from gateway.cose import UnknownKeyError, open1, sign1
from provisioning import load_key_directory, tls_paths, verifier_keys
from provisioning.certs import load_tls_key, spki_fingerprint
from provisioning.enroll import EnrollError, enroll
from provisioning.identity import StateLayout, finish_pending, signing_identity
from provisioning.install import install_certificate
from provisioning.keys import key_id
from provisioning.registrar import Registrar
from provisioning.rotate import (
    cancel_tls_rotation,
    rekey_online,
    rotate_signing_key,
    start_tls_rotation,
)
from provisioning.seed import import_seed
from tests.provisioning.conftest import Brokers, Fleet, pem, write_seed
from tests.provisioning.test_mtls import Session

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from provisioning._registrar_mqtt import RegistrarService


def _enrolled(tmp_path: Path, fleet: Fleet, brokers: Brokers, gateway_id: str) -> Path:
    token = Registrar(fleet.dir).add_claim(gateway_id)
    seed = write_seed(tmp_path / "seed.toml", gateway_id=gateway_id, fleet=fleet,
                      brokers=brokers, token=token)
    state = tmp_path / "state"
    import_seed(seed, state)
    enroll(state, timeout=10)
    return state


def _buffer(state: Path, n: int) -> str:
    store = Store(state / "buffer.db")
    store.append([Reading(f"cab/m1/p{i % 3}", 1_700_000_000_000 + i, i) for i in range(n)])
    store.commit()
    store.close()
    return hashlib.sha256((state / "buffer.db").read_bytes()).hexdigest()


def test_signing_rotation_keeps_buffer_and_old_batches_verify(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-rot-s")
    digest = _buffer(state, 50)
    old = signing_identity(state)
    old_batch = sign1(b"before", old.key, key_id(old.key.public_key()))

    result = rotate_signing_key(state)

    new = signing_identity(state)
    assert (result.old_kid, result.new_kid) == (old.kid, new.kid)
    assert new.kid != old.kid
    assert stat.S_IMODE(StateLayout(state).signing_key.stat().st_mode) == 0o600
    assert result.retired == StateLayout(state).retired_dir / f"{old.kid}.pub.pem"
    assert list(load_key_directory(StateLayout(state).retired_dir)) == [old.kid]
    # The buffer is untouched: same bytes, every reading still pending.
    assert hashlib.sha256((state / "buffer.db").read_bytes()).hexdigest() == digest
    store = Store(state / "buffer.db")
    try:
        assert store.stats().depth == 50
    finally:
        store.close()
    # The platform keeps every kid: the batch signed before rotation still verifies.
    keys = verifier_keys(fleet.dir / "keys")
    assert open1(old_batch, keys)[1] == b"before"
    new_batch = sign1(b"after", new.key, key_id(new.key.public_key()))
    with pytest.raises(UnknownKeyError):  # offline rotation: not registered with the platform yet
        open1(new_batch, keys)


def test_online_rotation_registers_new_key_and_certificate(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-rot-o")
    digest = _buffer(state, 20)
    old = signing_identity(state)
    old_batch = sign1(b"before", old.key, key_id(old.key.public_key()))
    old_cert = StateLayout(state).tls_cert.read_bytes()

    result = rekey_online(state, signing=True, tls=True, timeout=10)

    new = signing_identity(state)
    assert result.signing is not None
    assert result.signing.new_kid == new.kid
    keys = verifier_keys(fleet.dir / "keys")
    assert open1(old_batch, keys)[1] == b"before"
    assert open1(sign1(b"after", new.key, key_id(new.key.public_key())), keys)[1] == b"after"
    known = load_key_directory(fleet.dir / "keys")
    assert known[old.kid].gateway_id == known[new.kid].gateway_id == "cab-rot-o"
    # A new TLS key and certificate; the new certificate works on the mutual-TLS listener.
    layout = StateLayout(state)
    assert layout.tls_cert.read_bytes() != old_cert
    assert not layout.pending_key.exists()
    cert = x509.load_pem_x509_certificate(layout.tls_cert.read_bytes())
    assert spki_fingerprint(cert.public_key()) == spki_fingerprint(
        load_tls_key(layout.tls_key).public_key())
    paths = tls_paths(state)
    assert paths is not None
    s = Session(paths, "cab-rot-o")
    try:
        s.connect(brokers)
        assert not s.publish("streetgate/cab-rot-o/batch").is_failure
    finally:
        s.close()
    assert hashlib.sha256((state / "buffer.db").read_bytes()).hexdigest() == digest


def test_failed_registration_changes_nothing_and_retry_reuses_next_key(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-rot-f")
    before = signing_identity(state).kid
    offered: list[str] = []

    def refuse(public: Ed25519PublicKey) -> None:
        offered.append(spki_fingerprint(public))
        raise EnrollError("registrar unreachable")

    with pytest.raises(EnrollError):
        rotate_signing_key(state, register=refuse)
    assert signing_identity(state).kid == before
    assert StateLayout(state).next_signing_key.exists()
    with pytest.raises(EnrollError):
        rotate_signing_key(state, register=refuse)
    assert offered[0] == offered[1]  # the same next key is offered again
    rotate_signing_key(state, register=lambda _pub: None)
    assert not StateLayout(state).next_signing_key.exists()


def test_offline_tls_rotation(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                              registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-rot-t")
    layout = StateLayout(state)
    old_key = layout.tls_key.read_bytes()
    _path, csr = start_tls_rotation(state)
    # Meanwhile the uplink keeps the current key and certificate.
    paths = tls_paths(state)
    assert paths is not None
    assert paths.key_file.read_bytes() == old_key
    cert = Registrar(fleet.dir).issue("cab-rot-t", csr)
    install_certificate(state, pem(cert))
    assert layout.tls_key.read_bytes() != old_key
    assert not layout.pending_key.exists()
    assert not layout.pending_csr.exists()
    assert stat.S_IMODE(layout.tls_key.stat().st_mode) == 0o600


def test_interrupted_tls_swap_is_completed(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                                           registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-rot-i")
    layout = StateLayout(state)
    _path, csr = start_tls_rotation(state)
    cert = pem(Registrar(fleet.dir).issue("cab-rot-i", csr))
    # Power cut after pending.crt was written and the key renamed, before the cert rename:
    layout.pending_cert.write_bytes(cert)
    layout.pending_key.replace(layout.tls_key)
    finish_pending(layout)
    assert layout.tls_cert.read_bytes() == cert
    assert tls_paths(state) is not None


def test_cancel_tls_rotation(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                             registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-rot-c")
    start_tls_rotation(state)
    assert cancel_tls_rotation(state)
    assert not cancel_tls_rotation(state)
    assert not StateLayout(state).pending_key.exists()


def test_online_rotation_needs_certificate(tmp_path: Path, fleet: Fleet) -> None:
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-rot-n", fleet=fleet, brokers=None,
                      token="t")
    import_seed(seed, tmp_path / "state")
    with pytest.raises(EnrollError, match="needs a working certificate"):
        rekey_online(tmp_path / "state", signing=True, tls=False)
