"""``streetgate run --once`` / ``--test``: one round of readings from the real config, nothing
buffered, nothing sent, nothing written to the state directory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

SIM = """
[[drivers.sim]]
instance = "sim-1"
devices = 2
interval = "200ms"
"""

MISSING_BUS = """
[[drivers.modbus]]
instance = "rs485-1"
[drivers.modbus.bus]
kind = "rtu"
port = "{port}"
[[drivers.modbus.devices]]
name = "meter-1"
unit = 1
profile = "energy-meter-3ph"
timeout = "200ms"
"""


def _config(tmp_path: Path, drivers: str, broker_port: int = 1883) -> Path:
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "cab-1"\nstate_dir = "{tmp_path / "state"}"\n\n'
                    f'[uplink]\nport = {broker_port}\n{drivers}')
    return conf


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "run", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_once_prints_one_round_and_touches_nothing(tmp_path: Path) -> None:
    with socket.socket() as broker:  # a "broker" that would see any connection attempt
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.setblocking(False)
        conf = _config(tmp_path, SIM, broker.getsockname()[1])
        t0 = time.monotonic()
        out = _run("--once", "-c", str(conf))
        assert time.monotonic() - t0 < 10
        assert out.returncode == 0, out.stderr
        try:
            broker.accept()
            connected = True
        except BlockingIOError:
            connected = False
    assert not connected
    assert not (tmp_path / "state").exists()
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["POINT", "VALUE", "UNIT", "QUALITY"]
    rows = [line.split() for line in lines[1:9]]
    assert [r[0] for r in rows] == [f"sim-1/dev-00{d}/{p}" for d in (0, 1)
                                    for p in ("energy", "voltage", "temperature", "door_open")]
    assert all(r[-1] == "good" for r in rows)
    assert lines[9] == ""
    assert lines[10].split() == ["sim:sim-1", "1", "device(s),", "8", "point(s):", "ok"]


def test_once_json_and_a_failing_device_exits_1(tmp_path: Path) -> None:
    conf = _config(tmp_path, SIM + MISSING_BUS.format(port=tmp_path / "ttyUSB9"))
    out = _run("--once", "--json", "-c", str(conf))
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    drivers = {d["instance"]: d for d in doc["drivers"]}
    assert drivers["sim-1"]["ok"] is True
    modbus = drivers["rs485-1"]
    assert modbus["ok"] is False
    assert modbus["problems"][0].startswith("meter-1: ")
    assert modbus["devices"]["meter-1"]["state"] == "failing"
    quality = {r["point"]: r["quality"] for r in doc["readings"]}
    assert quality["sim-1/dev-000/voltage"] == "good"
    assert quality["rs485-1/meter-1/voltage_l1"] == "unavailable"
    assert not (tmp_path / "state").exists()
    table = _run("--once", "-c", str(conf))
    assert table.returncode == 1
    assert "modbus:rs485-1" in table.stdout
    assert "FAILED: meter-1: " in table.stdout


def test_test_runs_the_drivers_for_the_given_time(tmp_path: Path) -> None:
    conf = _config(tmp_path, SIM)
    t0 = time.monotonic()
    out = _run("--test", "1500ms", "--json", "-c", str(conf))
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert 1.5 <= took < 10
    doc = json.loads(out.stdout)
    voltages = [r for r in doc["readings"] if r["point"] == "sim-1/dev-000/voltage"]
    assert len(voltages) >= 5  # every reading of every 200 ms round, not only the last
    assert not (tmp_path / "state").exists()


def test_once_and_test_reject_a_bad_duration_or_each_other(tmp_path: Path) -> None:
    conf = _config(tmp_path, SIM)
    assert _run("--test", "soon", "-c", str(conf)).returncode == 2
    assert _run("--once", "--test", "1s", "-c", str(conf)).returncode == 2
