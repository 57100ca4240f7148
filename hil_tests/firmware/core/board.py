"""The rig board's roles, built from its JSON config: a Modbus slave, a serial sensor, a console.

Config (``rig.json`` on the board, made by ``mkconfig.py``)::

    {"seed": 1,
     "modbus": {"baud": 9600, "parity": "E", "idle_ms": 50,
                "units": [{"unit": 1, "points": [...], "raw": [...], "values": {...},
                           "unmapped": "zero"}]},
     "serial": {"profile": "nmea-weather", "rate": 1.0, "baud": 4800}}
"""

from .console import Console
from .crc import Rng
from .modbus_slave import ModbusSlave, unit_from_config
from .serial_sensor import SerialSensor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Board:
    """Everything the board plays; callers move bytes and pass the time."""

    def __init__(self, config: "dict[str, Any]") -> None:
        seed = int(config.get("seed", 1))
        self.modbus: ModbusSlave | None = None
        self.sensor: SerialSensor | None = None
        mb = config.get("modbus")
        if mb:
            self.modbus = ModbusSlave([unit_from_config(u) for u in mb.get("units", [])],
                                      rng=Rng(seed), idle_ms=int(mb.get("idle_ms", 50)))
        ser = config.get("serial")
        if ser:
            self.sensor = SerialSensor(str(ser.get("profile", "nmea-weather")),
                                       rng=Rng(seed + 1), rate=float(ser.get("rate", 1.0)))
        self.console = Console(self.modbus, self.sensor)

    def banner(self) -> str:
        """The first console line: what this board plays."""
        roles = []
        if self.modbus is not None:
            roles.append("modbus units " + ",".join(str(u) for u in sorted(self.modbus.units)))
        if self.sensor is not None:
            roles.append("serial " + self.sensor.profile)
        return "streetgate rig board ready: " + ("; ".join(roles) or "nothing to play")
