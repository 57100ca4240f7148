"""Registers <-> typed values: byte and word order, scale and offset. Pure, no I/O.

Modbus registers are 16-bit and big-endian on the wire (Modbus Application Protocol
V1.1b3 §4.2); how a device spreads a wider value over several registers is its own choice,
hence ``word_order`` (which register holds the most significant word) and ``byte_order``
(which byte of each register comes first). The four usual layouts of ``0xAABBCCDD``:

    ABCD  word big,    byte big       CDAB  word little, byte big
    BADC  word big,    byte little    DCBA  word little, byte little

A float32 becomes the shortest decimal that is the same float32 (``230.1``, not
``230.10000610351562``): nothing is lost, it reads well in SenML, and the batch encoder packs
such decimals tightly. Scaled values are ``raw * scale + offset``; integers stay integers when
scale is 1 and offset is 0, otherwise the result is a float rounded to the decimals of raw,
scale and offset together, so ``2301 * 0.1`` is ``230.1``, not ``230.10000000000002``.
NaN and infinity (meters' "no value") are OUT_OF_RANGE readings.
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from drivers.api import Quality, Value

if TYPE_CHECKING:
    from drivers.modbus.config import Order, PointType, Table

__all__ = [
    "FORMATS",
    "ORDERS",
    "REGISTERS",
    "PointSpec",
    "decode",
    "encode",
    "registers_to_bytes",
    "short_f32",
]

#: Registers taken by each fixed-size type.
REGISTERS: dict[str, int] = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4,
                             "f32": 2, "f64": 4, "bit": 1}
#: struct formats of the numeric types (big-endian, after reordering).
FORMATS: dict[str, str] = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q",
                           "i64": ">q", "f32": ">f", "f64": ">d"}
#: Layout names used by the field tools: (word_order, byte_order).
ORDERS: dict[str, tuple[Order, Order]] = {"ABCD": ("big", "big"), "CDAB": ("little", "big"),
                                          "BADC": ("big", "little"),
                                          "DCBA": ("little", "little")}
BIT_TABLES = ("coil", "discrete")
_F32_MIN_NORMAL = 1.1754943508222875e-38


@dataclass(frozen=True, slots=True)
class PointSpec:
    """A fully resolved point: profile, device defaults and overrides merged."""

    name: str
    table: Table
    address: int
    count: int
    type: PointType
    bit: int | None = None
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    interval: float | None = None

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def is_bit_table(self) -> bool:
        return self.table in BIT_TABLES


def registers_to_bytes(regs: list[int], byte_order: Order, word_order: Order) -> bytes:
    """The value's bytes, most significant first."""
    ordered = regs if word_order == "big" else regs[::-1]
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    return b"".join((r & 0xFFFF).to_bytes(2, endian) for r in ordered)


def bytes_to_registers(data: bytes, byte_order: Order, word_order: Order) -> list[int]:
    """Inverse of :func:`registers_to_bytes`."""
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    regs = [int.from_bytes(data[i:i + 2], endian) for i in range(0, len(data), 2)]
    return regs if word_order == "big" else regs[::-1]


def _places(x: float) -> int:
    """Decimals in the shortest repr of ``x`` (0.1 -> 1, 2.5e-05 -> 6, 1000.0 -> 0)."""
    text = repr(float(x))
    mantissa, _, exp = text.partition("e")
    frac = mantissa.partition(".")[2].rstrip("0")
    return max(0, len(frac) - int(exp or 0))


def short_f32(x: float) -> float:
    """The shortest decimal that is still the same float32 (at most 9 digits, IEEE 754 §5.12.2)."""
    exact = struct.pack(">f", x)
    # A normal float32 has a relative half-ulp below 6e-8, so its 6-digit rounding equals any
    # shorter decimal that round-trips ("230.100" is "230.1"); subnormals start from one digit.
    for digits in range(6 if abs(x) >= _F32_MIN_NORMAL else 1, 10):
        candidate = float(f"{x:.{digits}g}")
        with contextlib.suppress(OverflowError):  # rounded up past the float32 range
            if struct.pack(">f", candidate) == exact:
                return candidate
    return x


def _scaled(raw: float, spec: PointSpec) -> Value:
    if spec.scale == 1 and spec.offset == 0:
        return raw
    value = raw * spec.scale + spec.offset
    return round(value, max(_places(raw) + _places(spec.scale), _places(spec.offset)))


def decode(spec: PointSpec, data: list[int] | list[bool]) -> tuple[Value, Quality]:
    """The point's value from its registers (or bits); NaN and infinity are out of range."""
    if spec.is_bit_table:
        return bool(data[0]), Quality.GOOD
    regs = [int(r) for r in data]
    if spec.type == "bit":
        return bool((regs[0] >> (spec.bit or 0)) & 1), Quality.GOOD
    raw_bytes = registers_to_bytes(regs, spec.byte_order, spec.word_order)
    if spec.type == "string":
        return raw_bytes.rstrip(b"\x00 ").decode("utf-8", errors="replace"), Quality.GOOD
    (raw,) = struct.unpack(FORMATS[spec.type], raw_bytes)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None, Quality.OUT_OF_RANGE
        if spec.type == "f32":
            raw = short_f32(raw)
    return _scaled(raw, spec), Quality.GOOD


def _raw_number(spec: PointSpec, value: float) -> int | float:
    raw = (value - spec.offset) / spec.scale if (spec.scale, spec.offset) != (1, 0) else value
    if spec.type in ("f32", "f64"):
        return float(raw)
    bits = REGISTERS[spec.type] * 16
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec.type[0] == "i" \
        else (0, (1 << bits) - 1)
    return min(hi, max(lo, round(raw)))


def encode(spec: PointSpec, value: Value) -> list[int] | list[bool]:
    """Registers (or bits) that :func:`decode` turns back into ``value``; for the simulator."""
    if spec.is_bit_table:
        return [bool(value)]
    if spec.type == "bit":
        return [(1 << (spec.bit or 0)) if value else 0]
    if spec.type == "string":
        text = str(value).encode()[: spec.count * 2].ljust(spec.count * 2, b"\x00")
        return bytes_to_registers(text, spec.byte_order, spec.word_order)
    if not isinstance(value, (int, float)):
        raise TypeError(f"{spec.name}: expected a number; got {value!r}")
    packed = struct.pack(FORMATS[spec.type], _raw_number(spec, value))
    return bytes_to_registers(packed, spec.byte_order, spec.word_order)
