"""The declarative struct decoder: fields at fixed offsets, typed, scaled (config ``fields``)."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.api import Quality
from drivers.lora.config import FieldConfig
from drivers.lora.points import Decoded, Point, scaled

__all__ = ["SIZES", "decode", "encode_field"]

#: Bytes each field type occupies.
SIZES = {"u8": 1, "i8": 1, "u16": 2, "i16": 2, "u24": 3, "i24": 3, "u32": 4, "i32": 4,
         "u64": 8, "i64": 8, "f32": 4, "f64": 8, "bool": 1}


def _raw(field: FieldConfig, chunk: bytes) -> int | float | bool:
    if field.type == "bool":
        return bool(chunk[0] >> (field.bit or 0) & 1)
    if field.type in ("f32", "f64"):
        fmt = (">" if field.endian == "big" else "<") + ("f" if field.type == "f32" else "d")
        return float(struct.unpack(fmt, chunk)[0])
    return int.from_bytes(chunk, field.endian, signed=field.type.startswith("i"))


def _point(field: FieldConfig, payload: bytes) -> Point:
    size = SIZES[field.type]
    chunk = payload[field.offset:field.offset + size]
    if len(chunk) < size:
        return Point(field.name, None, field.unit, Quality.MALFORMED)
    raw = _raw(field, chunk)
    if isinstance(raw, bool):
        return Point(field.name, raw, field.unit)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return Point(field.name, None, field.unit, Quality.OUT_OF_RANGE)
        value = raw * field.scale + field.add
        if field.decimals is not None:
            value = round(value, field.decimals)
        return Point(field.name, value, field.unit)
    return Point(field.name, scaled(raw, field.scale, field.add, field.decimals), field.unit)


def decode(fields: Sequence[FieldConfig], fport: int | None, payload: bytes) -> Decoded:
    """Every field that applies to ``fport``; a field past the end is MALFORMED."""
    points = [_point(f, payload) for f in fields if f.fport is None or f.fport == fport]
    short = [p.name for p in points if p.quality is Quality.MALFORMED]
    error = f"payload of {len(payload)} bytes too short for {', '.join(short)}" if short else None
    return Decoded(points, error)


def encode_field(field: FieldConfig, value: float, into: bytearray) -> None:
    """Write ``value`` (engineering units) where ``field`` reads it (simulators, tests)."""
    size = SIZES[field.type]
    if len(into) < field.offset + size:
        into.extend(bytes(field.offset + size - len(into)))
    at = slice(field.offset, field.offset + size)
    if field.type == "bool":
        mask = 1 << (field.bit or 0)
        into[field.offset] = (into[field.offset] | mask) if value else (into[field.offset] & ~mask)
        return
    raw = (value - field.add) / field.scale
    if field.type in ("f32", "f64"):
        fmt = (">" if field.endian == "big" else "<") + ("f" if field.type == "f32" else "d")
        into[at] = struct.pack(fmt, raw)
        return
    into[at] = round(raw).to_bytes(size, field.endian, signed=field.type.startswith("i"))
