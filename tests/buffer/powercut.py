"""A power-cut harness for the buffer: the real Store on real files, copied mid-run.

:class:`Writer` drives a :class:`~buffer.Store` one step at a time in one thread: it appends
readings whose value carries a unique id, commits in groups, leases, encodes and signs batches
(the real encoder and COSE envelope), feeds them to the real verifier (the platform) and acks,
with leases released, delivered or acked late and out of order, and the store closed and
reopened now and then. The truth log (every id, its ts, its seq) lives in memory, outside the
files. Between two steps :meth:`Writer.snapshot` copies the database, its WAL, its -shm and
the anchor, with the platform's state at that moment.

:func:`restart` lays a snapshot out in a fresh directory with the damage a power cut can do
(:class:`Damage`: the WAL cut at a frame boundary, deleted or kept, another boot id, a torn
anchor slot), opens a Store on it, drains it into the restored platform and returns what it
saw; :func:`tests.buffer.powercut_check.check` holds that against the truth log.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from typing import TYPE_CHECKING
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import buffer.store
from buffer import Store
from drivers.api import Quality, Reading
from gateway.batch import encode_batch
from gateway.cose import kid_for, sign1
from ingest.verify import Result, Verifier
from tests.buffer.helpers import BASE_TS
from tests.buffer.powercut_damage import Damage, read_files

if TYPE_CHECKING:
    from pathlib import Path

    from buffer import Lease
    from buffer.types import Gap, Loss

__all__ = ["GATEWAY_ID", "Knobs", "Platform", "Sent", "Snapshot", "Writer", "open_store", "restart",
           "seal"]

GATEWAY_ID = "cab-0042"
KEY = Ed25519PrivateKey.generate()
KID = kid_for(KEY.public_key())
_ANOTHER_BOOT = "00000000-0000-0000-0000-another-boot"
#: Lease sizes: small ones end mid-chunk.
LEASE_SIZES = (1, 2, 3, 7, 16, 50, 300, 5000)
MAX_DRAIN = 20_000
#: The first id of readings emitted after a restart (the writers' ids stay far below).
FRESH = 10**9


def reading_id(value: object) -> int:
    """The unique id a reading carries as its value: the int itself, or ``"<id>:<padding>"``."""
    return value if isinstance(value, int) else int(str(value).split(":", 1)[0])


@dataclasses.dataclass(frozen=True, slots=True)
class Sent:
    """One signed batch: its identity, its bytes, and its readings as (seq, reading id)."""

    epoch: int
    batch_seq: int
    message: bytes
    seqs: tuple[tuple[int, int], ...]


def seal(store: Store, lease: Lease) -> Sent:
    """Encode and sign a lease the way the daemon does (gateway/daemon.py, ``_encode``)."""
    epoch, batch_seq = store.epoch, store.next_batch_seq()
    payload = encode_batch(gateway_id=GATEWAY_ID, epoch=epoch, batch_seq=batch_seq,
                           rows=lease.rows, gaps=lease.gaps, losses=lease.losses)
    return Sent(epoch, batch_seq, sign1(payload, KEY, KID),
                tuple((row[0], reading_id(row[4])) for row in lease.rows))


class Platform:
    """The real verifier, and a log of what it passed on: readings by id, gaps, loss records."""

    def __init__(self) -> None:
        self.verifier = Verifier({KID: KEY.public_key()}, origin=1)
        self.delivered: list[tuple[int, int, int]] = []  # (epoch, seq, reading id)
        self.gaps: list[tuple[int, Gap]] = []  # (epoch of the batch, gap)
        self.losses: list[Loss] = []
        self.statuses: Counter[str] = Counter()

    def feed(self, message: bytes) -> Result:
        res = self.verifier.feed(message)
        self.statuses[res.status] += 1
        if res.ok:
            assert res.epoch is not None
            self.delivered.extend((res.epoch, s, reading_id(r.value)) for s, r in res.readings)
            self.gaps.extend((res.epoch, g) for g in res.gaps)
            self.losses.extend(res.losses)
        return res

    def copy(self) -> Platform:
        """A twin whose verifier went through ``state()`` / ``restore()`` as JSON."""
        twin = Platform()
        twin.verifier.restore(json.loads(json.dumps(self.verifier.state())))
        twin.delivered = list(self.delivered)
        twin.gaps = list(self.gaps)
        twin.losses = list(self.losses)
        twin.statuses = Counter(self.statuses)
        return twin

    def holes(self) -> dict[int, list[tuple[int, int]]]:
        """Per epoch, seq ranges neither delivered nor reported dropped or lost."""
        epochs = {e for e, _s, _i in self.delivered} | {x.epoch for x in self.losses}
        found = {e: self.verifier.missing(GATEWAY_ID, e) for e in epochs}
        return {e: h for e, h in found.items() if h}


@dataclasses.dataclass(slots=True)
class Truth:
    """Every reading the writer emitted (its id is its index), kept outside the files."""

    ts: list[int] = dataclasses.field(default_factory=list)
    #: The seq each commit gave, for the ids committed so far (always a prefix of the ids).
    seq: list[int] = dataclasses.field(default_factory=list)
    #: Ids a lease carried out of the store, with the writer step of the first such lease.
    leased: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Knobs:
    """The shape of one writer run."""

    max_bytes: int
    pad: int  # random bytes (as hex) after the id in each value; 0: the value is the int id
    weights: dict[str, int]

    @classmethod
    def pick(cls, rng: random.Random, *, small: bool) -> Knobs:
        """``small``: a small cap (frequent checkpoints) and a backlog, so the cap drops rows."""
        weights = {"append": 30, "commit": 14, "lease": 12, "deliver": 12, "ack": 10,
                   "release": 3, "close": 1}
        if small:
            weights |= {"append": 40, "ack": 4, "deliver": 6}
        return cls(max_bytes=rng.choice((64, 96)) * 1024 if small else 8 << 20,
                   pad=rng.choice((24, 48)) if small else 0, weights=weights)


@dataclasses.dataclass(slots=True)
class _InFlight:
    lease: Lease
    sent: Sent
    delivered: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """The buffer's files between two writer steps, and what the outside world knew then."""

    step: int
    files: dict[str, bytes]
    platform: Platform
    epoch: int
    emitted: int  # readings emitted so far (ids below this)
    committed: int  # of those, committed (ids below this)
    sent: int  # batches signed so far (the writer's ``sent`` list)
    unsent: tuple[bytes, ...]  # signed, not delivered yet: may still reach the platform
    max_bytes: int
    ts: int  # the newest ts emitted


class Writer:
    """A gateway's buffer and uplink, one step at a time (see the module docstring)."""

    def __init__(self, root: Path, rng: random.Random, knobs: Knobs) -> None:
        root.mkdir(parents=True)
        self.path = root / "buffer.db"
        self.rng = rng
        self.knobs = knobs
        self.store: Store | None = Store(self.path, max_bytes=knobs.max_bytes)
        self.epoch = self.store.epoch
        self.truth = Truth()
        self.platform = Platform()
        self.sent: list[Sent] = []
        self.inflight: list[_InFlight] = []
        self.steps = 0
        self.ts = BASE_TS  # in the past, so every loss record's "now" comes after it

    def step(self) -> None:
        self.steps += 1
        if self.store is None:
            self.store = Store(self.path, max_bytes=self.knobs.max_bytes)
            assert self.store.epoch == self.epoch, "a clean reopen started a new epoch"
            return
        ops = self.knobs.weights
        op = self.rng.choices(list(ops), list(ops.values()))[0]
        getattr(self, f"_{op}")(self.store)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def _append(self, store: Store) -> None:
        batch = []
        for _ in range(self.rng.randint(1, 40)):
            rid = len(self.truth.ts)
            self.ts += self.rng.randint(1, 40)
            self.truth.ts.append(self.ts)
            value: int | str = rid
            if self.knobs.pad:
                value = f"{rid}:{self.rng.randbytes(self.knobs.pad).hex()}"
            batch.append(Reading(f"cab-1/dev-{rid % 7}/v", self.ts, value, Quality.GOOD, "V"))
        store.append(batch)

    def _commit(self, store: Store) -> None:
        before = store.last_seq
        n = store.commit()
        assert store.last_seq == before + n
        self.truth.seq.extend(range(before + 1, before + n + 1))
        assert len(self.truth.seq) == len(self.truth.ts), "a commit left readings queued"

    def _lease(self, store: Store) -> None:
        lease = store.lease(self.rng.choice(LEASE_SIZES))
        if lease is None:
            return
        sent = seal(store, lease)
        for seq, rid in sent.seqs:
            assert self.truth.seq[rid] == seq, f"reading {rid} committed as {self.truth.seq[rid]}"
            self.truth.leased.setdefault(rid, self.steps)
        self.sent.append(sent)
        self.inflight.append(_InFlight(lease, sent))

    def _pick(self, items: list[_InFlight]) -> _InFlight:
        """Usually the oldest; sometimes any (out of order)."""
        return items[0] if self.rng.random() < 0.6 else self.rng.choice(items)

    def _deliver(self, _store: Store) -> None:
        waiting = [f for f in self.inflight if not f.delivered]
        if waiting:
            item = self._pick(waiting)
            res = self.platform.feed(item.sent.message)
            # "replay": a resend overtaken by a later batch, with nothing new in it (the
            # verifier keeps only the highest batch_seq, docs/wire-format.md section 5).
            assert res.status in ("ok", "duplicate", "replay"), res
            assert not res.losses, f"a clean run reported a loss: {res.losses}"
            item.delivered = True

    def _ack(self, store: Store) -> None:
        done = [f for f in self.inflight if f.delivered]
        if done:
            item = self._pick(done)
            store.ack(item.lease)
            self.inflight.remove(item)

    def _release(self, store: Store) -> None:
        """A publish that failed, or (when delivered) an acknowledgement that got lost."""
        if self.inflight:
            item = self.rng.choice(self.inflight)
            store.release(item.lease)
            self.inflight.remove(item)

    def _close(self, store: Store) -> None:
        """A clean stop; the next step reopens. Batches in flight are abandoned."""
        self._commit(store)
        store.close()
        self.store = None
        self.inflight.clear()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            step=self.steps, files=read_files(self.path), platform=self.platform.copy(),
            epoch=self.epoch,
            emitted=len(self.truth.ts), committed=len(self.truth.seq), sent=len(self.sent),
            unsent=tuple(f.sent.message for f in self.inflight if not f.delivered),
            max_bytes=self.knobs.max_bytes, ts=self.ts)


# -- restart ------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class After:
    """What a restart from one snapshot did."""

    epoch: int
    moved_aside: bool
    platform: Platform
    sent: list[Sent]  # batches the restarted store signed
    late: int  # batches signed before the cut that reached the platform after it
    statuses: Counter[str]  # of the batches the restarted store signed
    fresh: dict[int, int] = dataclasses.field(default_factory=dict)  # id -> ts, after restart
    stuck: int = 0  # readings the store still held when no lease would hand out more


def open_store(path: Path, max_bytes: int, *, reboot: bool = False) -> Store:
    """A Store on ``path``; with ``reboot``, the store sees another boot id."""
    if not reboot:
        return Store(path, max_bytes=max_bytes)
    with mock.patch.object(buffer.store, "boot_id", return_value=_ANOTHER_BOOT):
        return Store(path, max_bytes=max_bytes)


def restart(snap: Snapshot, damage: Damage, root: Path, rng: random.Random) -> After:
    """Lay the damaged snapshot out under ``root``, open it, drain it to the platform."""
    root.mkdir(parents=True)
    path = root / "buffer.db"
    damage.lay_out(snap.files, path)
    store = open_store(path, snap.max_bytes, reboot=damage.reboot)
    platform = snap.platform.copy()
    late = [m for m in snap.unsent if rng.random() < 0.5]  # the broker had these
    rng.shuffle(late)
    after = After(store.epoch, store.moved_aside is not None, platform, [], len(late), Counter())
    try:
        drain(store, after, late, rng, snap.ts)
        after.stuck = store.stats().depth
    finally:
        store.close()
    with Store(path, max_bytes=snap.max_bytes) as again:
        left = again.lease(10**6)
        assert left is None, f"after a drain and a clean restart the store still holds {left}"
    return after


def drain(store: Store, after: After, late: list[bytes], rng: random.Random, ts: int) -> None:
    """Lease, sign, deliver and ack until the store is empty; new readings are appended and
    late batches arrive in between."""
    fresh = rng.randint(0, 300)
    for _ in range(MAX_DRAIN):
        if late and rng.random() < 0.3:
            _late(after.platform, late.pop())
        if len(after.fresh) < fresh and rng.random() < 0.3:
            ts = _append_fresh(store, after, rng, ts)
        lease = store.lease(rng.choice(LEASE_SIZES))
        if lease is None and len(after.fresh) >= fresh:
            break
        if lease is None:
            continue
        sent = seal(store, lease)
        after.sent.append(sent)
        if rng.random() < 0.1:
            store.release(lease)  # the publish failed; the next lease carries it again
            continue
        res = after.platform.feed(sent.message)
        after.statuses[res.status] += 1
        store.ack(lease)  # the broker has it, whatever the platform makes of it
    else:
        raise AssertionError(f"the store did not drain in {MAX_DRAIN} leases")
    for message in late:
        _late(after.platform, message)


def _append_fresh(store: Store, after: After, rng: random.Random, ts: int) -> int:
    """Readings emitted after the restart: ids from :data:`FRESH` on; returns the newest ts."""
    batch = []
    for _ in range(rng.randint(1, 40)):
        rid = FRESH + len(after.fresh)
        ts += rng.randint(1, 40)
        after.fresh[rid] = ts
        batch.append(Reading(f"cab-1/dev-{rid % 7}/v", ts, rid, Quality.GOOD, "V"))
    store.append(batch)
    store.commit()
    return ts


def _late(platform: Platform, message: bytes) -> None:
    res = platform.feed(message)
    # Its readings may have come again since (then it is a replay or a duplicate).
    assert res.authentic, res
