"""Batches bigger than the broker's limit are split; MQTT 3.1.1 and TLS work too."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.broker import Mosquitto, free_port
from gateway.daemon import Gateway
from tests.helpers.e2e import gateway_config, running_gateway

SIM = {"sim": [{"instance": "p", "devices": 20, "interval": "20ms", "seed": 5}]}


def _run(coro) -> None:  # noqa: ANN001
    asyncio.run(coro)


def test_batch_over_broker_max_packet_size_is_split(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", extra="max_packet_size 3000")

    async def scenario() -> None:
        async with running_gateway(SIM, broker, tmp_path / "s",
                                   uplink={"batch_max_readings": 20000,
                                           "batch_linger": "1s"}) as run:
            await asyncio.sleep(3)
            result = await run.drain(timeout=30)
            assert run.gateway.counters["split"] > 0
            assert run.gateway.uplink is not None
            assert run.gateway.uplink.broker_max_packet == 3000
        assert len(result.seqs) == run.gateway.counters["produced"]
        assert len(set(result.seqs)) == len(result.seqs)

    with broker:
        _run(scenario())


def test_mqtt311(tmp_path: Path) -> None:
    async def scenario(broker: Mosquitto) -> None:
        async with running_gateway(SIM, broker, tmp_path / "s",
                                   uplink={"protocol": "mqtt311"}) as run:
            await asyncio.sleep(1)
            result = await run.drain(timeout=20)
        assert len(result.seqs) == run.gateway.counters["produced"] > 0

    with Mosquitto(tmp_path / "broker") as broker:
        _run(scenario(broker))


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / "server.crt", tmp / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


def test_tls_to_broker(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    crt, pem = _self_signed(tmp_path)
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "broker", extra=(
        f"listener {tls_port} 127.0.0.1\nallow_anonymous true\n"
        f"certfile {crt}\nkeyfile {pem}\n"))

    async def scenario() -> None:
        uplink = {"port": tls_port, "tls": {"enabled": True, "ca_file": str(crt)}}
        gw = Gateway(gateway_config(tmp_path / "s", broker.port, SIM, uplink=uplink))
        task = asyncio.create_task(gw.run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if gw.counters["delivered"] > 0:
                break
        gw.stop()
        await task
        assert gw.counters["delivered"] > 0
        assert gw.uplink is not None
        assert gw.uplink.counters["connects"] == 1

    with broker:
        _run(scenario())
