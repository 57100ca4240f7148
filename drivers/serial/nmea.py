"""NMEA 0183 sentences: checksum verification and the GGA, RMC, MWV, XDR and MDA formats.

A sentence is ``$<talker><formatter>,<fields>*<hh>`` followed by CR LF; ``hh`` is the XOR
of every character between ``$`` and ``*`` (NMEA 0183 v4.11 §5.3 "checksum field"). ``!``
starts encapsulation sentences (AIS); they are checked and ignored. Speeds are converted to
m/s, pressures to Pa, angles stay in degrees, positions become signed decimal degrees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

from drivers.api import Quality
from drivers.serial._model import ChecksumError, DecodeError, Field, sanitize

__all__ = ["NmeaDecoder", "nmea_checksum", "sentence"]

KNOT = 1852 / 3600  # m/s
INHG = 3386.389  # Pa per inch of mercury
BAR = 100_000.0  # Pa
_SPEED_UNITS = {"K": 1 / 3.6, "M": 1.0, "N": KNOT, "S": 0.44704}
# XDR (transducer type, unit letter) -> (SenML unit, factor); NMEA 0183 v4.11 §6.3 XDR.
_XDR_UNITS: dict[tuple[str, str], tuple[str | None, float]] = {
    ("C", "C"): ("Cel", 1.0), ("P", "B"): ("Pa", BAR), ("P", "P"): ("Pa", 1.0),
    ("H", "P"): ("%RH", 1.0), ("A", "D"): ("deg", 1.0), ("U", "V"): ("V", 1.0),
    ("I", "A"): ("A", 1.0), ("F", "H"): ("Hz", 1.0), ("T", "R"): ("1/min", 1.0),
    ("D", "M"): ("m", 1.0), ("N", "N"): ("N", 1.0),
}
_STATIC_POINTS: dict[str, list[tuple[str, str | None]]] = {
    "GGA": [("latitude", "lat"), ("longitude", "lon"), ("fix_quality", None),
            ("satellites", "count"), ("hdop", None), ("altitude", "m")],
    "RMC": [("fix_valid", None), ("speed", "m/s"), ("course", "deg")],
    "MWV": [("wind_angle_relative", "deg"), ("wind_speed_relative", "m/s"),
            ("wind_angle_true", "deg"), ("wind_speed_true", "m/s")],
    "XDR": [],
    "MDA": [("pressure", "Pa"), ("air_temperature", "Cel"), ("water_temperature", "Cel"),
            ("humidity", "%RH"), ("dew_point", "Cel"), ("wind_direction_true", "deg"),
            ("wind_direction_magnetic", "deg"), ("wind_speed", "m/s")],
}


def nmea_checksum(body: bytes) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def sentence(body: str) -> bytes:
    """``"GPGGA,..."`` -> ``b"$GPGGA,...*hh\\r\\n"`` (for simulators and tests)."""
    raw = body.encode("ascii")
    return b"$" + raw + b"*" + f"{nmea_checksum(raw):02X}".encode() + b"\r\n"


def _body(frame: bytes, require_checksum: bool) -> str:
    start = max(frame.rfind(b"$"), frame.rfind(b"!"))
    if start < 0:
        raise DecodeError("no '$' sentence start")
    text = frame[start + 1:].rstrip(b"\r\n\t ")
    body, star, given = text.partition(b"*")
    if any(b < 0x20 or b > 0x7E for b in body):
        raise DecodeError("non-printable byte in sentence")
    if star:
        if len(given) != 2 or any(chr(c) not in "0123456789ABCDEFabcdef" for c in given):
            raise DecodeError(f"checksum field {given!r} is not two hex digits")
        computed = nmea_checksum(body)
        if computed != int(given, 16):
            raise ChecksumError(f"checksum mismatch: computed {computed:02X}, "
                                f"sentence says {given.decode()}")
    elif require_checksum:
        raise DecodeError("missing checksum (*hh)")
    return body.decode("ascii")


def _num(fields: list[str], i: int, what: str) -> float | None:
    if i >= len(fields) or not fields[i]:
        return None
    try:
        value = float(fields[i])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or "_" in fields[i]:
        raise DecodeError(f"{what} {fields[i]!r} is not a number")
    return value


def _int(fields: list[str], i: int, what: str) -> int | None:
    if i >= len(fields) or not fields[i]:
        return None
    if not fields[i].isdigit():
        raise DecodeError(f"{what} {fields[i]!r} is not an integer")
    return int(fields[i])


def _coord(value: str, hemi: str, degree_digits: int, what: str) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` + hemisphere -> signed decimal degrees."""
    if not value:
        return None
    if not re.fullmatch(rf"\d{{{degree_digits}}}\d\d(?:\.\d*)?", value):
        raise DecodeError(f"{what} {value!r} is not (d)ddmm.mmmm")
    degrees = int(value[:degree_digits])
    minutes = float(value[degree_digits:])
    limit = 90 if degree_digits == 2 else 180
    if minutes >= 60 or degrees > limit or hemi not in ("N", "S", "E", "W"):
        raise DecodeError(f"{what} {value!r},{hemi!r} is out of range")
    sign = -1 if hemi in ("S", "W") else 1
    return round(sign * (degrees + minutes / 60), 7)


def _need(fields: list[str], n: int, kind: str) -> None:
    if len(fields) < n:
        raise DecodeError(f"{kind} has {len(fields)} fields; expected at least {n}")


def _present(pairs: Iterable[tuple[str, float | int | None, str | None]]) -> list[Field]:
    return [Field(name, value, unit) for name, value, unit in pairs if value is not None]


class NmeaDecoder:
    """Verifies checksums and decodes the selected sentence formatters from any talker."""

    def __init__(self, sentences: Iterable[str], *, require_checksum: bool = True) -> None:
        self._selected = set(sentences)
        self._require = require_checksum
        self._handlers: dict[str, Callable[[list[str]], list[Field]]] = {
            "GGA": self._gga, "RMC": self._rmc, "MWV": self._mwv, "XDR": self._xdr,
            "MDA": self._mda,
        }

    def points(self) -> list[tuple[str, str | None]]:
        out = [p for s in ("GGA", "RMC", "MWV", "MDA") if s in self._selected
               for p in _STATIC_POINTS[s]]
        if "RMC" in self._selected and "GGA" not in self._selected:
            out += _STATIC_POINTS["GGA"][:2]
        return out

    def decode(self, frame: bytes) -> list[Field]:
        """Fields of a supported sentence; ``[]`` for a valid sentence of another kind."""
        fields = _body(frame, self._require).split(",")
        address = fields[0]
        if address.startswith("P") or len(address) != 5:
            return []  # proprietary (NMEA 0183 §5.2.3) or unknown address: nothing to decode
        kind = address[2:]
        if kind not in self._selected:
            return []
        return self._handlers[kind](fields[1:])

    def _gga(self, f: list[str]) -> list[Field]:
        _need(f, 9, "GGA")
        return _present([
            ("latitude", _coord(f[1], f[2], 2, "GGA latitude"), "lat"),
            ("longitude", _coord(f[3], f[4], 3, "GGA longitude"), "lon"),
            ("fix_quality", _int(f, 5, "GGA fix quality"), None),
            ("satellites", _int(f, 6, "GGA satellites"), "count"),
            ("hdop", _num(f, 7, "GGA HDOP"), None),
            ("altitude", _num(f, 8, "GGA altitude"), "m"),
        ])

    def _rmc(self, f: list[str]) -> list[Field]:
        _need(f, 8, "RMC")
        valid = f[1] == "A"
        speed = _num(f, 6, "RMC speed")
        out = [Field("fix_valid", valid), *_present([
            ("speed", None if speed is None else round(speed * KNOT, 3), "m/s"),
            ("course", _num(f, 7, "RMC course"), "deg"),
        ])]
        if valid and "GGA" not in self._selected:  # position comes from GGA when both run
            out += _present([("latitude", _coord(f[2], f[3], 2, "RMC latitude"), "lat"),
                             ("longitude", _coord(f[4], f[5], 3, "RMC longitude"), "lon")])
        return out

    def _mwv(self, f: list[str]) -> list[Field]:
        _need(f, 5, "MWV")
        ref = {"R": "relative", "T": "true"}.get(f[1])
        factor = _SPEED_UNITS.get(f[3])
        if ref is None or factor is None:
            raise DecodeError(f"MWV reference {f[1]!r} or speed unit {f[3]!r} unknown")
        names = (f"wind_angle_{ref}", f"wind_speed_{ref}")
        if f[4] != "A":  # status V: the instrument says the data is not valid
            return [Field(names[0], None, "deg", Quality.DEVICE_ERROR),
                    Field(names[1], None, "m/s", Quality.DEVICE_ERROR)]
        speed = _num(f, 2, "MWV speed")
        return _present([(names[0], _num(f, 0, "MWV angle"), "deg"),
                         (names[1], None if speed is None else round(speed * factor, 3),
                          "m/s")])

    def _xdr(self, f: list[str]) -> list[Field]:
        while len(f) % 4 and f and not f[-1]:  # tolerate a trailing comma
            f = f[:-1]
        if not f or len(f) % 4:
            raise DecodeError(f"XDR has {len(f)} fields; expected groups of 4")
        out: list[Field] = []
        for i in range(0, len(f), 4):
            kind, _raw, unit_letter, name = f[i:i + 4]
            value = _num(f, i + 1, f"XDR {name or kind} value")
            if value is None:
                continue
            unit, factor = _XDR_UNITS.get((kind, unit_letter), (None, 1.0))
            point = "xdr_" + (sanitize(name) or f"{sanitize(kind) or 'x'}{i // 4}")
            out.append(Field(point, round(value * factor, 6) if factor != 1.0 else value, unit))
        return out

    def _mda(self, f: list[str]) -> list[Field]:
        _need(f, 8, "MDA")
        bars, inhg = _num(f, 2, "MDA pressure"), _num(f, 0, "MDA pressure")
        pressure = bars * BAR if bars is not None else (inhg * INHG if inhg else None)
        knots, mps = _num(f, 16, "MDA wind speed"), _num(f, 18, "MDA wind speed")
        wind = mps if mps is not None else (None if knots is None else knots * KNOT)
        return _present([
            ("pressure", None if pressure is None else round(pressure, 1), "Pa"),
            ("air_temperature", _num(f, 4, "MDA air temperature"), "Cel"),
            ("water_temperature", _num(f, 6, "MDA water temperature"), "Cel"),
            ("humidity", _num(f, 8, "MDA humidity"), "%RH"),
            ("dew_point", _num(f, 10, "MDA dew point"), "Cel"),
            ("wind_direction_true", _num(f, 12, "MDA wind direction"), "deg"),
            ("wind_direction_magnetic", _num(f, 14, "MDA wind direction"), "deg"),
            ("wind_speed", None if wind is None else round(wind, 3), "m/s"),
        ])
