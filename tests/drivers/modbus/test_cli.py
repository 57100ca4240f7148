"""Field tools run against the simulator started as ``streetgate sim modbus`` (a subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus import ModbusDriver

ROOT = Path(__file__).parents[3]


def streetgate(argv: list[str]) -> int:
    """Run a field tool in-process, through the parsers the driver registers."""
    parser = argparse.ArgumentParser(prog="streetgate")
    sub = parser.add_subparsers()
    sim = sub.add_parser("sim").add_subparsers()
    ModbusDriver.register_cli(sim, sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def start_sim(*argv: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "modbus", *argv, "--seconds", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    first = proc.stdout.readline()
    where = re.search(r"(tcp://\S+|/dev/\S+)$", first.strip())
    assert where, first
    return proc, where.group(1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    return out


@pytest.fixture(scope="module")
def tcp_sim() -> Iterator[str]:
    proc, url = start_sim("--tcp", "0", "--device", "1:energy-meter-3ph", "--device",
                          "3:io-module", "--device", "5:energy-meter-1ph", "--fault",
                          "5:exception=2")
    try:
        yield url.removeprefix("tcp://")
    finally:
        out = stop(proc)
        assert re.search(r"served: .*requests \d+", out), out


def test_scan_tcp(tcp_sim: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert streetgate(["modbus", "scan", "--tcp", tcp_sim, "--units", "1-6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(a["unit"], a["kind"], a["exception"]) for a in result["answers"]] == [
        (1, "data", None), (3, "data", None), (5, "exception", 2)]
    assert streetgate(["modbus", "scan", "--tcp", tcp_sim, "--units", "1,2,3"]) == 0
    out = capsys.readouterr().out
    assert "unit 3" in out
    assert "found 2 unit(s) at tcp" in out


def test_read_raw_side_by_side(tcp_sim: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["modbus", "read", "--tcp", tcp_sim, "--unit", "1", "--table", "input",
            "--address", "0", "--count", "4"]
    assert streetgate([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["raw"]) == 4
    f32 = [row for row in result["decoded"] if row["type"] == "f32" and row["address"] == 0]
    assert 220 < f32[0]["orders"]["ABCD"] < 240  # the meter's voltage L1, big-endian words
    assert set(f32[0]["orders"]) == {"ABCD", "CDAB", "BADC", "DCBA"}
    assert streetgate([*argv, "--type", "f32"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^0\s+0x[0-9a-f]{4}", out, flags=re.MULTILINE)
    assert re.search(r"^0\s+f32\s+2[23]\d\.\d+", out, flags=re.MULTILINE)
    assert "u32" not in out


def test_read_with_profile(tcp_sim: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["modbus", "read", "--tcp", tcp_sim, "--unit", "3", "--profile", "io-module"]
    assert streetgate([*argv, "--json"]) == 0
    rows = {r["point"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["firmware"]["value"] == "SIM-3"
    assert rows["firmware"]["raw"][:2] == [0x5349, 0x4D2D]
    assert rows["temperature"]["unit"] == "Cel"
    assert {r["quality"] for r in rows.values()} == {"GOOD"}
    assert streetgate(argv) == 0
    assert re.search(r"^humidity\s+input\s+1\s+u16", capsys.readouterr().out, re.MULTILINE)


def test_read_failures_are_reported(tcp_sim: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert streetgate(["modbus", "read", "--tcp", tcp_sim, "--unit", "2", "--timeout",
                       "100ms"]) == 1
    assert "no data: timeout" in capsys.readouterr().out
    assert streetgate(["modbus", "read", "--tcp", tcp_sim, "--unit", "5", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["value"] == 2


def test_scan_and_read_rtu(capsys: pytest.CaptureFixture[str]) -> None:
    proc, path = start_sim("--rtu", "--device", "2:energy-meter-1ph", "--device",
                           "4:io-module", "--fault", "4:crc")
    try:
        assert streetgate(["modbus", "scan", "--rtu", path, "--baud", "19200",
                           "--parity", "E,N", "--units", "1-5", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert [(a["settings"], a["unit"]) for a in result["answers"]] == [("19200 8N1", 2)]
        assert result["garbled"] == {"19200 8N1": 1}  # unit 4's CRC is corrupted
        assert "19200 8E1" in result["unavailable"]  # a pty refuses parity
        assert streetgate(["modbus", "read", "--rtu", path, "--parity", "N", "--unit", "2",
                           "--profile", "energy-meter-1ph", "--json"]) == 0
        rows = {r["point"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows["serial_number"]["value"] == "SIM-2"
        assert 220 < rows["voltage"]["value"] < 240
    finally:
        stop(proc)
