"""The columns of one series: delta and run-length items, value columns, quality runs.

docs/wire-format.md sections 3.2-3.5 say what each column means; this module only writes
them. Every function works on whole columns with C-level passes (``map``, slicing, a regex
over a bytes mask of equal neighbours), because a batch's cost is per series as much as per
reading: 5000 readings of 100 points are 100 columns of 50.
"""

from __future__ import annotations

import math
import re
from itertools import groupby, repeat
from operator import eq, mul, sub, truediv
from typing import TYPE_CHECKING, Any

from gateway._wire import DECIMAL, INT_DELTA, MAX_MANTISSA, PLAIN, POW10, QUALITIES, UINT_END, \
    VALUE_TYPES

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from drivers.api import Value

__all__ = ["isize", "plain_items", "rle", "split_quality", "steps", "value_column"]

#: Two or more equal neighbours in a mask of ``a[i] == a[i + 1]``: a run of three or more.
_RUNS = re.compile(rb"\x01\x01+")


def isize(v: int) -> int:
    """Bytes of a CBOR integer (RFC 8949 §3.1; bignums §3.4.3)."""
    n = v if v >= 0 else -1 - v
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9 if n < UINT_END else 3 + (n.bit_length() + 7) // 8


def _run(k: int, d: int) -> list[list[int]] | None:
    """``[[k, d]]`` when the run is shorter than k copies of d, else None."""
    if k >= 3 and k * isize(d) > 1 + isize(k) + isize(d):
        return [[k, d]]
    return None


def _equal_runs(items: Sequence[Any]) -> list[tuple[int, int]]:
    """``(start, count)`` of each maximal run of 3 or more neighbours equal by ``==``."""
    mask = bytes(map(eq, items[1:], items[:-1]))
    return [(m.start(), m.end() - m.start() + 1) for m in _RUNS.finditer(mask)]


def steps(k: int, d: int) -> list[Any]:
    """The delta items of ``k`` deltas all equal to ``d`` (lockstep seqs and timestamps)."""
    return _run(k, d) or [d] * k


def rle(deltas: list[int]) -> list[Any]:
    """Delta items: each a delta, or ``[count, delta]`` for a run where that is shorter."""
    if len(deltas) < 3:
        return deltas
    first = deltas[0]
    if deltas.count(first) == len(deltas):
        return steps(len(deltas), first)
    out: list[Any] = []
    done = 0
    for start, k in _equal_runs(deltas):
        run = _run(k, deltas[start])
        if run is not None:
            out += deltas[done:start]
            out += run
            done = start + k
    if not done:
        return deltas
    out += deltas[done:]
    return out


def _same(v: Value) -> tuple[type, Any]:
    # Runs must not merge True with 1, 1 with 1.0, or 0.0 with -0.0.
    return (float, v.hex()) if type(v) is float else (type(v), v)


def plain_items(values: Sequence[Value]) -> list[Any]:
    """Native values; ``[count, value]`` for a run of 3 or more equal values."""
    kinds = set(map(type, values))
    if len(kinds) == 1 and float not in kinds and kinds <= VALUE_TYPES:  # == is sameness
        out: list[Any] = []
        done = 0
        for start, k in _equal_runs(values):
            out += values[done:start]
            out.append([k, values[start]])
            done = start + k
        out += values[done:]
        return out
    out = []
    for _k, group in groupby(values, key=_same):
        run = list(group)
        if len(run) >= 3:
            out.append([len(run), run[0]])
        else:
            out.extend(run)
    return out


def _places(v: float) -> int | None:
    """Fewest decimals k with ``round(v * 10**k) / 10**k == v``; None when there is none."""
    try:
        for k, scale in enumerate(POW10):
            if round(v * scale) / scale == v:
                return k
    except (ValueError, OverflowError):  # NaN, infinities
        return None
    return None


def _mantissas(values: list[float]) -> tuple[int, list[int]] | None:
    """The fewest decimals k and mantissas m with every ``m / 10**k == v`` (bit for bit)."""
    k = _places(values[0])
    while k is not None:
        scale = POW10[k]
        try:
            mantissas = list(map(round, map(mul, values, repeat(scale))))
        except (ValueError, OverflowError):
            return None
        if list(map(truediv, mantissas, repeat(scale))) == values:
            return k, mantissas
        needs = [_places(v) for v, m in zip(values, mantissas, strict=True) if m / scale != v]
        if None in needs:
            return None
        k = max(n for n in needs if n is not None)
    return None


def _decimal_column(values: list[float]) -> list[Any] | None:
    """``[2, k, m0, *delta items]`` when every value is exactly ``m / 10**k``, else None."""
    found = _mantissas(values)
    if found is None:
        return None
    k, mantissas = found
    if max(mantissas) > MAX_MANTISSA or min(mantissas) < -MAX_MANTISSA:
        return None
    if 0.0 in values and any(math.copysign(1.0, v) < 0 for v in values if v == 0):
        return None  # -0.0 would come back as 0.0
    return [DECIMAL, k, mantissas[0], *rle(list(map(sub, mantissas[1:], mantissas[:-1])))]


def value_column(values: list[Value]) -> list[Any]:
    """The value column: int deltas, scaled decimals or plain items (section 3.4)."""
    kinds = set(map(type, values))
    if kinds == {int}:
        ints: list[int] = values  # type: ignore[assignment]
        deltas = list(map(sub, ints[1:], ints[:-1]))
        # Deltas when they are no wider than the values (counters, slow-moving readings).
        if isize(max(map(abs, deltas), default=0)) <= isize(max(max(ints), -min(ints))):
            return [INT_DELTA, ints[0], *rle(deltas)]
    elif kinds == {float}:
        column = _decimal_column(values)  # type: ignore[arg-type]
        if column is not None:
            return column
    elif not kinds <= VALUE_TYPES:
        return value_column(list(map(_native, values)))
    return [PLAIN, *plain_items(values)]


def _native(v: Any) -> Value:
    """The plain built-in value for a subclass (an IntEnum, a bytearray); ValueError if none."""
    for base in (bool, int, float, str):
        if isinstance(v, base):
            return base(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    if v is None:
        return None
    raise ValueError(f"values must be bool, int, float, str, bytes or None; got {v!r}")


def split_quality(quals: Iterable[int], values: list[Value]) -> tuple[
        list[list[int]], list[Value], list[Value]]:
    """Quality runs ``[index, code(, count)]``, good values, bad values (in order)."""
    runs: list[list[int]] = []
    good: list[Value] = []
    bad: list[Value] = []
    i = 0
    for code, group in groupby(quals):
        k = len(list(group))
        if code:
            if isinstance(code, bool) or code not in QUALITIES:
                raise ValueError(f"quality {code!r} is not a drivers.api.Quality")
            runs.append([i, int(code)] if k == 1 else [i, int(code), k])
            bad += values[i:i + k]
        else:
            good += values[i:i + k]
        i += k
    return runs, good, bad
