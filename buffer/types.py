"""Shapes shared by the store, the uplink and the batch encoder."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from drivers.api import Value

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LOSS_REASONS", "Gap", "Lease", "Loss", "Row", "StoreStats"]

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


#: Why readings were lost (``Loss.reason``); receivers accept any text and show it as is.
LOSS_REASONS = {
    "history-lost": "the buffer database came back without part of its history (a WAL that did"
                    " not replay, a file restored from an older copy)",
    "moved-aside": "the buffer database was corrupt and moved aside; its unsent readings are"
                   " in the moved file, not delivered",
    "damaged": "a stored chunk of readings could no longer be read (the card returned other"
               " bytes than were written)",
    "exit-unwritten": "queued in memory and could not be written (disk full) when the"
                      " gateway stopped",
    "unclean-stop": "queued in memory when the gateway process died (kill, crash, OOM)",
    "power-loss": "queued in memory or written but not yet on the storage medium when the"
                  " gateway lost power",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Loss:
    """Readings the gateway lost to its storage or to a stop: a record that travels upstream.

    Unlike a :class:`Gap` it may name an earlier epoch, and its range may be open or unknown:

    * ``first_seq`` and ``last_seq`` set: exactly the seqs in that range of ``epoch`` that the
      platform has not received are lost (some of them may have been delivered already);
    * ``first_seq`` set, ``last_seq`` None: every seq from ``first_seq`` on in ``epoch`` that the
      platform has not received is lost (the epoch ended with the damage);
    * both None: readings that never got a seq (queued in memory), bounded by the time range.

    ``count`` is exact when known, else None. ``first_ts``/``last_ts`` bound the readings' time
    (ms since the Unix epoch; None where unknown). ``key`` is the store's own handle for
    acknowledging the record; it is not sent.
    """

    epoch: int
    first_seq: int | None
    last_seq: int | None
    count: int | None
    first_ts: int | None
    last_ts: int | None
    reason: str
    key: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """Rows (oldest first) and gaps handed to the uplink until :meth:`Store.ack` or release."""

    id: int
    rows: Sequence[Row]  # buffer._chunks.Rows from the store: columns, tuples on demand
    gaps: list[Gap]
    first_seq: int | None
    last_seq: int | None
    losses: list[Loss] = dataclasses.field(default_factory=list)


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
    disk_full: bool = False  # the last write failed for lack of space (until room returns)
    free_bytes: int = -1  # free space on the buffer's filesystem (-1: unknown)
    losses_pending: int = 0  # loss records not yet acked
    acks_pending: int = 0  # acked batches whose delete is not written yet (disk full)
    anchor_writes: int = 0  # synced anchor writes since open
