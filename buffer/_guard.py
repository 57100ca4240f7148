"""Opening against the anchor: tell a database that lost history, and what to report.

Cases, decided once per open (docs/DESIGN-NOTES.md, "The anchor"):

* no anchor file: first start, or a buffer from before the anchor existed: the database is
  trusted as it is;
* the database knows every seq the anchor says has left the gateway, in the same epoch: it is
  intact. If the last run did not stop cleanly, what it held in memory is lost (and after a
  reboot, what was written but not yet synced): one loss record with the time range;
* otherwise (the database came back with fewer seqs, another epoch, a fresh file after a
  corrupt one was moved aside, or the anchor itself is unreadable): its history is lost. The
  old epoch gets an open-ended loss record from the first seq not known delivered, and the
  buffer continues in a new epoch; readings that survived in the file are renumbered into it
  and sent again (the platform may therefore see some of them twice, once in each epoch).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

from buffer._anchor import AnchorState
from buffer.types import Loss

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Verdict", "judge", "renumber"]

log = logging.getLogger("streetgate.buffer")

_PARK = 2**62


class Verdict:
    """What the open decided: the state to write, the next seq, and whether to renumber."""

    def __init__(self, state: AnchorState, *, new_epoch: bool, next_seq: int) -> None:
        self.state = state
        self.new_epoch = new_epoch
        self.next_seq = next_seq


def judge(a: AnchorState | None, existed: bool, *, epoch: int, db_hwm: int, fresh: bool,
          moved_aside: bool, batch_next: int, lowest: int, newest_ts: int | None,
          boot: str, anchored: bool = False) -> Verdict:
    """Compare the anchor with the database as opened (see the module docstring).

    ``anchored``: the database says an anchor was written for it before, so a missing anchor
    file is damage, not a first start.
    """
    now = time.time_ns() // 1_000_000
    if a is None and not existed and not anchored:
        acked = lowest - 1
        state = AnchorState(epoch=epoch, seq_left=db_hwm, seq_reserved=db_hwm, acked=acked,
                            batch_reserved=batch_next, last_ts=newest_ts, clean=True)
        return Verdict(state, new_epoch=False, next_seq=db_hwm + 1)
    if a is not None and a.epoch == epoch and db_hwm >= a.seq_left:
        top = max(db_hwm, a.seq_floor)
        if not a.clean:
            # Lost: what was queued in memory (no seq yet), and after a reboot what was written
            # but not synced. Seqs above what the database knows, up to the reservation, may
            # have left with readings the database no longer has: skipped and named.
            reason, since = _stop(a, boot, newest_ts)
            power = reason == "power-loss"
            log.warning("the last run did not stop cleanly (%s): what it still held in memory is"
                        " reported upstream as lost (%s)%s",
                        "the machine rebooted" if power else "killed or crashed", reason,
                        f"; seqs {top + 1}-{a.seq_reserved} are skipped"
                        if a.seq_reserved > top else "")
            a.add_loss(Loss(epoch, None, None, None, since, now, reason))
            if a.seq_reserved > top:
                a.add_loss(Loss(epoch, top + 1, a.seq_reserved, None, since, now, reason))
                top = a.seq_floor = a.seq_reserved  # skipped for good, even if nothing follows
        # seq_left stays what the database itself can show; skipped seqs live in seq_floor.
        a.seq_left, a.seq_reserved = db_hwm, top
        return Verdict(a, new_epoch=False, next_seq=top + 1)
    # History lost.
    if a is None:
        log.error("buffer anchor is %s: cannot tell which seqs left the gateway, so the buffer"
                  " starts a new epoch", "unreadable" if existed else "missing")
        old = AnchorState(epoch=epoch, acked=lowest - 1)
        reason = "history-lost"
    else:
        old = a
        reason = "moved-aside" if moved_aside and fresh else "history-lost"
        log.error("buffer lost history (epoch %d: %s; the database knows seqs up to %d, %d had"
                  " left the gateway): starting a new epoch and reporting seqs from %d on as"
                  " lost", a.epoch, "moved aside" if reason == "moved-aside" else
                  ("another epoch" if a.epoch != epoch else "fewer seqs"), db_hwm, a.seq_left,
                  a.acked + 1)
    state = AnchorState(epoch=epoch if fresh and old.epoch != epoch else _new_epoch(old.epoch),
                        losses=list(old.losses), next_loss_key=old.next_loss_key)
    state.add_loss(Loss(old.epoch, old.acked + 1, None, None, None, now, reason))
    if a is None or not a.clean:
        # What the last run held in memory had no seq: only its time range can say it.
        stop, since = (reason, newest_ts) if a is None else _stop(a, boot, newest_ts)
        state.add_loss(Loss(old.epoch, None, None, None, since, now, stop))
    return Verdict(state, new_epoch=state.epoch != epoch, next_seq=1)


def _stop(a: AnchorState, boot: str, newest_ts: int | None) -> tuple[str, int | None]:
    """Why the last run ended uncleanly, and the newest ts known on the medium since then.

    The time bound assumes the wall clock did not step back while readings waited in memory.
    """
    power = bool(a.boot_id and boot and a.boot_id != boot)
    since = max((t for t in (a.last_ts, newest_ts) if t is not None), default=None)
    return ("power-loss" if power else "unclean-stop"), since


def _new_epoch(avoid: int) -> int:
    while True:
        e = secrets.randbits(63) or 1
        if e != avoid:
            return e


def renumber(conn: sqlite3.Connection, epoch: int, acked: int) -> None:
    """Inside a transaction: what survived goes to ``epoch`` with dense seqs from 1.

    Chunks and gaps at or below ``acked`` were delivered and go; the rest keep their order and
    are numbered without holes (a seq acked out of order before the damage would otherwise
    leave a hole in the new epoch that no record explains).
    """
    conn.execute("DELETE FROM chunks WHERE hi <= ? OR lo > hi", (acked,))
    conn.execute("UPDATE chunks SET lo = ? WHERE lo <= ?", (acked + 1, acked))
    conn.execute("DELETE FROM gaps WHERE last_seq <= ?", (acked,))
    chunks = conn.execute("SELECT id, lo, hi FROM chunks").fetchall()
    gaps = conn.execute("SELECT first_seq, last_seq FROM gaps").fetchall()
    items = sorted([(lo, hi, "c", cid) for cid, lo, hi in chunks]
                   + [(lo, hi, "g", lo) for lo, hi in gaps])
    # Park every key above all others first: a key moved down must not meet one not moved yet.
    conn.execute("UPDATE chunks SET id = id + ?", (_PARK,))
    conn.execute("UPDATE gaps SET first_seq = first_seq + ?", (_PARK,))
    nxt = 1
    for lo, hi, kind, key in items:
        shift = lo - nxt
        if kind == "c":
            # The row's id becomes its new lo: ids stay within CHUNK_MAX below lo.
            conn.execute("UPDATE chunks SET id = ?1, base = base - ?2, lo = lo - ?2,"
                         " hi = hi - ?2 WHERE id = ?3", (nxt, shift, key + _PARK))
        else:
            conn.execute("UPDATE gaps SET first_seq = ?1, last_seq = last_seq - ?2"
                         " WHERE first_seq = ?3", (nxt, shift, key + _PARK))
        nxt += hi - lo + 1
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                     [(epoch, "epoch"), (nxt - 1, "seq_hwm"), (1, "batch_seq_next")])
