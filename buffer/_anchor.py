"""The anchor: what the buffer must know even when its database loses history.

A small fixed-size file beside the database (``buffer.db.anchor``) with two slots. Each write
goes to the older slot with a generation number and a CRC, then ``fdatasync``; a read takes
the newest slot whose CRC holds. So a write torn by a power cut leaves the other slot, and the
file never needs a new block: it is allocated once, when it is created, and overwritten in
place afterwards, which also works on a full disk (a rename-based write would need a free
block for the new file). It holds:

* ``epoch``, ``seq_left`` and ``seq_reserved``: before a lease hands out a seq above
  ``seq_reserved``, the anchor is written (and synced) with ``seq_left`` = every seq committed
  so far and ``seq_reserved`` a block above it, so leases up to the reservation need no write.
  A database that comes back knowing fewer seqs than ``seq_left`` has lost history (new
  epoch); after an unclean stop, seqs up to ``seq_reserved`` may have left, so they are never
  handed out again (the next start skips past them and reports the range);
* ``acked``: every seq up to it was delivered or dropped into a gap (written lazily, so it
  may lag; it only bounds a loss record);
* ``batch_reserved``: batch seqs below it may have been used;
* ``seq_floor``: seqs up to it are spoken for (given to readings recorded as lost at exit);
* ``boot_id`` and ``clean``: whether the last run stopped cleanly, and on which boot; a run
  that did not stop cleanly lost what it held in memory, and after a power cut also what was
  written but not yet synced;
* ``last_ts``: the newest reading timestamp known at the last write;
* ``losses``: loss records not yet acknowledged by the broker.

The anchor lives on the same card as the database: it guards against a database that loses
part of its history (a WAL that does not replay, a file restored from a copy, a file moved
aside), not against losing the whole card. It is written when a lease passes the seq
reservation (sized to last at least ten seconds), once per 1000 batch seqs, when a loss record
is acknowledged and at a clean stop: rarely, and never per reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from buffer.types import Loss

__all__ = ["Anchor", "AnchorState", "boot_id"]

log = logging.getLogger("streetgate.buffer")

_SLOT = 16 * 1024
_HEAD = struct.Struct("<4sIQI")  # magic, payload length, generation, crc32(generation + payload)
_MAGIC = b"SGA1"
#: Loss records kept at most; more are merged (never dropped).
MAX_LOSSES = 64


def boot_id() -> str:
    """This boot's id (Linux), or "" where the kernel does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclasses.dataclass(slots=True)
class AnchorState:
    epoch: int
    seq_left: int = 0
    seq_reserved: int = 0
    acked: int = 0
    batch_reserved: int = 1
    seq_floor: int = 0
    boot_id: str = ""
    clean: bool = False
    last_ts: int | None = None
    losses: list[Loss] = dataclasses.field(default_factory=list)
    next_loss_key: int = 1

    def to_json(self) -> bytes:
        doc: dict[str, Any] = dataclasses.asdict(self)
        doc["losses"] = [dataclasses.astuple(x) for x in self.losses]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> AnchorState:
        doc = json.loads(raw)
        doc["losses"] = [Loss(*x) for x in doc.get("losses", [])]
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in fields})

    def add_loss(self, loss: Loss) -> Loss:
        """Keep ``loss`` (with a fresh key); over :data:`MAX_LOSSES`, merge the oldest two
        records of one kind (same epoch, both with seqs or both without)."""
        loss = dataclasses.replace(loss, key=self.next_loss_key)
        self.next_loss_key += 1
        self.losses.append(loss)
        while len(self.losses) > MAX_LOSSES:
            pair = _oldest_pair(self.losses)
            if pair is None:
                break  # nothing merges without losing coverage; the slot has room to spare
            i, j = pair
            merged = _merged(self.losses[i], self.losses[j], self.next_loss_key)
            self.next_loss_key += 1
            self.losses[i] = merged
            del self.losses[j]
        return loss


def _kind(x: Loss) -> tuple[int, bool, bool]:
    return x.epoch, x.first_seq is None, x.last_seq is None


def _oldest_pair(losses: list[Loss]) -> tuple[int, int] | None:
    seen: dict[tuple[int, bool, bool], int] = {}
    for j, x in enumerate(losses):
        i = seen.get(_kind(x))
        if i is not None:
            return i, j
        seen[_kind(x)] = j
    return None


def _merged(a: Loss, b: Loss, key: int) -> Loss:
    """One record of the same kind that covers both: seq ranges and time ranges widen (the
    seqs between two ranges are covered too: reported lost, or delivered after all)."""
    count = a.count + b.count if a.count is not None and b.count is not None else None
    firsts = [a.first_ts, b.first_ts]
    lasts = [a.last_ts, b.last_ts]
    first_ts = None if None in firsts else min(x for x in firsts if x is not None)
    last_ts = None if None in lasts else max(x for x in lasts if x is not None)
    first = None if a.first_seq is None or b.first_seq is None else min(a.first_seq, b.first_seq)
    last = None if a.last_seq is None or b.last_seq is None else max(a.last_seq, b.last_seq)
    if first is not None and last is not None:
        count = None  # the widened range holds seqs neither record counted
    reason = a.reason if a.reason == b.reason else f"{a.reason},{b.reason}"[:64]
    return Loss(a.epoch, first, last, count, first_ts, last_ts, reason, key)


class Anchor:
    """The two-slot anchor file; ``write`` syncs before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._generation = 0
        self.writes = 0

    def read(self) -> tuple[AnchorState | None, bool]:
        """The newest valid state, and whether a file was there at all."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, False
        best: tuple[int, AnchorState] | None = None
        for i in range(2):
            slot = raw[i * _SLOT:(i + 1) * _SLOT]
            state = _parse(slot)
            if state is not None and (best is None or state[0] > best[0]):
                best = state
        if best is None:
            return None, True
        self._generation = best[0]
        return best[1], True

    def write(self, state: AnchorState) -> None:
        """Write ``state`` to the older slot and sync it; raises OSError."""
        payload = state.to_json()
        if len(payload) > _SLOT - _HEAD.size:
            raise OSError(f"anchor state too large ({len(payload)} bytes)")
        gen = self._generation + 1
        crc = zlib.crc32(gen.to_bytes(8, "little") + payload)
        data = _HEAD.pack(_MAGIC, len(payload), gen, crc) + payload
        fd = self._open()
        os.pwrite(fd, data, (gen % 2) * _SLOT)
        os.fdatasync(fd)
        self._generation = gen
        self.writes += 1

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < 2 * _SLOT:
                    # Allocate both slots now, so later writes never need a free block.
                    os.pwrite(fd, bytes(2 * _SLOT - os.fstat(fd).st_size), os.fstat(fd).st_size)
                    os.fsync(fd)
                    _fsync_dir(self.path.parent)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse(slot: bytes) -> tuple[int, AnchorState] | None:
    if len(slot) < _HEAD.size:
        return None
    magic, length, gen, crc = _HEAD.unpack_from(slot)
    payload = slot[_HEAD.size:_HEAD.size + length]
    if magic != _MAGIC or len(payload) != length:
        return None
    if zlib.crc32(gen.to_bytes(8, "little") + payload) != crc:
        return None
    try:
        return gen, AnchorState.from_json(payload)
    except (ValueError, TypeError, KeyError):
        log.warning("anchor slot with a valid CRC but unreadable content; ignored")
        return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
