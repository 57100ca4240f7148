"""A reading's native value in the portable columns (vkind, vint, vfloat, vtext, vbytes)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.api import Value

__all__ = ["FLOAT", "VALUE_COLUMNS", "decode_value", "encode_value"]

VALUE_COLUMNS = ("quality", "vkind", "vint", "vfloat", "vtext", "vbytes")
NONE, BOOL, INT, FLOAT, TEXT, BYTES = range(6)
_INT64 = (-(2**63), 2**63 - 1)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_value(value: Value) -> tuple[int, int | None, float | None, str | None,
                                        bytes | None]:
    if value is None:
        return (NONE, None, None, None, None)
    if isinstance(value, bool):
        return (BOOL, int(value), None, None, None)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return (INT, value, None, None, None)
        return (INT, None, None, str(value), None)
    if isinstance(value, float):
        if math.isfinite(value):
            return (FLOAT, None, value, None, None)
        # SQLite stores NaN as NULL: both databases keep non-finite floats as text.
        return (FLOAT, None, None, "nan" if math.isnan(value) else
                ("inf" if value > 0 else "-inf"), None)
    if isinstance(value, str):
        return (TEXT, None, None, value, None)
    return (BYTES, None, None, None, bytes(value))


def decode_value(vkind: int, vint: Any, vfloat: Any, vtext: Any, vbytes: Any) -> Value:
    if vkind == BOOL:
        return bool(vint)
    if vkind == INT:
        return int(vint) if vint is not None else int(vtext)
    if vkind == FLOAT:
        return float(vfloat) if vfloat is not None else _NONFINITE[str(vtext)]
    if vkind == TEXT:
        return str(vtext)
    if vkind == BYTES:
        return bytes(vbytes)
    return None
