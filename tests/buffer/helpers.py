"""Small builders shared by the buffer tests."""

from __future__ import annotations

import random
import sqlite3
from typing import TYPE_CHECKING

from drivers.api import Quality, Reading

if TYPE_CHECKING:
    from pathlib import Path

    from buffer import Lease, Row, Store

BASE_TS = 1_700_000_000_000


def readings(n: int, *, start: int = 0, points: int = 10, unit: str | None = "V",
             payload: bytes | None = None, noisy: bool = False) -> list[Reading]:
    """``n`` readings whose ts is ``BASE_TS + index`` (index counted from ``start``).

    ``noisy`` makes each value 24 random bytes (seeded by the index), which the buffer's
    compression cannot shrink: for tests that must fill a file.
    """
    out = []
    for i in range(start, start + n):
        value: float | bytes = payload if payload is not None else i * 0.5
        if noisy:
            value = random.Random(i).randbytes(24)
        out.append(Reading(f"cab-1/dev-{i % points:03d}/v", BASE_TS + i, value, Quality.GOOD, unit))
    return out


def drain(store: Store, size: int = 1000) -> list[Lease]:
    """Lease and ack until nothing is left; returns the leases in order."""
    leases = []
    while (lease := store.lease(size)) is not None:
        store.ack(lease)
        leases.append(lease)
    return leases


def seqs(rows: list[Row]) -> list[int]:
    return [r[0] for r in rows]


def stored_seqs(path: Path) -> list[int]:
    """Seqs in the file, read with a separate plain connection."""
    conn = sqlite3.connect(path)
    try:
        spans = conn.execute("SELECT lo, hi FROM chunks ORDER BY base").fetchall()
        return [s for lo, hi in spans for s in range(lo, hi + 1)]
    finally:
        conn.close()


def meta(path: Path, key: str) -> int:
    conn = sqlite3.connect(path)
    try:
        value: int = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
        return value
    finally:
        conn.close()
