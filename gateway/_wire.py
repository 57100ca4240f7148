"""Batch format constants, the decoded shape, and the strict decoder (docs/wire-format.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter, truediv
from typing import Any, NoReturn

from buffer.types import Gap, Loss, Row
from drivers.api import Quality, Reading, Value

FORMAT_VERSION = 1
#: Readings one batch may carry; a decoder refuses more (it bounds run-length expansion).
MAX_READINGS = 1 << 20
#: Largest decimal exponent of a scaled-decimal column, and the mantissa bound that keeps
#: ``m / 10**k`` one correctly rounded IEEE 754 division of two exact doubles.
MAX_DECIMALS = 15
MAX_MANTISSA = 1 << 53
#: Loss records one batch may carry, and the longest reason text (in characters).
MAX_LOSSES = 64
MAX_REASON = 64

# Top-level keys (docs/wire-format.md, "batch").
K_VERSION, K_GATEWAY, K_EPOCH, K_BATCH_SEQ, K_FIRST_SEQ, K_LAST_SEQ, K_T0, K_SERIES, K_GAPS = (
    range(9))
K_LOSSES = 11
#: Report by exception: readings held back as unchanged (gateway/report.py).
K_UNCHANGED = 13
#: Keys this module decodes itself; ``extra`` may not use them (key 9 is an extension).
CORE_KEYS = frozenset([*range(9), K_LOSSES, K_UNCHANGED])
# Value column kinds and series option keys.
PLAIN, INT_DELTA, DECIMAL = 0, 1, 2
OPT_QUALITY, OPT_BAD_VALUES, OPT_HEARTBEAT = 0, 1, 2
UINT_END = 1 << 64
VALUE_TYPES = frozenset({bool, int, float, str, bytes, type(None)})
POW10 = [10**k for k in range(MAX_DECIMALS + 1)]
QUALITIES = {int(q): q for q in Quality if q}
GOOD = Quality.GOOD


@dataclass(frozen=True, slots=True)
class Unchanged:
    """``count`` readings from ``first_ts`` to ``last_ts`` were held back as unchanged (report
    by exception): each within the deadband of the last one its point sent. A point under a
    rule says its heartbeat in its series (option 2); no reading of it for longer than that
    means it went silent."""

    count: int
    first_ts: int
    last_ts: int

    def item(self) -> list[int]:
        return [self.count, self.first_ts, self.last_ts]


class BatchFormatError(ValueError):
    """The payload is not a well-formed version-1 batch; the message says where."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch; ``readings`` are ``(seq, Reading)`` sorted by seq."""

    version: int
    gateway_id: str
    epoch: int
    batch_seq: int
    #: The buffer sequence range carried (readings and gaps, not losses); None when neither.
    first_seq: int | None
    last_seq: int | None
    readings: list[tuple[int, Reading]]
    gaps: list[Gap]
    #: Top-level keys this version does not define, as decoded (docs: extension rules).
    extra: dict[int, Any]
    #: Readings lost to storage or a stop, possibly of an earlier epoch (key 11); ``key`` is 0.
    losses: list[Loss] = field(default_factory=list)
    #: Readings held back as unchanged (key 13), when any were.
    unchanged: Unchanged | None = None
    #: Points under report by exception and their heartbeat in ms (series option 2).
    heartbeats: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[Row]:
        """The readings as buffer rows ``(seq, point, unit, ts, value, quality)``."""
        return [(s, r.point, r.unit, r.ts, r.value, int(r.quality)) for s, r in self.readings]


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def fail(path: str, expected: str, got: Any) -> NoReturn:
    raise BatchFormatError(f"batch: {path}: expected {expected}; got {_show(got)}")


def _uint(v: Any, path: str) -> int:
    if type(v) is not int or not 0 <= v < UINT_END:
        fail(path, "an unsigned integer", v)
    return v


def _int(v: Any, path: str) -> int:
    if type(v) is not int:
        fail(path, "an integer", v)
    return v


def _list(v: Any, path: str, min_len: int = 0) -> list[Any]:
    if type(v) is not list or len(v) < min_len:
        fail(path, f"an array of at least {min_len} item(s)", v)
    return v


def expand(first: int, items: list[Any], path: str, limit: int, *, positive: bool = False,
           ) -> list[int]:
    """Undo delta + run-length coding: ``first`` then each delta or ``[count, delta]`` run."""
    out = [first]
    cur = first
    for j, it in enumerate(items):
        if type(it) is int:
            d, k = it, 1
            out.append(cur + d)
        elif (type(it) is list and len(it) == 2 and type(it[0]) is int and type(it[1]) is int
              and it[0] >= 1):
            k, d = it
            if len(out) + k > limit:
                fail(path, f"at most {limit} values", f"a run of {k}")
            out.extend(range(cur + d, cur + d * (k + 1), d) if d else repeat(cur, k))
        else:
            fail(f"{path}[{j + 1}]", "a delta or a [count, delta] run", it)
        if positive and d < 1:
            fail(f"{path}[{j + 1}]", "a positive delta (seqs increase)", it)
        cur += d * k
    if len(out) > limit:
        fail(path, f"at most {limit} values", len(out))
    return out


def plain(items: list[Any], count: int, path: str) -> list[Value]:
    out: list[Value] = []
    for j, it in enumerate(items):
        if type(it) is list:
            if len(it) != 2 or type(it[0]) is not int or not 1 <= it[0] <= count - len(out):
                fail(f"{path}[{j}]", f"a [count, value] run within {count} values", it)
            k, it = it  # noqa: PLW2901 - the run's value is checked like a single one
        else:
            k = 1
        if type(it) not in VALUE_TYPES:
            fail(f"{path}[{j}]", "bool, int, float, text, bytes or null", it)
        out.extend(repeat(it, k))
    if len(out) != count:
        fail(path, f"{count} values", len(out))
    return out


def _decimal(col: list[Any], count: int, path: str) -> list[Value]:
    k = col[1]
    if type(k) is not int or not 0 <= k <= MAX_DECIMALS:
        fail(f"{path}[1]", f"a decimal exponent 0..{MAX_DECIMALS}", k)
    mantissas = expand(_int(col[2], f"{path}[2]"), col[3:], path, count)
    if max(mantissas) > MAX_MANTISSA or min(mantissas) < -MAX_MANTISSA:
        fail(path, "mantissas within +-2**53", max(mantissas, key=abs))
    return list(map(truediv, mantissas, repeat(POW10[k])))


def values(col: Any, count: int, path: str) -> list[Value]:
    """A value column: ``[0, *plain]``, ``[1, first, *deltas]`` or ``[2, k, m0, *deltas]``."""
    kind = _list(col, path, 1)[0]
    if kind == PLAIN and type(kind) is int:
        return plain(col[1:], count, path)
    if kind == INT_DELTA and type(kind) is int and len(col) >= 2:
        out: list[Value] = list(expand(_int(col[1], f"{path}[1]"), col[2:], path, count))
    elif kind == DECIMAL and type(kind) is int and len(col) >= 3:
        out = _decimal(col, count, path)
    else:
        fail(path, "a value column of kind 0, 1 or 2", col)
    if len(out) != count:
        fail(path, f"{count} values", len(out))
    return out


class _Decoder:
    """Walks a decoded batch map, checking every field against the CDDL."""

    def __init__(self, doc: dict[Any, Any], first_seq: int, last_seq: int) -> None:
        self.doc = doc
        self.first_seq = first_seq
        self.limit = min(MAX_READINGS, last_seq - first_seq + 1)
        self.strings: list[str] = []
        self.ts_cols: list[list[int]] = []
        self.prev_first = first_seq
        self.count = 0
        self.heartbeats: dict[str, int] = {}

    def string(self, v: Any, path: str) -> str:
        if type(v) is str:
            self.strings.append(v)
            return v
        if type(v) is not int or not 0 <= v < len(self.strings):
            fail(path, f"a text string or a string index below {len(self.strings)}", v)
        return self.strings[v]

    def timestamps(self, col: Any, i: int, n: int, t0: int, path: str) -> list[int]:
        if type(col) is int:
            if not 1 <= col <= i or len(self.ts_cols[i - col]) != n:
                fail(path, f"a back-reference to an earlier series with {n} timestamps", col)
            tss = self.ts_cols[i - col]
        else:
            col = _list(col, path, 1)
            tss = expand(t0 + _int(col[0], f"{path}[0]"), col[1:], path, n)
            if len(tss) != n:
                fail(path, f"{n} timestamps", len(tss))
        self.ts_cols.append(tss)
        return tss

    def options(self, opts: Any, n: int, path: str) -> tuple[list[int], list[Value]]:
        """Per-reading quality codes and the values of the bad readings."""
        if type(opts) is not dict:
            fail(path, "an options map", opts)
        codes = [0] * n
        end = 0
        for j, run in enumerate(_list(opts.get(OPT_QUALITY, []), f"{path}.0")):
            p = f"{path}.0[{j}]"
            if type(run) is not list or len(run) not in (2, 3):
                fail(p, "[index, code] or [index, code, count]", run)
            start, code, count = _uint(run[0], p), run[1], _uint(run[2] if run[2:] else 1, p)
            if type(code) is not int or code not in QUALITIES or start < end or count < 1 \
                    or start + count > n:
                fail(p, f"a non-overlapping run of a known non-good quality within {n}", run)
            codes[start:start + count] = repeat(code, count)
            end = start + count
        n_bad = n - codes.count(0)
        if OPT_BAD_VALUES in opts:
            bad = plain(_list(opts[OPT_BAD_VALUES], f"{path}.1"), n_bad, f"{path}.1")
        else:
            bad = [None] * n_bad
        return codes, bad

    def series(self, i: int, item: Any, t0: int) -> list[tuple[int, Reading]]:
        path = f"series[{i}]"
        if type(item) is not list or len(item) not in (5, 6):
            fail(path, "[name, unit, seqs, timestamps, values, ?options]", item)
        point = "/".join(self.string(p, f"{path}.name") for p in _list(item[0], path, 1))
        unit = None if item[1] is None else self.string(item[1], f"{path}.unit")
        col = _list(item[2], f"{path}.seqs", 1)
        self.prev_first += _int(col[0], f"{path}.seqs[0]")
        seqs = expand(self.prev_first, col[1:], f"{path}.seqs", self.limit - self.count,
                      positive=True)
        n = len(seqs)
        self.count += n
        tss = self.timestamps(item[3], i, n, t0, f"{path}.ts")
        if len(item) == 5:
            good = values(item[4], n, f"{path}.values")
            return [(s, Reading(point, t, v, GOOD, unit))
                    for s, t, v in zip(seqs, tss, good, strict=True)]
        codes, bad = self.options(item[5], n, f"{path}.options")
        if OPT_HEARTBEAT in item[5]:
            self.heartbeats[point] = _uint(item[5][OPT_HEARTBEAT], f"{path}.options.2")
        good_it = iter(values(item[4], n - len(bad), f"{path}.values"))
        bad_it = iter(bad)
        return [(s, Reading(point, t, next(bad_it), QUALITIES[c], unit) if c
                 else Reading(point, t, next(good_it), GOOD, unit))
                for s, t, c in zip(seqs, tss, codes, strict=True)]

    def gap(self, j: int, g: Any) -> Gap:
        p = f"gaps[{j}]"
        if type(g) is not list or len(g) != 7:
            fail(p, "[first_seq, last_seq, count, first_ts, last_ts, points, truncated]", g)
        first, last, count = (_uint(g[k], p) for k in range(3))
        points = _list(g[5], f"{p}.points")
        if not self.first_seq <= first <= last or not all(type(x) is str for x in points) \
                or type(g[6]) is not bool:
            fail(p, "a seq range inside the batch, text point names, a bool", g)
        return Gap(first, last, count, _int(g[3], p), _int(g[4], p), tuple(points), g[6])


def _uint_or_null(v: Any, path: str) -> int | None:
    if v is not None and (type(v) is not int or not 0 <= v < UINT_END):
        fail(path, "an unsigned integer or null", v)
    return v


def _int_or_null(v: Any, path: str) -> int | None:
    if v is not None and type(v) is not int:
        fail(path, "an integer or null", v)
    return v


def loss(j: int, item: Any) -> Loss:
    """One loss record ``[epoch, first_seq, last_seq, count, first_ts, last_ts, reason]``."""
    p = f"losses[{j}]"
    if type(item) is not list or len(item) != 7:
        fail(p, "[epoch, first_seq, last_seq, count, first_ts, last_ts, reason]", item)
    epoch = _uint(item[0], f"{p}.epoch")
    first, last, count = (_uint_or_null(item[k], f"{p}.{name}")
                          for k, name in ((1, "first_seq"), (2, "last_seq"), (3, "count")))
    first_ts, last_ts = (_int_or_null(item[k], f"{p}.{name}")
                         for k, name in ((4, "first_ts"), (5, "last_ts")))
    if last is not None:
        if first is None:
            fail(f"{p}.last_seq", "null when first_seq is null", last)
        if last < first:
            fail(f"{p}.last_seq", f"null or at least first_seq {first}", last)
    reason = item[6]
    if type(reason) is not str or not 1 <= len(reason) <= MAX_REASON:
        fail(f"{p}.reason", f"a text of 1 to {MAX_REASON} characters", reason)
    return Loss(epoch, first, last, count, first_ts, last_ts, reason)


def _losses(doc: dict[Any, Any]) -> list[Loss]:
    items = _list(doc.get(K_LOSSES, []), "losses (key 11)")
    if len(items) > MAX_LOSSES:
        fail("losses (key 11)", f"at most {MAX_LOSSES} loss records", len(items))
    return [loss(j, item) for j, item in enumerate(items)]


def _unchanged(doc: dict[Any, Any]) -> Unchanged | None:
    if K_UNCHANGED not in doc:
        return None
    item = _list(doc[K_UNCHANGED], "unchanged (key 13)")
    if len(item) != 3:
        fail("unchanged (key 13)", "[count, first_ts, last_ts]", item)
    count = _uint(item[0], "unchanged.count")
    first_ts, last_ts = _int(item[1], "unchanged.first_ts"), _int(item[2], "unchanged.last_ts")
    if count < 1 or last_ts < first_ts:
        fail("unchanged (key 13)", "count >= 1 and last_ts >= first_ts", item)
    return Unchanged(count, first_ts, last_ts)


def _header(doc: Any) -> tuple[str, int, int, list[Any], list[Any]]:
    if type(doc) is not dict:
        fail("top level", "a map", doc)
    for key in doc:
        if type(key) is not int:
            fail("top level", "integer map keys", key)
    if doc.get(K_VERSION) != FORMAT_VERSION or type(doc.get(K_VERSION)) is not int:
        raise BatchFormatError(f"batch: format version {_show(doc.get(K_VERSION))} is not "
                               f"supported (this reader knows version {FORMAT_VERSION})")
    gateway_id = doc.get(K_GATEWAY)
    if type(gateway_id) is not str or not gateway_id:
        fail("gateway_id (key 1)", "a non-empty text string", gateway_id)
    epoch = _uint(doc.get(K_EPOCH), "epoch (key 2)")
    batch_seq = _uint(doc.get(K_BATCH_SEQ), "batch_seq (key 3)")
    return (gateway_id, epoch, batch_seq, _list(doc.get(K_SERIES, []), "series (key 7)"),
            _list(doc.get(K_GAPS, []), "gaps (key 8)"))


def decode(doc: Any) -> Batch:
    """Check a decoded CBOR item against the batch CDDL and build the :class:`Batch`."""
    gateway_id, epoch, batch_seq, series, gaps = _header(doc)
    first = last = None
    readings: list[tuple[int, Reading]] = []
    if series or gaps:
        first = _uint(doc.get(K_FIRST_SEQ), "first_seq (key 4)")
        last = _uint(doc.get(K_LAST_SEQ), "last_seq (key 5)")
        if last < first:
            fail("last_seq (key 5)", f"at least first_seq {first}", last)
        dec = _Decoder(doc, first, last)
        t0 = _int(doc.get(K_T0), "t0 (key 6)") if series else 0
        for i, item in enumerate(series):
            readings += dec.series(i, item, t0)
        readings.sort(key=itemgetter(0))
        seqs = [s for s, _ in readings]
        if seqs and (seqs[0] < first or seqs[-1] > last or len(set(seqs)) != len(seqs)):
            fail("series", f"unique seqs within {first}..{last}", "duplicates or out of range")
        gap_list = [dec.gap(j, g) for j, g in enumerate(gaps)]
        if any(g.last_seq > last for g in gap_list):
            fail("gaps", f"seq ranges within {first}..{last}", "a gap beyond last_seq")
    else:
        gap_list = []
    extra = {k: v for k, v in doc.items() if k not in CORE_KEYS}
    return Batch(FORMAT_VERSION, gateway_id, epoch, batch_seq, first, last, readings, gap_list,
                 extra, _losses(doc), _unchanged(doc), dec.heartbeats if series else {})
