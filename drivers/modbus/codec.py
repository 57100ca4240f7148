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

Writes use :func:`encode_exact`: the inverse of ``raw * scale + offset``, refusing instead of
clamping or truncating. An integer type takes a value that lands on one of its steps (within
float rounding: ``230.1`` with scale 0.1 is raw 2301, ``230.15`` is refused) and within its
range; a float type takes any finite value in its range (an ``f32`` keeps about 7 digits);
a bit takes a boolean (or 0 and 1), a string a text that fits its registers.
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
    "EncodeError",
    "PointSpec",
    "decode",
    "encode",
    "encode_exact",
    "places",
    "registers_to_bytes",
    "scaled",
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


def places(x: float) -> int:
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


def scaled(raw: float, spec: PointSpec) -> Value:
    """``raw * scale + offset``, rounded to the decimals of the three (see module doc)."""
    if spec.scale == 1 and spec.offset == 0:
        return raw
    value = raw * spec.scale + spec.offset
    return round(value, max(places(raw) + places(spec.scale), places(spec.offset)))


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
    return scaled(raw, spec), Quality.GOOD


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


class EncodeError(ValueError):
    """A value that the point's registers cannot hold as it is."""


#: How far from a whole raw step a scaled value may be (float rounding of the inversion).
_STEP_TOLERANCE = 1e-9


def _exact_raw(spec: PointSpec, value: Value) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EncodeError(f"expected a number; got {value!r}")
    if not math.isfinite(value):
        raise EncodeError(f"expected a finite number; got {value!r}")
    raw = (value - spec.offset) / spec.scale if (spec.scale, spec.offset) != (1, 0) else value
    if spec.type in ("f32", "f64"):
        try:
            struct.pack(FORMATS[spec.type], raw)
        except OverflowError:
            raise EncodeError(f"{value!r} is beyond the range of {spec.type}") from None
        return float(raw)
    whole = round(raw)
    if abs(raw - whole) > _STEP_TOLERANCE * max(1.0, abs(raw)):
        step = f" (steps of {spec.scale:g})" if spec.scale != 1 else ""
        raise EncodeError(f"{value!r} is not a whole number of steps{step} for {spec.type}")
    bits = REGISTERS[spec.type] * 16
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec.type[0] == "i" \
        else (0, (1 << bits) - 1)
    if not lo <= whole <= hi:
        low, high = (x * spec.scale + spec.offset for x in (lo, hi))
        raise EncodeError(f"{value!r} is outside {spec.type}{_range(low, high, spec)}")
    return whole


def _range(low: float, high: float, spec: PointSpec) -> str:
    if (spec.scale, spec.offset) == (1, 0):
        return f" ({int(low)}..{int(high)})"
    shift = f" {spec.offset:+.10g}" if spec.offset else ""
    return f" scaled by {spec.scale:.10g}{shift} ({min(low, high):.10g}..{max(low, high):.10g})"


def _exact_bit(value: Value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise EncodeError(f"expected true or false (or 1 or 0); got {value!r}")


def encode_exact(spec: PointSpec, value: Value) -> list[int] | list[bool]:
    """Registers (or bits) for a write: like :func:`encode`, but a value that does not fit is
    an :class:`EncodeError`, never clamped, rounded to another step or truncated.

    For a ``bit`` point of a register, only that bit is set; the caller merges it into the
    register's other bits.
    """
    if spec.is_bit_table:
        return [_exact_bit(value)]
    if spec.type == "bit":
        return [(1 << (spec.bit or 0)) if _exact_bit(value) else 0]
    if spec.type == "string":
        if not isinstance(value, str):
            raise EncodeError(f"expected a text; got {value!r}")
        data = value.encode()
        if len(data) > spec.count * 2:
            raise EncodeError(f"{len(data)} bytes do not fit in {spec.count} registers "
                              f"({spec.count * 2} bytes)")
        return bytes_to_registers(data.ljust(spec.count * 2, b"\x00"), spec.byte_order,
                                  spec.word_order)
    packed = struct.pack(FORMATS[spec.type], _exact_raw(spec, value))
    return bytes_to_registers(packed, spec.byte_order, spec.word_order)
