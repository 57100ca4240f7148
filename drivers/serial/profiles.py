"""Simulated devices for ``streetgate sim serial`` and the tests, and their driver configs.

Each profile's driver config is the matching table of ``example.toml`` with the port
replaced, so the sample config is exercised against its simulator (one source).
"""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.serial.checksums import CHECKSUMS
from drivers.serial.nmea import sentence

__all__ = ["PROFILES", "Profile", "make_profile", "profile_config", "profile_toml"]

_EXAMPLE = Path(__file__).with_name("example.toml")
#: profile -> instance of its table in example.toml
PROFILES = {"nmea-weather": "weather", "nmea-gps": "gps", "pm-sensor": "air",
            "ascii-counter": "counters", "ascii-dimmer": "lights"}
_SUM16 = CHECKSUMS["sum16"]


def _walk(rng: random.Random, value: float, step: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, value + rng.uniform(-step, step)))


def _ddmm(value: float, digits: int) -> str:
    degrees = int(abs(value))
    return f"{degrees:0{digits}d}{(abs(value) - degrees) * 60:07.4f}"


@dataclass
class Profile:
    """A simulated device: frames it streams each tick, answers to commands."""

    name: str
    rng: random.Random
    state: dict[str, float] = field(default_factory=dict)
    #: Told of each write received, in a technician's words.
    on_event: Callable[[str], None] = field(default=lambda _msg: None)

    def frames(self, tick: int) -> list[bytes]:  # noqa: ARG002 - used by subclasses
        return []

    def commands(self, rx: bytearray) -> list[bytes]:
        """Complete commands taken off the front of ``rx``: lines (a long blob counts as one)."""
        out = []
        while b"\n" in rx or len(rx) > 256:
            line, _, rest = bytes(rx).partition(b"\n")
            rx[:] = rest
            out.append(line)
        return out

    def answer(self, command: bytes) -> bytes | None:  # noqa: ARG002 - used by subclasses
        return None

    def malformed(self) -> bytes:
        """What the device sends when ``inject_malformed`` is on (besides corrupt frames)."""
        return bytes(self.rng.randrange(256) for _ in range(12))


class NmeaWeather(Profile):
    """A weather station: MWV relative and true wind, MDA, XDR."""

    def frames(self, tick: int) -> list[bytes]:  # noqa: ARG002
        s, r = self.state, self.rng
        s["t"] = _walk(r, s.get("t", 12.0), 0.1, -30, 50)
        s["rh"] = _walk(r, s.get("rh", 60.0), 0.5, 5, 100)
        s["bar"] = _walk(r, s.get("bar", 1.0132), 0.0005, 0.95, 1.06)
        s["dir"] = (s.get("dir", 200.0) + r.uniform(-5, 5)) % 360
        s["ms"] = _walk(r, s.get("ms", 4.0), 0.3, 0, 40)
        dew = s["t"] - (100 - s["rh"]) / 5
        kn = s["ms"] / (1852 / 3600)
        return [
            sentence(f"WIMWV,{s['dir']:.1f},R,{s['ms']:.1f},M,A"),
            sentence(f"WIMWV,{(s['dir'] + 10) % 360:.1f},T,{s['ms'] * 1.1:.1f},M,A"),
            sentence(f"WIMDA,{s['bar'] * 29.53:.3f},I,{s['bar']:.4f},B,{s['t']:.1f},C,,C,"
                     f"{s['rh']:.1f},,{dew:.1f},C,{s['dir']:.1f},T,,M,{kn:.1f},N,"
                     f"{s['ms']:.1f},M"),
            sentence(f"WIXDR,C,{s['t']:.1f},C,TempAir,P,{s['bar']:.5f},B,Barometer,"
                     f"H,{s['rh']:.1f},P,RelHum"),
        ]


class NmeaGps(Profile):
    """A GNSS receiver: GGA, RMC, and a GSV the driver checks and ignores."""

    def frames(self, tick: int) -> list[bytes]:
        s, r = self.state, self.rng
        s["lat"] = _walk(r, s.get("lat", 48.1173), 0.00001, 47, 49)
        s["lon"] = _walk(r, s.get("lon", 11.5167), 0.00001, 11, 12)
        now = datetime.now(UTC)
        hms, dmy = now.strftime("%H%M%S.00"), now.strftime("%d%m%y")
        lat, lon = _ddmm(s["lat"], 2), _ddmm(s["lon"], 3)
        return [
            sentence(f"GPGGA,{hms},{lat},N,{lon},E,1,{8 + tick % 3:02d},0.9,545.4,M,46.9,M,,"),
            sentence(f"GPRMC,{hms},A,{lat},N,{lon},E,0.52,84.4,{dmy},,,A"),
            sentence("GPGSV,1,1,02,01,40,083,46,02,17,308,41"),
        ]


def _pms(body: bytes) -> bytes:
    return body + _SUM16.compute(body).to_bytes(2, "big")


class PmSensor(Profile):
    """A PMS5003T-style particle sensor: 32-byte frames with a 16-bit sum.

    Host command ``42 4D E4 00 <0|1> <sum16>`` puts it to sleep (no frames) or wakes it;
    it confirms with ``42 4D 00 04 E4 <state> <sum16>``, or ``42 4D 00 04 EE 02 <sum16>``
    for a state it does not know. Commands with a wrong sum are ignored.
    """

    def commands(self, rx: bytearray) -> list[bytes]:
        out = []
        while (start := rx.find(b"BM")) >= 0 and len(rx) >= start + 7:
            out.append(bytes(rx[start:start + 7]))
            del rx[:start + 7]
        if len(rx) > 256:
            rx.clear()
        return out

    def answer(self, command: bytes) -> bytes | None:
        body, stored = command[:5], int.from_bytes(command[5:7], "big")
        if len(command) != 7 or _SUM16.compute(body) != stored or body[2] != 0xE4:
            return None
        state = body[4]
        if state not in (0, 1):
            self.on_event(f"write {command.hex(' ')}: refused, state {state} (error 2)")
            return _pms(b"BM\x00\x04\xee\x02")
        was = "asleep" if self.state.get("asleep") else "running"
        self.state["asleep"] = float(state == 0)
        now = "asleep" if state == 0 else "running"
        self.on_event(f"write {command.hex(' ')}: {was} -> {now}")
        return _pms(b"BM\x00\x04\xe4" + bytes([state]))

    def frames(self, tick: int) -> list[bytes]:  # noqa: ARG002
        if self.state.get("asleep"):
            return []
        s, r = self.state, self.rng
        s["pm25"] = _walk(r, s.get("pm25", 12.0), 1.0, 0, 500)
        s["t"] = _walk(r, s.get("t", 21.0), 0.1, -20, 60)
        s["rh"] = _walk(r, s.get("rh", 45.0), 0.5, 0, 100)
        pm25 = round(s["pm25"])
        pm1, pm10 = round(pm25 * 0.7), round(pm25 * 1.3)
        words = [pm1, pm25, pm10, pm1, pm25, pm10, pm25 * 120, pm25 * 40, pm25 * 9, pm25,
                 round(s["t"] * 10) & 0xFFFF, round(s["rh"] * 10), 0x91]
        body = b"BM" + (28).to_bytes(2, "big") + b"".join(w.to_bytes(2, "big") for w in words)
        return [body + (sum(body) & 0xFFFF).to_bytes(2, "big")]


class AsciiCounter(Profile):
    """Two counters answering ``READ`` with ``C1=<n>;C2=<n>`` and ``ID`` with a name."""

    def answer(self, command: bytes) -> bytes | None:
        cmd = command.strip().upper()
        if cmd == b"READ":
            s = self.state
            s["c1"] = s.get("c1", 100) + self.rng.randint(0, 5)
            s["c2"] = s.get("c2", 50) + self.rng.randint(0, 3)
            return f"C1={int(s['c1'])};C2={int(s['c2'])}\r\n".encode()
        if cmd == b"ID":
            return b"ID=CNT-2 v1.4\r\n"
        return b"ERR\r\n" if cmd else None

    def malformed(self) -> bytes:
        return b"#?" + bytes(self.rng.randrange(0x21, 0x7F) for _ in range(8)) + b"\r\n"


class AsciiDimmer(Profile):
    """A street-light dimmer: ``READ``, ``SET DIM <0..100>``, ``SET RELAY <0|1>``.

    ``READ`` answers ``LEVEL=<n>;RELAY=<0|1>;TEMP=<t>``. ``SET DIM n`` answers ``OK DIM
    <level now>``: the level is capped at ``state["limit"]`` (thermal derating), and 1..9 is
    refused with ``ERR 3`` (below the driver's minimum). ``SET RELAY`` answers ``OK``. Other
    commands get ``ERR 1``, bad arguments ``ERR 2``.
    """

    def answer(self, command: bytes) -> bytes | None:
        s = self.state
        s.setdefault("level", 100)
        s.setdefault("relay", 1)
        s.setdefault("limit", 100)
        words = command.strip().upper().split()
        if words == [b"READ"]:
            s["t"] = _walk(self.rng, s.get("t", 35.0), 0.2, 10, 90)
            return (f"LEVEL={int(s['level'])};RELAY={int(s['relay'])};"
                    f"TEMP={s['t']:.1f}\r\n").encode()
        if len(words) != 3 or words[0] != b"SET":
            return b"ERR 1\r\n" if words else None
        return self._set(words[1].decode("latin-1"), words[2], command.strip())

    def _set(self, what: str, arg: bytes, command: bytes) -> bytes:
        s = self.state
        number = int(arg) if arg.isdigit() else -1
        key, top = {"DIM": ("level", 100), "RELAY": ("relay", 1)}.get(what, ("", 0))
        if not key or not 0 <= number <= top:
            self.on_event(f"write {command!r}: refused (error 2)")
            return b"ERR 2\r\n"
        if key == "level" and 0 < number < 10:
            self.on_event(f"write {command!r}: refused, below the minimum level (error 3)")
            return b"ERR 3\r\n"
        was = int(s[key])
        s[key] = min(number, int(s["limit"])) if key == "level" else number
        self.on_event(f"write {command!r}: {key} {was} -> {int(s[key])}")
        return f"OK DIM {int(s[key])}\r\n".encode() if key == "level" else b"OK\r\n"


_CLASSES: dict[str, type[Profile]] = {"nmea-weather": NmeaWeather, "nmea-gps": NmeaGps,
                                      "pm-sensor": PmSensor, "ascii-counter": AsciiCounter,
                                      "ascii-dimmer": AsciiDimmer}


def make_profile(name: str, seed: int | None = None) -> Profile:
    if name not in _CLASSES:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(_CLASSES)}")
    return _CLASSES[name](name, random.Random(seed))


def profile_toml(name: str, port: str) -> str:
    """The profile's ``[[drivers.serial]]`` table from example.toml, pointing at ``port``."""
    instance = PROFILES[name]
    blocks = re.split(r"(?m)^(?=\[\[drivers\.serial\]\])", _EXAMPLE.read_text("utf-8"))
    for block in blocks:
        if re.search(rf'(?m)^instance = "{re.escape(instance)}"$', block):
            lines = re.sub(r"(?m)^port = .*$", lambda _m: f'port = "{port}"',
                           block).splitlines()
            while lines and (not lines[-1].strip() or lines[-1].startswith("##")):
                lines.pop()  # the next table's introduction
            return "\n".join(lines) + "\n"
    raise LookupError(f"example.toml has no instance {instance!r}")


def profile_config(name: str, port: str, **overrides: Any) -> dict[str, Any]:
    """The profile's driver config table (without ``instance``); overrides are top-level."""
    table = dict(tomllib.loads(profile_toml(name, port))["drivers"]["serial"][0])
    table.pop("instance")
    table.update(overrides)
    return table
