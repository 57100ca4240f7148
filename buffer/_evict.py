"""Dropping chunks when the size cap is reached, and recording each drop as a gap.

A gap's range is exact: every seq in ``[first_seq, last_seq]`` was dropped, so ``count`` is
always ``last_seq - first_seq + 1`` and a receiver never has to guess which seqs are missing.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

from buffer._chunks import CHUNK_MAX, ChunkError, unpack
from buffer.types import Gap

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Mapping
    from pathlib import Path

    from buffer._chunks import Columns
    from buffer._inflight import Inflight

__all__ = ["POINTS_CAP", "Cap", "drop", "gap_from_db", "gaps_for_db", "record"]

log = logging.getLogger("streetgate.buffer")

#: Point names kept per gap; more set ``points_truncated``.
POINTS_CAP = 32

_MAX_SEQ = 2**63 - 1
_ROUNDS = 16
# Chunks wholly inside [a, b]; id <= lo < id + CHUNK_MAX keeps this on the primary key.
_WHOLE = ("SELECT id, base, lo, hi, ts_min, ts_max, data FROM chunks"
          " WHERE id BETWEEN ? AND ? AND lo >= ?"
          " AND hi <= ? AND lo <= hi ORDER BY id {} LIMIT ?")


class Cap:
    """The size cap on pages in use: ``(page_count - freelist_count) * page_size``.

    The file never shrinks; freed pages go on the freelist and new rows reuse them, so a
    database at the cap keeps taking rows while it drops the oldest (or the newest).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, max_bytes: int, policy: str) -> None:
        self._conn = conn
        self._path = path
        self.max_bytes = max_bytes
        self.newest = policy == "newest"
        self.page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self.over = False
        #: The newest chunk, when the last enforce dropped it: kept as an empty row.
        self.marker: int | None = None

    def _is_marker(self, cid: int) -> bool:
        row = self._conn.execute("SELECT lo > hi FROM chunks WHERE id = ?", (cid,)).fetchone()
        return bool(row and row[0])

    def used(self) -> int:
        pages: int = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free: int = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.page_size

    def enforce(self, batch: tuple[int, int], live: int, inflight: Inflight, *,
                names: Mapping[int, tuple[str, str | None]], gaps: dict[int, Gap],
                top_id: int | None = None) -> int:
        """Inside the commit's transaction, drop rows not in flight until the cap holds.

        ``batch`` is the seq range just inserted (the candidates under policy "newest"),
        ``live`` the rows now stored. Returns the number of rows dropped.
        """
        self.marker = None
        used = self.used()
        if used <= self.max_bytes:
            self._note(over=False)
            return 0
        target = self.max_bytes - self.max_bytes // 32  # a little headroom: fewer, larger drops
        dropped = 0
        for _ in range(_ROUNDS):
            if used <= target or live - dropped <= 0:
                break
            want = max(1, math.ceil((used - target) / (used / (live - dropped))))
            ranges = inflight.free(*(batch if self.newest else (1, _MAX_SEQ)))
            got = drop(self._conn, ranges, want, newest=self.newest, names=names, gaps=gaps,
                       busy=inflight.gap_keys, top_id=top_id)
            if top_id is not None and self.marker is None and self._is_marker(top_id):
                self.marker = top_id
            if not got:
                break
            dropped += got
            used = self.used()
        self._note(over=used > self.max_bytes)
        return dropped

    def _note(self, *, over: bool) -> None:
        if over and not self.over:
            log.warning("buffer %s is over its cap of %d bytes and nothing more can be dropped"
                        " (rows in flight, or policy newest)", self._path, self.max_bytes)
        elif self.over and not over:
            log.info("buffer %s is back under its cap", self._path)
        self.over = over


def drop(
    conn: sqlite3.Connection, ranges: Iterable[tuple[int, int]], limit: int, *, newest: bool,
    names: Mapping[int, tuple[str, str | None]], gaps: dict[int, Gap], busy: set[int],
    top_id: int | None = None,
) -> int:
    """Delete whole chunks inside ``ranges`` (oldest or newest first) until ``limit`` readings
    are gone, and record each as a gap.

    ``gaps`` (keyed by first_seq) is updated in place; gaps in ``busy`` ride with a lease in
    flight and are never extended. Returns the number of readings deleted.
    """
    done = 0
    ranges = list(ranges)
    for lo, hi in reversed(ranges) if newest else ranges:
        if done >= limit:
            break
        sql = _WHOLE.format("DESC" if newest else "ASC")
        found = conn.execute(sql, (max(0, lo - CHUNK_MAX), hi, lo, hi, 64)).fetchall()
        for cid, base, first, last, t0, t1, blob in found:
            if done >= limit:
                break
            if cid == top_id:  # the top seq stays visible: an empty row (no blob) holds it
                conn.execute("UPDATE chunks SET lo = hi + 1, data = x'' WHERE id = ?", (cid,))
            else:
                conn.execute("DELETE FROM chunks WHERE id = ?", (cid,))
            try:
                gap = _gap(unpack(blob), base, first, last, names)
            except ChunkError:  # damaged: the range and time are still known
                gap = Gap(first, last, last - first + 1, t0, t1, (), True)
            record(conn, gap, gaps, busy)
            done += last - first + 1
    return done


def _gap(cols: Columns, base: int, lo: int, hi: int,
         names: Mapping[int, tuple[str, str | None]]) -> Gap:
    pids, ts, _values, _qs = cols
    part = ts[lo - base:hi - base + 1]
    seen = dict.fromkeys(pids[lo - base:hi - base + 1])
    points = tuple(names[p][0] for p in list(seen)[:POINTS_CAP])
    return Gap(lo, hi, hi - lo + 1, min(part), max(part), points, len(seen) > POINTS_CAP)


def record(conn: sqlite3.Connection, gap: Gap, gaps: dict[int, Gap], busy: set[int]) -> None:
    prev = next((g for g in gaps.values() if g.last_seq + 1 == gap.first_seq), None)
    if prev is not None and prev.first_seq not in busy:
        gap = _merge(prev, gap)
    nxt = gaps.get(gap.last_seq + 1)
    if nxt is not None and nxt.first_seq not in busy:
        gap = _merge(gap, nxt)
        conn.execute("DELETE FROM gaps WHERE first_seq = ?", (nxt.first_seq,))
        del gaps[nxt.first_seq]
    conn.execute("INSERT OR REPLACE INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?)", gaps_for_db(gap))
    gaps[gap.first_seq] = gap


def _merge(a: Gap, b: Gap) -> Gap:
    names = dict.fromkeys(a.points + b.points)
    truncated = a.points_truncated or b.points_truncated or len(names) > POINTS_CAP
    return Gap(a.first_seq, b.last_seq, a.count + b.count, min(a.first_ts, b.first_ts),
               max(a.last_ts, b.last_ts), tuple(list(names)[:POINTS_CAP]), truncated)


def gaps_for_db(g: Gap) -> tuple[int, int, int, int, int, str, int]:
    return (g.first_seq, g.last_seq, g.count, g.first_ts, g.last_ts, json.dumps(list(g.points)),
            int(g.points_truncated))


def gap_from_db(row: tuple[int, int, int, int, int, str, int]) -> Gap:
    first, last, count, first_ts, last_ts, points, truncated = row
    return Gap(first, last, count, first_ts, last_ts, tuple(json.loads(points)), bool(truncated))
