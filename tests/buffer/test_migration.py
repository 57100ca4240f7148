"""Schema version 1 (a row per reading) to version 2 (a chunk per commit) keeps every reading."""

from __future__ import annotations

import math
import sqlite3
import struct
from typing import TYPE_CHECKING

from buffer import Gap, Store, _db
from tests.buffer.helpers import BASE_TS

if TYPE_CHECKING:
    from pathlib import Path

# Version-1 rows as the old store wrote them: (seq, point, ts, value, q = quality << 3 | kind).
_NAN = struct.pack("<d", float("nan"))
V1_ROWS = [
    (1, 1, BASE_TS, 230.5, 0),                       # plain float
    (2, 2, BASE_TS, 120345, 0),                      # plain int
    (3, 3, BASE_TS, 1, 1),                           # bool True (kind 1)
    (4, 1, BASE_TS + 1, _NAN, 2),                    # NaN as its IEEE bytes (kind 2)
    (5, 2, BASE_TS + 1, str(2**70), 3),              # big int as text (kind 3)
    (6, 3, BASE_TS + 1, "\udc80".encode("utf-8", "surrogatepass"), 4),  # lone surrogate
    (7, 1, BASE_TS + 2, None, 1 << 3),               # TIMEOUT, no value
    (8, 2, BASE_TS + 2, 2, 6 << 3),                  # EXCEPTION 2
    (9, 3, BASE_TS + 2, b"\x00\x01", 0),             # bytes
    # seqs 10-14 were dropped (a gap); 15 onwards continue
    (15, 1, BASE_TS + 5, -0.0, 0),
    (16, 2, BASE_TS + 5, "text", 0),
]
POINTS = [(1, "cab-1/m/v", "V"), (2, "cab-1/m/e", "Wh"), (3, "cab-1/door", None)]


def _v1_database(path: Path) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    _db.MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany("INSERT INTO points VALUES (?, ?, ?)", POINTS)
    conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?)", V1_ROWS)
    conn.execute("INSERT INTO gaps VALUES (10, 14, 5, ?, ?, '[\"cab-1/m/v\"]', 0)",
                 (BASE_TS + 3, BASE_TS + 4))
    conn.execute("UPDATE meta SET value = 16 WHERE key = 'seq_hwm'")
    conn.execute("UPDATE meta SET value = 2001 WHERE key = 'batch_seq_next'")
    conn.execute("COMMIT")
    epoch: int = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
    conn.close()
    return epoch


def test_version_1_buffer_keeps_every_reading_gap_epoch_and_seq(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    epoch = _v1_database(path)
    with Store(path) as store:
        assert store.schema_version == _db.schema_version()
        assert store.epoch == epoch
        assert store.stats().depth == len(V1_ROWS)
        lease = store.lease(100)
        assert lease is not None
        assert store.next_batch_seq() >= 2001  # the old reservation still holds
        rows = {r[0]: r for r in lease.rows}
        assert sorted(rows) == [s for s, *_ in V1_ROWS]
        assert lease.gaps == [Gap(10, 14, 5, BASE_TS + 3, BASE_TS + 4, ("cab-1/m/v",), False)]
        assert rows[1][1:] == ("cab-1/m/v", "V", BASE_TS, 230.5, 0)
        assert rows[2][4] == 120345
        assert rows[3][4] is True
        assert math.isnan(rows[4][4])  # type: ignore[arg-type]
        assert rows[5][4] == 2**70
        assert rows[6][4] == "\udc80"
        assert (rows[7][4], rows[7][5]) == (None, 1)
        assert (rows[8][4], rows[8][5]) == (2, 6)
        assert rows[9][4] == b"\x00\x01"
        assert math.copysign(1.0, rows[15][4]) == -1.0  # type: ignore[arg-type]
        assert rows[16][2:] == ("Wh", BASE_TS + 5, "text", 0)
        store.ack(lease)
        store.append([])
        store.commit()
        assert store.last_seq == 16  # seqs go on from the old high-water mark
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "readings" not in tables
    assert "chunks" in tables


def test_a_large_version_1_buffer_moves_in_chunks_with_its_holes(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    _db.MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany("INSERT INTO points VALUES (?, ?, ?)", POINTS)
    seqs = [s for s in range(1, 20_001) if not 5000 <= s < 5010]
    conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?)",
                     [(s, 1 + s % 3, BASE_TS + s, s * 0.25, 0) for s in seqs])
    conn.execute("COMMIT")
    conn.close()
    with Store(path) as store:
        got = []
        while (lease := store.lease(3000)) is not None:
            got += [(r[0], r[3], r[4]) for r in lease.rows]
            store.ack(lease)
    assert got == [(s, BASE_TS + s, s * 0.25) for s in seqs]
