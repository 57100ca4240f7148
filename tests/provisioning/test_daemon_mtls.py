"""The real daemon over mutual TLS with a provisioned identity; a platform subscriber verifies."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import queue
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from buffer.store import Store
from gateway.daemon import Gateway
from ingest.verify import Verifier
from provisioning import TlsPaths, client_tls_context, fleetca, verifier_keys
from provisioning.enroll import enroll
from provisioning.identity import StateLayout, ensure_keys, load_identity
from provisioning.registrar import Registrar
from provisioning.seed import import_seed
from tests.helpers.e2e import gateway_config
from tests.provisioning.conftest import Brokers, Fleet, make_broker, pem, write_seed

if TYPE_CHECKING:
    from pathlib import Path

    from provisioning._registrar_mqtt import RegistrarService

SIM = {"sim": [{"instance": "s1", "devices": 2, "interval": "50ms"}]}


def _enrolled(tmp_path: Path, fleet: Fleet, brokers: Brokers, gateway_id: str) -> Path:
    token = Registrar(fleet.dir).add_claim(gateway_id)
    state = tmp_path / "state"
    import_seed(write_seed(tmp_path / "seed.toml", gateway_id=gateway_id, fleet=fleet,
                           brokers=brokers, token=token), state)
    enroll(state, timeout=10)
    return state


class Platform:
    """A subscriber on the mutual-TLS listener with the platform's own certificate."""

    def __init__(self, fleet: Fleet, brokers: Brokers, topic: str) -> None:
        files = fleet.client("platform")
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="platform-sub",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set_context(client_tls_context(TlsPaths(fleet.ca_file, files.cert,
                                                                files.key)))
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(bytes(msg.payload))
        self.client.connect(brokers.mosquitto.host, brokers.mosquitto.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _run_until(gw: Gateway, platform: Platform, verifier: Verifier, want: int,
                     seconds: float) -> int:
    task = asyncio.create_task(gw.run())
    readings = 0
    deadline = time.monotonic() + seconds
    try:
        while readings < want and time.monotonic() < deadline:
            assert not task.done(), task.exception()
            try:
                payload = platform.messages.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.02)
                continue
            result = verifier.feed(payload)
            assert result.status == "ok", result
            readings += len(result.readings)
    finally:
        gw.stop()
        await task
    return readings


def test_daemon_delivers_over_mtls_and_platform_verifies_by_kid(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    state = _enrolled(tmp_path, fleet, brokers, "cab-e2e")
    tls: dict[str, Any] = {"tls": {"enabled": True, "provisioned": True}}
    cfg = gateway_config(state, brokers.mosquitto.port, SIM, gateway={"id": "cab-e2e"},
                         uplink=tls)
    platform = Platform(fleet, brokers, "streetgate/cab-e2e/batch")
    try:
        verifier = Verifier(verifier_keys(fleet.dir / "keys"))  # the registrar's key directory
        got = asyncio.run(_run_until(Gateway(cfg), platform, verifier, want=20, seconds=20))
    finally:
        platform.close()
    assert got >= 20



def _break(kind: str, state: Path, fleet: Fleet) -> None:
    """Make the installed certificate expired, revoked or foreign (same key, same CA file)."""
    layout = StateLayout(state)
    _signing, key = ensure_keys(state)
    gateway_id = load_identity(state).gateway_id
    now = dt.datetime.now(dt.UTC)
    if kind == "expired":
        cert = fleetca.issue_client_cert(fleet.ca, key.public_key(), gateway_id,
                                         not_before=now - dt.timedelta(days=30),
                                         not_after=now - dt.timedelta(days=1))
        layout.tls_cert.write_bytes(pem(cert))
    elif kind == "foreign":
        cert = fleetca.issue_client_cert(fleet.foreign, key.public_key(), gateway_id)
        layout.tls_cert.write_bytes(pem(cert))
    else:
        serial = json.loads((fleet.dir / "claims.json").read_text())["claims"][gateway_id]["serial"]
        Registrar(fleet.dir).revoke(serial)


@pytest.mark.parametrize(("kind", "words"), [
    ("expired", "expired"),
    ("revoked", "revoked"),
    ("foreign", "CA"),
])
def test_daemon_with_refused_certificate_reports_and_keeps_buffering(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService,
        kind: str, words: str) -> None:
    gateway_id = f"cab-e2e-{kind}"
    state = _enrolled(tmp_path, fleet, brokers, gateway_id)
    _break(kind, state, fleet)
    own = make_broker(fleet, tmp_path / "broker")  # loads the CRL as it is now
    Registrar(fleet.dir).write_crl()
    tls: dict[str, Any] = {"tls": {"enabled": True, "provisioned": True}}
    cfg = gateway_config(state, own.mosquitto.port, SIM, gateway={"id": gateway_id},
                         uplink={**tls, "reconnect_max": "500ms"})
    gw = Gateway(cfg)

    async def run() -> dict[str, Any]:
        task = asyncio.create_task(gw.run())
        await asyncio.sleep(2.0)
        status = gw.status()
        gw.stop()
        await task
        return status

    try:
        status = asyncio.run(run())
    finally:
        own.mosquitto.stop()
    assert status["uplink"]["acked"] == 0
    assert words in (status["uplink"]["last_error"] or ""), status["uplink"]
    with Store(state / "buffer.db") as store:
        assert store.stats().depth > 0  # every reading kept for when the certificate is fixed
