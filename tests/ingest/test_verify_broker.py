"""``streetgate verify --broker`` against a real mosquitto with a mutual-TLS listener and a
TLS + password listener: the uplink's TLS and login options, and failures that name their cause
instead of waiting."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.batch import encode_batch
from gateway.cose import kid_for, sign1
from provisioning import TlsPaths, client_tls_context
from provisioning.keys import public_key_pem
from tests.provisioning.conftest import Brokers, ClientFiles, Fleet, make_broker, make_fleet

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PLATFORM_PASSWORD = "platform-pass-1"  # noqa: S105 - test broker account


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Brokers]]:
    root = tmp_path_factory.mktemp("verify-broker")
    fleet = make_fleet(root)
    brokers = make_broker(fleet, root / "broker")
    # A platform account on the password listener; the ACL lets `platform` read everything.
    subprocess.run(["mosquitto_passwd", "-b", str(root / "broker" / "passwd"), "platform",
                    PLATFORM_PASSWORD], check=True)
    brokers.mosquitto.restart()
    try:
        yield fleet, brokers
    finally:
        brokers.mosquitto.stop()


def _publish_batch(fleet: Fleet, brokers: Brokers, gateway_id: str, tmp_path: Path) -> Path:
    """A signed batch, retained on the gateway's own topic (sent over mutual TLS); returns the
    gateway's public key file."""
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / f"{gateway_id}.pub.pem"
    pub.write_text(public_key_pem(key.public_key()))
    rows = [(1, "m/x/energy", "Wh", 1_700_000_000_000, 5, 0)]
    message = sign1(encode_batch(gateway_id=gateway_id, epoch=1, batch_seq=1, rows=rows),
                    key, kid_for(key.public_key()))
    gw = fleet.client(gateway_id)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gateway_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set_context(client_tls_context(TlsPaths(fleet.ca_file, gw.cert, gw.key)))
    acked = threading.Event()
    client.on_publish = lambda _c, _u, _m, rc, _p: None if rc.is_failure else acked.set()
    client.connect(brokers.mosquitto.host, brokers.mosquitto.port)
    client.loop_start()
    try:
        client.publish(f"streetgate/{gateway_id}/batch", message, qos=1, retain=True)
        assert acked.wait(5), "batch not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()
    return pub


def _verify(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gateway", "verify", *args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    return out, time.monotonic() - start


def test_mutual_tls_listener_without_tls_options_fails_fast_naming_tls(
        pki: tuple[Fleet, Brokers], tmp_path: Path) -> None:
    fleet, brokers = pki
    pub = _publish_batch(fleet, brokers, "gw-v-plain", tmp_path)
    out, took = _verify("--broker", brokers.mtls, "--key", str(pub), "--count", "1")
    assert out.returncode == 1, out.stderr
    assert "cannot subscribe" in out.stderr
    assert "closed the connection before answering CONNECT" in out.stderr
    assert "TLS listener" in out.stderr
    assert took < 8  # not the whole connect timeout, and never forever


def test_ca_without_client_certificate_names_the_tls_error(
        pki: tuple[Fleet, Brokers], tmp_path: Path) -> None:
    fleet, brokers = pki
    pub = _publish_batch(fleet, brokers, "gw-v-nocert", tmp_path)
    out, took = _verify("--broker", brokers.mtls, "--key", str(pub), "--count", "1",
                        "--ca", str(fleet.ca_file), "--connect-timeout", "3")
    assert out.returncode == 1, out.stderr
    assert "TLS handshake failed" in out.stderr
    assert "HANDSHAKE_FAILURE" in out.stderr or "CERTIFICATE_REQUIRED" in out.stderr
    assert "give --cert FILE and --tls-key FILE" in out.stderr
    assert took < 8


def test_broker_certificate_from_another_ca_is_named(
        pki: tuple[Fleet, Brokers], tmp_path: Path) -> None:
    fleet, brokers = pki
    other = tmp_path / "other-ca.crt"
    other.write_bytes(fleet.foreign.cert_pem)
    pub = _publish_batch(fleet, brokers, "gw-v-foreign", tmp_path)
    platform: ClientFiles = fleet.client("platform")
    out, _took = _verify("--broker", brokers.mtls, "--key", str(pub), "--count", "1",
                         "--ca", str(other), "--cert", str(platform.cert),
                         "--tls-key", str(platform.key))
    assert out.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in out.stderr
    assert "does not chain to --ca" in out.stderr


def test_mutual_tls_options_receive_and_verify(
        pki: tuple[Fleet, Brokers], tmp_path: Path) -> None:
    fleet, brokers = pki
    pub = _publish_batch(fleet, brokers, "gw-v-mtls", tmp_path)
    platform = fleet.client("platform")
    out, _took = _verify("--broker", brokers.mtls, "--key", f"gw-v-mtls={pub}", "--count", "1",
                         "--topic", "streetgate/gw-v-mtls/batch", "--ca", str(fleet.ca_file),
                         "--cert", str(platform.cert), "--tls-key", str(platform.key))
    assert out.returncode == 0, out.stderr
    assert '"bn":"gw-v-mtls/"' in out.stdout.replace(" ", "")
    assert '"batches": 1' in out.stderr


def test_password_listener_with_username_and_password_file(
        pki: tuple[Fleet, Brokers], tmp_path: Path) -> None:
    fleet, brokers = pki
    pub = _publish_batch(fleet, brokers, "gw-v-pass", tmp_path)
    secret = tmp_path / "password"
    secret.write_text(PLATFORM_PASSWORD + "\n")
    common = ("--broker", brokers.claim, "--key", f"gw-v-pass={pub}", "--count", "1",
              "--topic", "streetgate/gw-v-pass/batch", "--ca", str(fleet.ca_file),
              "--username", "platform")
    out, _took = _verify(*common, "--password-file", str(secret))
    assert out.returncode == 0, out.stderr
    assert '"bn":"gw-v-pass/"' in out.stdout.replace(" ", "")
    secret.write_text("wrong\n")
    out, took = _verify(*common, "--password-file", str(secret))
    assert out.returncode == 1
    assert "the broker refused the connection: Not authorized" in out.stderr
    assert "check --username and --password-file" in out.stderr
    assert took < 8
