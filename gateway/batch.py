"""The batch: the CBOR payload of one signed message, readings grouped per point.

docs/wire-format.md is the specification (CDDL, encoding rules, examples); this module is
its reference encoder and a strict decoder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from operator import itemgetter, lt, sub
from typing import TYPE_CHECKING, Any

import cbor2

from buffer._chunks import Rows
from gateway._cbor import write_raw
from gateway._columns import isize, plain_items, rle, split_quality, steps, value_column
from gateway._wire import (
    CORE_KEYS,
    FORMAT_VERSION,
    K_BATCH_SEQ,
    K_EPOCH,
    K_FIRST_SEQ,
    K_GAPS,
    K_GATEWAY,
    K_LAST_SEQ,
    K_LOSSES,
    K_SERIES,
    K_T0,
    K_UNCHANGED,
    K_VERSION,
    MAX_LOSSES,
    MAX_READINGS,
    MAX_REASON,
    OPT_BAD_VALUES,
    OPT_HEARTBEAT,
    OPT_QUALITY,
    UINT_END,
    Batch,
    BatchFormatError,
    Unchanged,
    decode,
)
from gateway.cose import strict_loads

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from buffer.types import Gap, Loss, Row
    from drivers.api import Value

__all__ = ["FORMAT_VERSION", "MAX_LOSSES", "MAX_READINGS", "Batch", "BatchFormatError",
           "decode_batch", "encode_batch"]

# ---------------------------------------------------------------- encoding

_SEQ, _POINT, _UNIT, _TS, _VALUE, _QUALITY = map(itemgetter, range(6))
_INT = frozenset({int})


_Name = tuple[list[str | int], str | int | None]  # a series' name and unit, as written


@functools.lru_cache(maxsize=8)
def _names(keys: tuple[tuple[str, str | None], ...]) -> list[_Name]:
    """Each series' name (split at "/") and unit as strrefs, through one string table.

    A gateway sends the same points in the same order batch after batch: cached.
    """
    strings: dict[str, int] = {}  # each text's first index in the decoder's table
    n = 0  # the table's length: every text written is appended, repeats too

    def ref(part: str) -> str | int:
        """A table index when that is shorter, else the text."""
        nonlocal n
        i = strings.get(part)
        if i is not None and (i < 24 or isize(i) <= len(part)):
            return i
        strings.setdefault(part, n)
        n += 1
        return part

    return [([ref(part) for part in point.split("/")], None if unit is None else ref(unit))
            for point, unit in keys]


class _Encoder:
    """Builds the series array; holds the timestamp columns seen."""

    def __init__(self, first_seq: int, t0: int) -> None:
        #: Timestamp columns of the series before the latest one, and where each was last.
        self.ts_seen: dict[tuple[int, ...], int] = {}
        self.last_ts: list[int] | None = None
        self.prev_first = first_seq
        self.t0 = t0
        self.series: list[list[Any]] = []

    def add(self, name: _Name, seqs: Sequence[int], tss: list[int], values: list[Value],
            quals: list[int] | None, *, step: int | None, heartbeat: int | None = None) -> None:
        """One series, seqs ascending; ``step``: the delta between all its seqs, when known."""
        seq_items = rle(list(map(sub, seqs[1:], seqs[:-1]))) if step is None else steps(
            len(seqs) - 1, step)
        item: list[Any] = [*name, [seqs[0] - self.prev_first, *seq_items], self._ts(tss)]
        self.prev_first = seqs[0]
        if quals is not None and any(quals):
            runs, values, bad = split_quality(quals, values)
            item.append(value_column(values))
            options: dict[int, Any] = {OPT_QUALITY: runs}
            if any(v is not None for v in bad):
                options[OPT_BAD_VALUES] = plain_items(bad)
            if heartbeat is not None:
                options[OPT_HEARTBEAT] = heartbeat
            item.append(options)
        else:
            item.append(value_column(values))
            if heartbeat is not None:
                item.append({OPT_HEARTBEAT: heartbeat})
        self.series.append(item)

    def _ts(self, tss: list[int]) -> int | list[Any]:
        last = self.last_ts
        if tss == last:
            return 1  # lockstep: the same timestamps as the series just before
        i = len(self.series)
        if last is not None:
            self.ts_seen[tuple(last)] = i - 1
        self.last_ts = tss
        before = self.ts_seen.get(tuple(tss))
        if before is not None:
            return i - before  # same timestamps as the series that many places back
        return [tss[0] - self.t0, *rle(list(map(sub, tss[1:], tss[:-1])))]


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


def _lockstep(ids: list[list[Any]]) -> int:
    """The period p when the id columns cycle through p distinct ids in one order, else 0."""
    try:
        p = len(set(ids[0]))
    except TypeError:  # unhashable: the general path says which row
        return 0
    return p if all(col[p:] == col[:-p] for col in ids) else 0


def _valid_key(key: tuple[Any, Any]) -> bool:
    return isinstance(key[0], str) and (key[1] is None or isinstance(key[1], str))


def _group(rows: Sequence[Row], points: list[str], units: list[str | None],
           ) -> dict[tuple[str, str | None], list[int]]:
    """The row indexes of each (point, unit), in order of first appearance."""
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, key in enumerate(zip(points, units, strict=True)):
        group = groups.get(key)
        if group is None:
            if not _valid_key(key):
                raise ValueError(f"row {rows[i]!r}: point must be str and unit str or None")
            groups[key] = [i]
        else:
            group.append(i)
    return groups


def _check_seqs(seqs: Sequence[int]) -> tuple[bool, bool]:
    """``(contiguous, ascending)``; ValueError unless the seqs are unique non-negative ints."""
    if isinstance(seqs, range):
        contiguous = seqs.step == 1
        if contiguous and (not seqs or seqs.start >= 0):
            return True, True
        seqs = list(seqs)
    if not seqs:
        return True, True
    if not set(map(type, seqs)) <= _INT:
        raise ValueError("row seqs must be non-negative ints")
    first = seqs[0]
    contiguous = seqs == list(range(first, first + len(seqs)))
    if (first if contiguous else min(seqs)) < 0:
        raise ValueError("row seqs must be non-negative ints")
    if contiguous:
        return True, True
    if len(set(seqs)) != len(seqs):
        raise ValueError("row seqs must be unique within a batch")
    return False, all(map(lt, seqs, seqs[1:]))


def _seq_range(seqs: Sequence[int], ascending: bool, gaps: Sequence[Gap]) -> tuple[int, int]:
    ends = [seqs[0], seqs[-1]] if ascending and seqs else [min(seqs), max(seqs)] if seqs else []
    for g in gaps:
        if not 0 <= g.first_seq <= g.last_seq or g.count < 0:
            raise ValueError(f"gap {g!r}: expected 0 <= first_seq <= last_seq, count >= 0")
        ends += (g.first_seq, g.last_seq)
    return min(ends), max(ends)


_Pick = slice | list[int]  # a group's rows: a strided slice, or indexes in seq order


@dataclass(slots=True)
class _Table:
    """The rows as checked columns, and which rows form each series."""

    seqs: Sequence[int]  # a range when the store's seqs are consecutive
    ts: list[int]
    values: list[Value]
    quals: list[int] | None  # None: all good
    contiguous: bool
    ascending: bool
    groups: list[tuple[tuple[str, str | None], _Pick]] = field(default_factory=list)
    #: The delta between the seqs of every series, when the rows are lockstep and contiguous.
    step: int | None = None

    @classmethod
    def of(cls, rows: Sequence[Row]) -> _Table:
        """ValueError for rows the decoder would refuse (seqs, timestamps, names)."""
        if isinstance(rows, Rows):  # the store's columns: no tuples to take apart
            table = cls(rows.seqs, rows.ts, rows.values, rows.quals, *_check_seqs(rows.seqs))
            pids, names, units = rows.pids, rows.names, rows.units
            if not table.lockstep([pids], lambda j: (names[pids[j]], units[pids[j]])):
                table.group(rows, list(map(names.__getitem__, pids)),
                            list(map(units.__getitem__, pids)))
            return table
        seqs: list[int] = list(map(_SEQ, rows))
        table = cls(seqs, list(map(_TS, rows)), list(map(_VALUE, rows)),
                    list(map(_QUALITY, rows)), *_check_seqs(seqs))
        points: list[str] = list(map(_POINT, rows))
        units_: list[str | None] = list(map(_UNIT, rows))
        if not table.lockstep([points, units_], lambda j: (points[j], units_[j])):
            table.group(rows, points, units_)
        return table

    def __post_init__(self) -> None:
        if not set(map(type, self.ts)) <= _INT:
            raise ValueError("timestamps must be int milliseconds")
        if self.quals is not None and not any(self.quals):
            self.quals = None

    def lockstep(self, ids: list[list[Any]], key: Callable[[int], tuple[str, str | None]],
                 ) -> bool:
        """Every point once per cycle, in the same order: each series a strided slice."""
        p = _lockstep(ids) if self.ascending else 0
        keys = [key(j) for j in range(p)]
        if not p or not all(map(_valid_key, keys)) or len(set(keys)) != p:
            return False
        self.groups = [(k, slice(j, None, p)) for j, k in enumerate(keys)]
        self.step = p if self.contiguous else None
        return True

    def group(self, rows: Sequence[Row], points: list[str], units: list[str | None]) -> None:
        """Any order: the indexes of each (point, unit), in seq order."""
        groups = _group(rows, points, units)
        if not self.ascending:
            for idx in groups.values():
                idx.sort(key=self.seqs.__getitem__)
        self.groups = list(groups.items())

    def series(self, first_seq: int, heartbeats: Mapping[str, int] | None = None,
               ) -> tuple[int, list[list[Any]]]:
        """``(t0, the series array)``; ``heartbeats``: point -> ms (series option 2)."""
        t0 = min(self.ts)
        encoder = _Encoder(first_seq, t0)
        seqs, ts, values, quals = self.seqs, self.ts, self.values, self.quals
        names = _names(tuple(key for key, _ in self.groups))
        beat = (heartbeats or {}).get
        for name, (key, pick) in zip(names, self.groups, strict=True):
            if isinstance(pick, slice):
                encoder.add(name, seqs[pick], ts[pick], values[pick],
                            None if quals is None else quals[pick], step=self.step,
                            heartbeat=beat(key[0]))
            else:
                take = itemgetter(*pick) if len(pick) > 1 else lambda c, i=pick[0]: (c[i],)
                encoder.add(name, list(take(seqs)), list(take(ts)), list(take(values)),
                            None if quals is None else list(take(quals)), step=None,
                            heartbeat=beat(key[0]))
        return t0, encoder.series


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
                 unchanged: Unchanged | None = None,
                 heartbeats: Mapping[str, int] | None = None,
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
        table = _Table.of(rows)
        doc[K_FIRST_SEQ], doc[K_LAST_SEQ] = _seq_range(table.seqs, table.ascending, gaps)
        if rows:
            doc[K_T0], doc[K_SERIES] = table.series(doc[K_FIRST_SEQ], heartbeats)
    if gaps:
        doc[K_GAPS] = [[g.first_seq, g.last_seq, g.count, g.first_ts, g.last_ts, list(g.points),
                        bool(g.points_truncated)] for g in gaps]
    if loss_items:
        doc[K_LOSSES] = loss_items
    if unchanged is not None:
        doc[K_UNCHANGED] = unchanged.item()
    doc.update(extra or {})
    # Canonical mode writes each float in its shortest exact form (RFC 8949 §4.1).
    return cbor2.dumps(doc, canonical=True, default=write_raw)


def decode_batch(payload: bytes) -> Batch:
    """Decode and check a batch payload; raises :class:`BatchFormatError` saying what is wrong."""
    try:
        doc = strict_loads(payload, what="batch")
    except ValueError as exc:
        raise BatchFormatError(str(exc)) from None
    return decode(doc)
