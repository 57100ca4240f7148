"""What a platform application asks of the ingest database, as JSON-ready data.

The same SQL runs on SQLite and PostgreSQL, and every answer has a fixed order, so both
databases give byte-identical JSON for the same data.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from drivers.api import Quality, Reading
from ingest._values import VALUE_COLUMNS, decode_value

if TYPE_CHECKING:
    from ingest._db import Database

__all__ = ["completeness", "latest", "readings", "readings_range"]

_COLS = f"gateway_id, epoch, seq, point, unit, ts, {', '.join(VALUE_COLUMNS)}"


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    value = decode_value(*r[7:12])
    return {"gateway_id": r[0], "epoch": int(r[1]), "seq": int(r[2]), "point": r[3],
            "unit": r[4], "ts": int(r[5]), "quality": Quality(int(r[6])).name.lower(),
            "value": value.hex() if isinstance(value, bytes) else value}


def _reading(r: tuple[Any, ...]) -> Reading:
    return Reading(point=r[3], ts=int(r[5]), value=decode_value(*r[7:12]),
                   quality=Quality(int(r[6])), unit=r[4])


def latest(db: Database, gateway_id: str | None = None) -> list[dict[str, Any]]:
    """The newest reading of every point (of one gateway, or all), by gateway and point."""
    where, params = ("WHERE gateway_id = ?", (gateway_id,)) if gateway_id else ("", ())
    with db.transaction() as tx:
        rows = tx.all(f"SELECT {_COLS} FROM latest {where} "  # noqa: S608 - fixed names
                      "ORDER BY gateway_id, point", params)
    return [_row(r) for r in rows]


def _range_rows(db: Database, gateway_id: str, point: str, start_ms: int,
                end_ms: int) -> list[tuple[Any, ...]]:
    with db.transaction() as tx:
        return tx.all(f"SELECT {_COLS} FROM readings WHERE gateway_id = ? AND point = ? "  # noqa: S608 - fixed names
                      "AND ts >= ? AND ts < ? ORDER BY ts, epoch, seq",
                      (gateway_id, point, start_ms, end_ms))


def readings_range(db: Database, gateway_id: str, point: str, start_ms: int,
                   end_ms: int) -> list[tuple[int, Reading]]:
    """A point's readings with ``start_ms <= ts < end_ms`` as ``(seq, Reading)``, by time."""
    return [(int(r[2]), _reading(r))
            for r in _range_rows(db, gateway_id, point, start_ms, end_ms)]


def readings(db: Database, gateway_id: str, point: str, start_ms: int,
             end_ms: int) -> list[dict[str, Any]]:
    """:func:`readings_range` as JSON-ready records (epoch and seq included)."""
    return [_row(r) for r in _range_rows(db, gateway_id, point, start_ms, end_ms)]


def completeness(db: Database, gateway_id: str) -> dict[str, Any]:
    """Per epoch: readings received, gaps (dropped by the buffer), losses, holes (neither
    received nor accounted for), batches accepted, duplicates and refusals."""
    with db.transaction() as tx:
        streams = tx.all("SELECT epoch, received, duplicates, batches, highest_batch, low_seq, "
                         "high_seq, holes FROM streams WHERE gateway_id = ? ORDER BY epoch",
                         (gateway_id,))
        gaps = tx.all("SELECT epoch, COUNT(*), SUM(count) FROM gaps WHERE gateway_id = ? "
                      "GROUP BY epoch", (gateway_id,))
        losses = tx.all("SELECT epoch, first_seq, last_seq, count, first_ts, last_ts, reason "
                        "FROM losses WHERE gateway_id = ? ORDER BY epoch, ident", (gateway_id,))
        refused = tx.all("SELECT epoch, status, COUNT(*) FROM rejections WHERE gateway_id = ? "
                         "GROUP BY epoch, status ORDER BY epoch, status", (gateway_id,))
        clock = tx.all("SELECT epoch, state, COUNT(*) FROM clock_spans WHERE gateway_id = ? "
                       "GROUP BY epoch, state ORDER BY epoch, state", (gateway_id,))
    gap_by = {int(e): (int(n), int(c)) for e, n, c in gaps}
    epochs: list[dict[str, Any]] = []
    for ep, received, dupes, batches, highest, low, high, holes in streams:
        e = int(ep)
        hole_ranges = [list(h) for h in json.loads(holes)]
        epochs.append({
            # JSON numbers are exact to 2**53 only (RFC 7493 §2.2); epochs may exceed it.
            "epoch": str(e),
            "received": int(received), "duplicates": int(dupes), "batches": int(batches),
            "highest_batch": int(highest),
            "seqs": None if low is None else [int(low), int(high)],
            "gaps": gap_by.get(e, (0, 0))[0], "dropped": gap_by.get(e, (0, 0))[1],
            "losses": [{"first_seq": f, "last_seq": la, "count": c, "first_ts": ft,
                        "last_ts": lt, "reason": why}
                       for ep2, f, la, c, ft, lt, why in losses if int(ep2) == e],
            "holes": hole_ranges, "missing": sum(b - a + 1 for a, b in hole_ranges),
            "refused": {s: int(n) for ep2, s, n in refused if ep2 is not None and int(ep2) == e},
            "clock_spans": {s: int(n) for ep2, s, n in clock if int(ep2) == e},
        })
    return {"gateway_id": gateway_id, "epochs": epochs}
