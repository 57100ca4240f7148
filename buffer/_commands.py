"""Commands and their results, kept in the buffer's database (schema version 3).

The gateway remembers every command it has seen until well after it expires (replays are
refused, a redelivered command is never performed twice), keeps commands whose device is
unreachable until they expire, and keeps each result until the broker has acknowledged it on
the result topic and inside a batch. The buffer stores the signed messages as opaque bytes:
what they mean is the gateway's business.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from buffer._db import StoreError, durable

if TYPE_CHECKING:
    from buffer.store import Store

__all__ = ["CommandLog", "CommandRow", "v3"]


def v3(conn: sqlite3.Connection) -> None:
    """Commands: one row per command id, with its state and its signed result."""
    conn.execute("CREATE TABLE commands (id TEXT PRIMARY KEY, ref BLOB NOT NULL,"
                 " received INTEGER NOT NULL, expires INTEGER NOT NULL, message BLOB NOT NULL,"
                 " state TEXT NOT NULL, result BLOB, result_sent INTEGER NOT NULL DEFAULT 0,"
                 " batched INTEGER NOT NULL DEFAULT 0, done_ms INTEGER)")
    conn.execute("CREATE INDEX commands_open ON commands (state) WHERE state IN"
                 " ('pending', 'performing')")


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: str
    ref: bytes
    received: int
    expires: int
    message: bytes
    state: str  # pending | performing | final
    result: bytes | None
    result_sent: bool
    batched: bool
    done_ms: int | None


_COLS = "id, ref, received, expires, message, state, result, result_sent, batched, done_ms"


def _row(r: tuple[Any, ...]) -> CommandRow:
    return CommandRow(str(r[0]), bytes(r[1]), int(r[2]), int(r[3]), bytes(r[4]), str(r[5]),
                      bytes(r[6]) if r[6] is not None else None, bool(r[7]), bool(r[8]),
                      r[9])


class CommandLog:
    """The commands table, through the store's connection and lock; every change is synced
    (``PRAGMA synchronous = FULL`` for its commit) before the call returns."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[CommandRow]:
        with self._store.connection() as conn:
            return [_row(r) for r in conn.execute(sql, args).fetchall()]

    def _write(self, sql: str, args: tuple[object, ...]) -> int:
        store = self._store
        with store.connection() as conn, durable(conn, store.synchronous):
            return conn.execute(sql, args).rowcount

    def get(self, cid: str) -> CommandRow | None:
        rows = self._read(f"SELECT {_COLS} FROM commands WHERE id = ?", (cid,))  # noqa: S608
        return rows[0] if rows else None

    def add(self, cid: str, ref: bytes, *, received: int, expires: int, message: bytes,
            state: str = "pending", result: bytes | None = None) -> bool:
        """Remember a new command; False when its id is known already (nothing changes)."""
        try:
            return self._write(
                "INSERT OR IGNORE INTO commands (id, ref, received, expires, message, state,"
                " result, done_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, ref, received, expires, message, state, result,
                 received if state == "final" else None)) == 1
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record command {cid!r}: {exc}") from exc

    def set_state(self, cid: str, state: str) -> None:
        self._write("UPDATE commands SET state = ? WHERE id = ?", (state, cid))

    def finish(self, cid: str, result: bytes, now_ms: int) -> None:
        """The command's final result: stored before it is published, never replaced."""
        self._write("UPDATE commands SET state = 'final', result = ?, result_sent = 0,"
                    " batched = 0, done_ms = ? WHERE id = ? AND state != 'final'",
                    (result, now_ms, cid))

    def open(self) -> list[CommandRow]:
        """Commands not yet final, oldest first."""
        return self._read(f"SELECT {_COLS} FROM commands WHERE state IN ('pending',"  # noqa: S608
                          " 'performing') ORDER BY received, id")

    def unsent(self, limit: int = 100) -> list[CommandRow]:
        """Final results the broker has not acknowledged on the result topic."""
        return self._read(f"SELECT {_COLS} FROM commands WHERE state = 'final'"  # noqa: S608
                          " AND result IS NOT NULL AND result_sent = 0 ORDER BY done_ms"
                          " LIMIT ?", (limit,))

    def sent(self, cid: str) -> None:
        self._write("UPDATE commands SET result_sent = 1 WHERE id = ?", (cid,))

    def unbatched(self, limit: int = 64) -> list[CommandRow]:
        """Final results not yet carried by an acknowledged batch."""
        return self._read(f"SELECT {_COLS} FROM commands WHERE state = 'final'"  # noqa: S608
                          " AND result IS NOT NULL AND batched = 0 ORDER BY done_ms"
                          " LIMIT ?", (limit,))

    def batched(self, ids: list[str]) -> None:
        store = self._store
        with store.connection() as conn, durable(conn, store.synchronous):
            conn.executemany("UPDATE commands SET batched = 1 WHERE id = ?",
                             [(i,) for i in ids])

    def recent(self, limit: int = 10) -> list[CommandRow]:
        return self._read(f"SELECT {_COLS} FROM commands ORDER BY received DESC"  # noqa: S608
                          " LIMIT ?", (limit,))

    def prune(self, before_ms: int) -> int:
        """Forget commands that expired before ``before_ms`` and whose result went up (on its
        topic; a result no batch carried within that long is let go too)."""
        return self._write("DELETE FROM commands WHERE expires < ? AND state = 'final'"
                           " AND result_sent = 1", (before_ms,))
