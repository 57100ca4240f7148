"""Store basics on real SQLite files: ordering, values, restarts, counters, threads."""

from __future__ import annotations

import enum
import math
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from buffer import Store, StoreError
from buffer._anchor import Anchor
from drivers.api import Quality, Reading
from tests.buffer.helpers import BASE_TS, drain, readings, seqs, stored_seqs

REPO = Path(__file__).resolve().parents[2]


def test_commit_lease_ack_oldest_first(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.append(readings(25))
        assert store.pending() == 25
        assert store.commit() == 25
        assert store.pending() == 0
        assert store.commit() == 0
        a, b, c = store.lease(10), store.lease(10), store.lease(10)
        assert a is not None
        assert b is not None
        assert c is not None
        assert seqs(a.rows) == list(range(1, 11))
        assert (a.first_seq, a.last_seq) == (1, 10)
        assert seqs(b.rows) == list(range(11, 21))
        assert seqs(c.rows) == list(range(21, 26))
        assert store.lease(10) is None
        assert store.stats().leased == 25
        store.ack(b)
        store.release(a)
        again = store.lease(100)
        assert again is not None
        assert seqs(again.rows) == list(range(1, 11))
        assert again.rows == a.rows
        store.ack(again)
        store.ack(c)
        stats = store.stats()
        assert (stats.depth, stats.leased, stats.delivered, stats.appended) == (0, 0, 25, 25)
        assert stats.oldest_ts is None
        store.commit()  # an ack's delete rides with the next commit
        assert stored_seqs(tmp_path / "b.db") == list(range(1, 26))
        store.append(readings(1, start=25))
        store.commit()
        assert stored_seqs(tmp_path / "b.db") == [26]


def test_release_keeps_oldest_first_between_leases_in_flight(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.append(readings(30))
        store.commit()
        a, b, c = (store.lease(5) for _ in range(3))
        assert a is not None
        assert b is not None
        assert c is not None
        store.release(b)
        # A lease is one contiguous span: it stops where the next lease in flight starts.
        again = store.lease(100)
        assert again is not None
        assert seqs(again.rows) == list(range(6, 11))
        rest = store.lease(100)
        assert rest is not None
        assert seqs(rest.rows) == list(range(16, 31))
        store.release(a)
        store.release(rest)
        first = store.lease(100)
        assert first is not None
        assert seqs(first.rows) == list(range(1, 6))
        for lease in (first, again, c):
            store.ack(lease)
        tail = store.lease(100)
        assert tail is not None
        assert seqs(tail.rows) == list(range(16, 31))


class Mode(enum.IntEnum):
    AUTO = 3


VALUES: list[object] = [
    True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, -(2**70), 1.5, -0.0, 0.0,
    math.inf, -math.inf, math.nan, 1e-308, "", "plain", "ünïcødé ✓", "lone \ud800 surrogate",
    b"", b"\x00\xff\x10", None, 12345678901, 230.0,
]


def _same(got: object, want: object) -> bool:
    if type(got) is not type(want):
        return False
    if isinstance(want, float) and isinstance(got, float):
        return struct.pack("<d", got) == struct.pack("<d", want)
    return got == want


def test_values_round_trip_their_native_type(tmp_path: Path) -> None:
    qualities = list(Quality)
    sent = [Reading(f"p/{i}", BASE_TS + i, v, qualities[i % len(qualities)],  # type: ignore[arg-type]
                    "V" if i % 2 else None) for i, v in enumerate(VALUES)]
    with Store(tmp_path / "b.db") as store:
        store.append(sent)
        store.commit()
        lease = store.lease(100)
        assert lease is not None
        first_pass = lease.rows
    with Store(tmp_path / "b.db") as store:  # and again from the file after a reopen
        lease = store.lease(100)
        assert lease is not None
        for rows in (first_pass, lease.rows):
            assert len(rows) == len(VALUES)
            for row, reading in zip(rows, sent, strict=True):
                seq, point, unit, ts, value, quality = row
                assert (point, unit, ts, quality) == (
                    reading.point, reading.unit, reading.ts, int(reading.quality))
                assert _same(value, reading.value), (seq, value, reading.value)
                assert type(quality) is int


def test_subclass_values_become_base_types_and_unknown_ones_malformed(tmp_path: Path) -> None:
    sent = [Reading("p/a", 1, Mode.AUTO), Reading("p/b", 2, bytearray(b"xy")),  # type: ignore[arg-type]
            Reading("p/c", 3, object())]  # type: ignore[arg-type]
    with Store(tmp_path / "b.db") as store:
        store.append(sent)
        store.commit()
        lease = store.lease(10)
        assert lease is not None
        values = [(r[4], type(r[4]), r[5]) for r in lease.rows]
    assert values == [(3, int, 0), (b"xy", bytes, 0), (None, type(None), int(Quality.MALFORMED))]


def test_malformed_readings_are_refused_without_blocking_the_rest(tmp_path: Path) -> None:
    bad = [Reading(None, 1, 1.0), Reading("p", 2**70, 1.0), Reading("p", None, 1.0),  # type: ignore[arg-type]
           Reading("p", 1, 1.0, None)]  # type: ignore[arg-type]
    with Store(tmp_path / "b.db") as store:
        for reading in bad:
            store.append([*readings(3), reading, *readings(2, start=3)])
            assert store.commit() == 5
        assert store.pending() == 0
        stats = store.stats()
        assert (stats.rejected, stats.depth) == (4, 20)
        lease = store.lease(100)
        assert lease is not None
        assert [r[3] for r in lease.rows] == [r.ts for r in readings(5)] * 4


def test_same_point_name_with_other_unit_is_its_own_point(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.append([Reading("p", 1, 1.0, unit="V"), Reading("p", 2, 2.0, unit=None),
                      Reading("p", 3, 3.0, unit="mV")])
        store.commit()
    with Store(tmp_path / "b.db") as store:
        lease = store.lease(10)
        assert lease is not None
        assert [(r[1], r[2]) for r in lease.rows] == [("p", "V"), ("p", None), ("p", "mV")]


def test_restart_keeps_unacked_rows_epoch_and_never_reuses_seqs(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Store(path) as store:
        epoch = store.epoch
        assert 0 < epoch < 2**63
        store.append(readings(20))
        store.commit()
        acked = store.lease(5)
        in_flight = store.lease(5)  # leases live in memory: lost on restart
        assert acked is not None
        assert in_flight is not None
        store.ack(acked)
        batch_seqs = [store.next_batch_seq() for _ in range(3)]
    with Store(path) as store:
        assert store.epoch == epoch
        lease = store.lease(100)
        assert lease is not None
        assert seqs(lease.rows) == list(range(6, 21))
        store.ack(lease)
        assert store.next_batch_seq() > batch_seqs[-1]
    with Store(path) as store:  # empty now: seqs continue, they are not taken from the rows
        assert store.stats().depth == 0
        store.append(readings(1))
        store.commit()
        assert store.last_seq == 21
    other = Store(tmp_path / "other.db")
    assert other.epoch != epoch
    other.close()


def test_reopen_without_close_sees_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    first = Store(path)
    first.append(readings(50))
    first.commit()
    first.append(readings(7, start=50))  # queued only: a crash loses it
    b1 = first.next_batch_seq()
    lease = first.lease(10)
    assert lease is not None
    second = Store(path)  # the first one is abandoned, as after a crash
    try:
        assert second.epoch == first.epoch
        assert stored_seqs(path) == list(range(1, 51))
        again = second.lease(100)
        assert again is not None
        assert seqs(again.rows) == list(range(1, 51))
        assert second.next_batch_seq() > b1
        second.append(readings(1))
        second.commit()
        # After a crash, seqs go on past what the dead run had reserved (it may have sent
        # some); the skipped range travels as a loss record.
        skipped = [x for x in again.losses if x.first_seq is not None]
        assert [(x.first_seq, x.reason) for x in skipped] == [(51, "unclean-stop")]
        assert skipped[0].last_seq is not None
        assert second.last_seq == skipped[0].last_seq + 1
    finally:
        second.close()
        first._conn.close()


def test_process_exit_without_close_keeps_commits_and_batch_seqs(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    script = (
        "import os, sys\n"
        "from buffer import Store\n"
        "from drivers.api import Reading\n"
        "s = Store(sys.argv[1])\n"
        "s.append([Reading('p', i, i) for i in range(100)])\n"
        "s.commit()\n"
        "print(max(s.next_batch_seq() for _ in range(1500)), flush=True)\n"
        "s.append([Reading('p', 1, 1)])\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO)}).stdout
    with Store(path) as store:
        assert store.stats().depth == 100
        assert store.next_batch_seq() > int(out)


def test_batch_seq_reserves_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Store(path) as store:
        opened = store.stats().anchor_writes
        got = [store.next_batch_seq() for _ in range(2500)]
        assert got == list(range(1, 2501))
        # One durable write per thousand, not per call.
        assert store.stats().anchor_writes - opened == 3
    with Store(path) as store:
        assert store.next_batch_seq() == 3001


def test_lease_makes_what_it_hands_out_durable_first(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Store(path) as store:
        store.append(readings(10))
        writes = store.stats().anchor_writes
        store.commit()
        assert store.stats().anchor_writes == writes  # a plain commit syncs nothing
        lease = store.lease(3)
        assert lease is not None
        # Before the lease left: the anchor holds every seq committed so far, synced.
        state, _ = Anchor(path.with_name("b.db.anchor")).read()
        assert state is not None
        assert state.seq_left == 10
        assert store.stats().anchor_writes == writes + 1
        again = store.lease(3)  # nothing new since: no second write
        assert again is not None
        assert store.stats().anchor_writes == writes + 1
        store.ack(lease)


def test_stale_ack_deletes_rows_once(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.append(readings(10))
        store.commit()
        old = store.lease(10)
        assert old is not None
        store.release(old)
        new = store.lease(10)
        assert new is not None
        store.ack(old)  # a late PUBACK of a released lease: those rows did arrive
        store.ack(new)
        store.release(new)
        stats = store.stats()
        assert (stats.depth, stats.delivered) == (0, 10)
        assert store.lease(10) is None


def test_kv_is_durable_state(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Store(path) as store:
        assert store.kv_get("lora/fcnt") is None
        store.kv_set("lora/fcnt", b"\x00\x01")
        store.kv_set("lora/fcnt", b"\x00\x02")
        assert store.kv_get("lora/fcnt") == b"\x00\x02"
    with Store(path) as store:
        assert store.kv_get("lora/fcnt") == b"\x00\x02"


def test_stats_and_closed_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    store.append(readings(4, start=10))
    stats = store.stats()
    assert (stats.pending, stats.depth, stats.appended, stats.schema_version) == (4, 0, 4, 3)
    store.commit()
    stats = store.stats()
    assert (stats.depth, stats.oldest_ts, stats.last_seq) == (4, BASE_TS + 10, 4)
    assert stats.moved_aside is None
    assert stats.file_bytes > 0
    assert 0 < stats.used_bytes <= stats.max_bytes
    store.append(readings(2))
    store.close()  # commits what is queued
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.append(readings(1))
    with pytest.raises(StoreError, match="closed"):
        store.lease(1)
    with Store(tmp_path / "b.db") as again:
        assert again.stats().depth == 6


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"synchronous": "extra"}, "synchronous"),
    ({"drop_policy": "random"}, "drop_policy"),
    ({"max_bytes": 1000}, "max_bytes"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Store(tmp_path / "b.db", **kwargs)  # type: ignore[arg-type]


def test_append_from_threads_while_committing(tmp_path: Path) -> None:
    threads, per_thread, chunk = 4, 5000, 50
    with Store(tmp_path / "b.db", synchronous="full") as store:
        def producer(t: int) -> None:
            for i in range(0, per_thread, chunk):
                store.append(Reading(f"thread-{t}", i + j, t) for j in range(chunk))
                time.sleep(0.0005)  # let the committer in between appends

        workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        commits = 0
        while any(w.is_alive() for w in workers):
            commits += bool(store.commit())
        for w in workers:
            w.join()
        store.commit()
        rows = [r for lease in drain(store, 3000) for r in lease.rows]
    assert commits > 1
    assert seqs(rows) == list(range(1, threads * per_thread + 1))
    for t in range(threads):
        mine = [r[3] for r in rows if r[1] == f"thread-{t}"]
        assert mine == list(range(per_thread))  # each thread's readings stay in its order


def test_a_float_reading_takes_under_32_bytes_of_database(tmp_path: Path) -> None:
    rows = 20_000
    with Store(tmp_path / "b.db") as store:
        for start in range(0, rows, 2000):
            store.append(readings(2000, start=start, points=100))
            store.commit()
        assert store.stats().used_bytes / rows < 32
