"""The verifier: signature, key, order, duplicates, gaps and losses, for the platform side.

Delivery is at-least-once, so a reading may arrive more than once; it is identified by
``(gateway_id, epoch, seq)``. Per ``(gateway, epoch)`` the verifier keeps the set of seqs
delivered (and those the gateway reported dropped or lost) as intervals, passes on only
readings not seen before, and reports what is still missing. docs/wire-format.md,
"Receiving", is the spec.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from buffer.types import Gap, Loss
from gateway._wire import Unchanged
from gateway.batch import Batch, BatchFormatError, decode_batch
from gateway.cose import CoseFormatError, SignatureError, UnknownKeyError, open1

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from drivers.api import Reading

__all__ = ["IntervalSet", "Result", "Status", "Verifier"]

_LOSS_STATS = {"losses": 0, "lost_reported": 0}  # absent from state saved before losses

Status = Literal["ok", "duplicate", "replay", "bad-signature", "unknown-key", "malformed"]
# Version 1 throughout: "losses" per stream was added later and may be absent.
_STATE_VERSION = 1
#: A loss record by its wire fields, epoch aside: the same record resent has the same one.
_LossId = tuple[int | None, int | None, int | None, int | None, int | None, str]


def _loss_id(loss: Loss) -> _LossId:
    return (loss.first_seq, loss.last_seq, loss.count, loss.first_ts, loss.last_ts, loss.reason)


class IntervalSet:
    """A set of integers kept as sorted, disjoint, non-adjacent closed intervals."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for lo, hi in ranges:
            self.add(lo, hi)

    def add(self, lo: int, hi: int) -> None:
        """Add ``lo..hi`` (inclusive), merging with touching intervals."""
        i = bisect.bisect_left(self._ends, lo - 1)
        j = bisect.bisect_right(self._starts, hi + 1)
        if i < j:
            lo = min(lo, self._starts[i])
            hi = max(hi, self._ends[j - 1])
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]

    def add_sorted(self, values: Iterable[int]) -> None:
        """Add ascending integers, one interval per consecutive run."""
        lo = hi = None
        for v in values:
            if hi is not None and v == hi + 1:
                hi = v
                continue
            if lo is not None and hi is not None:
                self.add(lo, hi)
            lo = hi = v
        if lo is not None and hi is not None:
            self.add(lo, hi)

    def __contains__(self, v: object) -> bool:
        if not isinstance(v, int):
            return False
        i = bisect.bisect_right(self._starts, v) - 1
        return i >= 0 and self._ends[i] >= v

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every integer in ``lo..hi`` is in the set."""
        i = bisect.bisect_right(self._starts, lo) - 1
        return i >= 0 and self._ends[i] >= hi

    def intersects(self, lo: int, hi: int) -> bool:
        """Whether any integer in ``lo..hi`` is in the set."""
        i = bisect.bisect_left(self._ends, lo)
        return i < len(self._starts) and self._starts[i] <= hi

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        """How many integers the set holds."""
        return sum(hi - lo + 1 for lo, hi in zip(self._starts, self._ends, strict=True))

    def holes(self, other: IntervalSet, lo: int, hi: int) -> list[tuple[int, int]]:
        """Ranges within ``lo..hi`` in neither this set nor ``other``."""
        merged = IntervalSet(self.ranges())
        for a, b in other.ranges():
            merged.add(a, b)
        out: list[tuple[int, int]] = []
        cur = lo
        for a, b in merged.ranges():
            if b < cur:
                continue
            if a > hi:
                break
            if a > cur:
                out.append((cur, a - 1))
            cur = b + 1
        if cur <= hi:
            out.append((cur, hi))
        return out


@dataclass
class _Stream:
    """What one gateway's one epoch has delivered so far."""

    delivered: IntervalSet = field(default_factory=IntervalSet)
    dropped: IntervalSet = field(default_factory=IntervalSet)
    highest_batch: int = -1
    low: int | None = None
    high: int | None = None
    #: Loss records reported for this epoch; ``lost`` and ``lost_from`` are what they cover.
    losses: dict[_LossId, Loss] = field(default_factory=dict)
    lost: IntervalSet = field(default_factory=IntervalSet)
    #: The lowest first_seq of an open-ended loss: every seq from it on is accounted for.
    lost_from: int | None = None

    def see(self, lo: int, hi: int) -> None:
        self.low = lo if self.low is None else min(self.low, lo)
        self.high = hi if self.high is None else max(self.high, hi)

    def lose(self, loss: Loss) -> None:
        """Record a loss; its seqs then count as accounted for, like a gap's."""
        self.losses[_loss_id(loss)] = loss
        first, last = loss.first_seq, loss.last_seq
        if first is None:
            return  # readings that never got a seq: nothing to cover
        if last is None:
            self.lost_from = first if self.lost_from is None else min(self.lost_from, first)
            self.see(first, first)
        else:
            self.lost.add(first, last)
            self.see(first, last)

    def missing(self) -> list[tuple[int, int]]:
        if self.low is None or self.high is None:
            return []
        high = self.high if self.lost_from is None else min(self.high, self.lost_from - 1)
        gone = IntervalSet(self.dropped.ranges())
        for lo, hi in self.lost.ranges():
            gone.add(lo, hi)
        return self.delivered.holes(gone, self.low, high)


@dataclass
class Result:
    """What :meth:`Verifier.feed` made of one message."""

    status: Status
    gateway_id: str = ""
    epoch: int | None = None
    batch_seq: int | None = None
    kid: bytes | None = None
    #: Readings not delivered before, sorted by seq (empty unless status is "ok").
    readings: list[tuple[int, Reading]] = field(default_factory=list)
    #: Readings in this batch that had already been delivered.
    duplicates: int = 0
    #: Eviction records not reported before.
    gaps: list[Gap] = field(default_factory=list)
    #: Loss records not reported before, of this epoch or an earlier one (``Loss.key`` is 0).
    losses: list[Loss] = field(default_factory=list)
    #: Seq ranges of this epoch neither delivered nor reported dropped or lost, below the
    #: highest seen.
    missing: list[tuple[int, int]] = field(default_factory=list)
    #: The batch_seq is not above the highest accepted (a resend after a reconnect).
    out_of_order: bool = False
    #: Why the message was rejected, in one line (None when accepted).
    error: str | None = None
    received_ms: int | None = None
    #: received_ms minus the newest new reading's timestamp, when both are known.
    lag_ms: int | None = None
    extra: dict[int, Any] = field(default_factory=dict)
    #: Readings the gateway held back as unchanged (report by exception, key 13).
    unchanged: Unchanged | None = None
    #: Points under report by exception in this batch, and their heartbeat in ms.
    heartbeats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def rejected(self) -> bool:
        """Not authentic, not well-formed, or a replay ("duplicate" is a benign resend)."""
        return self.status not in ("ok", "duplicate")

    @property
    def authentic(self) -> bool:
        """Signed by a trusted key and well formed (ok, duplicate or replay)."""
        return self.status in ("ok", "duplicate", "replay")


class Verifier:
    """Checks signed batches and passes on each reading once (state kept in memory).

    ``keys`` maps key id to public key. ``gateways`` optionally binds a key id to the one
    gateway id it may sign for; a batch claiming another gateway is rejected as unknown-key.
    ``origin`` is the first seq of every epoch (the buffer starts at 1): with it, readings
    before the first one received count as missing; without it, holes start at the lowest
    seq seen (right for a verifier that joins a gateway's life midway).
    """

    def __init__(self, keys: Mapping[bytes, Ed25519PublicKey], *,
                 gateways: Mapping[bytes, str] | None = None, origin: int | None = None) -> None:
        #: Any mapping: the ingest looks keys up in its database as they are asked for.
        self.keys: Mapping[bytes, Ed25519PublicKey] = dict(keys)
        self.gateways: Mapping[bytes, str] = dict(gateways or {})
        self.origin = origin
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._stats: dict[str, Any] = {
            "batches": 0, "readings": 0, "duplicates": 0, "duplicate_batches": 0,
            "out_of_order": 0, "gaps": 0, "dropped_by_gap": 0, "rejected": {}, **_LOSS_STATS}

    @property
    def stats(self) -> dict[str, Any]:
        """Counters; ``rejected`` maps status (replay, bad-signature, ...) to a count.

        ``losses`` counts loss records, ``lost_reported`` the readings they say were lost
        (records with an unknown count add nothing).
        """
        return {**self._stats, "rejected": dict(self._stats["rejected"])}

    def _reject(self, status: Status, error: str, **info: Any) -> Result:
        rejected = self._stats["rejected"]
        rejected[status] = rejected.get(status, 0) + 1
        return Result(status, error=error, **info)

    def _open(self, message: bytes, received_ms: int | None) -> Result | tuple[bytes, Batch]:
        try:
            kid, payload = open1(message, self.keys)
            batch = decode_batch(payload)
        except CoseFormatError as exc:
            return self._reject("malformed", str(exc), received_ms=received_ms)
        except UnknownKeyError as exc:
            return self._reject("unknown-key", str(exc), received_ms=received_ms)
        except SignatureError as exc:
            return self._reject("bad-signature", str(exc), received_ms=received_ms)
        except BatchFormatError as exc:
            return self._reject("malformed", str(exc), kid=kid, received_ms=received_ms)
        bound = self.gateways.get(kid)
        if bound is not None and bound != batch.gateway_id:
            return self._reject("unknown-key", f"key {kid.hex()} signs for {bound!r}, not for "
                                f"{batch.gateway_id!r}", kid=kid, received_ms=received_ms)
        return kid, batch

    def open(self, message: bytes, *, received_ms: int | None = None
             ) -> Result | tuple[bytes, Batch]:
        """Check the envelope, key and format alone: a rejected :class:`Result`, or
        ``(kid, batch)`` for :meth:`accept`. Uses no per-stream state."""
        return self._open(message, received_ms)

    def feed(self, message: bytes, *, received_ms: int | None = None) -> Result:
        """Verify one message and return what is new in it."""
        opened = self._open(message, received_ms)
        if isinstance(opened, Result):
            return opened
        kid, batch = opened
        return self.accept(kid, batch, received_ms=received_ms)

    def accept(self, kid: bytes, batch: Batch, *, received_ms: int | None = None) -> Result:
        """What is new in an opened batch, against (and into) the streams' state."""
        info: dict[str, Any] = {"gateway_id": batch.gateway_id, "epoch": batch.epoch,
                                "batch_seq": batch.batch_seq, "kid": kid,
                                "received_ms": received_ms}
        stream = self._streams.setdefault((batch.gateway_id, batch.epoch),
                                          _Stream(low=self.origin))
        readings = batch.readings
        if readings and not stream.delivered.intersects(readings[0][0], readings[-1][0]):
            new = list(readings)  # sorted by seq: none of its range delivered before
        else:
            new = [(s, r) for s, r in readings if s not in stream.delivered]
        new_gaps = [g for g in batch.gaps if not stream.dropped.covers(g.first_seq, g.last_seq)]
        new_losses = self._new_losses(batch)
        dupes = len(batch.readings) - len(new)
        late = batch.batch_seq <= stream.highest_batch
        fresh = bool(new or new_gaps or new_losses)
        if not fresh and late:
            self._stats["duplicates"] += dupes
            return self._reject("replay", f"batch {batch.batch_seq} is not above "
                                f"{stream.highest_batch} and carries nothing new",
                                duplicates=dupes, missing=stream.missing(), **info)
        if not fresh and (batch.readings or batch.gaps or batch.losses):
            # Authentic, with a new batch_seq, everything in it already here: the gateway
            # resent a batch whose acknowledgement it lost. Benign at-least-once delivery.
            stream.highest_batch = batch.batch_seq
            self._stats["duplicates"] += dupes
            self._stats["duplicate_batches"] += 1
            # Extensions still count: a clock correction may ride on a resent batch.
            return Result("duplicate", duplicates=dupes, missing=stream.missing(),
                          extra=batch.extra, **info)
        self._commit(stream, batch, new, new_gaps, dupes, late=late)
        self._commit_losses(batch.gateway_id, new_losses)
        lag = (received_ms - max(r.ts for _s, r in new)
               if received_ms is not None and new else None)
        return Result("ok", readings=new, duplicates=dupes, gaps=new_gaps, losses=new_losses,
                      missing=stream.missing(), out_of_order=late, lag_ms=lag,
                      extra=batch.extra, unchanged=batch.unchanged,
                      heartbeats=batch.heartbeats, **info)

    def _new_losses(self, batch: Batch) -> list[Loss]:
        """The batch's loss records not reported before (each once, whatever its epoch)."""
        out: list[Loss] = []
        seen: set[tuple[int, _LossId]] = set()
        for loss in batch.losses:
            ident = (loss.epoch, _loss_id(loss))
            stream = self._streams.get((batch.gateway_id, loss.epoch))
            if ident not in seen and (stream is None or ident[1] not in stream.losses):
                seen.add(ident)
                out.append(loss)
        return out

    def _commit_losses(self, gateway_id: str, losses: list[Loss]) -> None:
        for loss in losses:
            # A loss may name an epoch not seen yet (the gateway's first batch after a
            # damaged database is already in the new epoch): it starts that epoch's state.
            self._streams.setdefault((gateway_id, loss.epoch), _Stream(low=self.origin)).lose(loss)
        self._stats["losses"] += len(losses)
        self._stats["lost_reported"] += sum(loss.count or 0 for loss in losses)

    def _commit(self, stream: _Stream, batch: Batch, new: list[tuple[int, Reading]],
                new_gaps: list[Gap], dupes: int, *, late: bool) -> None:
        stream.delivered.add_sorted(s for s, _r in new)
        for g in new_gaps:
            stream.dropped.add(g.first_seq, g.last_seq)
        if batch.first_seq is not None and batch.last_seq is not None:
            stream.see(batch.first_seq, batch.last_seq)
        stream.highest_batch = max(stream.highest_batch, batch.batch_seq)
        st = self._stats
        st["batches"] += 1
        st["readings"] += len(new)
        st["duplicates"] += dupes
        st["out_of_order"] += int(late)
        st["gaps"] += len(new_gaps)
        st["dropped_by_gap"] += sum(g.count for g in new_gaps)

    def missing(self, gateway_id: str, epoch: int) -> list[tuple[int, int]]:
        """Seq ranges of that stream not delivered and not reported dropped or lost."""
        stream = self._streams.get((gateway_id, epoch))
        return stream.missing() if stream is not None else []

    @staticmethod
    def streams_of(batch: Batch) -> list[tuple[str, int]]:
        """The streams :meth:`accept` reads and writes for ``batch``, sorted."""
        return sorted({(batch.gateway_id, batch.epoch),
                       *((batch.gateway_id, loss.epoch) for loss in batch.losses)})

    def has_stream(self, gateway_id: str, epoch: int) -> bool:
        return (gateway_id, epoch) in self._streams

    def stream_state(self, gateway_id: str, epoch: int) -> dict[str, Any] | None:
        """One stream as in :meth:`state` (``None`` when not seen), for storing elsewhere."""
        s = self._streams.get((gateway_id, epoch))
        if s is None:
            return None
        return {"gateway_id": gateway_id, "epoch": epoch, "highest_batch": s.highest_batch,
                "low": s.low, "high": s.high, "delivered": s.delivered.ranges(),
                "dropped": s.dropped.ranges(), "losses": [list(ident) for ident in s.losses]}

    def load_stream(self, data: Mapping[str, Any] | None, gateway_id: str, epoch: int) -> None:
        """Put one stream as :meth:`stream_state` gave it (``None``: a fresh one) in place."""
        self._streams[gateway_id, epoch] = (_Stream(low=self.origin) if data is None
                                            else _stream_from(data))

    def state(self) -> dict[str, Any]:
        """The dedup state as JSON-ready data, for :meth:`restore` after a restart."""
        # losses: [first_seq, last_seq, count, first_ts, last_ts, reason], as on the wire
        return {"version": _STATE_VERSION, "stats": self.stats, "streams": [
            self.stream_state(gw, ep) for gw, ep in self._streams]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state` returned (replacing the current state)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"verifier state version {state.get('version')!r} is not supported")
        streams = {(s["gateway_id"], s["epoch"]): _stream_from(s) for s in state["streams"]}
        self._streams = streams
        self._stats = {**_LOSS_STATS, **state["stats"],
                       "rejected": dict(state["stats"]["rejected"])}


def _stream_from(s: Mapping[str, Any]) -> _Stream:
    stream = _Stream(IntervalSet(map(tuple, s["delivered"])), IntervalSet(map(tuple, s["dropped"])),
                     s["highest_batch"], s["low"], s["high"])
    for item in s.get("losses", ()):  # absent in state saved before loss records
        stream.lose(Loss(s["epoch"], *item))
    return stream
