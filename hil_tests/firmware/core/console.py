"""Fault-injection commands typed on the board's USB console, one per line.

    fault modbus none|silent|badcrc|short [rate R] [unit N]
    fault modbus exception CODE|slow MS|noise RATE [rate R] [unit N]
    fault serial none|silent|noise RATE
    rate serial HZ
    write coil|holding ADDRESS VALUE... [unit N]
    status | ping | help

Every command answers one line: ``ok <what is now in effect>`` or ``error: <why>``.
"""

from .modbus_slave import Fault, ModbusSlave
from .serial_sensor import SerialSensor

HELP = ("commands: fault modbus none|silent|badcrc|short|exception CODE|slow MS|noise RATE "
        "[rate R] [unit N]; fault serial none|silent|noise RATE; rate serial HZ; "
        "write coil|holding ADDRESS VALUE... [unit N]; status; ping; help")
_ARG = {"exception": "an exception code 1-255", "slow": "a delay in ms",
        "noise": "a rate 0..1"}


def _counters(stats: "dict[str, int]") -> str:
    """``a=1 b=2`` in key order (MicroPython dicts keep no insertion order)."""
    return " ".join(k + "=" + str(stats[k]) for k in sorted(stats))


class CommandError(ValueError):
    """A console line that cannot be carried out."""


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CommandError("expected " + what + "; got " + repr(text)) from None


def _options(words: "list[str]") -> "tuple[list[str], float, int | None]":
    """Split trailing ``rate R`` and ``unit N`` off a command's words."""
    rate, unit = 1.0, None
    rest: list[str] = []
    i = 0
    while i < len(words):
        if words[i] in ("rate", "unit") and i + 1 < len(words):
            value = _number(words[i + 1], "a number after " + words[i])
            if words[i] == "rate":
                rate = value
            else:
                unit = int(value)
            i += 2
        else:
            rest.append(words[i])
            i += 1
    if not 0.0 <= rate <= 1.0:
        raise CommandError("expected a rate 0..1; got " + str(rate))
    return rest, rate, unit


class Console:
    """Turns console lines into changes on the board's Modbus slave and serial sensor."""

    def __init__(self, modbus: "ModbusSlave | None", sensor: "SerialSensor | None") -> None:
        self.modbus = modbus
        self.sensor = sensor

    def handle(self, line: str) -> str:
        """Carry out one line; return the one-line answer."""
        words = line.strip().lower().split()
        if not words:
            return ""
        try:
            return "ok " + self._dispatch(words)
        except CommandError as exc:
            return "error: " + str(exc)
        except ValueError as exc:
            return "error: " + str(exc)

    def _dispatch(self, words: "list[str]") -> str:
        verb = words[0]
        if verb == "ping":
            return "pong"
        if verb == "help":
            return HELP
        if verb == "status":
            return self.status()
        if verb == "fault" and len(words) >= 3 and words[1] == "modbus":
            return self._modbus_fault(words[2:])
        if verb == "fault" and len(words) >= 3 and words[1] == "serial":
            return self._serial_fault(words[2:])
        if verb == "rate" and len(words) == 3 and words[1] == "serial":
            sensor = self._sensor()
            sensor.rate = _number(words[2], "frames per second")
            return "rate serial " + words[2]
        if verb == "write" and len(words) >= 4:
            return self._write(words[1:])
        raise CommandError("unknown command " + repr(" ".join(words)) + "; try help")

    def _slave(self) -> ModbusSlave:
        if self.modbus is None:
            raise CommandError("this board plays no Modbus device")
        return self.modbus

    def _sensor(self) -> SerialSensor:
        if self.sensor is None:
            raise CommandError("this board plays no serial sensor")
        return self.sensor

    def _modbus_fault(self, words: "list[str]") -> str:
        slave = self._slave()
        rest, rate, unit = _options(words)
        if not rest:
            raise CommandError("expected a fault after fault modbus")
        kind, arg = rest[0], 0.0
        if kind in _ARG:
            if len(rest) != 2:
                raise CommandError("fault modbus " + kind + " takes " + _ARG[kind])
            arg = _number(rest[1], _ARG[kind])
        elif len(rest) != 1:
            raise CommandError("fault modbus " + kind + " takes no argument")
        if kind == "exception" and not 1 <= arg <= 255:
            raise CommandError("expected an exception code 1-255; got " + rest[1])
        fault = Fault(kind, arg, rate)
        slave.set_fault(fault, unit)
        where = "every unit" if unit is None else "unit " + str(unit)
        return "fault modbus " + fault.describe() + " on " + where

    def _serial_fault(self, words: "list[str]") -> str:
        sensor = self._sensor()
        kind = words[0]
        arg = _number(words[1], "a rate 0..1") if kind == "noise" and len(words) == 2 else 0.0
        if kind == "noise" and len(words) != 2:
            raise CommandError("fault serial noise takes a rate 0..1")
        if kind != "noise" and len(words) != 1:
            raise CommandError("fault serial " + kind + " takes no argument")
        sensor.set_fault(kind, arg)
        return "fault serial " + kind + (" " + words[1] if kind == "noise" else "")

    def _write(self, words: "list[str]") -> str:
        slave = self._slave()
        rest, _rate, unit = _options(words)
        if len(rest) < 3 or rest[0] not in ("coil", "holding"):
            raise CommandError("expected write coil|holding ADDRESS VALUE...")
        address = int(_number(rest[1], "an address"))
        items = [int(_number(v, "a value")) for v in rest[2:]]
        targets = list(slave.units) if unit is None else [unit]
        for u in targets:
            if u not in slave.units:
                raise CommandError("no unit " + str(u) + " on this board")
            slave.units[u].write(rest[0], address, items)
        return "write " + rest[0] + " " + str(address) + " x" + str(len(items))

    def status(self) -> str:
        parts = []
        if self.modbus is not None:
            faults = ",".join(str(u) + ":" + f.describe()
                              for u, f in sorted(self.modbus.faults.items()))
            parts.append("modbus units=" + ",".join(str(u) for u in sorted(self.modbus.units))
                         + " faults=" + (faults or "none") + " "
                         + _counters(self.modbus.stats))
        if self.sensor is not None:
            parts.append("serial profile=" + self.sensor.profile + " fault=" + self.sensor.fault
                         + " " + _counters(self.sensor.stats))
        return "; ".join(parts) or "idle"
