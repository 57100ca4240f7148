"""The simulator's devices: register maps from points, with counters and waveforms.

Each simulated unit serves the points of a profile (or any resolved points). A point's value
is fixed when given, else a function of time chosen by its unit: energy and time points count
up, electrical and climate points follow slow sine waves around plausible values, bits toggle
every few seconds, strings read ``SIM-<unit>``. Values go through :func:`codec.encode`, the
inverse of what the driver decodes, so scale, offset and word order round-trip.

Writes (FC 5, 6, 15, 16) are kept and win over the waveforms from then on. A write that
touches an address no point maps (on a unit with ``unmapped="exception"``) or a point named
in ``read_only`` is refused with exception 2 (illegal data address) and changes nothing; a unit
with ``single_writes=False`` answers FC 5 and FC 6 with exception 1 (illegal function), as
devices that only take FC 15 and FC 16 do. A
point in ``ignored`` acknowledges writes and keeps its value; a point in ``clamp`` keeps the
written value limited to its range (in the point's units): the devices a read-back catches.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymodbus.constants import ExcCodes

from drivers.modbus import codec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from drivers.api import Value
    from drivers.modbus.codec import PointSpec

__all__ = ["Fault", "SimStore", "SimUnit"]

#: Function code -> table (Modbus Application Protocol V1.1b3 §6).
_TABLES = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input",
           3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding"}
#: unit -> (mean, amplitude) of the sine wave a point with that unit follows.
_WAVES = {"V": (230.0, 3.0), "A": (5.0, 2.0), "W": (1150.0, 400.0), "VA": (1200.0, 400.0),
          "Hz": (50.0, 0.05), "Cel": (20.0, 2.0), "%RH": (50.0, 5.0), "/": (0.95, 0.03),
          "%": (50.0, 50.0), "lx": (100.0, 80.0)}
_COUNTERS = {"Wh": 3.0, "VArh": 1.0, "s": 1.0}
_FAULT_RE = re.compile(r"^(silent|exception|crc|short|slow)(?:=([0-9.]+(?:ms|s)?))?"
                       r"(?:@([0-9.]+))?$")


@dataclass
class Fault:
    """What a unit does wrong: ``silent``, ``exception``, ``crc``, ``short`` or ``slow``."""

    kind: str
    code: int = 4
    delay: float = 0.5
    rate: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``silent``, ``exception=2``, ``crc@0.1`` (10 % of answers), ``slow=300ms``."""
        m = _FAULT_RE.match(text.strip())
        if m is None:
            raise ValueError(f"expected silent, exception=CODE, crc, short or slow=DELAY, "
                             f"each optionally @RATE; got {text!r}")
        kind, arg, rate = m.groups()
        fault = cls(kind, rate=float(rate) if rate else 1.0)
        if kind == "exception" and arg:
            fault.code = int(arg)
        if kind == "slow" and arg:
            fault.delay = float(arg[:-2]) / 1000 if arg.endswith("ms") else \
                float(arg.rstrip("s"))
        return fault


class SimUnit:
    """One simulated device."""

    def __init__(self, unit: int, points: Sequence[PointSpec], *,
                 values: dict[str, Value] | None = None, unmapped: str = "zero",
                 read_only: Iterable[str] = (), ignored: Iterable[str] = (),
                 clamp: Mapping[str, tuple[float, float]] | None = None,
                 single_writes: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unit = unit
        self.values: dict[str, Value] = dict(values or {})
        self.unmapped = unmapped
        self.read_only = set(read_only)
        self.ignored = set(ignored)
        self.clamp = dict(clamp or {})
        self.single_writes = single_writes
        self.fault: Fault | None = None
        self.requests = 0
        self._clock = clock
        self._t0 = clock()
        self._written: dict[str, dict[int, int | bool]] = {}
        self._index: dict[str, tuple[list[int], list[PointSpec]]] = {}
        for table in ("coil", "discrete", "holding", "input"):
            pts = sorted((p for p in points if p.table == table), key=lambda p: p.address)
            self._index[table] = ([p.address for p in pts], pts)

    def value(self, p: PointSpec, t: float) -> Value:
        """The point's value at ``t`` seconds after start."""
        if p.name in self.values:
            return self.values[p.name]
        if p.type == "bit":
            return int(t / 5 + p.address + (p.bit or 0)) % 2 == 1
        if p.type == "string":
            return f"SIM-{self.unit}"
        phase = p.address * 0.7 + self.unit
        if p.unit in _COUNTERS:
            return 10_000.0 + 100 * self.unit + _COUNTERS[p.unit] * t
        mean, amp = _WAVES.get(p.unit or "", (100.0, 10.0))
        return mean + amp * math.sin(2 * math.pi * t / 60 + phase)

    def read(self, table: str, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        """The table's items ``address..address+count-1`` right now."""
        t = self._clock() - self._t0
        out: list[int] = [0] * count
        covered = [False] * count
        addresses, pts = self._index[table]
        for p in pts[bisect.bisect_left(addresses, address - 125):]:
            if p.address >= address + count:
                break
            if p.end <= address:
                continue
            for k, item in enumerate(codec.encode(p, self.value(p, t))):
                i = p.address + k - address
                if 0 <= i < count:
                    out[i] |= int(item)
                    covered[i] = True
        for addr, v in self._written.get(table, {}).items():
            if address <= addr < address + count:
                out[addr - address] = int(v)
                covered[addr - address] = True
        if self.unmapped == "exception" and not all(covered):
            return ExcCodes.ILLEGAL_ADDRESS
        if table in ("coil", "discrete"):
            return [bool(v) for v in out]
        return out

    def write(self, table: str, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Store raw items, whatever the map says (test set-up, golden cases)."""
        store = self._written.setdefault(table, {})
        for k, v in enumerate(values):
            store[address + k] = v

    def _touched(self, table: str, address: int, count: int) -> list[PointSpec]:
        addresses, pts = self._index[table]
        start = bisect.bisect_left(addresses, address - 125)
        return [p for p in pts[start:] if p.address < address + count and p.end > address]

    def accept_write(self, table: str, address: int,
                     values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        """A master's write, with the unit's rules; an exception code when refused."""
        touched = self._touched(table, address, len(values))
        mapped = {a for p in touched for a in range(p.address, p.end)}
        if any(p.name in self.read_only for p in touched) or (
                self.unmapped == "exception"
                and not all(address + k in mapped for k in range(len(values)))):
            return ExcCodes.ILLEGAL_ADDRESS
        store = self._written.setdefault(table, {})
        keep = {a: store.get(a) for p in touched if p.name in self.ignored
                for a in range(p.address, p.end)}
        self.write(table, address, values)
        for a, before in keep.items():
            if before is None:
                store.pop(a, None)
            else:
                store[a] = before
        for p in touched:
            if p.name in self.clamp:
                self._clamp(p, store)
        return None

    def _clamp(self, p: PointSpec, store: dict[int, int | bool]) -> None:
        lo, hi = self.clamp[p.name]
        items = [int(store.get(p.address + k, 0)) for k in range(p.count)]
        value, _quality = codec.decode(p, items)
        if isinstance(value, (int, float)) and not lo <= value <= hi:
            for k, item in enumerate(codec.encode(p, min(hi, max(lo, value)))):
                store[p.address + k] = item


class SimStore:
    """The datastore pymodbus request PDUs run against (``datastore_update``)."""

    def __init__(self, units: dict[int, SimUnit]) -> None:
        self.units = units

    async def async_getValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1,
    ) -> list[int] | list[bool] | ExcCodes:
        unit = self.units.get(device_id)
        if unit is None or func_code not in _TABLES:
            return ExcCodes.ILLEGAL_FUNCTION
        if address + count > 65536:
            return ExcCodes.ILLEGAL_ADDRESS
        return unit.read(_TABLES[func_code], address, count)

    async def async_setValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        unit = self.units.get(device_id)
        if unit is None or func_code not in _TABLES or _TABLES[func_code] in ("discrete",
                                                                              "input"):
            return ExcCodes.ILLEGAL_FUNCTION
        if func_code in (5, 6) and not unit.single_writes:
            return ExcCodes.ILLEGAL_FUNCTION
        return unit.accept_write(_TABLES[func_code], address, values)
