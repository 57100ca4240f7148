"""The rig firmware's Modbus slave passes the Modbus driver's golden poll cases over a pty.

The same folders the Python simulator answers (tests/drivers/modbus/cases/poll) are served
by the firmware core (hil_tests/firmware/core) running in hil_tests/firmware/host.py, with
faults switched on its console, and polled by the gateway's Modbus driver on an RTU line.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.api import load
from drivers.modbus.config import DeviceConfig
from drivers.modbus.sim import Fault
from hil_tests.firmware.mkconfig import board_config, unit_config
from tests.drivers.modbus._harness import Recorder, make_driver, running, wait_until

from ._firmware import FirmwareHost

CASES = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "cases" / "poll"
#: About the MBAP header, which only Modbus TCP has.
TCP_ONLY = {"broken-mbap"}


def _console(fault: Fault, unit: int) -> str:
    """The console command giving ``unit`` the simulator's fault."""
    kind = {"crc": "badcrc"}.get(fault.kind, fault.kind)
    arg = {"exception": f" {fault.code}", "slow": f" {round(fault.delay * 1000)}"}
    rate = f" rate {fault.rate}" if fault.rate < 1 else ""
    return f"fault modbus {kind}{arg.get(kind, '')}{rate} unit {unit}"


def _board(spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    units, commands = [], []
    for dev in spec["driver"]["devices"]:
        sim = spec.get("sim", {}).get(dev["name"], {})
        if sim.get("absent"):
            continue
        table = {k: v for k, v in dev.items() if k in ("name", "unit", "profile", "points")}
        units.append(unit_config(load(DeviceConfig, table, file="case.toml"),
                                 raw=sim.get("raw"), values=sim.get("values"),
                                 unmapped=sim.get("unmapped", "zero")))
        if "fault" in sim:
            commands.append(_console(Fault.parse(sim["fault"]), dev["unit"]))
    return board_config(units), commands


def _expected(case: Path) -> list[dict[str, Any]]:
    path = case / "expected.rtu.jsonl"
    if not path.exists():
        path = case / "expected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("case", [c for c in sorted(CASES.iterdir()) if c.name not in TCP_ONLY],
                         ids=lambda c: c.name)
def test_firmware_answers_the_golden_case(case: Path, tmp_path: Path) -> None:
    spec = tomllib.loads((case / "case.toml").read_text())
    config, commands = _board(spec)
    expected = _expected(case)
    wanted = {e["point"] for e in expected}
    with FirmwareHost(config, tmp_path) as board:
        for command in commands:
            assert board.command(command).startswith("ok "), command
        bus = {"kind": "rtu", "port": board.paths["modbus"], "baud": 115200, "parity": "N"}

        async def main() -> dict[str, Any]:
            driver = make_driver({"bus": bus, **spec["driver"]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: wanted <= set(sink.first()))
            return sink.first()

        first = asyncio.run(main())
    for e in expected:
        got = first[e["point"]]
        assert got.quality.name == e["quality"], (e["point"], got)
        assert got.unit == e.get("unit"), (e["point"], got)
        if e["value"] != "*":
            assert (got.value, type(got.value)) == (e["value"], type(e["value"])), \
                (e["point"], got)
