"""Register ranges: a block of consecutive same-typed points, written once. Pure, no I/O.

``{ name = "reg_{i}", start = 0, count = 100 }`` stands for the points ``reg_0`` ... ``reg_99``
at holding registers 0 ... 99. A point takes as many registers as its type (a u32 or f32 two,
a u64 or f64 four) and the next one starts right after it. ``{i}`` counts from ``first``
(default 0); ``{address}`` is the point's own address. The points go through the same
resolution and planner as points written one by one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from drivers.modbus.codec import BIT_TABLES, REGISTERS
from drivers.modbus.config import NAME, PointConfig

if TYPE_CHECKING:
    from drivers.modbus.config import RangeConfig

__all__ = ["expand", "point_name", "range_issues"]

_PLACEHOLDERS = ("{i}", "{address}")
_FIXED = ", ".join(t for t in REGISTERS if t != "bit")


def _kind(rng: RangeConfig) -> str:
    table = rng.table or "holding"
    return rng.type or ("bit" if table in BIT_TABLES else "u16")


def point_name(rng: RangeConfig, k: int) -> str:
    """The name of the range's ``k``-th point (from 0)."""
    address = rng.start + k * REGISTERS.get(_kind(rng), 1)
    return rng.name.replace("{i}", str(rng.first + k)).replace("{address}", str(address))


def range_issues(rng: RangeConfig) -> list[tuple[str, str]]:
    """What is wrong with a range as a whole, as (relative key, message)."""
    issues: list[tuple[str, str]] = []
    table, kind = rng.table or "holding", _kind(rng)
    if rng.count > 1 and not any(p in rng.name for p in _PLACEHOLDERS):
        issues.append(("name", (f"expected a pattern with {{i}} or {{address}} for {rng.count} "
                               f'points; got "{rng.name}"')))
    elif not re.fullmatch(NAME, point_name(rng, 0)):
        issues.append(("name", (f"expected {NAME} around {{i}} or {{address}}; "
                               f'got "{rng.name}"')))
    if kind == "string":
        issues.append(("type", (f"expected a type of fixed size ({_FIXED}; bit for coils and "
                               "discrete inputs); got string: declare strings as points")))
    elif table in BIT_TABLES and kind != "bit":
        issues.append(("type", f"expected bit for table {table}; got {kind}"))
    elif table not in BIT_TABLES and kind == "bit":
        issues.append(("type", (f"expected one of {_FIXED} for table {table}; got bit: bits "
                               "of a register are points (with bit = 0-15)")))
    else:
        last = rng.start + rng.count * REGISTERS[kind] - 1
        if last > 65535:
            issues.append(("count", f"{table} {rng.start}..{last} ends past 65535"))
    if rng.scale == 0:
        issues.append(("scale", "expected a non-zero number; got 0.0"))
    return issues


def expand(rng: RangeConfig) -> list[PointConfig]:
    """The range's points, in address order."""
    width = REGISTERS[_kind(rng)]
    return [PointConfig(name=point_name(rng, k), table=rng.table,
                        address=rng.start + k * width, type=rng.type,
                        byte_order=rng.byte_order, word_order=rng.word_order,
                        scale=rng.scale, offset=rng.offset, unit=rng.unit,
                        interval=rng.interval)
            for k in range(rng.count)]
