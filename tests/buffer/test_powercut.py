"""Power cuts: restart from copies of the files taken mid-run, with the unsynced tail cut off.

The harness (tests/buffer/powercut.py, tests/buffer/powercut_check.py) runs the real Store on
real files, the real encoder and COSE envelope, and the real verifier as the platform. The
focused tests below it do one kind of damage each, by hand.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import TYPE_CHECKING

import pytest

from buffer import Store
from drivers.api import Quality, Reading
from tests.buffer.helpers import BASE_TS
from tests.buffer.powercut import GATEWAY_ID, Platform, open_store, seal
from tests.buffer.powercut_check import Figures, soak
from tests.buffer.powercut_damage import SLOT, garble_slot, read_files, slot_generations

if TYPE_CHECKING:
    from pathlib import Path

    from buffer import Lease
    from buffer.types import Loss

#: Snapshots per writer run; a test with more snapshots runs more writers (other knobs).
PER_RUN = 5
#: Loss reasons a power-cut sample must produce ("moved-aside" needs a corrupt file: below).
LOSS_PATHS = ("history-lost", "power-loss", "unclean-stop")
#: The fast run's seed; ``POWERCUT_SEED`` overrides it (and the soak's, which is random).
SEED = 20_240_611


def _seed(default: int) -> int:
    return int(os.environ.get("POWERCUT_SEED", default))


@pytest.mark.parametrize("snapshots", [
    pytest.param(20, id="20"),
    pytest.param(200, id="200", marks=pytest.mark.slow),
])
def test_every_restart_opens_reuses_no_seq_and_accounts_for_every_reading(
        tmp_path: Path, snapshots: int) -> None:
    seed = _seed(SEED if snapshots <= 20 else secrets.randbits(32))
    figures = Figures()
    started = time.monotonic()
    for run in range(-(-snapshots // PER_RUN)):
        soak(tmp_path / f"run-{run}", seed + run, PER_RUN, figures, small=run % 2 == 1)
    elapsed = time.monotonic() - started
    print(f"\npower cuts (seed {seed}, {elapsed:.1f} s): {figures.summary()}")
    assert figures.snapshots == snapshots, figures.summary()
    assert not figures.problems, (f"seed {seed} (POWERCUT_SEED={seed} to repeat):"
                                  f" {len(figures.problems)} problems; first ones:\n"
                                  + "\n".join(figures.problems[:10]))
    # The sample must reach every outcome, or this test checks less than it says.
    reached = {"a new epoch": figures.new_epoch, "a gap": figures.gaps,
               **{reason: figures.losses[reason] for reason in LOSS_PATHS}}
    assert all(reached.values()), (f"seed {seed}: the sample reached none of"
                                   f" {[k for k, v in reached.items() if not v]}; pick another"
                                   f" default seed ({figures.summary()})")


# -- one kind of damage at a time ----------------------------------------------------------



def emit(n: int, start: int = 0) -> list[Reading]:
    """Readings whose value is their id (``start`` on) and whose ts grows with it."""
    return [Reading(f"cab-1/dev-{i % 3}/v", BASE_TS + i, i, Quality.GOOD, "V")
            for i in range(start, start + n)]


def send(store: Store, platform: Platform, limit: int = 10_000, *, ack: bool = True,
         deliver: bool = True) -> Lease:
    """Lease, sign, deliver (unless not ``deliver``) and ack (unless not ``ack``)."""
    lease = store.lease(limit)
    assert lease is not None
    sent = seal(store, lease)
    if deliver:
        assert platform.feed(sent.message).status in ("ok", "duplicate")
    if ack:
        store.ack(lease)
    return lease


def drain(store: Store, platform: Platform) -> list[Lease]:
    """Send and ack everything; every batch must be accepted."""
    leases: list[Lease] = []
    for _ in range(100):
        lease = store.lease(10_000)
        if lease is None:
            return leases
        res = platform.feed(seal(store, lease).message)
        assert res.status in ("ok", "duplicate"), res
        store.ack(lease)
        leases.append(lease)
    raise AssertionError("the store did not drain")


def lay_out(files: dict[str, bytes], path: Path, **replace: bytes | None) -> None:
    """Write ``files`` (by suffix) beside ``path``; ``replace`` swaps or (None) drops some:
    ``wal``, ``shm``, ``db``, ``anchor``."""
    names = {"db": "", "wal": "-wal", "shm": "-shm", "anchor": ".anchor"}
    out = dict(files)
    for key, data in replace.items():
        out.pop(names[key], None)
        if data is not None:
            out[names[key]] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix, data in out.items():
        path.with_name(path.name + suffix).write_bytes(data)


def ids(platform: Platform, epoch: int) -> list[int]:
    return [rid for e, _s, rid in platform.delivered if e == epoch]



def _started(tmp_path: Path) -> tuple[Path, Platform, Store, int]:
    """A store in ``tmp_path/a`` with a platform to deliver to."""
    path = tmp_path / "a" / "buffer.db"
    path.parent.mkdir()
    store = Store(path)
    return path, Platform(), store, store.epoch

def only_loss(lease: Lease | None) -> Loss:
    """The one loss the damage explains; after an unclean stop it may be followed by the
    record of the skipped seq reservation (same reason, an exact seq range)."""
    assert lease is not None
    assert lease.losses
    main, *rest = lease.losses
    assert len(rest) <= 1, lease.losses
    for other in rest:
        assert other.epoch == main.epoch
        if main.first_seq is None:  # the skipped reservation, after an unclean stop
            assert other.reason == main.reason
            assert other.first_seq is not None
            assert other.last_seq is not None
        else:  # history lost in a run that did not stop cleanly: what it held in memory
            assert other.reason in ("unclean-stop", "power-loss", "history-lost")
            assert other.first_seq is None
        assert other.count is None
    return main


def test_wal_deleted_after_leases_went_out_starts_a_new_epoch(tmp_path: Path) -> None:
    path, platform = tmp_path / "a" / "buffer.db", Platform()
    path.parent.mkdir()
    with Store(path) as store:
        epoch = store.epoch
        store.append(emit(20))
        store.commit()  # a chunk of seqs 1-20
        store.append(emit(30, 20))
        store.commit()  # a chunk of seqs 21-50
        send(store, platform, 20)  # 1-20 delivered and acked: that chunk is gone
    # The clean close checkpointed: the database file holds 21-50 and the anchor acked=20.
    store = Store(path)
    store.append(emit(50, 50))
    store.commit()  # seqs 51-100, in the WAL only
    send(store, platform, ack=False, deliver=False)  # 21-100 leave (anchor: seq_left=100)
    files = read_files(path)  # the power goes; the WAL never reached the card
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db", wal=None, shm=None)
    with Store(tmp_path / "b" / "buffer.db") as after:
        assert after.epoch != epoch
        first = after.lease(10_000)
        loss = only_loss(first)
        assert (loss.epoch, loss.first_seq, loss.last_seq, loss.reason) == (
            epoch, 21, None, "history-lost")
        assert first is not None
        assert [r[0] for r in first.rows] == list(range(1, 31))  # 21-50 renumbered
        after.release(first)
        drain(after, platform)
    assert ids(platform, epoch) == list(range(20))
    assert ids(platform, after.epoch) == list(range(20, 50))  # survivors, sent again
    # 50-99 (seqs 51-100 of the old epoch) are lost, and the record says so.
    assert platform.verifier.missing(GATEWAY_ID, epoch) == []
    assert platform.verifier.missing(GATEWAY_ID, after.epoch) == []


def test_database_replaced_by_an_older_copy_starts_a_new_epoch(tmp_path: Path) -> None:
    path, platform = tmp_path / "a" / "buffer.db", Platform()
    path.parent.mkdir()
    with Store(path) as store:
        epoch = store.epoch
        for n, start in ((20, 0), (30, 20), (25, 50)):
            store.append(emit(n, start))
            store.commit()  # chunks 1-20, 21-50, 51-75
        send(store, platform, 20)
    older = path.read_bytes()  # a backup: 21-75 stored, 1-20 delivered
    store = Store(path)
    store.append(emit(25, 75))
    store.commit()  # 76-100
    send(store, platform, 30, ack=False)  # 21-50 delivered, the ack lost
    send(store, platform, ack=False, deliver=False)  # 51-100 leave (anchor: acked=20)
    files = read_files(path)
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db", db=older, wal=None, shm=None)
    with Store(tmp_path / "b" / "buffer.db") as after:
        assert after.epoch != epoch
        loss = only_loss(after.lease(0))
        assert (loss.epoch, loss.first_seq, loss.last_seq, loss.reason) == (
            epoch, 21, None, "history-lost")
        drain(after, platform)
    assert ids(platform, epoch) == list(range(50))
    # The copy still held 21-75: all sent again in the new epoch, 21-50 for the second time;
    # 76-100 are lost, and the record says so.
    assert ids(platform, after.epoch) == list(range(20, 75))
    assert platform.verifier.missing(GATEWAY_ID, epoch) == []
    assert platform.verifier.missing(GATEWAY_ID, after.epoch) == []


def test_corrupt_database_is_moved_aside_and_its_epoch_reported_lost(tmp_path: Path) -> None:
    path, platform, store, epoch = _started(tmp_path)
    store.append(emit(30))
    store.commit()
    send(store, platform, 10)
    send(store, platform, ack=False, deliver=False)  # 11-30 leave, never arrive
    files = read_files(path)
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db", db=b"garbage" * 100)
    with Store(tmp_path / "b" / "buffer.db") as after:
        assert after.moved_aside is not None
        assert after.epoch != epoch
        loss = only_loss(after.lease(0))
        assert (loss.epoch, loss.last_seq, loss.reason) == (epoch, None, "moved-aside")
        # The anchor's "acked" is written lazily (when seqs leave, and at a clean close), so
        # the record may start below the first seq not delivered; never above it.
        assert loss.first_seq is not None
        assert loss.first_seq <= 11
        drain(after, platform)
        assert after.stats().depth == 0
    assert ids(platform, epoch) == list(range(10))
    assert platform.verifier.missing(GATEWAY_ID, epoch) == []


def test_kill_without_close_reports_what_was_in_memory(tmp_path: Path) -> None:
    path, platform, store, epoch = _started(tmp_path)
    store.append(emit(10))
    store.commit()
    send(store, platform)  # 1-10 delivered and acked
    store.append(emit(5, 10))  # queued in memory: the kill takes them
    files = read_files(path)  # kill -9: the WAL and everything written stay
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db")
    with Store(tmp_path / "b" / "buffer.db") as after:
        assert after.epoch == epoch
        first = after.lease(0)
        loss = only_loss(first)
        assert (loss.epoch, loss.first_seq, loss.last_seq, loss.count, loss.reason) == (
            epoch, None, None, None, "unclean-stop")
        assert loss.first_ts is not None
        assert loss.last_ts is not None
        assert loss.first_ts <= BASE_TS + 10
        assert loss.last_ts >= BASE_TS + 14
        after.append(emit(3, 100))
        after.commit()
        # Seqs go on past the reservation of the run that died (they may have left with
        # readings that were lost): none reused, and the skipped range is a record too.
        assert first is not None
        [skipped] = [x for x in first.losses if x.first_seq is not None]
        assert skipped.first_seq == 11
        assert skipped.last_seq is not None
        assert after.last_seq == skipped.last_seq + 3
        drain(after, platform)
    assert ids(platform, epoch) == [*range(10), 100, 101, 102]


def test_another_boot_id_reports_a_power_loss(tmp_path: Path) -> None:
    path, platform, store, epoch = _started(tmp_path)
    store.append(emit(10))
    store.commit()
    send(store, platform, ack=False)  # 1-10 delivered, the ack lost (anchor: seq_left=10)
    synced = len(read_files(path)["-wal"])  # what the lease made durable
    store.append(emit(10, 10))
    store.commit()  # 11-20: committed, not synced, never leased
    store.append(emit(3, 20))  # in memory
    files = read_files(path)
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db", wal=files["-wal"][:synced])
    with open_store(tmp_path / "b" / "buffer.db", 64 << 20, reboot=True) as after:
        assert after.epoch == epoch
        first = after.lease(10_000)
        loss = only_loss(first)
        assert (loss.epoch, loss.first_seq, loss.last_seq, loss.reason) == (
            epoch, None, None, "power-loss")
        assert loss.first_ts is not None
        assert loss.first_ts <= BASE_TS + 10  # 10-22 are inside the range
        assert first is not None
        assert [r[0] for r in first.rows] == list(range(1, 11))  # same seqs as before
        after.release(first)
        after.append(emit(5, 100))
        after.commit()  # seqs 11-15 again: they never left, so they are free
        drain(after, platform)
    assert platform.verifier.stats["duplicates"] == 10  # 1-10 came again, same seqs
    assert ids(platform, epoch) == [*range(10), *range(100, 105)]
    assert platform.verifier.missing(GATEWAY_ID, epoch) == []


@pytest.mark.parametrize("tear", ["while-writing", "older-slot", "both-slots"])
def test_a_torn_anchor_slot_falls_back_to_the_other(tmp_path: Path, tear: str) -> None:
    path, platform, store, epoch = _started(tmp_path)
    store.append(emit(10))
    store.commit()
    first_batch = seal(store, send(store, platform, ack=True)).batch_seq  # 1-10 acked
    store.append(emit(10, 10))
    store.commit()
    files = read_files(path)  # before the next lease's anchor write
    store.lease(10_000)  # writes the anchor (seq_left=20) into the older slot
    written = read_files(path)[".anchor"]
    store.close()
    anchor = files[".anchor"]
    gens = slot_generations(anchor)
    older = gens.index(min(gens))
    if tear == "while-writing":  # the power went halfway through that write
        half = older * SLOT + SLOT // 2
        anchor = written[:half] + anchor[half:]
    elif tear == "older-slot":
        anchor = garble_slot(anchor, older, seed=1)
    else:
        anchor = garble_slot(garble_slot(anchor, 0, seed=1), 1, seed=2)
    lay_out(files, tmp_path / "b" / "buffer.db", anchor=anchor)
    with Store(tmp_path / "b" / "buffer.db") as after:
        first = after.lease(10_000)
        loss = only_loss(first)
        assert first is not None
        if tear == "both-slots":  # nothing says which seqs left: a new epoch
            assert after.epoch != epoch
            assert (loss.epoch, loss.first_seq, loss.reason) == (epoch, 11, "history-lost")
        else:
            assert after.epoch == epoch
            assert (loss.first_seq, loss.reason) == (None, "unclean-stop")
            assert [r[0] for r in first.rows] == list(range(11, 21))
            assert seal(after, first).batch_seq > first_batch
        after.release(first)
        drain(after, platform)
    assert sorted({rid for _e, _s, rid in platform.delivered}) == list(range(20))


# -- product bugs the harness found (see the report) ----------------------------------------


def test_survivors_of_a_chunk_acked_partway_are_sent_in_the_new_epoch(tmp_path: Path) -> None:
    """``renumber`` shifts a chunk whose front was acked to an id <= 0; every chunk query
    clamps its id range at 0 (``max(0, lo - CHUNK_MAX)``), so those rows are never leased,
    acked or dropped again, and the store's depth never returns to 0."""
    path, platform = tmp_path / "a" / "buffer.db", Platform()
    path.parent.mkdir()
    with Store(path) as store:
        epoch = store.epoch
        store.append(emit(10))
        store.commit()  # one chunk, seqs 1-10
        send(store, platform, 4)  # an ack that ends mid-chunk: the row is now lo=5, id=1
    store = Store(path)
    store.append(emit(5, 10))
    store.commit()  # 11-15, in the WAL only
    send(store, platform, ack=False, deliver=False)  # 5-15 leave (anchor: seq_left=15)
    files = read_files(path)
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db", wal=None, shm=None)
    with Store(tmp_path / "b" / "buffer.db") as after:
        assert after.epoch != epoch
        drain(after, platform)
        assert ids(platform, after.epoch) == list(range(4, 10)), (
            "the 6 readings that survived (old seqs 5-10) were not sent in the new epoch;"
            f" chunks (id, base, lo, hi): {_chunks(after)}")
        assert after.stats().depth == 0


SEQ_BLOCK = 10_000  # buffer/store.py: seqs reserved per anchor write, at least


def _chunks(store: Store) -> list[tuple[int, int, int, int]]:
    return store._conn.execute("SELECT id, base, lo, hi FROM chunks ORDER BY id").fetchall()


def test_out_of_order_acks_leave_no_unaccounted_holes_in_the_new_epoch(tmp_path: Path) -> None:
    """``renumber`` keeps the survivors' spacing, so seqs acked out of order before the cut
    become holes in the new epoch that no record covers: the verifier lists them as missing
    for ever (docs/wire-format.md section 5: "lost unreported")."""
    path, platform = tmp_path / "buffer.db", Platform()
    store = Store(path)
    store.append(emit(30))
    store.commit()
    send(store, platform, 10, deliver=False, ack=False)  # 1-10 in flight (anchor: 30 left)
    send(store, platform, 10)  # 11-20 delivered and acked first
    synced = len(read_files(path)["-wal"])
    store.append(emit(SEQ_BLOCK + 10, 30))
    store.commit()
    # 21-10040 leave: past the first reservation, so the anchor says 10040 left.
    send(store, platform, SEQ_BLOCK + 100, ack=False, deliver=False)
    files = read_files(path)
    store.close()
    lay_out(files, tmp_path / "b" / "buffer.db", wal=files["-wal"][:synced])
    with Store(tmp_path / "b" / "buffer.db") as after:
        assert after.epoch != store.epoch
        drain(after, platform)
    # 11-20 were acked, but their delete waits for the next commit: a crash before it sends
    # them again (in the new epoch, since the old one lost history).
    got = sorted(ids(platform, after.epoch))
    assert set(got) >= {*range(10), *range(20, 30)}
    assert set(got) <= set(range(30))
    assert platform.verifier.missing(GATEWAY_ID, after.epoch) == []
