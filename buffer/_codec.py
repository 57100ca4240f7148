"""Checks and coercions for readings, and the version-1 row format (read by the migration).

A row is ``(seq, point_id, ts, value, q)`` with ``q = quality << 3 | kind``. SQLite keeps
integers, floats, text, blobs and NULL as they are in a column without affinity
(https://sqlite.org/datatype3.html §3), so most values need no kind; ``kind`` covers what SQLite
cannot hold natively. ``q`` is 0 or 1 for good readings, which the record format stores in zero
bytes (https://sqlite.org/fileformat2.html §2.1, serial types 8 and 9).
"""

from __future__ import annotations

import logging
import struct

from drivers.api import Quality, Reading, Value

__all__ = ["KIND_BITS", "DbValue", "coerce", "decode", "valid"]

log = logging.getLogger("streetgate.buffer")

#: Low bits of ``q`` that say how ``value`` is stored.
KIND_BITS = 3
_PLAIN = 0  # stored as is
_BOOL = 1  # 0/1 integer that must come back as bool
_FLOAT_BITS = 2  # NaN: SQLite turns NaN into NULL, so its 8 IEEE-754 bytes are kept as a blob
_BIG_INT = 3  # outside SQLite's signed 64-bit range: decimal text
_RAW_STR = 4  # str that is not valid UTF-8 (lone surrogates): surrogatepass bytes

_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_DOUBLE = struct.Struct("<d")

DbValue = int | float | str | bytes | None


def valid(r: Reading) -> bool:
    """Whether a reading's point, unit, ts and quality can be stored (values always can)."""
    return (type(r.point) is str and (r.unit is None or type(r.unit) is str)
            and type(r.ts) in (int, float) and _I64_MIN <= r.ts <= _I64_MAX
            and isinstance(r.quality, int) and 0 <= r.quality < 1 << 32
            and _str_kind(r.point) == _PLAIN and (r.unit is None or _str_kind(r.unit) == _PLAIN))


def _str_kind(v: str) -> int:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return _RAW_STR
    return _PLAIN


def coerce(r: Reading) -> Reading:
    """``r`` with a subclass value (IntEnum, bytearray, ...) as its base type; anything else
    that is not a buffer value becomes a MALFORMED reading with no value."""
    v: object = r.value
    if v is None or type(v) in _EXACT:
        return r
    base: Value
    if isinstance(v, bool):
        base = bool(v)
    elif isinstance(v, int):
        base = int(v)
    elif isinstance(v, float):
        base = float(v)
    elif isinstance(v, str):
        base = str(v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        base = bytes(v)
    else:
        log.warning("point %r: value of type %s cannot be buffered; stored as MALFORMED",
                    r.point, type(v).__name__)
        return Reading(r.point, r.ts, None, Quality.MALFORMED, r.unit)
    return Reading(r.point, r.ts, base, r.quality, r.unit)


_EXACT = frozenset({bool, int, float, str, bytes})


def decode(kind: int, v: DbValue) -> Value:
    """The Python value of a stored value whose kind is not plain."""
    if kind == _BOOL:
        return bool(v)
    if kind == _FLOAT_BITS and isinstance(v, bytes):
        value: float = _DOUBLE.unpack(v)[0]
        return value
    if kind == _BIG_INT and isinstance(v, str):
        return int(v)
    if kind == _RAW_STR and isinstance(v, bytes):
        return v.decode("utf-8", "surrogatepass")
    return v
