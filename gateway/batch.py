"""The batch: the CBOR payload of one signed message, readings grouped per point.

docs/wire-format.md is the specification (CDDL, encoding rules, examples); this module is
its reference encoder and a strict decoder.
"""

from __future__ import annotations

import math
from itertools import groupby, repeat
from operator import and_, eq, itemgetter, mul, sub, truediv
from typing import TYPE_CHECKING, Any

import cbor2

from gateway._wire import (
    CORE_KEYS,
    DECIMAL,
    FORMAT_VERSION,
    INT_DELTA,
    K_BATCH_SEQ,
    K_EPOCH,
    K_FIRST_SEQ,
    K_GAPS,
    K_GATEWAY,
    K_LAST_SEQ,
    K_LOSSES,
    K_SERIES,
    K_T0,
    K_VERSION,
    MAX_LOSSES,
    MAX_MANTISSA,
    MAX_READINGS,
    MAX_REASON,
    OPT_BAD_VALUES,
    OPT_QUALITY,
    PLAIN,
    POW10,
    QUALITIES,
    UINT_END,
    VALUE_TYPES,
    Batch,
    BatchFormatError,
    decode,
)
from gateway.cose import strict_loads

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from buffer.types import Gap, Loss, Row
    from drivers.api import Value

__all__ = ["FORMAT_VERSION", "MAX_LOSSES", "MAX_READINGS", "Batch", "BatchFormatError",
           "decode_batch", "encode_batch"]

# ---------------------------------------------------------------- encoding


def _isize(v: int) -> int:
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


def _has_triple(items: Sequence[Any]) -> bool:
    """Whether three neighbours are equal (``==``): the shortest run worth writing."""
    pairs = list(map(eq, items[1:], items[:-1]))
    return any(map(and_, pairs[1:], pairs[:-1]))


def _rle(deltas: list[int]) -> list[Any]:
    """Delta items: each a delta, or ``[count, delta]`` for a run where that is shorter."""
    if len(deltas) < 3:
        return deltas
    first = deltas[0]
    if deltas.count(first) == len(deltas):  # lockstep seqs and timestamps: one run
        return _run(len(deltas), first) or deltas
    if not _has_triple(deltas):
        return deltas
    out: list[Any] = []
    for d, group in groupby(deltas):
        k = len(list(group))
        if k == 1:
            out.append(d)
        else:
            out.extend(_run(k, d) or repeat(d, k))
    return out


def _run(k: int, d: int) -> list[list[int]] | None:
    """``[[k, d]]`` when the run is shorter than k copies of d, else None."""
    if k >= 3 and k * _isize(d) > 1 + _isize(k) + _isize(d):
        return [[k, d]]
    return None


def _same(v: Value) -> tuple[type, Any]:
    # Runs must not merge True with 1, 1 with 1.0, or 0.0 with -0.0.
    return (float, v.hex()) if type(v) is float else (type(v), v)


def _plain_items(values: Sequence[Value]) -> list[Any]:
    """Native values; ``[count, value]`` for a run of 3 or more equal values."""
    kinds = set(map(type, values))
    if len(kinds) == 1 and float not in kinds:  # one exact type: == is sameness
        if not _has_triple(values):
            return list(values)
        groups: Iterable[Iterable[Value]] = (g for _v, g in groupby(values))
    else:
        groups = (g for _k, g in groupby(values, key=_same))
    out: list[Any] = []
    for group in groups:
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


def _decimal_column(values: tuple[float, ...]) -> list[Any] | None:
    """``[2, k, m0, *delta items]`` when every value is exactly ``m / 10**k``, else None."""
    k = _places(values[0])
    while k is not None:
        scale = POW10[k]
        try:
            mantissas = list(map(round, map(mul, values, repeat(scale))))
        except (ValueError, OverflowError):
            return None
        if tuple(map(truediv, mantissas, repeat(scale))) == values:
            break
        needs = [_places(v) for v, m in zip(values, mantissas, strict=True) if m / scale != v]
        if None in needs:
            return None
        k = max(n for n in needs if n is not None)
    else:
        return None
    if max(mantissas) > MAX_MANTISSA or min(mantissas) < -MAX_MANTISSA:
        return None
    if 0.0 in values and any(math.copysign(1.0, v) < 0 for v in values if v == 0):
        return None  # -0.0 would come back as 0.0
    return [DECIMAL, k, mantissas[0], *_rle(list(map(sub, mantissas[1:], mantissas[:-1])))]


def _value_column(values: tuple[Value, ...]) -> list[Any]:
    kinds = set(map(type, values))
    if kinds == {int}:
        ints: tuple[int, ...] = values  # type: ignore[assignment]
        deltas = list(map(sub, ints[1:], ints[:-1]))
        # Deltas when they are no wider than the values (counters, slow-moving readings).
        if _isize(max(map(abs, deltas), default=0)) <= _isize(max(map(abs, ints))):
            return [INT_DELTA, ints[0], *_rle(deltas)]
    elif kinds == {float}:
        column = _decimal_column(values)  # type: ignore[arg-type]
        if column is not None:
            return column
    elif not kinds <= VALUE_TYPES:
        return _value_column(tuple(map(_native, values)))
    return [PLAIN, *_plain_items(values)]


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


def _split_quality(quals: tuple[int, ...], values: tuple[Value, ...]) -> tuple[
        list[list[int]], tuple[Value, ...], list[Value]]:
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
            bad.extend(values[i:i + k])
        else:
            good.extend(values[i:i + k])
        i += k
    return runs, tuple(good), bad


class _Encoder:
    """Builds the series array; holds the string table and the timestamp columns seen."""

    def __init__(self, first_seq: int, t0: int) -> None:
        self.strings: dict[str, int] = {}
        self.n_strings = 0
        self.ts_seen: dict[tuple[int, ...], int] = {}
        self.prev_first = first_seq
        self.t0 = t0
        self.series: list[list[Any]] = []

    def refs(self, parts: list[str]) -> list[str | int]:
        """Each part as a table index when that is shorter, else as text (appended)."""
        out: list[str | int] = []
        for part in parts:
            i = self.strings.get(part)
            if i is not None and (i < 24 or _isize(i) <= len(part)):
                out.append(i)
            else:
                self.strings.setdefault(part, self.n_strings)
                self.n_strings += 1
                out.append(part)
        return out

    def add(self, point: str, unit: str | None, group: list[Row]) -> None:
        seqs, _, _, tss, values, quals = zip(*group, strict=True)
        deltas = list(map(sub, seqs[1:], seqs[:-1]))
        if deltas and min(deltas) <= 0:
            group.sort(key=itemgetter(0))
            seqs, _, _, tss, values, quals = zip(*group, strict=True)
            deltas = list(map(sub, seqs[1:], seqs[:-1]))
        item: list[Any] = [self.refs(point.split("/")), None if unit is None else
                           self.refs([unit])[0],
                           [seqs[0] - self.prev_first, *_rle(deltas)], self._ts(tss)]
        self.prev_first = seqs[0]
        if any(quals):
            runs, values, bad = _split_quality(quals, values)
            item.append(_value_column(values))
            options: dict[int, Any] = {OPT_QUALITY: runs}
            if any(v is not None for v in bad):
                options[OPT_BAD_VALUES] = _plain_items(bad)
            item.append(options)
        else:
            item.append(_value_column(values))
        self.series.append(item)

    def _ts(self, tss: tuple[int, ...]) -> int | list[Any]:
        i = len(self.series)
        before = self.ts_seen.get(tss)
        self.ts_seen[tss] = i
        if before is not None:
            return i - before  # same timestamps as the series that many places back
        return [tss[0] - self.t0, *_rle(list(map(sub, tss[1:], tss[:-1])))]


def _check_header(gateway_id: str, epoch: int, batch_seq: int,
                  extra: Mapping[int, Any] | None) -> None:
    if not isinstance(gateway_id, str) or not gateway_id:
        raise ValueError("gateway_id must be a non-empty string")
    for name, v in (("epoch", epoch), ("batch_seq", batch_seq)):
        if type(v) is not int or not 0 <= v < UINT_END:
            raise ValueError(f"{name} must be an unsigned 64-bit int; got {v!r}")
    for key in extra or ():
        if type(key) is not int or key in CORE_KEYS:
            raise ValueError(f"extra key {key!r}: must be an int outside the core keys 0-8 "
                             "and 11")


def _group(rows: Sequence[Row]) -> dict[tuple[str, str | None], list[Row]]:
    groups: dict[tuple[str, str | None], list[Row]] = {}
    for row in rows:
        key = row[1], row[2]
        group = groups.get(key)
        if group is None:
            if not isinstance(row[1], str) or not (row[2] is None or isinstance(row[2], str)):
                raise ValueError(f"row {row!r}: point must be str and unit str or None")
            groups[key] = [row]
        else:
            group.append(row)
    return groups


def _seq_range(rows: Sequence[Row], gaps: Sequence[Gap]) -> tuple[int, int]:
    seqs = list(map(itemgetter(0), rows))
    if rows:
        if not set(map(type, seqs)) <= {int} or min(seqs) < 0:
            raise ValueError("row seqs must be non-negative ints")
        if len(set(seqs)) != len(seqs):
            raise ValueError("row seqs must be unique within a batch")
    for g in gaps:
        if not 0 <= g.first_seq <= g.last_seq or g.count < 0:
            raise ValueError(f"gap {g!r}: expected 0 <= first_seq <= last_seq, count >= 0")
        seqs += (g.first_seq, g.last_seq)
    return min(seqs), max(seqs)


def _is_uint(v: object) -> bool:
    return type(v) is int and 0 <= v < UINT_END


def _loss_item(loss: Loss) -> list[Any]:
    """``[epoch, first_seq, last_seq, count, first_ts, last_ts, reason]``; ValueError if bad."""
    item = [loss.epoch, loss.first_seq, loss.last_seq, loss.count, loss.first_ts, loss.last_ts,
            loss.reason]
    if not _is_uint(loss.epoch) or not all(v is None or _is_uint(v) for v in item[1:4]) \
            or not all(v is None or type(v) is int for v in item[4:6]):
        raise ValueError(f"loss {loss!r}: epoch must be an unsigned 64-bit int, seqs and count "
                         "unsigned 64-bit ints or None, timestamps ints or None")
    if loss.last_seq is not None and (loss.first_seq is None or loss.last_seq < loss.first_seq):
        raise ValueError(f"loss {loss!r}: last_seq needs a first_seq no higher than it")
    if type(loss.reason) is not str or not 1 <= len(loss.reason) <= MAX_REASON:
        raise ValueError(f"loss {loss!r}: reason must be a text of 1 to {MAX_REASON} characters")
    return item


def encode_batch(*, gateway_id: str, epoch: int, batch_seq: int, rows: Sequence[Row],
                 gaps: Sequence[Gap] = (), losses: Sequence[Loss] = (),
                 extra: Mapping[int, Any] | None = None) -> bytes:
    """The CBOR payload for ``rows``, ``gaps`` and ``losses`` (docs/wire-format.md).

    Losses do not widen the batch's seq range (keys 4 and 5); ``Loss.key`` is not sent.
    Raises ValueError for input the decoder would refuse.
    """
    _check_header(gateway_id, epoch, batch_seq, extra)
    if len(losses) > MAX_LOSSES:
        raise ValueError(f"{len(losses)} loss records exceed the {MAX_LOSSES} a batch may carry")
    loss_items = [_loss_item(loss) for loss in losses]
    if len(rows) > MAX_READINGS:
        raise ValueError(f"{len(rows)} readings exceed the {MAX_READINGS} a batch may carry")
    doc: dict[int, Any] = {K_VERSION: FORMAT_VERSION, K_GATEWAY: gateway_id, K_EPOCH: epoch,
                           K_BATCH_SEQ: batch_seq}
    if rows or gaps:
        doc[K_FIRST_SEQ], doc[K_LAST_SEQ] = _seq_range(rows, gaps)
    if rows:
        if not set(map(type, map(itemgetter(3), rows))) <= {int}:
            raise ValueError("timestamps must be int milliseconds")
        t0 = min(map(itemgetter(3), rows))
        encoder = _Encoder(doc[K_FIRST_SEQ], t0)
        for (point, unit), group in _group(rows).items():
            encoder.add(point, unit, group)
        doc[K_T0] = t0
        doc[K_SERIES] = encoder.series
    if gaps:
        doc[K_GAPS] = [[g.first_seq, g.last_seq, g.count, g.first_ts, g.last_ts, list(g.points),
                        bool(g.points_truncated)] for g in gaps]
    if loss_items:
        doc[K_LOSSES] = loss_items
    doc.update(extra or {})
    # Canonical mode writes each float in its shortest exact form (RFC 8949 §4.1).
    return cbor2.dumps(doc, canonical=True)


def decode_batch(payload: bytes) -> Batch:
    """Decode and check a batch payload; raises :class:`BatchFormatError` saying what is wrong."""
    try:
        doc = strict_loads(payload, what="batch")
    except ValueError as exc:
        raise BatchFormatError(str(exc)) from None
    return decode(doc)
