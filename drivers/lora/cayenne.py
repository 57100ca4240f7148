"""Cayenne Low Power Payload (LPP) decoder and encoder.

Format: repeated ``channel (1 byte) | type (1 byte) | value (size by type)``, values big
endian (myDevicesIoT/CayenneLPP, "Cayenne Low Power Payload" documentation, data types
table). Types 0-3 and 101-136 are the IPSO-based standard set; 100 and 116-142 are the
widely used extensions of the ElectronicCats/CayenneLPP library.
Point names are ``<type>_<channel>`` (``temperature_3``), with ``_x``/``_y``/``_z``,
``_lat``/``_lon``/``_alt`` or ``_r``/``_g``/``_b`` for multi-value types.
"""

from __future__ import annotations

import dataclasses

from drivers.lora.points import Decoded, Point, scaled

__all__ = ["TYPES", "LppType", "decode", "encode"]


@dataclasses.dataclass(frozen=True, slots=True)
class LppType:
    """One LPP data type: its parts (suffix, bytes, signed, resolution, unit)."""

    name: str
    parts: tuple[tuple[str, int, bool, float, str | None], ...]

    @property
    def size(self) -> int:
        return sum(p[1] for p in self.parts)


def _one(name: str, size: int, signed: bool, step: float, unit: str | None) -> LppType:
    return LppType(name, (("", size, signed, step, unit),))


def _axes(name: str, step: float, unit: str) -> LppType:
    return LppType(name, tuple((f"_{a}", 2, True, step, unit) for a in "xyz"))


#: LPP type id -> layout. Units are SenML names where one exists ("G" is standard gravity).
TYPES: dict[int, LppType] = {
    0: _one("digital_in", 1, False, 1, None),
    1: _one("digital_out", 1, False, 1, None),
    2: _one("analog_in", 2, True, 0.01, None),
    3: _one("analog_out", 2, True, 0.01, None),
    100: _one("generic", 4, False, 1, None),
    101: _one("illuminance", 2, False, 1, "lx"),
    102: _one("presence", 1, False, 1, None),
    103: _one("temperature", 2, True, 0.1, "Cel"),
    104: _one("humidity", 1, False, 0.5, "%RH"),
    113: _axes("accelerometer", 0.001, "G"),
    115: _one("barometer", 2, False, 0.1, "hPa"),
    116: _one("voltage", 2, False, 0.01, "V"),
    117: _one("current", 2, False, 0.001, "A"),
    118: _one("frequency", 4, False, 1, "Hz"),
    120: _one("percentage", 1, False, 1, "%"),
    121: _one("altitude", 2, True, 1, "m"),
    125: _one("concentration", 2, False, 1, "ppm"),
    128: _one("power", 2, False, 1, "W"),
    130: _one("distance", 4, False, 0.001, "m"),
    131: _one("energy", 4, False, 0.001, "kWh"),
    132: _one("direction", 2, False, 1, "deg"),
    133: _one("unixtime", 4, False, 1, "s"),
    134: _axes("gyrometer", 0.01, "deg/s"),
    135: LppType("colour", tuple((f"_{c}", 1, False, 1.0, None) for c in "rgb")),
    136: LppType("gps", (("_lat", 3, True, 0.0001, "lat"), ("_lon", 3, True, 0.0001, "lon"),
                        ("_alt", 3, True, 0.01, "m"))),
    142: _one("switch", 1, False, 1, None),
}


def decode(payload: bytes) -> Decoded:
    """Every value in ``payload``; stops at an unknown type or a truncated value."""
    points: list[Point] = []
    at = 0
    while at < len(payload):
        if at + 2 > len(payload):
            return Decoded(points, f"dangling byte at offset {at}")
        channel, type_id = payload[at], payload[at + 1]
        lpp = TYPES.get(type_id)
        if lpp is None:
            return Decoded(points, f"unknown LPP type {type_id} at offset {at + 1}")
        at += 2
        if at + lpp.size > len(payload):
            return Decoded(points, f"{lpp.name} on channel {channel} is truncated")
        for suffix, size, signed, step, unit in lpp.parts:
            raw = int.from_bytes(payload[at:at + size], "big", signed=signed)
            points.append(Point(f"{lpp.name}_{channel}{suffix}", scaled(raw, step), unit))
            at += size
    return Decoded(points)


def encode(values: list[tuple[int, int, tuple[float, ...]]]) -> bytes:
    """``[(channel, type id, (value, ...)), ...]`` as an LPP payload (simulators, tests).

    Raises:
        ValueError: an unknown type, a wrong number of values, or a value out of range.
    """
    out = bytearray()
    for channel, type_id, parts in values:
        lpp = TYPES[type_id]
        if len(parts) != len(lpp.parts):
            raise ValueError(f"{lpp.name} takes {len(lpp.parts)} values, got {len(parts)}")
        out += bytes([channel, type_id])
        for value, (_suffix, size, signed, step, _unit) in zip(parts, lpp.parts, strict=True):
            try:
                out += round(value / step).to_bytes(size, "big", signed=signed)
            except OverflowError:
                raise ValueError(f"{value} does not fit {lpp.name}") from None
    return bytes(out)
