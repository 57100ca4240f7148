"""Readings to table rows and back, keeping every value's native Python type.

A row is ``(seq, point_id, ts, value, q)`` with ``q = quality << 3 | kind``. SQLite keeps
integers, floats, text, blobs and NULL as they are in a column without affinity
(https://sqlite.org/datatype3.html §3), so most values need no kind; ``kind`` covers what SQLite
cannot hold natively. ``q`` is 0 or 1 for good readings, which the record format stores in zero
bytes (https://sqlite.org/fileformat2.html §2.1, serial types 8 and 9).
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING

from drivers.api import Quality, Reading, Value

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["KIND_BITS", "DbRow", "DbValue", "decode", "encode", "valid"]

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
DbRow = tuple[int, int, int, DbValue, int]


def encode(  # noqa: C901 - the hot loop stays flat: a call per reading costs more
    readings: Iterable[Reading], first_seq: int, point_id: Callable[[str, str | None], int],
    cache: dict[tuple[str, str | None], int],
) -> list[DbRow]:
    """Rows for ``readings`` numbered from ``first_seq``; ``point_id`` interns cache misses."""
    out: list[DbRow] = []
    add = out.append
    seq = first_seq
    get = cache.get
    for r in readings:
        pid = get((r.point, r.unit))
        if pid is None:
            pid = point_id(r.point, r.unit)
        v = r.value
        t = type(v)
        if t is float:
            kind = _PLAIN if v == v else _FLOAT_BITS  # noqa: PLR0124 - NaN test
            if kind:
                v = _DOUBLE.pack(v)
        elif t is int:
            kind = _PLAIN if _I64_MIN <= v <= _I64_MAX else _BIG_INT  # type: ignore[operator]
            if kind:
                v = str(v)
        elif t is str:
            kind = _PLAIN if v.isascii() else _str_kind(v)  # type: ignore[union-attr,arg-type]
            if kind:
                v = v.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
        elif t is bool:
            kind = _BOOL
        elif t is bytes or v is None:
            kind = _PLAIN
        else:
            add(_coerced(seq, pid, r))
            seq += 1
            continue
        add((seq, pid, r.ts, v, r.quality << KIND_BITS | kind))
        seq += 1
    return out


def valid(r: Reading) -> bool:
    """Whether a reading's point, unit, ts and quality can be stored (values always can)."""
    return (type(r.point) is str and (r.unit is None or type(r.unit) is str)
            and type(r.ts) is int and _I64_MIN <= r.ts <= _I64_MAX
            and isinstance(r.quality, int) and 0 <= r.quality < 1 << 32
            and _str_kind(r.point) == _PLAIN and (r.unit is None or _str_kind(r.unit) == _PLAIN))


def _str_kind(v: str) -> int:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return _RAW_STR
    return _PLAIN


def _coerced(seq: int, pid: int, r: Reading) -> DbRow:
    """A subclass value (IntEnum, bytearray, ...) as its base type; anything else is MALFORMED."""
    v: object = r.value
    base: Value
    if isinstance(v, int):
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
        return (seq, pid, r.ts, None, Quality.MALFORMED << KIND_BITS)
    fixed = Reading(r.point, r.ts, base, r.quality, r.unit)
    rows = encode((fixed,), seq, lambda _p, _u: pid, {})
    return rows[0]


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
