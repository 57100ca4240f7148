"""Online enrollment by claim against a real mosquitto and a running registrar."""
# ruff: noqa: S106 - claim tokens and passwords here are test fixtures

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cose import open1, sign1
from provisioning import lookup, tls_paths, verifier_keys
from provisioning.enroll import EnrollError, enroll
from provisioning.identity import StateLayout, signing_identity
from provisioning.keys import key_id, load_public_key
from provisioning.registrar import Registrar
from provisioning.seed import import_seed
from tests.provisioning.conftest import (
    CLAIM_PASSWORD,
    Brokers,
    Fleet,
    make_broker,
    start_registrar,
    write_seed,
)
from tests.provisioning.test_mtls import Session

if TYPE_CHECKING:
    from pathlib import Path

    from provisioning._registrar_mqtt import RegistrarService


def _seeded(tmp_path: Path, fleet: Fleet, brokers: Brokers, gateway_id: str, *,
            token: str | None = None, password: str = CLAIM_PASSWORD) -> Path:
    token = token if token is not None else Registrar(fleet.dir).add_claim(gateway_id)
    seed = write_seed(tmp_path / f"{gateway_id}-seed.toml", gateway_id=gateway_id, fleet=fleet,
                      brokers=brokers, token=token, password=password)
    state = tmp_path / f"{gateway_id}-state"
    import_seed(seed, state)
    return state


def test_claim_enrollment_installs_certificate_and_records_key(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    state = _seeded(tmp_path, fleet, brokers, "cab-0042")
    result = enroll(state, timeout=10)
    paths = tls_paths(state)
    assert paths is not None
    cert = x509.load_pem_x509_certificate(paths.cert_file.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=cab-0042"
    assert result.certificate.subject == "CN=cab-0042"
    assert not StateLayout(state).claim_file.exists()  # the token is gone from the device
    # The registrar recorded the signing key: a batch signed on the gateway verifies by kid.
    ident = signing_identity(state)
    assert result.kid == ident.kid
    known = lookup(fleet.dir / "keys", ident.kid)
    assert known is not None
    assert known.gateway_id == "cab-0042"
    message = sign1(b"batch", ident.key, key_id(ident.key.public_key()))
    assert open1(message, verifier_keys(fleet.dir / "keys"))[1] == b"batch"
    # `streetgate verify --keys DIR` loads every *.pem there: each must be a key named by kid.
    for path in (fleet.dir / "keys").glob("*.pem"):
        assert path.name == f"{key_id(load_public_key(path)).hex()}.pub.pem"
    # And the new certificate works on the mutual-TLS listener.
    s = Session(paths, "cab-0042")
    try:
        s.connect(brokers)
        assert s.connack is not None
        assert not s.connack.is_failure
        assert not s.publish("streetgate/cab-0042/batch").is_failure
    finally:
        s.close()


def test_claim_token_works_once(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                                registrar: RegistrarService) -> None:
    token = Registrar(fleet.dir).add_claim("cab-once")
    first = _seeded(tmp_path / "a", fleet, brokers, "cab-once", token=token)
    enroll(first, timeout=10)
    # The same token from another device (a copy of the SD card, other keys) is refused.
    second = _seeded(tmp_path / "b", fleet, brokers, "cab-once", token=token)
    with pytest.raises(EnrollError, match="claim token already used"):
        enroll(second, timeout=10)
    assert tls_paths(second) is None


def test_repeated_request_after_lost_response_gets_same_certificate(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    token = Registrar(fleet.dir).add_claim("cab-retry")
    state = _seeded(tmp_path, fleet, brokers, "cab-retry", token=token)
    claim = StateLayout(state).claim_file.read_bytes()
    first = enroll(state, timeout=10)
    # Pretend the response was lost: the claim file is still there, the same keys ask again.
    StateLayout(state).claim_file.write_bytes(claim)
    StateLayout(state).claim_file.chmod(0o600)
    again = enroll(state, timeout=10)
    assert again.certificate.serial == first.certificate.serial


@pytest.mark.parametrize(("token", "error"), [
    ("not-the-token", "claim token invalid"),
])
def test_wrong_token_refused(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                             registrar: RegistrarService, token: str, error: str) -> None:
    Registrar(fleet.dir).add_claim("cab-wrong")
    state = _seeded(tmp_path, fleet, brokers, "cab-wrong", token=token)
    with pytest.raises(EnrollError, match=error):
        enroll(state, timeout=10)
    assert StateLayout(state).claim_file.exists()  # kept for a retry with a corrected seed


def test_unknown_gateway_refused(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                                 registrar: RegistrarService) -> None:
    state = _seeded(tmp_path, fleet, brokers, "cab-nobody", token="whatever")
    with pytest.raises(EnrollError, match="no claim registered for gateway 'cab-nobody'"):
        enroll(state, timeout=10)


def test_bad_claim_password_is_explained(tmp_path: Path, fleet: Fleet, brokers: Brokers) -> None:
    state = _seeded(tmp_path, fleet, brokers, "cab-badpw", password="wrong")
    with pytest.raises(EnrollError, match="wrong user name or password"):
        enroll(state, timeout=10)


def test_no_registrar_times_out_clearly(tmp_path: Path, fleet: Fleet) -> None:
    own = make_broker(fleet, tmp_path / "broker")  # no registrar on this one
    try:
        state = _seeded(tmp_path, fleet, own, "cab-alone")
        with pytest.raises(EnrollError, match=r"no answer on .* within 1s"):
            enroll(state, timeout=1)
    finally:
        own.mosquitto.stop()


def test_broker_down_is_explained(tmp_path: Path, fleet: Fleet) -> None:
    own = make_broker(fleet, tmp_path / "broker")
    own.mosquitto.stop()
    state = _seeded(tmp_path, fleet, own, "cab-down")
    with pytest.raises(EnrollError, match="nothing accepts connections"):
        enroll(state, timeout=2)


def test_enrollment_over_mqtt311(tmp_path: Path, fleet: Fleet) -> None:
    own = make_broker(fleet, tmp_path / "broker")
    service = start_registrar(fleet, own, protocol=4)
    try:
        state = _seeded(tmp_path, fleet, own, "cab-v311")
        result = enroll(state, timeout=10, protocol=4)
        assert result.certificate.subject == "CN=cab-v311"
    finally:
        service.stop()
        own.mosquitto.stop()


def test_forged_response_with_other_nonce_is_ignored(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    # A registrar-looking answer for this gateway, published by someone else before ours
    # arrives, must not be taken: the nonce does not match. (Over the registrar account,
    # the only other writer of response topics.)
    state = _seeded(tmp_path, fleet, brokers, "cab-nonce")
    stop = threading.Event()
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger", protocol=mqtt.MQTTv5)
    forger.tls_set_context(registrar.login.tls)
    forger.username_pw_set("registrar", registrar.login.password)
    forger.connect(brokers.mosquitto.host, brokers.claim_port)
    forger.loop_start()

    def spam() -> None:
        bad = json.dumps({"v": 1, "nonce": "0" * 32, "status": "error", "error": "forged"})
        while not stop.is_set():
            forger.publish("streetgate/enroll/cab-nonce/response", bad, qos=0)
            stop.wait(0.01)

    thread = threading.Thread(target=spam)
    thread.start()
    try:
        assert enroll(state, timeout=10).certificate.subject == "CN=cab-nonce"
    finally:
        stop.set()
        thread.join()
        forger.disconnect()
        forger.loop_stop()
