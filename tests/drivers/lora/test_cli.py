"""``streetgate sim lora-forwarder|lora-modem`` and ``streetgate lora decode|listen``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.lora import LoraForwarderDriver, LoraModemDriver, lorawan
from drivers.lora.sim import (
    ForwarderSimulator,
    demo_devices,
    free_udp_port,
    parse_devices,
    uplink_for,
)
from tests.drivers.lora.conftest import RecordingSink, StoreState, context, running, wait_for

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "drivers" / "lora" / "example.toml"
KIRBY = "40F17DBE4900020001954378762B11FF0D"
KIRBY_NWK = "44024241ed4ce9a68c6a8bc055233fd3"
KIRBY_APP = "ec925802ae430ca77fd3dd73cb2cc588"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streetgate")
    sub = p.add_subparsers()
    sim = sub.add_parser("sim").add_subparsers()
    LoraForwarderDriver.register_cli(sim, sub)
    LoraModemDriver.register_cli(sim, sub)
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


def test_decode_spec_vector_text(capsys: pytest.CaptureFixture[str]) -> None:
    # lora-packet README/test vectors: "test" on FPort 1, FCnt 2, MIC 2b11ff0d.
    assert run(["lora", "decode", KIRBY, "--nwkskey", KIRBY_NWK, "--appskey", KIRBY_APP,
                "--decoder", "raw"]) == 0
    out = capsys.readouterr().out
    assert "DevAddr     49BE7DF1" in out
    assert "MIC         2b11ff0d OK" in out
    assert "Payload     74657374 'test'" in out
    assert "payload" in out
    assert "74657374" in out


def test_decode_json_base64_and_wrong_key(capsys: pytest.CaptureFixture[str]) -> None:
    frame = base64.b64encode(bytes.fromhex(KIRBY)).decode()
    assert run(["lora", "decode", frame, "--nwkskey", KIRBY_NWK, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mic"] == {"received": "2b11ff0d", "computed": "2b11ff0d", "ok": True}
    assert (report["fcnt"], report["fport"], report["dev_addr"]) == (2, 1, "49BE7DF1")
    assert "payload" not in report  # no AppSKey given
    assert run(["lora", "decode", KIRBY, "--nwkskey", "00" * 16]) == 1
    assert "FAIL, computed" in capsys.readouterr().out


def test_decode_keys_from_environment(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STREETGATE_LORA_NWKSKEY", KIRBY_NWK)
    monkeypatch.setenv("STREETGATE_LORA_APPSKEY", KIRBY_APP)
    assert run(["lora", "decode", KIRBY, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mic"]["ok"]
    assert bytes.fromhex(report["payload"]) == b"test"


def test_decode_with_config_finds_the_device(capsys: pytest.CaptureFixture[str]) -> None:
    dev = parse_devices(demo_devices())[0]
    phy = uplink_for(dev, 0x1_0007)
    assert run(["lora", "decode", phy.hex(), "--config", str(EXAMPLE), "--fcnt", "65543",
                "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "sensor-1"
    assert report["fcnt"] == 0x1_0007
    assert report["points"]["temperature_1"]["unit"] == "Cel"
    assert run(["lora", "decode", phy.hex(), "--config", str(EXAMPLE)]) == 1  # FCnt 7 is wrong


@pytest.mark.parametrize("frame", ["zz", "40F1", "QA=="])
def test_decode_garbage(frame: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["lora", "decode", frame]) == 2
    assert "cannot decode" in capsys.readouterr().err


def test_sim_forwarder_cli_feeds_a_driver(state: StoreState,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = free_udp_port()
    tables = demo_devices()

    async def go() -> int:
        cfg = LoraForwarderDriver.parse_config({"port": port, "devices": tables}, file="t",
                                               path="p")
        driver = LoraForwarderDriver(cfg, context("lora", state))
        sink = RecordingSink()
        async with running(driver, sink):
            await wait_for(lambda: driver.bound is not None)
            code = await asyncio.to_thread(run, [
                "sim", "lora-forwarder", "--port", str(port), "--interval", "20ms",
                "--count", "6", "--wrong-mic-every", "4", "--replay-every", "5",
                "--malformed-every", "3"])
            # frames 4, 8, 12 (sensor-2) carry a wrong MIC, 5 and 10 are replays
            await wait_for(lambda: sink.values("lora/sensor-1/fcnt") == [0, 1, 2, 3, 4]
                           and sink.values("lora/sensor-2/fcnt") == [0, 2])
        devices = driver.health.snapshot()["devices"]
        assert devices["sensor-2"]["counters"]["mic_errors"] == 3
        assert devices["sensor-1"]["counters"]["duplicates"] == 1
        assert devices["sensor-2"]["counters"]["duplicates"] == 1
        return code

    assert asyncio.run(go()) == 0
    out = capsys.readouterr().out
    assert ("rounds 6, frames 12, datagrams 23, PUSH_ACK 14, PULL_ACK 6, wrong MICs 3, "
            "replays 2, malformed 4") in out


def test_sim_forwarder_cli_without_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["sim", "lora-forwarder", "--port", str(free_udp_port()), "--count", "1",
                "--interval", "10ms"]) == 1
    assert "no PUSH_ACK received" in capsys.readouterr().err


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


CLI = ("import sys; from tests.drivers.lora.test_cli import run; "
       "sys.exit(run(sys.argv[1:]))")


def test_listen_shows_live_packets() -> None:
    port = free_udp_port()
    proc = _python(CLI, "lora", "listen", "--config", str(EXAMPLE), "--port", str(port),
                   "--count", "3", "--json", "--duration", "20s")

    async def feed() -> None:
        sim = ForwarderSimulator("127.0.0.1", port, parse_devices(demo_devices()),
                                 wrong_mic_every=2)
        await sim.open()
        try:
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                sim.send_round()
                await asyncio.sleep(0.1)
        finally:
            await sim.close()

    asyncio.run(feed())
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    statuses = {(x["device"], x["status"]) for x in lines}
    assert ("sensor-1", "ok") in statuses
    assert any(status == "mic_errors" for _, status in statuses)
    ok = next(x for x in lines if x["status"] == "ok")
    assert ok["rssi"] == -87
    assert ok["freq"] == 868.1
    assert ok["points"]


def test_listen_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        assert run(["lora", "listen", "--port", str(busy.getsockname()[1])]) == 1
    assert "daemon running" in capsys.readouterr().err


def test_sim_modem_cli_plays_a_module_on_a_pty(tmp_path: Path) -> None:
    link = tmp_path / "ttyLORA"
    proc = _python(CLI, "sim", "lora-modem", "--mode", "transparent", "--link", str(link),
                   "--interval", "50ms", "--count", "20", "--config", str(EXAMPLE))
    data = b""
    try:
        deadline = time.monotonic() + 10
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        fd = os.open(link, os.O_RDONLY | os.O_NOCTTY)
        try:
            while data.count(b"\r\n") < 3 and time.monotonic() < deadline:
                data += os.read(fd, 1024)
        finally:
            os.close(fd)
    finally:
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "transparent module on /dev/pts/" in out
    dev = parse_devices(demo_devices())[0]
    frames = [lorawan.parse_data_frame(bytes.fromhex(x.decode()))
              for x in data.split(b"\r\n") if x]
    assert lorawan.verify_mic(frames[0], bytes.fromhex(dev.nwk_skey or ""), 0)

