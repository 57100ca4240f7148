"""One group commit's readings as one packed row (a chunk), and back.

A chunk holds readings with consecutive seqs ``base, base + 1, ...`` as four columns (point
ids, timestamps, values, qualities) serialized with :mod:`marshal` (format 4, readable by every
later Python) and compressed with zlib level 1. Columns keep each value's exact Python type
(bool, int of any size, float bits including NaN, str including lone surrogates, bytes,
None), so nothing needs a per-value tag. zlib's Adler-32 catches a damaged blob before
``marshal`` reads it. One row per commit instead of one per reading is what takes the disk
writes from ~87 to a few bytes per reading: point ids and timestamps repeat poll after poll
and compress to almost nothing.

The hot path checks types with a few C-level passes over the columns; only a commit that
fails them pays for a per-reading look (:func:`clean`).
"""

from __future__ import annotations

import logging
import marshal
import zlib
from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, overload

from buffer._codec import coerce, valid
from drivers.api import Quality

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from buffer.types import Row
    from drivers.api import Reading, Value

__all__ = [
    "CHUNK_MAX", "ChunkError", "Columns", "Rows", "clean", "pack", "pack_columns", "rows",
    "unpack",
]

log = logging.getLogger("streetgate.buffer")

#: Readings per chunk at most: a larger commit is stored as several chunks.
CHUNK_MAX = 8192
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_Q_MAX = 1 << 32
_Q_TYPES = frozenset({int, bool, Quality})
_TS_TYPES = frozenset({int, float})
_INT = {int}
_KEY, _TS, _VALUE, _QUALITY = itemgetter(0, 4), itemgetter(1), itemgetter(2), itemgetter(3)

#: (point ids, timestamps, values, qualities or None when all are good)
Columns = tuple[list[int], list[int], list["Value"], list[int] | None]


class ChunkError(ValueError):
    """A chunk blob that does not decompress or decode: the database is damaged."""


def pack(batch: Sequence[Reading], ids: Mapping[tuple[str, str | None], int],
         intern: Callable[[str, str | None], int]) -> tuple[bytes, int, int]:
    """``(blob, ts_min, ts_max)`` for ``batch``; ValueError/TypeError when a reading is bad.

    ``intern`` returns the id of a (point, unit) not in ``ids`` (and may raise ValueError for a
    name that cannot be stored).
    """
    get = ids.get
    pids = list(map(get, map(_KEY, batch)))
    if None in pids:
        pids = [p if p is not None else (get((r[0], r[4])) or intern(r[0], r[4]))
                for p, r in zip(pids, batch, strict=True)]
    ts = list(map(_TS, batch))
    types = set(map(type, ts))
    # A float timestamp is kept (it travels as MALFORMED: the reading existed); anything else
    # is refused.
    if types != _INT and (not types <= _TS_TYPES
                          or not all(_I64_MIN <= t <= _I64_MAX for t in ts)):
        raise TypeError("a timestamp is not a number in range")
    lo, hi = min(ts), max(ts)
    if lo < _I64_MIN or hi > _I64_MAX:
        raise ValueError("a timestamp is out of range")
    qs: list[int] | None = list(map(_QUALITY, batch))
    if not set(map(type, qs)) <= _Q_TYPES:  # type: ignore[arg-type]
        raise TypeError("a quality is not an int")
    if any(qs):  # type: ignore[arg-type]
        if not all(0 <= q < _Q_MAX for q in qs):  # type: ignore[union-attr]
            raise ValueError("a quality is out of range")
        qs = list(map(int, qs))  # type: ignore[arg-type]
    else:
        qs = None
    return pack_columns((pids, ts, list(map(_VALUE, batch)), qs)), lo, hi  # type: ignore[arg-type]


def pack_columns(cols: Columns) -> bytes:
    return zlib.compress(marshal.dumps(cols, 4), 1)


def clean(batch: list[Reading]) -> tuple[list[Reading], int]:
    """The readings that can be stored (values coerced to base types), and how many could not."""
    good = [coerce(r) for r in batch if valid(r)]
    return good, len(batch) - len(good)


def unpack(blob: bytes) -> Columns:
    try:
        # Only our own blobs, and zlib's Adler-32 has vouched for the bytes.
        cols = marshal.loads(zlib.decompress(blob))  # noqa: S302
    except (zlib.error, ValueError, EOFError, TypeError) as exc:
        raise ChunkError(f"damaged chunk: {exc}") from exc
    if not (isinstance(cols, tuple) and len(cols) == 4):
        raise ChunkError("damaged chunk: unexpected shape")
    return cols


class Rows(Sequence["Row"]):
    """Leased rows ``(seq, point, unit, ts, value, quality)``, held as the chunks' columns.

    A row tuple is built only when one is asked for; the batch encoder reads the columns
    (5000 tuples per lease cost more to build than the rest of the lease, and the encoder only
    took them apart again). The store builds one with :meth:`extend`; once handed out, nothing
    changes it.
    """

    __slots__ = ("names", "pids", "quals", "seqs", "ts", "units", "values")

    def __init__(self, seqs: range | list[int], pids: list[int], ts: list[int],
                 values: list[Value], quals: list[int] | None, *, names: Mapping[int, str],
                 units: Mapping[int, str | None]) -> None:
        self.seqs = seqs  # a range when the seqs are consecutive
        self.pids = pids
        self.ts = ts
        self.values = values
        self.quals = quals  # None: all good
        #: Point id to name and unit: the store's own maps (a committed id keeps its point).
        self.names = names
        self.units = units

    @classmethod
    def empty(cls) -> Rows:
        return cls(range(0), [], [], [], None, names={}, units={})

    def extend(self, more: Rows) -> None:
        """Append ``more``'s rows: the store builds a lease chunk by chunk, then hands it out."""
        if not more.pids:
            return
        if not self.pids:
            self.names, self.units = more.names, more.units
        seqs = self.seqs
        if isinstance(seqs, range) and isinstance(more.seqs, range) and (
                not seqs or more.seqs.start == seqs.stop):
            self.seqs = range(seqs.start if seqs else more.seqs.start, more.seqs.stop)
        else:
            self.seqs = [*seqs, *more.seqs]
        if self.quals is not None or more.quals is not None:
            self.quals = [*(self.quals or repeat(0, len(self.pids))),
                          *(more.quals or repeat(0, len(more.pids)))]
        self.pids = [*self.pids, *more.pids]
        self.ts = [*self.ts, *more.ts]
        self.values = [*self.values, *more.values]

    def __len__(self) -> int:
        return len(self.pids)

    def __iter__(self) -> Iterator[Row]:
        pids = self.pids
        return zip(self.seqs, map(self.names.__getitem__, pids),  # noqa: B905 - quals may repeat
                   map(self.units.__getitem__, pids), self.ts, self.values,
                   repeat(0) if self.quals is None else self.quals)

    @overload
    def __getitem__(self, i: int) -> Row: ...
    @overload
    def __getitem__(self, i: slice) -> list[Row]: ...
    def __getitem__(self, i: int | slice) -> Row | list[Row]:
        if isinstance(i, slice):
            return list(self)[i]
        pid = self.pids[i]
        return (self.seqs[i], self.names[pid], self.units[pid], self.ts[i], self.values[i],
                0 if self.quals is None else self.quals[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Rows({list(self)!r})"


def rows(cols: Columns, base: int, lo: int, hi: int, *,
         names: Mapping[int, str], units: Mapping[int, str | None]) -> Rows:
    """The rows with seqs ``lo..hi`` of a chunk whose first reading has seq ``base``."""
    pids, ts, values, qs = cols
    i, j = lo - base, hi - base + 1
    return Rows(range(lo, hi + 1), pids[i:j], ts[i:j], values[i:j],
                None if qs is None else qs[i:j], names=names, units=units)
