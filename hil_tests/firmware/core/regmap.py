"""A unit's register map served from a profile's points (dicts shaped like the driver's
``PointSpec``), with raw writes on top: the firmware twin of the Python simulator's store.

Values follow the simulator's waveforms (energy and time count up, electrical and climate
points follow slow sine waves, bits toggle, strings read ``SIM-<unit>``) and are encoded the
way the driver decodes them: registers are big-endian 16-bit words on the wire (Modbus
Application Protocol V1.1b3 §4.2); ``word_order``/``byte_order`` spread wider values.
"""

import math
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REGISTERS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2, "f64": 4,
             "bit": 1}
FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q", "i64": ">q",
           "f32": ">f", "f64": ">d"}
BIT_TABLES = ("coil", "discrete")
TABLES = ("coil", "discrete", "holding", "input")
#: unit -> (mean, amplitude) of the sine wave a point with that unit follows.
WAVES = {"V": (230.0, 3.0), "A": (5.0, 2.0), "W": (1150.0, 400.0), "VA": (1200.0, 400.0),
         "Hz": (50.0, 0.05), "Cel": (20.0, 2.0), "%RH": (50.0, 5.0), "/": (0.95, 0.03),
         "%": (50.0, 50.0), "lx": (100.0, 80.0)}
#: unit -> increase per second of a counting point.
COUNTERS = {"Wh": 3.0, "VArh": 1.0, "s": 1.0}
#: Modbus exception 2, illegal data address (Modbus Application Protocol V1.1b3 §7).
ILLEGAL_ADDRESS = 2


class Point:
    """One resolved point of the map."""

    def __init__(self, spec: "dict[str, Any]") -> None:
        self.name = str(spec["name"])
        self.table = str(spec.get("table") or "holding")
        self.type = str(spec.get("type") or ("bit" if self.table in BIT_TABLES else "u16"))
        self.address = int(spec["address"])
        count = spec.get("count")
        self.count = int(count) if count else REGISTERS.get(self.type, 1)
        bit = spec.get("bit")
        self.bit = int(bit) if bit is not None else 0
        self.byte_order = str(spec.get("byte_order") or "big")
        self.word_order = str(spec.get("word_order") or "big")
        scale = spec.get("scale")
        offset = spec.get("offset")
        self.scale = 1.0 if scale is None else float(scale)
        self.offset = 0.0 if offset is None else float(offset)
        unit = spec.get("unit")
        self.unit = "" if unit is None else str(unit)
        if self.table not in TABLES:
            raise ValueError("point " + self.name + ": unknown table " + self.table)
        if self.type != "string" and self.type not in REGISTERS:
            raise ValueError("point " + self.name + ": unknown type " + self.type)

    @property
    def end(self) -> int:
        return self.address + self.count


def to_registers(data: bytes, byte_order: str, word_order: str) -> list[int]:
    """Big-endian value bytes -> register words in the device's orders."""
    regs = []
    for i in range(0, len(data) - 1, 2):
        hi, lo = data[i], data[i + 1]
        regs.append(hi << 8 | lo if byte_order == "big" else lo << 8 | hi)
    if word_order != "big":
        regs.reverse()
    return regs


def _raw_number(p: Point, value: "int | float") -> "int | float":
    raw = value
    if p.scale != 1 or p.offset != 0:
        raw = (value - p.offset) / p.scale
    if p.type in ("f32", "f64"):
        return float(raw)
    bits = REGISTERS[p.type] * 16
    if p.type[0] == "i":
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return min(hi, max(lo, round(raw)))


def encode(p: Point, value: "Any") -> list[int]:
    """The registers (or bits, as 0/1) that the driver decodes back into ``value``."""
    if p.table in BIT_TABLES:
        return [1 if value else 0]
    if p.type == "bit":
        return [(1 << p.bit) if value else 0]
    if p.type == "string":
        text = str(value).encode()[:p.count * 2]
        text = text + bytes(p.count * 2 - len(text))
        return to_registers(text, p.byte_order, p.word_order)
    return to_registers(struct.pack(FORMATS[p.type], _raw_number(p, value)),
                        p.byte_order, p.word_order)


class RegisterMap:
    """One unit: its points, fixed values, raw writes, and what unmapped addresses read."""

    def __init__(self, unit: int, points: "list[dict[str, Any]]", *,
                 values: "dict[str, Any] | None" = None, unmapped: str = "zero") -> None:
        self.unit = unit
        self.points = [Point(p) for p in points]
        self.values = dict(values or {})
        self.unmapped = unmapped
        self.written: dict[str, dict[int, int]] = {t: {} for t in TABLES}
        self.by_table: dict[str, list[Point]] = {t: [] for t in TABLES}
        for p in sorted(self.points, key=lambda q: q.address):
            self.by_table[p.table].append(p)

    def value(self, p: Point, t: float) -> "Any":
        """The point's value ``t`` seconds after start."""
        if p.name in self.values:
            return self.values[p.name]
        if p.type == "bit" or p.table in BIT_TABLES:
            return int(t / 5 + p.address + p.bit) % 2 == 1
        if p.type == "string":
            return "SIM-" + str(self.unit)
        if p.unit in COUNTERS:
            return 10000.0 + 100 * self.unit + COUNTERS[p.unit] * t
        mean, amp = WAVES.get(p.unit, (100.0, 10.0))
        return mean + amp * math.sin(2 * math.pi * t / 60 + p.address * 0.7 + self.unit)

    def read(self, table: str, address: int, count: int, t: float) -> "list[int] | int":
        """Items ``address..address+count-1`` at time ``t``, or an exception code."""
        out = [0] * count
        covered = [False] * count
        for p in self.by_table[table]:
            if p.address >= address + count:
                break
            if p.end <= address:
                continue
            for k, item in enumerate(encode(p, self.value(p, t))):
                i = p.address + k - address
                if 0 <= i < count:
                    out[i] |= item
                    covered[i] = True
        for addr, item in self.written[table].items():
            if address <= addr < address + count:
                out[addr - address] = item
                covered[addr - address] = True
        if self.unmapped == "exception" and not all(covered):
            return ILLEGAL_ADDRESS
        return out

    def refuses(self, table: str, address: int, count: int) -> bool:
        """A strict unit (unmapped "exception") has no storage outside its points."""
        if self.unmapped != "exception":
            return False
        mapped = [False] * count
        for p in self.by_table[table]:
            for a in range(max(p.address, address), min(p.end, address + count)):
                mapped[a - address] = True
        return not all(mapped)

    def write(self, table: str, address: int, items: "list[int]") -> None:
        """Raw items from ``address`` on (registers 0-65535, bits 0/1)."""
        store = self.written[table]
        for k, item in enumerate(items):
            store[address + k] = int(item) & 0xFFFF
