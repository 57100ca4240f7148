"""One seam over SQLite (sqlite3) and PostgreSQL (psycopg 3); their exceptions mapped here.

    sqlite3.OperationalError "database is locked" ─┐
    psycopg SerializationFailure, DeadlockDetected ─┼─► RetryableError  (the transaction is
    psycopg OperationalError (connection lost)     ─┘                    run again)
    any other sqlite3.Error / psycopg.Error        ───► DatabaseError   (fatal for the worker)
    a URL we cannot open                           ───► DatabaseError

SQL is written once with ``?`` placeholders and ``{BLOB}``/``{ID}`` type names; each dialect
turns them into its own. Both speak ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite >= 3.24).
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["Database", "DatabaseError", "RetryableError", "Tx", "open_database"]


class DatabaseError(Exception):
    """The database refused something, or cannot be opened."""


class RetryableError(DatabaseError):
    """A conflict between workers or a lost connection: run the transaction again."""


@dataclass(frozen=True)
class _Dialect:
    name: str
    blob: str
    ident: str

    def sql(self, text: str) -> str:
        text = text.replace("{BLOB}", self.blob).replace("{ID}", self.ident)
        return text.replace("?", "%s") if self.name == "postgresql" else text


SQLITE = _Dialect("sqlite", "BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT")
POSTGRES = _Dialect("postgresql", "BYTEA", "BIGSERIAL PRIMARY KEY")


def _map(exc: BaseException) -> DatabaseError:
    """Our exception for a driver's."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return RetryableError(f"sqlite: {exc}")
    if isinstance(exc, sqlite3.Error):
        return DatabaseError(f"sqlite: {exc}")
    import psycopg  # noqa: PLC0415 - only when PostgreSQL is in use

    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected
                  | psycopg.OperationalError):
        return RetryableError(f"postgresql: {type(exc).__name__}: {exc}".strip())
    return DatabaseError(f"postgresql: {type(exc).__name__}: {exc}".strip())


def _driver_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


class Tx:
    """A transaction in progress: statements in the database's dialect."""

    def __init__(self, db: Database, cur: Any) -> None:
        self.db = db
        self._cur = cur

    @property
    def dialect(self) -> str:
        return self.db.dialect.name

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cur.execute(self.db.dialect.sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(self.db.dialect.sql(sql), rows)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self.db.dialect.sql(sql), tuple(params))
        return [tuple(r) for r in self._cur.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def copy(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
             types: Sequence[str] | None = None) -> None:
        """PostgreSQL COPY FROM STDIN (binary format when the column ``types`` are given: no
        text to parse on the server); executemany elsewhere."""
        if not rows:
            return
        if self.dialect != "postgresql":
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - our names
            self.executemany(sql, rows)
            return
        binary = " (FORMAT BINARY)" if types else ""
        with self._cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{binary}") as cp:
            if types:
                cp.set_types(list(types))
            for row in rows:
                cp.write_row(row)


    def copy_new(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                 types: Sequence[str] | None = None) -> bool:
        """COPY rows the caller believes new straight into ``table`` (PostgreSQL), in a
        savepoint: False, and nothing written, when one of them is there already."""
        if self.dialect != "postgresql" or not rows:
            return False
        import psycopg  # noqa: PLC0415

        try:
            with self.db.connection.transaction():  # a savepoint inside our transaction
                self.copy(table, columns, rows, types)
        except psycopg.errors.UniqueViolation:
            return False
        return True


class Database:
    """One connection, used by one thread; ``transaction()`` commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        scheme = urlsplit(url).scheme
        if scheme == "sqlite":
            self.dialect = SQLITE
        elif scheme in ("postgresql", "postgres"):
            self.dialect = POSTGRES
        else:
            raise DatabaseError(f"{url!r}: expected sqlite:///PATH or postgresql://...")
        self._conn: Any = None

    def _connect(self) -> Any:
        if self.dialect is SQLITE:
            path = urlsplit(self.url).path[1:]  # sqlite:///rel.db, sqlite:////abs.db
            if path not in ("", ":memory:"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (one writer at a time,
            # taken at the start so two transactions never deadlock on an upgrade).
            conn = sqlite3.connect(path or ":memory:", isolation_level=None, timeout=30,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import psycopg  # noqa: PLC0415

        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    @property
    def connection(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except _driver_errors() as exc:
                raise _map(exc) from None
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        conn = self.connection
        try:
            if self.dialect is SQLITE:
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self, cur)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            else:
                with conn.transaction(), conn.cursor() as cur:
                    yield Tx(self, cur)
        except _driver_errors() as exc:
            err = _map(exc)
            if isinstance(err, RetryableError):
                self.close()  # a fresh connection for the retry
            raise err from None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def open_database(url: str) -> Database:
    """A database by URL, migrated to the current schema."""
    from ingest.schema import migrate  # noqa: PLC0415

    db = Database(url)
    migrate(db)
    return db
