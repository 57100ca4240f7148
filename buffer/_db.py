"""Opening the buffer database: pragmas, quick_check, corrupt files moved aside, migrations.

Exceptions: every ``sqlite3.Error`` that leaves this package becomes a :class:`StoreError`;
SQLITE_CORRUPT and SQLITE_NOTADB (https://sqlite.org/rescode.html) found while opening make
the file move aside instead, so the daemon keeps running on a fresh database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import sqlite3
import time
from typing import TYPE_CHECKING

from buffer._chunks import CHUNK_MAX, pack_columns
from buffer._codec import KIND_BITS, decode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from buffer._codec import DbValue

__all__ = [
    "MIGRATIONS", "StoreError", "durable", "file_bytes", "open_db", "rollback", "schema_version",
]

log = logging.getLogger("streetgate.buffer")

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_MAGIC = b"SQLite format 3\x00"
#: Page cache per connection (https://sqlite.org/pragma.html#pragma_cache_size).
_CACHE_KIB = 256


class StoreError(Exception):
    """The buffer cannot do what was asked (disk full, read-only file, closed store, ...)."""


class _CorruptError(Exception):
    """quick_check or SQLite itself says the file is damaged."""


def _v1(conn: sqlite3.Connection) -> None:
    """First layout: interned points, readings keyed by an explicit seq, gaps, meta, kv."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, name TEXT NOT NULL, unit TEXT,"
                 " UNIQUE (name, unit))")
    # No declared type on value: SQLite keeps each value's own storage class.
    conn.execute("CREATE TABLE readings (seq INTEGER PRIMARY KEY, point INTEGER NOT NULL,"
                 " ts INTEGER NOT NULL, value, q INTEGER NOT NULL)")
    conn.execute("CREATE TABLE gaps (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,"
                 " count INTEGER NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,"
                 " points TEXT NOT NULL, points_truncated INTEGER NOT NULL)")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
    epoch = secrets.randbits(63) or 1
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("epoch", epoch), ("seq_hwm", 0), ("batch_seq_next", 1),
        ("created_ms", time.time_ns() // 1_000_000),
    ])


def _v2(conn: sqlite3.Connection) -> None:
    """Readings packed per group commit (buffer/_chunks.py); version-1 rows move over as is.

    ``base`` is the seq of the blob's first reading; ``lo..hi`` the seqs still stored (acks and
    drops trim it without rewriting the blob); ``id`` is ``lo`` when the row was written.
    """
    conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, base INTEGER NOT NULL,"
                 " lo INTEGER NOT NULL,"
                 " hi INTEGER NOT NULL, ts_min INTEGER NOT NULL, ts_max INTEGER NOT NULL,"
                 " data BLOB NOT NULL)")
    cur = conn.execute("SELECT seq, point, ts, value, q FROM readings ORDER BY seq")
    run: list[tuple[int, int, int, DbValue, int]] = []
    moved = 0
    while rows := cur.fetchmany(CHUNK_MAX):
        for row in rows:
            if run and (row[0] != run[-1][0] + 1 or len(run) >= CHUNK_MAX):
                _v1_chunk(conn, run)
                moved += len(run)
                run = []
            run.append(row)
    if run:
        _v1_chunk(conn, run)
        moved += len(run)
    conn.execute("DROP TABLE readings")
    if moved:
        log.info("buffer: %d readings moved to the packed format", moved)


def _v3(conn: sqlite3.Connection) -> None:
    from buffer._commands import v3  # noqa: PLC0415 - that module imports this one

    v3(conn)


def _v1_chunk(conn: sqlite3.Connection, run: list[tuple[int, int, int, DbValue, int]]) -> None:
    mask = (1 << KIND_BITS) - 1
    values = [v if not q & mask else decode(q & mask, v) for _s, _p, _t, v, q in run]
    qs = [q >> KIND_BITS for *_, q in run]
    ts = [r[2] for r in run]
    blob = pack_columns(([r[1] for r in run], ts, values, qs if any(qs) else None))
    conn.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (run[0][0], run[0][0], run[0][0], run[-1][0], min(ts), max(ts), blob))


#: ``MIGRATIONS[n]`` takes a database from ``user_version`` n to n + 1, inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2, _v3]


def schema_version() -> int:
    return len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    target = schema_version()
    if version > target:
        raise StoreError(f"buffer schema version {version} is newer than this streetgate "
                         f"understands ({target}); refusing to touch it")
    for step in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version = {step + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        if version:
            log.info("buffer schema migrated from version %d to %d", step, step + 1)
    return target


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback failed", exc_info=True)


@contextlib.contextmanager
def durable(conn: sqlite3.Connection, restore: str) -> Iterator[None]:
    """Run a block with ``PRAGMA synchronous = FULL`` (its commit fsyncs), then restore."""
    conn.execute("PRAGMA synchronous = FULL")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous = {_SYNC[restore]}")


_SYNC = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, _CorruptError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _check(conn: sqlite3.Connection, path: Path) -> None:
    """WAL mode on, and ``PRAGMA quick_check`` finds nothing wrong."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
    problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise _CorruptError("quick_check: " + "; ".join(problems))


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # Page cache 256 KiB instead of SQLite's 2 MiB: readings are packed into a few
        # overflow pages per commit and read about once, to lease them; the tree pages that
        # are read again fit. Set before quick_check, which reads the whole file through it.
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB:d}")
        _check(conn, path)
        conn.execute(f"PRAGMA synchronous = {_SYNC[synchronous]}")
        with durable(conn, synchronous):
            _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _aside_name(path: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    return target


def _move_aside(path: Path, why: BaseException) -> Path:
    target = _aside_name(path)
    path.rename(target)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    log.warning("buffer database %s is corrupt (%s); moved it aside to %s and started a fresh one",
                path, why, target)
    return target


def _foreign_header(path: Path) -> bool:
    """A non-empty file that does not start like a database (fileformat2.html §1.3).

    Caught before SQLite opens it: closing a connection may checkpoint or delete a -wal file.
    """
    try:
        with path.open("rb") as f:
            head = f.read(len(_MAGIC))
    except FileNotFoundError:
        return False
    return bool(head) and head != _MAGIC


def _connect_checked(path: Path, synchronous: str) -> sqlite3.Connection:
    if _foreign_header(path):
        raise _CorruptError("file is not a database")
    return _connect(path, synchronous)


def open_db(path: Path, synchronous: str) -> tuple[sqlite3.Connection, Path | None]:
    """Open (creating or migrating) the database; a corrupt file is renamed and replaced."""
    try:
        return _connect_checked(path, synchronous), None
    except (sqlite3.Error, _CorruptError) as exc:
        if not _is_corrupt(exc) or not path.exists():
            raise StoreError(f"cannot open buffer {path}: {exc}") from exc
        moved = _move_aside(path, exc)
    try:
        return _connect(path, synchronous), moved
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open fresh buffer {path}: {exc}") from exc


def file_bytes(path: Path) -> int:
    """Bytes the database and its WAL take on disk now."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total
