"""Mutual TLS and ACL against a real mosquitto: who may connect and where they may write."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from provisioning import TlsPaths, client_tls_context, explain_tls_failure, probe_broker
from provisioning.registrar import Registrar
from tests.provisioning.conftest import Brokers, ClientFiles, Fleet, make_broker

if TYPE_CHECKING:
    from pathlib import Path

    from paho.mqtt.reasoncodes import ReasonCode


def _paths(fleet: Fleet, files: ClientFiles) -> TlsPaths:
    return TlsPaths(fleet.ca_file, files.cert, files.key)


class Session:
    """A paho client over mutual TLS; records CONNACK, PUBACK reason codes and errors."""

    def __init__(self, paths: TlsPaths, name: str, *, max_tls12: bool = True) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{name}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set_context(client_tls_context(paths, max_tls12=max_tls12))
        self.event = threading.Event()
        self.connack: ReasonCode | None = None
        self.puback: ReasonCode | None = None
        self.disconnected = False
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode,
                    _p: object) -> None:
        self.connack = rc
        self.event.set()

    def _on_publish(self, _c: object, _u: object, _mid: int, rc: ReasonCode,
                    _p: object) -> None:
        self.puback = rc
        self.event.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, _rc: object,
                       _p: object) -> None:
        self.disconnected = True
        self.event.set()

    def connect(self, brokers: Brokers) -> None:
        self.client.connect(brokers.mosquitto.host, brokers.mosquitto.port)
        self.client.loop_start()
        assert self.event.wait(5), "no CONNACK"

    def publish(self, topic: str) -> ReasonCode:
        self.event.clear()
        self.puback = None
        self.client.publish(topic, b"x", qos=1)
        assert self.event.wait(5), "no PUBACK"
        assert self.puback is not None
        return self.puback

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_own_topic_acked_other_gateway_topic_refused(fleet: Fleet, brokers: Brokers) -> None:
    gw = fleet.client("gw-acl-1")
    s = Session(_paths(fleet, gw), gw.name)
    try:
        s.connect(brokers)
        assert s.connack is not None
        assert not s.connack.is_failure
        assert not s.publish("streetgate/gw-acl-1/batch").is_failure
        # MQTT 5.0 §3.4.2.1: PUBACK reason 0x87 "Not authorized"; mosquitto 2.0 sends it for QoS 1.
        assert s.publish("streetgate/gw-acl-2/batch").value == 0x87
        assert s.publish("streetgate/enroll/gw-acl-1/request").value == 0x87
    finally:
        s.close()


def _connect_error(brokers: Brokers, paths: TlsPaths, *, max_tls12: bool = True) -> str:
    s = Session(paths, "bad", max_tls12=max_tls12)
    try:
        s.client.connect(brokers.mosquitto.host, brokers.mosquitto.port)
    except (ssl.SSLError, OSError) as exc:
        return explain_tls_failure(exc, paths)
    finally:
        s.client.loop_stop()
    pytest.fail("the broker accepted the connection")


def test_expired_certificate_cannot_connect(fleet: Fleet, brokers: Brokers) -> None:
    now = dt.datetime.now(dt.UTC)
    gw = fleet.client("gw-expired", not_before=now - dt.timedelta(days=30),
                      not_after=now - dt.timedelta(days=1))
    message = _connect_error(brokers, _paths(fleet, gw))
    assert "expired" in message
    assert "provision rotate --tls" in message
    assert "local check" in message  # it also says when it expired


def test_foreign_ca_certificate_cannot_connect(fleet: Fleet, brokers: Brokers) -> None:
    gw = fleet.client("gw-foreign", issuer=fleet.foreign)
    message = _connect_error(brokers, _paths(fleet, gw))
    assert "foreign CA" in message
    assert "does not chain to the configured CA" in message


def test_broker_with_unknown_certificate_is_explained(fleet: Fleet, brokers: Brokers,
                                                      tmp_path: Path) -> None:
    gw = fleet.client("gw-wrongca")
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(fleet.foreign.cert_pem)
    message = _connect_error(brokers, TlsPaths(other_ca, gw.cert, gw.key))
    assert "does not chain to a CA in this gateway's ca.crt" in message


def test_revoked_certificate_cannot_connect_after_crl_reload(fleet: Fleet,
                                                             tmp_path: Path) -> None:
    gw = fleet.client("gw-revoked")
    own = make_broker(fleet, tmp_path / "broker")
    try:
        s = Session(_paths(fleet, gw), gw.name)
        s.connect(own)
        assert s.connack is not None
        assert not s.connack.is_failure
        s.close()
        Registrar(fleet.dir).revoke(f"{gw.serial:x}")
        own.mosquitto.restart()
        message = _connect_error(own, _paths(fleet, gw))
        assert "revoked" in message
        assert probe_broker(own.mosquitto.host, own.mosquitto.port, _paths(fleet, gw)) == message
    finally:
        own.mosquitto.stop()
        Registrar(fleet.dir).write_crl()  # the CRL file is shared; keep it valid for others


def test_tls13_rejection_is_an_eof_and_still_explained(fleet: Fleet, brokers: Brokers) -> None:
    # TLS 1.3 finishes the client's handshake before the broker judges the certificate, so the
    # refusal arrives on the first read after CONNECT (RFC 8446 §4.4.2), often as a bare EOF;
    # the explanation says what it most likely is and the local check names the cause.
    gw = fleet.client("gw-foreign13", issuer=fleet.foreign)
    paths = _paths(fleet, gw)
    s = Session(paths, "tls13", max_tls12=False)
    errors: list[str] = []
    s.client.on_log = lambda _c, _u, _lvl, text: errors.append(text)
    try:
        s.connect(brokers)
        assert s.disconnected or (s.connack is not None and s.connack.is_failure)
    finally:
        s.close()
    failure = next(e for e in errors if "failed to receive" in e)
    message = explain_tls_failure(failure, paths)
    # mosquitto sometimes sends the "unknown ca" alert, sometimes just closes: both are explained.
    assert "rejected this gateway's certificate" in message or "foreign CA" in message
    assert "does not chain to the configured CA" in message
    # A TLS 1.2 probe gets the broker's actual verdict.
    probed = probe_broker(brokers.mosquitto.host, brokers.mosquitto.port, paths)
    assert probed is not None
    assert "foreign CA" in probed


def test_valid_certificate_probe_is_accepted(fleet: Fleet, brokers: Brokers) -> None:
    gw = fleet.client("gw-probe")
    assert probe_broker(brokers.mosquitto.host, brokers.mosquitto.port, _paths(fleet, gw)) is None
