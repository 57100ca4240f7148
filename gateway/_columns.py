"""The columns of one series: delta and run-length items, value columns, quality runs.

docs/wire-format.md sections 3.2-3.5 say what each column means; this module only writes
them. Every function works on whole columns with C-level passes (``map``, slicing, a regex
over a bytes mask of equal neighbours), because a batch's cost is per series as much as per
reading: 5000 readings of 100 points are 100 columns of 50.
"""

from __future__ import annotations

import math
import re
from array import array
from itertools import groupby, repeat
from operator import mul, ne, sub, truediv
from typing import TYPE_CHECKING, Any

from gateway._cbor import Raw, tiny_array
from gateway._wire import (
    DECIMAL,
    INT_DELTA,
    MAX_MANTISSA,
    PLAIN,
    POW10,
    QUALITIES,
    UINT_END,
    VALUE_TYPES,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from drivers.api import Value

__all__ = ["isize", "plain_items", "rle", "split_quality", "steps", "value_column"]

#: Two or more equal neighbours in a mask with a zero byte where ``a[i] == a[i + 1]``: a run
#: of three or more.
_RUNS = re.compile(rb"\x00\x00+")


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


def _small(ints: list[int]) -> bytes | None:
    """The ints one byte each when they all fit in -128..127 (most deltas do), else None."""
    try:
        return array("b", ints).tobytes()
    except OverflowError:
        return None


def _equal_runs(items: Sequence[Any], packed: bytes | None = None) -> list[tuple[int, int]]:
    """``(start, count)`` of each maximal run of 3 or more neighbours equal by ``==``.

    ``packed``: the items as one byte each, when each fits in one: XOR with itself shifted by
    one byte then makes the mask in a few big-int operations instead of a compare per item.
    """
    if packed is None:
        mask = bytes(map(ne, items[1:], items[:-1]))
    elif len(packed) < 3:
        return []
    else:
        mask = (int.from_bytes(packed[1:]) ^ int.from_bytes(packed[:-1])).to_bytes(
            len(packed) - 1)
    if b"\0\0" not in mask:
        return []
    return [(m.start(), m.end() - m.start() + 1) for m in _RUNS.finditer(mask)]


def steps(k: int, d: int) -> list[Any]:
    """The delta items of ``k`` deltas all equal to ``d`` (lockstep seqs and timestamps)."""
    return _run(k, d) or [d] * k


def _written_runs(deltas: list[int], packed: bytes | None) -> list[tuple[int, int]]:
    """``(start, count)`` of the runs of equal deltas that are shorter as ``[count, delta]``."""
    if len(deltas) < 3:
        return []
    first = deltas[0]
    if deltas.count(first) == len(deltas):  # lockstep seqs and timestamps: one run
        return [(0, len(deltas))] if _run(len(deltas), first) else []
    return [(start, k) for start, k in _equal_runs(deltas, packed)
            if _run(k, deltas[start]) is not None]


def rle(deltas: list[int]) -> list[Any]:
    """Delta items: each a delta, or ``[count, delta]`` for a run where that is shorter."""
    return _rle(deltas, _small(deltas) if len(deltas) >= 3 else None)


def _rle(deltas: list[int], packed: bytes | None) -> list[Any]:
    """:func:`rle`; ``packed``: ``_small(deltas)``."""
    runs = _written_runs(deltas, packed)
    if not runs:
        return deltas
    out: list[Any] = []
    done = 0
    for start, k in runs:
        out += deltas[done:start]
        out.append([k, deltas[start]])
        done = start + k
    out += deltas[done:]
    return out


def _delta_column(prefix: list[int], deltas: list[int], packed: bytes | None,
                  ) -> list[Any] | Raw:
    """``[*prefix, *delta items]``; as CBOR already when every delta is in -24..23.

    ``packed``: ``_small(deltas)``.
    """
    if packed is not None:
        raw = tiny_array(prefix, packed)
        if raw is not None:
            return raw
    return [*prefix, *_rle(deltas, packed)]


def _same(v: Value) -> tuple[type, Any]:
    # Runs must not merge True with 1, 1 with 1.0, or 0.0 with -0.0.
    return (float, v.hex()) if type(v) is float else (type(v), v)


def plain_items(values: Sequence[Value], kinds: set[type] | None = None) -> list[Any]:
    """Native values; ``[count, value]`` for a run of 3 or more equal values.

    ``kinds``: the values' types, when the caller has them.
    """
    kinds = set(map(type, values)) if kinds is None else kinds
    if len(kinds) == 1 and float not in kinds and kinds <= VALUE_TYPES:  # == is sameness
        if len(values) >= 3 and values.count(values[0]) == len(values):
            return [[len(values), values[0]]]  # a door that stayed shut all batch
        out: list[Any] = []
        done = 0
        packed = bytes(values) if kinds == {bool} else None  # type: ignore[arg-type]
        for start, k in _equal_runs(values, packed):
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


#: Mantissas known good per decimal count k: ``{v: m}`` with ``m / 10**k == v`` and
#: ``|m| <= 2**53``. Sensor values repeat (a voltage rounded to 2 decimals takes a few thousand
#: values), so most decimal columns cost a dict lookup per value instead of a multiply, a
#: round, a divide and a compare. The memo of a pure function: a hit is what the computation
#: would give. Bounded: cleared when full.
_MEMO: list[dict[float, int]] = [{} for _ in POW10]
_MEMO_MAX = 8192


def _scaled(values: list[float], k: int) -> tuple[list[int] | None, list[float]]:
    """``(mantissas, [])`` when every value is ``m / 10**k`` with ``|m| <= 2**53``, else
    ``(None, the values that are not)``, or ``(None, [])`` when a mantissa is too large.

    Raises ValueError or OverflowError for NaN and infinities.
    """
    memo = _MEMO[k]
    try:
        return list(map(memo.__getitem__, values)), []
    except KeyError:
        pass
    scale = POW10[k]
    mantissas = list(map(round, map(mul, values, repeat(scale))))
    if list(map(truediv, mantissas, repeat(scale))) != values:
        return None, [v for v, m in zip(values, mantissas, strict=True) if m / scale != v]
    if max(mantissas) > MAX_MANTISSA or min(mantissas) < -MAX_MANTISSA:
        return None, []
    if len(memo) > _MEMO_MAX:
        memo.clear()
    memo.update(zip(values, mantissas, strict=True))
    return mantissas, []


#: ``_places`` of values seen before: the memo of a pure function, bounded like ``_MEMO``.
_PLACES: dict[float, int | None] = {}


def _most_places(values: list[float]) -> int | None:
    """The most decimals any value needs (``max`` of :func:`_places`); None if one has none."""
    try:
        return max(map(_PLACES.__getitem__, values))  # type: ignore[type-var]
    except KeyError:
        pass
    except TypeError:  # a None among them
        return None
    if len(_PLACES) > _MEMO_MAX:
        _PLACES.clear()
    places = [_PLACES[v] if v in _PLACES else _PLACES.setdefault(v, _places(v)) for v in values]
    return None if None in places else max(places)  # type: ignore[type-var]


def _mantissas(values: list[float]) -> tuple[int, list[int]] | None:
    """Decimals k and mantissas for a scaled-decimal column, or None when there are none.

    k is the most decimals any value needs, when every value comes back with that many (the
    usual case: two lookups per value once the values have been seen). Otherwise
    :func:`_mantissas_search` looks further; both give the same k (docs/wire-format.md 3.4).
    """
    try:
        k = _most_places(values)
        if k is not None:
            mantissas, failing = _scaled(values, k)
            if mantissas is not None:
                return k, mantissas
            if not failing:
                return None
    except (ValueError, OverflowError):  # NaN, infinities
        return None
    return _mantissas_search(values)


def _mantissas_search(values: list[float]) -> tuple[int, list[int]] | None:
    """:func:`_mantissas` when some value does not come back with the most decimals any needs.

    k starts at what the first value needs; when some value does not come back, k becomes
    the most any such value needs, until all do. Large values can come back with fewer
    decimals and not with more (``6850897751689904.0`` at k=0 but not at k=5); once k repeats
    it would go round for ever, so there is no k.
    """
    k = _places(values[0])
    tried: set[int] = set()
    try:
        while k is not None and k not in tried:
            tried.add(k)
            mantissas, failing = _scaled(values, k)
            if mantissas is not None or not failing:
                return None if mantissas is None else (k, mantissas)
            # What the loop would reach next, found without _places on every failing value:
            # when all values come back with the decimals one failing value needs, none needs
            # more, and that is the most any failing value needs.
            k_next = _places(failing[0])
            if k_next is None:
                return None
            mantissas, more = _scaled(values, k_next)
            if mantissas is not None or not more:
                return None if mantissas is None else (k_next, mantissas)
            needs = [_places(v) for v in failing]
            if None in needs:
                return None
            k = max(n for n in needs if n is not None)
    except (ValueError, OverflowError):  # NaN, infinities
        return None
    return None


def _decimal_column(values: list[float]) -> list[Any] | Raw | None:
    """``[2, k, m0, *delta items]`` when every value is exactly ``m / 10**k``, else None."""
    found = _mantissas(values)
    if found is None:
        return None
    k, mantissas = found
    if 0.0 in values and any(math.copysign(1.0, v) < 0 for v in values if v == 0):
        return None  # -0.0 would come back as 0.0
    deltas = list(map(sub, mantissas[1:], mantissas[:-1]))
    return _delta_column([DECIMAL, k, mantissas[0]], deltas, _small(deltas))


def value_column(values: list[Value]) -> list[Any] | Raw:
    """The value column: int deltas, scaled decimals or plain items (section 3.4)."""
    kinds = set(map(type, values))
    if kinds == {int}:
        ints: list[int] = values  # type: ignore[assignment]
        deltas = list(map(sub, ints[1:], ints[:-1]))
        packed = _small(deltas)
        widest = isize(max(max(ints), -min(ints)))  # noqa: PLW3301 - two C passes, no 2nd list
        # Deltas when they are no wider than the values (counters, slow-moving readings); a
        # delta that fits in a byte is at most 2 bytes wide.
        if (packed is not None and widest >= 2) or isize(
                max(map(abs, deltas), default=0)) <= widest:
            return _delta_column([INT_DELTA, ints[0]], deltas, packed)
    elif kinds == {float}:
        column = _decimal_column(values)  # type: ignore[arg-type]
        if column is not None:
            return column
    elif not kinds <= VALUE_TYPES:
        return value_column(list(map(_native, values)))
    return [PLAIN, *plain_items(values, kinds)]


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
