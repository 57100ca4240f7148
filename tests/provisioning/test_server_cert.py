"""``registrar server-cert``: the broker's certificate from the fleet CA, no openssl by hand.

A real mosquitto serves the issued certificate; a gateway dials it over mutual TLS with the
uplink's context, which checks the broker's name against the subject alternative names.
"""

from __future__ import annotations

import stat
import threading
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from paho.mqtt.enums import CallbackAPIVersion

from provisioning import TlsPaths, client_tls_context, probe_broker
from tests.helpers.mosquitto import Mosquitto
from tests.provisioning.test_cli import run

if TYPE_CHECKING:
    from pathlib import Path

    from tests.provisioning.conftest import ClientFiles, Fleet


def _issue(fleet: Fleet, out: Path, *names: str) -> tuple[Path, Path]:
    crt, key = out / "server.crt", out / "server.key"
    assert run("registrar", "server-cert", "--dir", str(fleet.dir), *names,
               "--out", str(crt), "--key-out", str(key)) == 0
    return crt, key


def _broker(fleet: Fleet, crt: Path, key: Path, workdir: Path) -> Mosquitto:
    broker = Mosquitto(workdir, listener_extra=(
        f"cafile {fleet.ca_file}\ncertfile {crt}\nkeyfile {key}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false"))
    broker.start()
    return broker


def _publish_over_mtls(host: str, port: int, paths: TlsPaths, gateway: str) -> bool:
    """Connect as the gateway does (name checked, client certificate) and get a PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{gateway}",
                         protocol=mqtt.MQTTv5)
    ctx = client_tls_context(paths)
    assert ctx.check_hostname
    client.tls_set_context(ctx)
    acked = threading.Event()
    client.on_connect = lambda c, _u, _f, rc, _p: None if rc.is_failure else c.publish(
        f"streetgate/{gateway}/batch", b"x", qos=1)
    client.on_publish = lambda _c, _u, _m, rc, _p: None if rc.is_failure else acked.set()
    client.connect(host, port)
    client.loop_start()
    try:
        return acked.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_issued_certificate_has_server_auth_and_every_name(fleet: Fleet, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # like /etc/mosquitto: the broker's other files live there
    crt, key = _issue(fleet, tmp_path, "--name", "mqtt.city.example", "--dns", "broker.local",
                      "--ip", "127.0.0.1", "--ip", "::1")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    cert.verify_directly_issued_by(fleet.ca.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.city.example", "broker.local"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    serial = f"{cert.serial_number:x}"
    assert (fleet.dir / "issued" / f"{serial}.pem").exists()  # revocable like the gateways'


def test_broker_with_issued_certificate_accepts_gateway_checking_its_name(
        fleet: Fleet, tmp_path: Path) -> None:
    crt, key = _issue(fleet, tmp_path, "--name", "localhost", "--ip", "127.0.0.1")
    broker = _broker(fleet, crt, key, tmp_path / "broker")
    gw: ClientFiles = fleet.client("gw-srvcert")
    paths = TlsPaths(fleet.ca_file, gw.cert, gw.key)
    try:
        assert _publish_over_mtls("localhost", broker.port, paths, gw.name)  # DNS name
        assert _publish_over_mtls("127.0.0.1", broker.port, paths, gw.name)  # IP address
    finally:
        broker.stop()


def test_name_not_in_the_certificate_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    crt, key = _issue(fleet, tmp_path, "--name", "mqtt.city.example")
    broker = _broker(fleet, crt, key, tmp_path / "broker")
    gw = fleet.client("gw-srvcert-2")
    try:
        message = probe_broker("127.0.0.1", broker.port, TlsPaths(fleet.ca_file, gw.cert, gw.key))
    finally:
        broker.stop()
    assert message is not None
    assert "IP address mismatch" in message


@pytest.mark.parametrize(("option", "value", "error"), [
    ("--ip", "mqtt.example", "is not an IP address"),
    ("--dns", "10.0.0.1", "is an IP address: give it with --ip"),
    ("--dns", "bad name", "is not a DNS name"),
])
def test_bad_names_are_usage_errors(fleet: Fleet, tmp_path: Path, option: str, value: str,
                                    error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run("registrar", "server-cert", "--dir", str(fleet.dir), "--name", "mqtt.example",
            option, value, "--out", str(tmp_path / "s.crt"), "--key-out", str(tmp_path / "s.key"))
    assert exc.value.code == 2
    assert error in capsys.readouterr().err
