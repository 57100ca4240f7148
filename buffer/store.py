"""The reading buffer: one SQLite file between the drivers and the uplink.

Readings are queued in memory by :meth:`Store.append` and written by :meth:`Store.commit` in one
transaction per group (group commit), packed as chunks of consecutive seqs (buffer/_chunks.py).
The uplink takes the oldest readings with :meth:`Store.lease` and deletes them with
:meth:`Store.ack` once the broker has them, or hands them back with :meth:`Store.release`.
Leases live in memory: after a crash every un-acked reading is leasable again.

Durability. The file is in WAL mode with ``synchronous = NORMAL`` by default. In WAL mode a
commit is then durable against a process crash (kill -9: the WAL is in the OS page cache) and
the database cannot be corrupted by a power loss; only the last commits since the previous
fsync may be rolled back (https://sqlite.org/pragma.html#pragma_synchronous,
https://sqlite.org/wal.html). That costs one fsync per checkpoint instead of one per group
commit, which matters on SD cards. Three rules close the remaining window:

* before a lease hands out a reading or gap committed since the last fsync, the store fsyncs
  (one small ``synchronous = FULL`` write), so whatever leaves the gateway survives a power
  loss;
* before a lease hands out a seq above the highest one that left before, the anchor
  (buffer/_anchor.py, a small file beside the database) records it, synced; batch-seq
  reservations go there too. A database that later comes back without those seqs has lost
  history, and the store starts a new epoch instead of handing them out again
  (buffer/_guard.py);
* whatever the store knows it lost (readings it could not write at exit, a crash, a damaged
  database) becomes a :class:`~buffer.types.Loss` record that leases carry upstream.

``"full"`` fsyncs every group commit (nothing committed is lost on power loss); ``"off"`` never
fsyncs the database (tests and RAM disks only; the anchor still guards the seqs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from buffer._anchor import Anchor, AnchorState, boot_id
from buffer._chunks import CHUNK_MAX, ChunkError, Rows, clean, pack, rows, unpack
from buffer._db import StoreError, durable, file_bytes, open_db, rollback
from buffer._evict import POINTS_CAP, Cap, gap_from_db, record
from buffer._guard import judge, renumber
from buffer._inflight import Inflight, Span
from buffer._reserve import Reserve, free_bytes
from buffer.types import Gap, Lease, Loss, StoreStats

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from buffer._chunks import Columns
    from buffer.types import Row
    from drivers.api import Reading

__all__ = ["Lease", "Store", "StoreError", "StoreStats"]

log = logging.getLogger("streetgate.buffer")

Synchronous = Literal["off", "normal", "full"]
DropPolicy = Literal["oldest", "newest"]

_MAX_SEQ = 2**63 - 1
_MIN_BYTES = 64 * 1024
_BATCH_BLOCK = 1000  # batch seqs reserved per anchor write
_SEQ_BLOCK = 10_000  # seqs reserved per anchor write, at least
_ACK_DELAY = 2.0  # seconds an ack may wait for a commit to carry its delete
_ACK_MAX = 256  # acks waiting at most
_SQLITE_FULL = 13
_INSERT = "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)"
# Chunks that reach into [a, b]: id <= lo < id + CHUNK_MAX keeps this on the primary key.
_OVERLAP = ("SELECT id, base, lo, hi, ts_min, ts_max, data FROM chunks"
            " WHERE id BETWEEN ? AND ? AND hi >= ? ORDER BY id")
_SPANS = ("SELECT id, lo, hi, base, ts_min, ts_max FROM chunks WHERE id BETWEEN ? AND ?"
          " AND hi >= ? ORDER BY id")
_SEQ_HWM = "UPDATE meta SET value = max(value, ?) WHERE key = 'seq_hwm'"


def _full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_FULL


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
        #: Acked leases whose delete could not be written yet: never leased again.
        self._unapplied: dict[int, Lease] = {}
        self._acked_at: dict[int, float] = {}
        self._loss_busy: set[int] = set()
        self._ack_failing = False
        self._block = _SEQ_BLOCK
        self._reserved_at = float("-inf")
        self._cache: tuple[int, Columns] | None = None
        self._closed = False
        self.disk_full = False
        self.appended = self.delivered = self.dropped = self.rejected = 0
        self._anchor = Anchor(self.path.with_name(self.path.name + ".anchor"))
        self._reserve = Reserve(self.path.with_name(self.path.name + ".reserve"),
                                max(1 << 20, min(16 << 20, max_bytes // 64)))
        existed = self.path.exists() and self.path.stat().st_size > 0
        self._conn, self.moved_aside = open_db(self.path, synchronous)
        try:
            self._load()
            self._guard(fresh=not existed or self.moved_aside is not None)
        except (sqlite3.Error, KeyError, OSError, ChunkError) as exc:
            self._conn.close()
            self._anchor.close()
            raise StoreError(f"cannot load buffer {self.path}: {exc!r}") from exc
        self._reserve.ensure()

    def _load(self) -> None:
        conn = self._conn
        self._cap = Cap(conn, self.path, self.max_bytes, self.drop_policy)
        # Keep the WAL small next to the cap: checkpoint every 1/16 of it, at most 1000 pages.
        page = self._cap.page_size
        wal_pages = max(16, min(1000, self.max_bytes // page // 16))
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages:d}")
        conn.execute(f"PRAGMA journal_size_limit = {2 * wal_pages * page:d}")
        self.schema_version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        self._meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.epoch: int = self._meta["epoch"]
        self._names: dict[int, tuple[str, str | None]] = {}
        self._pname: dict[int, str] = {}
        self._punit: dict[int, str | None] = {}
        self._ids: dict[tuple[str, str | None], int] = {}
        for pid, name, unit in conn.execute("SELECT id, name, unit FROM points"):
            self._add_point(pid, name, unit)
        self._gaps = {g.first_seq: g for g in map(gap_from_db, conn.execute("SELECT * FROM gaps"))}
        top_row = conn.execute("SELECT hi, id FROM chunks ORDER BY id DESC LIMIT 1").fetchone()
        self._top_id: int | None = top_row[1] if top_row else None
        empty = conn.execute("SELECT id FROM chunks WHERE lo > hi").fetchall()
        self._empty_id: int | None = max(e[0] for e in empty) if empty else None
        top_gap = max((g.last_seq for g in self._gaps.values()), default=0)
        self._db_hwm: int = max(self._meta["seq_hwm"], top_row[0] if top_row else 0, top_gap)
        self._depth: int = conn.execute(
            "SELECT ifnull(sum(hi - lo + 1), 0) FROM chunks").fetchone()[0]
        self._last_ts: int | None = conn.execute("SELECT max(ts_max) FROM chunks").fetchone()[0]
        self._scan_from = 1

    def _add_point(self, pid: int, name: str, unit: str | None) -> None:
        self._names[pid] = (name, unit)
        self._pname[pid] = name
        self._punit[pid] = unit
        self._ids[name, unit] = pid

    def _lowest(self) -> int:
        """The lowest seq still stored (reading or gap), or the next seq when none is."""
        row = self._conn.execute("SELECT lo FROM chunks ORDER BY id LIMIT 1").fetchone()
        cands = [self._next_seq if hasattr(self, "_next_seq") else self._db_hwm + 1]
        if row:
            cands.append(row[0])
        cands.extend(self._gaps)
        return min(cands)

    def _guard(self, *, fresh: bool) -> None:
        """Check the database against the anchor; start a new epoch if it lost history."""
        state, existed = self._anchor.read()
        verdict = judge(state, existed, epoch=self.epoch, db_hwm=self._db_hwm,
                        fresh=fresh and self._depth == 0 and not self._gaps,
                        moved_aside=self.moved_aside is not None,
                        batch_next=int(self._meta.get("batch_seq_next", 1)),
                        lowest=self._lowest(), newest_ts=self._last_ts, boot=boot_id(),
                        anchored=bool(self._meta.get("anchored")))
        a = verdict.state
        if verdict.new_epoch:
            conn = self._conn
            with durable(conn, self.synchronous):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    renumber(conn, a.epoch, state.acked if state and state.epoch == self.epoch
                             else 0)
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
            self._load()
            verdict.next_seq = self._db_hwm + 1
        elif a.epoch != self.epoch:  # a fresh database keeps the epoch it was created with
            a.epoch = self.epoch
        self.epoch = a.epoch
        self._next_seq: int = verdict.next_seq
        self._batch_next = self._batch_reserved = a.batch_reserved
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fsyncs all that survived
        self._synced_seq = self._next_seq - 1
        #: Newest reading ts known to be on the medium: the lower bound of what a power cut
        #: can take, so only this goes into the anchor.
        self._synced_ts = self._last_ts
        a.clean = False
        a.boot_id = boot_id()
        self._a: AnchorState = a
        self._anchor.write(a)
        if not self._meta.get("anchored"):
            # From now on a missing anchor file is damage, not a first start.
            with durable(self._conn, self.synchronous):
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('anchored', 1)")
            self._meta["anchored"] = 1

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
        """Write everything queued in one transaction; returns the number of readings written.

        Raises:
            StoreError: the write failed (disk full, read-only, I/O error); the readings stay
                queued in memory for the next commit.
        """
        with self._db_lock:
            self._check_open()
            with self._queue_lock:
                batch, self._pending = self._pending, []
            if not batch:
                if self._acks_due():
                    self._apply_unapplied()
                return 0
            written = 0
            try:
                written = self._write_valid(batch)
            except (sqlite3.Error, ChunkError) as exc:
                if _full(exc):
                    self._note_full()
                raise StoreError(f"cannot commit {len(batch)} readings to {self.path}: {exc}; "
                                 "they stay queued") from exc
            finally:
                if not written:
                    with self._queue_lock:
                        self._pending[:0] = batch
            self._note_room()
            return written

    def _write_valid(self, batch: list[Reading]) -> int:
        """Write the batch; if it fails because of malformed readings, drop those and retry.

        Without this one bad reading (ts not an int64, point not a str) would block every later
        commit. The check runs only after a failure, so the hot path pays nothing for it.
        """
        try:
            return self._write(batch)
        except (OverflowError, TypeError, ValueError):
            good, bad = clean(batch)
        if bad:
            example = next(r for r in batch if r not in good)
            log.error("dropped %d malformed readings (point, unit, ts or quality of the wrong"
                      " type), e.g. %r", bad, example)
            self.rejected += bad
        batch[:] = good  # what stays queued if the retry fails too
        return self._write(good) if good else 0

    def _intern(self, added: list[tuple[str, str | None]]) -> Callable[[str, str | None], int]:
        conn = self._conn

        def intern(name: str, unit: str | None) -> int:
            if type(name) is not str or (unit is not None and type(unit) is not str):
                raise TypeError("point and unit must be str")
            name.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
            if unit is not None:
                unit.encode("utf-8")
            cur = conn.execute("INSERT INTO points (name, unit) VALUES (?, ?)", (name, unit))
            pid = int(cur.lastrowid or 0)
            self._add_point(pid, name, unit)
            added.append((name, unit))
            return pid

        return intern

    def _write(self, batch: list[Reading]) -> int:
        conn = self._conn
        with self._queue_lock:
            overflow, self._overflow = self._overflow, None
        lost = overflow.count if overflow is not None else 0
        first = self._next_seq + lost  # the lost readings' seqs go to their gap
        added: list[tuple[str, str | None]] = []
        gaps = dict(self._gaps)
        intern = self._intern(added)
        last_ts = self._last_ts
        empty, top_before = self._empty_id, self._top_id
        conn.execute("BEGIN IMMEDIATE")
        try:
            acked = self._deletes()  # the deletes of acked leases ride along
            top_id = self._top_id
            if overflow is not None:
                record(conn, overflow.gap(self._next_seq), gaps, set())
            seq = first
            for i in range(0, len(batch), CHUNK_MAX):
                part = batch[i:i + CHUNK_MAX]
                blob, t0, t1 = pack(part, self._ids, intern)
                conn.execute(_INSERT, (seq, seq, seq, seq + len(part) - 1, t0, t1, blob))
                top_id = seq
                seq += len(part)
                last_ts = t1 if last_ts is None else max(last_ts, t1)
            dropped = self._cap.enforce((first, seq - 1), self._depth + len(batch),
                                        self._inflight, names=self._names, gaps=gaps,
                                        top_id=top_id)
            marker = self._cap.marker
            if marker is not None and self._empty_id not in (None, marker):
                conn.execute("DELETE FROM chunks WHERE id = ? AND lo > hi", (self._empty_id,))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            self._empty_id, self._top_id = empty, top_before
            for key in added:
                pid = self._ids.pop(key)
                del self._names[pid], self._pname[pid], self._punit[pid]
            if overflow is not None:
                with self._queue_lock:
                    overflow.merge(self._overflow)
                    self._overflow = overflow
            raise
        self._next_seq = seq
        self._top_id = top_id
        if marker is not None:
            self._empty_id = marker
        self._last_ts = last_ts
        self._depth += len(batch) - dropped
        self.dropped += dropped + lost
        self._gaps = gaps
        self._deleted(acked)
        if self.synchronous == "full":
            self._synced_seq = self._next_seq - 1
            self._synced_ts = last_ts
        return len(batch)

    # -- reading -------------------------------------------------------------------------

    def lease(self, max_readings: int) -> Lease | None:
        """The oldest committed readings not in flight (up to ``max_readings``), all unsent gaps
        and loss records.

        Returns None when there is nothing to send; a lease may carry records and no readings.
        """
        with self._db_lock:
            self._check_open()
            try:
                if self._acks_due():
                    self._apply_unapplied()
                return self._lease(max_readings)
            except (sqlite3.Error, ChunkError) as exc:
                raise StoreError(f"cannot lease from {self.path}: {exc}") from exc
            except OSError as exc:
                raise StoreError(f"cannot write the buffer anchor: {exc}") from exc

    def _lease(self, limit: int) -> Lease | None:
        got, lo, hi = self._scan(limit) if limit > 0 else ([], 1, 0)
        busy = self._inflight.gap_keys
        gaps = [g for key, g in sorted(self._gaps.items()) if key not in busy]
        losses = [x for x in self._a.losses if x.key not in self._loss_busy]
        if not got and not gaps and not losses:
            return None
        self._make_durable(max([hi if got else 0] + [g.last_seq for g in gaps]))
        first, last = (got[0][0], got[-1][0]) if got else (None, None)
        lease = Lease(next(self._lease_ids), got, gaps, first, last, losses)
        self._inflight.add(lease.id, Span(lo, hi, len(got), tuple(g.first_seq for g in gaps)))
        self._loss_busy.update(x.key for x in losses)
        if got:
            self._scan_from = hi + 1
        return lease

    def _scan(self, limit: int) -> tuple[Sequence[Row], int, int]:
        """Oldest readings outside leases in flight, and the seq span they cover."""
        lo = self._scan_from
        while True:
            lo, nxt = self._inflight.window(lo)
            hi = _MAX_SEQ if nxt is None else nxt - 1
            out = self._read(lo, hi, limit)
            if out:
                # Up to the next span there is nothing else, so the span may reach it.
                end = out[-1][0] if nxt is None or len(out) == limit else hi
                return out, lo, end
            if nxt is None:
                self._scan_from = lo  # below lo: all in flight or gone
                return [], lo, lo - 1
            lo = nxt

    def _read(self, lo: int, hi: int, limit: int) -> Rows:
        out = Rows.empty()
        damaged: list[tuple[int, int, int, int, int]] = []
        cur = self._conn.execute(_OVERLAP, (max(0, lo - CHUNK_MAX), hi, lo))
        try:
            for cid, base, clo, chi, t0, t1, blob in cur:
                a = max(clo, lo)
                b = min(chi, hi, a + limit - len(out) - 1)
                if a > b:
                    if clo > hi:
                        break
                    continue
                try:
                    out.extend(self._rows(base, blob, a, b))
                except ChunkError:
                    damaged.append((cid, clo, chi, t0, t1))
                    if out:
                        break  # the lease ends before the damage; the rest comes next time
                    continue
                if len(out) >= limit:
                    break
        finally:
            cur.close()
        for item in damaged:
            self._damaged(*item)
        return out

    def _damaged(self, cid: int, lo: int, hi: int, t0: int, t1: int) -> None:
        """A chunk whose blob no longer decodes: its readings become a loss record, the row
        goes (or stays empty, when it holds the top seq), and the buffer goes on."""
        log.error("buffer %s: chunk with seqs %d-%d is damaged and cannot be read; its %d"
                  " readings are reported upstream as lost", self.path, lo, hi, hi - lo + 1)
        new = AnchorState(**{f.name: getattr(self._a, f.name)
                             for f in dataclasses.fields(AnchorState)})
        new.losses = list(self._a.losses)
        new.add_loss(Loss(self.epoch, lo, hi, hi - lo + 1, t0, t1, "damaged"))
        self._update_anchor(losses=new.losses, next_loss_key=new.next_loss_key)
        if cid == self._top_id:
            self._conn.execute("UPDATE chunks SET lo = hi + 1, data = x'' WHERE id = ?", (cid,))
            self._empty_id = cid
        else:
            self._conn.execute("DELETE FROM chunks WHERE id = ?", (cid,))
        self._depth -= hi - lo + 1
        self._cache = None

    def _rows(self, base: int, blob: bytes, a: int, b: int) -> Rows:
        """Rows a..b of the chunk whose blob starts at seq ``base``."""
        cached = self._cache
        if cached is not None and cached[0] == base:
            cols = cached[1]
        else:
            cols = unpack(blob)
            self._cache = (base, cols)
        return rows(cols, base, a, b, names=self._pname, units=self._punit)

    def _make_durable(self, upto: int) -> None:
        """Before anything new leaves: fsync the database, then record it in the anchor."""
        top = self._next_seq - 1
        if self.synchronous != "off" and upto > self._synced_seq:
            self._sync_wal()
            self._synced_seq = top
            self._synced_ts = self._last_ts
        if upto > self._a.seq_reserved:
            # seq_left: only what is on the medium (a power cut keeps it); the reservation
            # covers what leaves until the next write.
            left = self._synced_seq if self.synchronous != "off" else self._a.seq_left
            self._update_anchor(seq_left=max(self._a.seq_left, left),
                                seq_reserved=top + self._seq_block())

    def _seq_block(self) -> int:
        """Seqs to reserve: doubled while a reservation lasts under ten seconds, halved back
        when one lasts over a minute; between 10,000 and 2**24."""
        now = time.monotonic()
        since, self._reserved_at = now - self._reserved_at, now
        if since < 10:
            self._block = min(self._block * 2, 1 << 24)
        elif since > 60:
            self._block = max(self._block // 2, _SEQ_BLOCK)
        return self._block

    def _sync_wal(self) -> None:
        """fsync the WAL: every commit so far is then on the medium (https://sqlite.org/wal.html:
        a commit is the frames appended to the WAL; only a checkpoint syncs them by itself).
        Cheaper than a ``synchronous = FULL`` write, which would add a page to the WAL first."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # checkpointed and truncated: the database file itself was synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _update_anchor(self, **changes: Any) -> None:
        """Write the anchor with ``changes``; the state in memory moves only once it is synced
        (raises OSError, and then nothing changed)."""
        changes.setdefault("losses", list(self._a.losses))
        new = dataclasses.replace(self._a, **changes)
        try:
            new.acked = max(new.acked, self._lowest() - 1)
        except sqlite3.Error:
            log.debug("cannot read the lowest seq for the anchor; keeping %d", new.acked)
        if self.synchronous != "off":
            new.last_ts = self._synced_ts
        self._anchor.write(new)
        self._a = new

    def ack(self, lease: Lease) -> None:
        """The broker has the lease's readings and records: they go. A stale lease is fine.

        The delete is written with the next commit (one transaction, often one page, instead of
        two), or within :data:`_ACK_DELAY` when no commit comes. Until then, and while a delete
        cannot be written (disk full, I/O error), the lease stays out of every later lease, so
        nothing is sent twice by this process. Never raises for a failed write.
        """
        with self._db_lock:
            self._check_open()
            if lease.id in self._unapplied:
                return
            span = self._inflight.get(lease.id)
            if span is not None:
                self._depth -= span.rows
                self.delivered += span.rows
            self._unapplied[lease.id] = lease
            self._acked_at.setdefault(lease.id, time.monotonic())
            self._ack_losses(lease)
            if self._acks_due():
                self._apply_unapplied()

    def _acks_due(self) -> bool:
        if not self._unapplied:
            return False
        if self.disk_full or len(self._unapplied) >= _ACK_MAX:
            return True
        return time.monotonic() - min(self._acked_at.values()) >= _ACK_DELAY

    def _ack_losses(self, lease: Lease) -> None:
        if not lease.losses:
            return
        keys = {x.key for x in lease.losses}
        self._loss_busy -= keys
        try:
            self._update_anchor(losses=[x for x in self._a.losses if x.key not in keys])
        except OSError as exc:
            log.warning("cannot write the buffer anchor after an ack (%s); the loss record may"
                        " be sent again", exc)

    def _apply_unapplied(self) -> None:
        """Write the deletes of acked leases in one transaction; on failure keep them for later."""
        if not self._unapplied:
            return
        try:
            self._delete_retrying()
        except sqlite3.Error as exc:
            if not self._ack_failing:
                log.warning("buffer %s: acknowledged batches cannot be deleted yet (%s);"
                            " they are kept out of new batches and retried", self.path, exc)
                self._ack_failing = True
            return
        if self._ack_failing:
            log.info("buffer %s: deletes of acknowledged batches work again", self.path)
            self._ack_failing = False

    def _delete_retrying(self) -> None:
        try:
            self._delete()
        except sqlite3.Error as exc:
            if not (_full(exc) and self._reserve.release()):
                raise
            self._note_full()
            log.warning("buffer %s: disk full; released the %d-byte reserve so acknowledged "
                        "batches can be deleted", self.path, self._reserve.size)
            self._delete()

    def _delete(self) -> None:
        conn = self._conn
        empty, top = self._empty_id, self._top_id
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = self._deletes()
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            self._empty_id, self._top_id = empty, top
            raise
        self._deleted(done)
        if self.disk_full:
            # Let the next commit start the WAL over instead of growing it (disk full).
            self._checkpoint("RESTART")
            self._note_room()

    def _deletes(self) -> list[int]:
        """Inside a transaction: the deletes of every acked lease; returns their ids."""
        gone: list[tuple[int]] = []
        for lease in self._unapplied.values():
            if lease.first_seq is not None and lease.last_seq is not None:
                self._trim(lease.first_seq, lease.last_seq)
            gone += [(g.first_seq,) for g in lease.gaps if self._gaps.get(g.first_seq) == g]
        self._conn.executemany("DELETE FROM gaps WHERE first_seq = ?", gone)
        return list(self._unapplied)

    def _deleted(self, ids: list[int]) -> None:
        """After the commit that wrote the deletes of ``ids``."""
        for lease_id in ids:
            lease = self._unapplied.pop(lease_id)
            self._acked_at.pop(lease_id, None)
            self._inflight.pop(lease_id)
            for g in lease.gaps:
                if self._gaps.get(g.first_seq) == g:
                    del self._gaps[g.first_seq]

    def _trim(self, first: int, last: int) -> int:  # noqa: C901 - one case per shape of overlap
        """Inside a transaction: take seqs first..last out of the chunks that hold them.

        Acks come oldest first, so this trims a chunk's ends without touching its blob; an ack
        that lands inside a chunk (out of order) splits it, and the part after the ack gets a
        row of its own that shares the blob.
        """
        conn = self._conn
        deleted = 0
        if self._empty_id is not None and self._empty_id != self._top_id:
            conn.execute("DELETE FROM chunks WHERE id = ? AND lo > hi", (self._empty_id,))
            self._empty_id = None
        for cid, lo, hi, base, t0, t1 in conn.execute(
                _SPANS, (max(0, first - CHUNK_MAX), last, first)).fetchall():
            if lo > last:
                break
            a, b = max(lo, first), min(hi, last)
            if a > b:
                continue
            deleted += b - a + 1
            if a == lo and b == hi and cid == self._top_id:
                # The newest chunk stays as an empty row: its hi is the database's own record
                # of the highest seq assigned (no separate page to write per ack).
                conn.execute("UPDATE chunks SET lo = ? WHERE id = ?", (hi + 1, cid))
                self._empty_id = cid
            elif a == lo and b == hi:
                conn.execute("DELETE FROM chunks WHERE id = ?", (cid,))
            elif a == lo:
                conn.execute("UPDATE chunks SET lo = ? WHERE id = ?", (b + 1, cid))
            elif b == hi:
                conn.execute("UPDATE chunks SET hi = ? WHERE id = ?", (a - 1, cid))
                if cid == self._top_id:
                    # The top seq must stay visible: an empty row (no blob) holds it.
                    conn.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, x'')",
                                 (a, base, hi + 1, hi, t0, t1))
                    self._top_id = self._empty_id = a
            else:
                conn.execute("UPDATE chunks SET hi = ? WHERE id = ?", (a - 1, cid))
                conn.execute("INSERT INTO chunks SELECT ?, base, ?, hi, ts_min, ts_max, data"
                             " FROM chunks WHERE id = ?", (b + 1, b + 1, cid))
                conn.execute("UPDATE chunks SET hi = ? WHERE id = ?", (hi, b + 1))
                if cid == self._top_id:
                    self._top_id = b + 1
        return deleted

    def release(self, lease: Lease) -> None:
        """Make the lease's readings and records leasable again, in their oldest-first place."""
        with self._db_lock:
            if lease.id in self._unapplied:
                return  # acked: its delete is pending, it must not be sent again
            span = self._inflight.pop(lease.id)
            self._loss_busy -= {x.key for x in lease.losses}
            if span is not None and span.rows:
                self._scan_from = min(self._scan_from, span.lo)

    # -- disk full -----------------------------------------------------------------------

    def _note_full(self) -> None:
        if not self.disk_full:
            self.disk_full = True
            log.error("buffer %s: the disk is full (%d bytes free); readings wait in memory (at"
                      " most %d, then the oldest are dropped into a gap)", self.path,
                      self._free(), self.max_pending)

    def _note_room(self) -> None:
        """Once the disk has room again: the reserve back, and say so once."""
        if self.disk_full and self._reserve.ensure():
            self.disk_full = False
            log.info("buffer %s: the disk has room again (%d bytes free)", self.path, self._free())

    def _free(self) -> int:
        try:
            return free_bytes(self.path.parent)
        except OSError:
            return -1

    def _checkpoint(self, mode: str) -> bool:
        try:
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})")
        except sqlite3.Error as exc:
            log.debug("checkpoint (%s) of %s failed: %s", mode, self.path, exc)
            return False
        return True

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
                oldest = self._conn.execute(
                    "SELECT ts_min FROM chunks WHERE lo <= hi ORDER BY id LIMIT 1").fetchone()
                used = self._cap.used()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read stats of {self.path}: {exc}") from exc
            acked_gaps = {g.first_seq for x in self._unapplied.values() for g in x.gaps}
            acked_rows = sum(span.rows for span in map(self._inflight.get, self._unapplied)
                             if span is not None)
            return StoreStats(
                depth=self._depth, leased=self._inflight.rows - acked_rows,
                pending=self.pending(), oldest_ts=oldest[0] if oldest and self._depth else None,
                file_bytes=file_bytes(self.path),
                used_bytes=used, max_bytes=self.max_bytes, appended=self.appended,
                delivered=self.delivered, dropped=self.dropped, rejected=self.rejected,
                gaps_pending=len(self._gaps.keys() - acked_gaps),
                epoch=self.epoch, schema_version=self.schema_version,
                moved_aside=str(self.moved_aside) if self.moved_aside else None,
                last_seq=self._next_seq - 1, disk_full=self.disk_full,
                free_bytes=self._free(), losses_pending=len(self._a.losses),
                acks_pending=len(self._unapplied), anchor_writes=self._anchor.writes,
            )

    def next_batch_seq(self) -> int:
        """A batch seq strictly greater than any returned before, across restarts and crashes."""
        with self._db_lock:
            self._check_open()
            if self._batch_next >= self._batch_reserved:
                reserve = self._batch_next + _BATCH_BLOCK
                try:
                    self._update_anchor(batch_reserved=reserve)
                except OSError as exc:
                    raise StoreError(f"cannot reserve batch seqs in the anchor: {exc}") from exc
                self._batch_reserved = reserve
            seq = self._batch_next
            self._batch_next += 1
            return seq

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The store's connection, under its lock, for a side table (buffer/_commands.py);
        SQLite errors become :class:`StoreError`."""
        with self._db_lock:
            self._check_open()
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

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
        """Commit what is queued, make it durable, checkpoint and close. Safe to call twice.

        Readings that still cannot be written (disk full) are not dropped silently: they get
        seqs and a loss record in the anchor, which the next start sends upstream.
        """
        if self._closed:
            return
        try:
            self.commit()
        except StoreError as exc:
            log.debug("final commit failed: %s", exc)
        with self._db_lock, self._queue_lock:
            self._apply_unapplied()
            committed = self._next_seq - 1
            changes: dict[str, Any] = {"clean": True}
            try:
                with durable(self._conn, self.synchronous):
                    self._conn.execute(_SEQ_HWM, (committed,))
                self._synced_ts = self._last_ts
                # Every committed seq is on the medium: the next start checks it still is.
                changes["seq_left"] = max(self._a.seq_left, committed)
            except sqlite3.Error as exc:
                log.warning("buffer %s: final sync failed: %s", self.path, exc)
            if not self.disk_full:
                self._checkpoint("TRUNCATE")
            self._record_unwritten()
            try:
                self._update_anchor(**changes)
            except OSError as exc:
                log.error("buffer %s: cannot mark the anchor clean: %s; the next start reports"  # noqa: TRY400 - one line, no traceback
                          " a possible loss", self.path, exc)
            self._conn.close()
            self._anchor.close()
            self._closed = True

    def _record_unwritten(self) -> None:
        """Give the readings still queued (and any overflow) seqs and one loss record."""
        overflow, self._overflow = self._overflow, None
        queued, self._pending = self._pending, []
        if overflow is None:
            overflow = _Overflow()
        overflow.add(queued)
        if not overflow.count:
            return
        first = self._next_seq
        last = first + overflow.count - 1
        self._a.add_loss(Loss(self.epoch, first, last, overflow.count, overflow.first_ts,
                              overflow.last_ts, "exit-unwritten"))
        self._a.seq_floor = last
        self._next_seq = last + 1
        self.dropped += overflow.count
        log.error("closing buffer %s: %d readings could not be written (%s); recorded as lost"
                  " (epoch %d, seqs %d-%d), reported upstream after the next start", self.path,
                  overflow.count, "disk full" if self.disk_full else "commit failing",
                  self.epoch, first, last)

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
