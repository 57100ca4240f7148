"""Shapes shared by the store, the uplink and the batch encoder."""

from __future__ import annotations

import dataclasses

from drivers.api import Value

__all__ = ["Gap", "Lease", "Row", "StoreStats"]

#: One buffered reading as the store hands it out: (seq, point, unit, ts_ms, value, quality).
#: ``seq`` is the buffer sequence number: unique and increasing for the life of the database
#: (its ``epoch``), never reused, so a receiver can drop duplicates and see holes.
Row = tuple[int, str, str | None, int, Value, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """Readings the buffer dropped (size cap) before they could be delivered.

    The range is exact: every seq in ``[first_seq, last_seq]`` was dropped, so ``count`` is
    ``last_seq - first_seq + 1``; ``first_ts``/``last_ts`` are the oldest and newest ts dropped.
    """

    first_seq: int
    last_seq: int
    count: int
    first_ts: int
    last_ts: int
    #: Names of the points that lost readings (capped; ``points_truncated`` says if more).
    points: tuple[str, ...] = ()
    points_truncated: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """Rows (oldest first) and gaps handed to the uplink until :meth:`Store.ack` or release."""

    id: int
    rows: list[Row]
    gaps: list[Gap]
    first_seq: int | None
    last_seq: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters since this process opened the store, and the state of the file."""

    depth: int  # committed rows not yet delivered (leased ones included)
    leased: int  # rows in leases in flight
    pending: int  # appended, not yet committed
    oldest_ts: int | None  # ts of the oldest undelivered row
    file_bytes: int  # database + WAL on disk
    used_bytes: int  # pages in use, what the cap counts
    max_bytes: int
    appended: int
    delivered: int
    dropped: int  # dropped by the size cap (each one is in a gap)
    rejected: int  # malformed readings refused at commit (wrong point/ts/quality type)
    gaps_pending: int  # gap records not yet acked
    epoch: int
    schema_version: int
    moved_aside: str | None
    last_seq: int  # highest seq ever assigned (0 when none)
