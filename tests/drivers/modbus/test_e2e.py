"""End to end: a simulated meter on a pty line and an I/O module over TCP, through the real
daemon and a real broker, to batches whose signatures the verifier accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.api import Reading
from drivers.modbus.sim import profile_unit
from tests.helpers.e2e import deliver
from tests.helpers.mosquitto import Mosquitto

from ._harness import bus_table, simulated

DEVICE = {"interval": "100ms", "timeout": "200ms"}


def test_meter_to_verified_batch(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def main() -> list[Reading]:
        async with simulated([profile_unit(1, "energy-meter-3ph")], "rtu") as line, \
                simulated([profile_unit(9, "io-module")], "tcp") as gateway:
            line.units[1].values["voltage_l1"] = 231.5
            line.units[1].values["energy_total"] = 12345.0  # Wh; the meter holds 12.345 kWh
            drivers = {"modbus": [
                {"instance": "rs485-1", "bus": bus_table(line),
                 "devices": [{"name": "meter-1", "unit": 1, "profile": "energy-meter-3ph",
                              **DEVICE}]},
                {"instance": "gw-1", "bus": bus_table(gateway),
                 "devices": [{"name": "lights", "unit": 9, "profile": "io-module", **DEVICE}]},
            ]}
            wanted = {"rs485-1/meter-1/voltage_l1", "rs485-1/meter-1/energy_total",
                      "gw-1/lights/firmware", "gw-1/lights/relay_1"}
            result = await deliver(drivers, mosquitto, tmp_path / "state",
                                   until=lambda rs: wanted <= {r.point for r in rs})
            assert result.duplicates == 0
            return result.readings

    readings = {r.point: r for r in asyncio.run(main())}
    assert readings["rs485-1/meter-1/voltage_l1"].value == 231.5
    assert readings["rs485-1/meter-1/voltage_l1"].unit == "V"
    assert readings["rs485-1/meter-1/energy_total"].value == 12345.0
    assert readings["rs485-1/meter-1/energy_total"].unit == "Wh"
    assert readings["gw-1/lights/firmware"].value == "SIM-9"
    assert isinstance(readings["gw-1/lights/relay_1"].value, bool)
