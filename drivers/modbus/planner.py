"""Block planner: the fewest read requests that cover a device's points. Pure, no I/O.

Points of one table are sorted by address and swept once; a point joins the open block when
the block stays within the request limit and the unused registers between it and the block
do not exceed the gap limit, else it opens a new block. Both rules only get easier for a
shorter run of points, so extending each block as far as it goes is optimal (the classic
exchange argument); :func:`optimum` checks that by dynamic programming in the tests and the
bench. Limits: 125 registers or 2000 bits per request (Modbus Application Protocol V1.1b3
§6.1-6.4), the device's ``max_block`` (bits: 16 times as many) and ``max_gap`` (bits: 16 times
as many, the same bytes on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from drivers.modbus.codec import PointSpec
    from drivers.modbus.config import Table

__all__ = ["Block", "limits", "optimum", "plan", "plan_spans"]

_TABLE_ORDER: dict[str, int] = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
#: Most items per read request (Modbus Application Protocol V1.1b3 §6.1-6.4).
_PROTOCOL_MAX = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}


@dataclass(frozen=True, slots=True)
class Block:
    """One read request and the points it carries."""

    table: Table
    start: int
    count: int
    points: tuple[PointSpec, ...]


def limits(table: str, max_block: int, max_gap: int) -> tuple[int, int]:
    """(most items per request, most unused items inside one) for a table."""
    factor = 16 if table in ("coil", "discrete") else 1
    return min(_PROTOCOL_MAX[table], max_block * factor), max_gap * factor


def plan_spans(spans: Iterable[tuple[int, int]], limit: int, gap: int) -> list[tuple[int, int]]:
    """Blocks ``(start, count)`` covering every ``(address, count)`` span, greedily."""
    blocks: list[tuple[int, int]] = []
    start = end = -1
    for address, count in sorted(set(spans)):
        stop = address + count
        if blocks and address - end <= gap and max(end, stop) - start <= limit:
            end = max(end, stop)
            blocks[-1] = (start, end - start)
            continue
        start, end = address, stop
        blocks.append((start, count))
    return blocks


def plan(points: Sequence[PointSpec], *, max_block: int = 125, max_gap: int = 0) -> list[Block]:
    """Read requests for ``points``, per table, in address order."""
    by_table: dict[str, list[PointSpec]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    out: list[Block] = []
    for table in sorted(by_table, key=_TABLE_ORDER.__getitem__):
        members = sorted(by_table[table], key=lambda p: (p.address, p.count))
        limit, gap = limits(table, max_block, max_gap)
        i = 0
        for start, count in plan_spans(((p.address, p.count) for p in members), limit, gap):
            j = i
            while j < len(members) and members[j].address < start + count:
                j += 1
            out.append(Block(members[i].table, start, count, tuple(members[i:j])))
            i = j
    return out


def optimum(spans: Iterable[tuple[int, int]], limit: int, gap: int) -> int:
    """Fewest requests under the same rules, by dynamic programming over sorted runs.

    A run that breaks a rule stays broken when it grows at its end, so from each start the
    runs are extended only while they hold: O(n * run length), not O(n^3).
    """
    ordered = sorted(set(spans))
    best = [0] + [len(ordered) + 1] * len(ordered)
    for j, (start, count) in enumerate(ordered):
        end = start + count
        for i in range(j, len(ordered)):
            address, size = ordered[i]
            if i > j and address - end > gap:
                break
            end = max(end, address + size)
            if end - start > limit:
                break
            best[i + 1] = min(best[i + 1], best[j] + 1)
    return best[-1]
