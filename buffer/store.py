"""The reading buffer: one SQLite file between the drivers and the uplink.

Readings are queued in memory by :meth:`Store.append` and written by :meth:`Store.commit` in one
transaction per group (group commit). The uplink takes the oldest rows with :meth:`Store.lease`
and deletes them with :meth:`Store.ack` once the broker has them, or hands them back with
:meth:`Store.release`. Leases live in memory: after a crash every un-acked row is leasable again.

Durability. The file is in WAL mode with ``synchronous = NORMAL`` by default. In WAL mode a
commit is then durable against a process crash (kill -9: the WAL is in the OS page cache) and
the database cannot be corrupted by a power loss; only the last commits since the previous
fsync may be rolled back (https://sqlite.org/pragma.html#pragma_synchronous,
https://sqlite.org/wal.html). That costs one fsync per checkpoint instead of one per group
commit, which matters on SD cards. Two rules close the remaining window:

* before a lease hands out a row or gap committed since the last fsync, the store fsyncs (one
  small ``synchronous = FULL`` write), so whatever leaves the gateway survives a power loss and
  its seq is never handed to another reading;
* batch-seq reservations, kv writes and schema changes always fsync.

``"full"`` fsyncs every group commit (nothing committed is lost on power loss); ``"off"`` never
fsyncs (tests and RAM disks only: after a power loss seqs may repeat).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from buffer._codec import KIND_BITS, decode, encode, valid
from buffer._db import StoreError, durable, file_bytes, open_db, rollback
from buffer._evict import POINTS_CAP, Cap, gap_from_db, record
from buffer._inflight import Inflight, Span
from buffer.types import Gap, Lease, StoreStats

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable

    from buffer._codec import DbValue
    from buffer.types import Row
    from drivers.api import Reading

__all__ = ["Lease", "Store", "StoreError", "StoreStats"]

log = logging.getLogger("streetgate.buffer")

Synchronous = Literal["off", "normal", "full"]
DropPolicy = Literal["oldest", "newest"]

_MAX_SEQ = 2**63 - 1
_KIND_MASK = (1 << KIND_BITS) - 1
_MIN_BYTES = 64 * 1024
_BATCH_BLOCK = 1000  # batch seqs reserved per fsync
_INSERT = "INSERT INTO readings VALUES (?, ?, ?, ?, ?)"
_SELECT = ("SELECT seq, point, ts, value, q FROM readings"
           " WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?")
_OLDEST_TS = "SELECT ts FROM readings ORDER BY seq LIMIT 1"
_SEQ_HWM = "UPDATE meta SET value = max(value, ?) WHERE key = 'seq_hwm'"


class Store:
    """The SQLite reading buffer; every method is thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024,
                 synchronous: Synchronous = "normal", drop_policy: DropPolicy = "oldest",
                 max_pending: int = 200_000) -> None:
        if synchronous not in ("off", "normal", "full"):
            raise ValueError(f"synchronous: expected off, normal or full; got {synchronous!r}")
        if drop_policy not in ("oldest", "newest"):
            raise ValueError(f"drop_policy: expected oldest or newest; got {drop_policy!r}")
        if max_bytes < _MIN_BYTES:
            raise ValueError(f"max_bytes: expected at least {_MIN_BYTES}; got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.drop_policy: DropPolicy = drop_policy
        self._db_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._pending: list[Reading] = []
        #: Readings that could not wait any longer for a commit (disk full, read-only):
        #: dropped oldest first, and recorded as a gap by the next commit that works.
        self.max_pending = max_pending
        self._overflow: _Overflow | None = None
        self._inflight = Inflight()
        self._lease_ids = itertools.count(1)
        self._closed = False
        self.appended = self.delivered = self.dropped = self.rejected = 0
        self._conn, self.moved_aside = open_db(self.path, synchronous)
        try:
            self._load()
        except (sqlite3.Error, KeyError) as exc:
            self._conn.close()
            raise StoreError(f"cannot load buffer {self.path}: {exc!r}") from exc

    def _load(self) -> None:
        conn = self._conn
        self._cap = Cap(conn, self.path, self.max_bytes, self.drop_policy)
        # Keep the WAL small next to the cap: checkpoint every 1/16 of it, at most 1000 pages.
        page = self._cap.page_size
        wal_pages = max(16, min(1000, self.max_bytes // page // 16))
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages:d}")
        conn.execute(f"PRAGMA journal_size_limit = {2 * wal_pages * page:d}")
        self.schema_version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.epoch: int = meta["epoch"]
        points = conn.execute("SELECT id, name, unit FROM points")
        self._names: dict[int, tuple[str, str | None]] = {pid: (n, u) for pid, n, u in points}
        self._ids = {key: pid for pid, key in self._names.items()}
        self._gaps = {g.first_seq: g for g in map(gap_from_db, conn.execute("SELECT * FROM gaps"))}
        top_row: int = conn.execute("SELECT ifnull(max(seq), 0) FROM readings").fetchone()[0]
        top_gap = max((g.last_seq for g in self._gaps.values()), default=0)
        self._next_seq: int = max(meta["seq_hwm"], top_row, top_gap) + 1
        self._depth: int = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        self._scan_from = 1
        self._batch_next = self._batch_reserved = int(meta["batch_seq_next"])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fsyncs all that survived
        self._synced_seq = self._next_seq - 1

    # -- writing -------------------------------------------------------------------------

    def append(self, readings: Iterable[Reading]) -> None:
        """Queue readings in memory (no I/O); :meth:`commit` writes them."""
        with self._queue_lock:
            self._check_open()
            before = len(self._pending)
            self._pending.extend(readings)
            self.appended += len(self._pending) - before
            over = len(self._pending) - self.max_pending
            if over > 0:
                lost, self._pending[:over] = self._pending[:over], []
                if self._overflow is None:
                    self._overflow = _Overflow()
                    log.error("buffer %s cannot keep up (commits failing?): dropping the oldest "
                              "queued readings; the loss is reported upstream as a gap",
                              self.path)
                self._overflow.add(lost)

    def pending(self) -> int:
        with self._queue_lock:
            return len(self._pending)

    def commit(self) -> int:
        """Write everything queued in one transaction; returns the number of rows written.

        Raises:
            StoreError: the write failed (disk full, read-only, I/O error); the readings stay
                queued in memory for the next commit.
        """
        with self._db_lock:
            self._check_open()
            with self._queue_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            written = 0
            try:
                written = self._write_valid(batch)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot commit {len(batch)} readings to {self.path}: {exc}; "
                                 "they stay queued") from exc
            finally:
                if not written:
                    with self._queue_lock:
                        self._pending[:0] = batch
            return written

    def _write_valid(self, batch: list[Reading]) -> int:
        """Write the batch; if it fails because of malformed readings, drop those and retry.

        Without this one bad reading (ts not an int64, point not a str) would block every later
        commit. The check runs only after a failure, so the hot path pays nothing for it.
        """
        try:
            return self._write(batch)
        except (sqlite3.Error, OverflowError, TypeError, ValueError):
            good = [r for r in batch if valid(r)]
            if len(good) == len(batch):
                raise
        bad = next(r for r in batch if not valid(r))
        log.error("dropped %d malformed readings (point, unit, ts or quality of the wrong type),"
                  " e.g. %r", len(batch) - len(good), bad)
        self.rejected += len(batch) - len(good)
        batch[:] = good  # what stays queued if the retry fails too
        return self._write(good) if good else 0

    def _write(self, batch: list[Reading]) -> int:
        conn = self._conn
        with self._queue_lock:
            overflow, self._overflow = self._overflow, None
        lost = overflow.count if overflow is not None else 0
        first = self._next_seq + lost  # the lost readings' seqs go to their gap
        added: list[tuple[str, str | None]] = []
        gaps = dict(self._gaps)

        def intern(name: str, unit: str | None) -> int:
            cur = conn.execute("INSERT INTO points (name, unit) VALUES (?, ?)", (name, unit))
            pid = int(cur.lastrowid or 0)
            self._ids[name, unit] = pid
            self._names[pid] = (name, unit)
            added.append((name, unit))
            return pid

        conn.execute("BEGIN IMMEDIATE")
        try:
            if overflow is not None:
                record(conn, overflow.gap(self._next_seq), gaps, set())
            rows = encode(batch, first, intern, self._ids)
            conn.executemany(_INSERT, rows)
            dropped = self._cap.enforce((first, first + len(rows) - 1), self._depth + len(rows),
                                        self._inflight, self._names, gaps)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            for key in added:
                del self._names[self._ids.pop(key)]
            if overflow is not None:
                with self._queue_lock:
                    overflow.merge(self._overflow)
                    self._overflow = overflow
            raise
        self._next_seq = first + len(rows)
        self._depth += len(rows) - dropped
        self.dropped += dropped + lost
        self._gaps = gaps
        if self.synchronous == "full":
            self._synced_seq = self._next_seq - 1
        return len(rows)

    # -- reading -------------------------------------------------------------------------

    def lease(self, max_readings: int) -> Lease | None:
        """The oldest committed rows not in flight (up to ``max_readings``) and all unsent gaps.

        Returns None when there is nothing to send; a lease may carry gaps and no rows.
        """
        with self._db_lock:
            self._check_open()
            try:
                return self._lease(max_readings)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot lease from {self.path}: {exc}") from exc

    def _lease(self, limit: int) -> Lease | None:
        rows, lo, hi = self._scan(limit) if limit > 0 else ([], 1, 0)
        busy = self._inflight.gap_keys
        gaps = [g for key, g in sorted(self._gaps.items()) if key not in busy]
        if not rows and not gaps:
            return None
        self._make_durable(max([hi] + [g.last_seq for g in gaps]))
        first, last = (rows[0][0], rows[-1][0]) if rows else (None, None)
        lease = Lease(next(self._lease_ids), rows, gaps, first, last)
        self._inflight.add(lease.id, Span(lo, hi, len(rows), tuple(g.first_seq for g in gaps)))
        if rows:
            self._scan_from = hi + 1
        return lease

    def _scan(self, limit: int) -> tuple[list[Row], int, int]:
        """Oldest rows outside leases in flight, and the seq span they cover."""
        lo = self._scan_from
        while True:
            lo, nxt = self._inflight.window(lo)
            hi = _MAX_SEQ if nxt is None else nxt - 1
            rows = self._rows(self._conn.execute(_SELECT, (lo, hi, limit)))
            if rows:
                # Up to the next span there is nothing else, so the span may reach it.
                end = rows[-1][0] if nxt is None or len(rows) == limit else hi
                return rows, lo, end
            if nxt is None:
                self._scan_from = lo  # below lo: all in flight or gone
                return [], lo, lo - 1
            lo = nxt

    def _rows(self, cur: Iterable[tuple[int, int, int, DbValue, int]]) -> list[Row]:
        names = self._names
        # q == 0 (good, plain value) is nearly every row: no decoding at all.
        return [(s, *names[p], t, v, q) if not q else
                (s, *names[p], t, decode(q & _KIND_MASK, v), q >> KIND_BITS)
                for s, p, t, v, q in cur]

    def _make_durable(self, upto: int) -> None:
        """Fsync before handing out anything committed since the last fsync (module docstring)."""
        if self.synchronous == "off" or upto <= self._synced_seq:
            return
        top = self._next_seq - 1
        with durable(self._conn, self.synchronous):
            self._conn.execute(_SEQ_HWM, (top,))
        self._synced_seq = top

    def ack(self, lease: Lease) -> None:
        """Delete the lease's rows and gaps: the broker has them. A stale lease is fine too."""
        with self._db_lock:
            self._check_open()
            span = self._inflight.pop(lease.id)
            try:
                deleted, gone = self._delete(lease)
            except sqlite3.Error as exc:
                if span is not None:
                    self._inflight.add(lease.id, span)
                raise StoreError(f"cannot ack lease {lease.id} in {self.path}: {exc}") from exc
            self._depth -= deleted
            self.delivered += deleted
            for key in gone:
                del self._gaps[key]

    def _delete(self, lease: Lease) -> tuple[int, list[int]]:
        conn = self._conn
        gone = [g.first_seq for g in lease.gaps if self._gaps.get(g.first_seq) == g]
        top = max([lease.last_seq or 0] + [g.last_seq for g in lease.gaps])
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = 0
            if lease.first_seq is not None:
                deleted = conn.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?",
                                       (lease.first_seq, lease.last_seq)).rowcount
            conn.executemany("DELETE FROM gaps WHERE first_seq = ?", [(k,) for k in gone])
            conn.execute(_SEQ_HWM, (top,))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return deleted, gone

    def release(self, lease: Lease) -> None:
        """Make the lease's rows and gaps leasable again, in their oldest-first place."""
        with self._db_lock:
            span = self._inflight.pop(lease.id)
            if span is not None and span.rows:
                self._scan_from = min(self._scan_from, span.lo)

    # -- state ---------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Highest seq assigned so far (0 before the first commit)."""
        with self._db_lock:
            return self._next_seq - 1

    def stats(self) -> StoreStats:
        with self._db_lock:
            self._check_open()
            try:
                oldest = self._conn.execute(_OLDEST_TS).fetchone()
                used = self._cap.used()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read stats of {self.path}: {exc}") from exc
            return StoreStats(
                depth=self._depth, leased=self._inflight.rows, pending=self.pending(),
                oldest_ts=oldest[0] if oldest else None, file_bytes=file_bytes(self.path),
                used_bytes=used, max_bytes=self.max_bytes, appended=self.appended,
                delivered=self.delivered, dropped=self.dropped, rejected=self.rejected,
                gaps_pending=len(self._gaps),
                epoch=self.epoch, schema_version=self.schema_version,
                moved_aside=str(self.moved_aside) if self.moved_aside else None,
                last_seq=self._next_seq - 1,
            )

    def next_batch_seq(self) -> int:
        """A batch seq strictly greater than any returned before, across restarts and crashes."""
        with self._db_lock:
            self._check_open()
            if self._batch_next >= self._batch_reserved:
                reserve = self._batch_next + _BATCH_BLOCK
                try:
                    with durable(self._conn, self.synchronous):
                        self._conn.execute(
                            "UPDATE meta SET value = ? WHERE key = 'batch_seq_next'", (reserve,))
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot reserve batch seqs in {self.path}: {exc}") from exc
                self._batch_reserved = reserve
            seq = self._batch_next
            self._batch_next += 1
            return seq

    def kv_get(self, key: str) -> bytes | None:
        with self._db_lock:
            self._check_open()
            try:
                row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read {key!r} from {self.path}: {exc}") from exc
            return bytes(row[0]) if row else None

    def kv_set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` and fsync before returning (not for per-reading use)."""
        with self._db_lock:
            self._check_open()
            try:
                with durable(self._conn, self.synchronous):
                    self._conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write {key!r} to {self.path}: {exc}") from exc

    def close(self) -> None:
        """Commit what is queued, checkpoint and close. Safe to call twice."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            with self._db_lock, self._queue_lock:
                if self._pending:
                    log.error("closing buffer %s with %d readings that could not be written",
                              self.path, len(self._pending))
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    log.warning("checkpoint of %s on close failed", self.path, exc_info=True)
                self._conn.close()
                self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"buffer {self.path} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Overflow:
    """What was dropped from the in-memory queue: count, time range, points."""

    def __init__(self) -> None:
        self.count = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.points: set[str] = set()
        self.truncated = False

    def add(self, lost: list[Reading]) -> None:
        self.count += len(lost)
        ts = [r.ts for r in lost if type(r.ts) is int]
        if ts:
            self.first_ts = min(ts + ([self.first_ts] if self.first_ts is not None else []))
            self.last_ts = max(ts + ([self.last_ts] if self.last_ts is not None else []))
        for r in lost:
            if len(self.points) >= POINTS_CAP:
                self.truncated = True
                break
            self.points.add(str(r.point))

    def merge(self, other: _Overflow | None) -> None:
        if other is None:
            return
        self.count += other.count
        for t in (other.first_ts, other.last_ts):
            if t is not None:
                self.first_ts = t if self.first_ts is None else min(self.first_ts, t)
                self.last_ts = t if self.last_ts is None else max(self.last_ts, t)
        self.points |= other.points
        self.truncated = self.truncated or other.truncated

    def gap(self, first_seq: int) -> Gap:
        return Gap(first_seq, first_seq + self.count - 1, self.count, self.first_ts or 0,
                   self.last_ts or 0, tuple(sorted(self.points)[:POINTS_CAP]), self.truncated)


class DriverState:
    """A driver's durable key/value state (``drivers.api.StateStore``) in the buffer's database.

    Thread-safe like the store; ``set`` fsyncs before it returns.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, key: str) -> bytes | None:
        return self._store.kv_get(key)

    def set(self, key: str, value: bytes) -> None:
        self._store.kv_set(key, value)
