"""The size cap: what is dropped, the gaps that say so, and a file that stays at the cap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from buffer import Gap, Lease, Store
from tests.buffer.helpers import BASE_TS, drain, readings, seqs, stored_seqs

if TYPE_CHECKING:
    from pathlib import Path

CAP = 128 * 1024


def _fill(store: Store, rounds: int, size: int = 500, points: int = 10) -> None:
    for r in range(rounds):
        store.append(readings(size, start=r * size, points=points, noisy=True))
        store.commit()
        assert store.stats().used_bytes <= store.max_bytes


def test_oldest_rows_dropped_and_recorded_as_one_gap(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db", max_bytes=CAP) as store:
        _fill(store, 20)
        stats = store.stats()
        dropped = stats.dropped
        assert dropped > 0
        assert stats.depth + dropped == 20 * 500
        assert stats.gaps_pending == 1
        lease = store.lease(100_000)
        assert lease is not None
        assert lease.gaps == [Gap(1, dropped, dropped, BASE_TS, BASE_TS + dropped - 1,
                                  tuple(f"cab-1/dev-{i:03d}/v" for i in range(10)), False)]
        assert seqs(lease.rows) == list(range(dropped + 1, 10_001))
        store.ack(lease)
        assert store.stats().gaps_pending == 0
        assert store.lease(100) is None


def test_gap_names_at_most_32_points(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db", max_bytes=CAP) as store:
        _fill(store, 20, points=50)
        lease = store.lease(0)
        assert lease is not None
        assert lease.rows == []
        [gap] = lease.gaps
        assert len(gap.points) == 32
        assert gap.points_truncated


def test_rows_in_flight_are_not_dropped(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db", max_bytes=CAP) as store:
        store.append(readings(500))
        store.commit()
        in_flight = store.lease(100)
        assert in_flight is not None
        _fill(store, 20)
        assert store.stats().dropped > 0
        assert stored_seqs(tmp_path / "b.db")[:100] == list(range(1, 101))
        later = store.lease(10)
        assert later is not None
        # Drops take whole chunks (one per commit): the one partly in flight stays whole.
        assert later.gaps[0].first_seq == 501
        assert seqs(later.rows) == list(range(101, 111))
        store.ack(in_flight)
        assert store.stats().delivered == 100


def test_gaps_survive_a_restart_until_acked(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Store(path, max_bytes=CAP) as store:
        _fill(store, 20)
        lease = store.lease(10)
        assert lease is not None
        gaps = lease.gaps
        assert gaps
    with Store(path, max_bytes=CAP) as store:
        lease = store.lease(10)
        assert lease is not None
        assert lease.gaps == gaps
        store.ack(lease)
    with Store(path, max_bytes=CAP) as store:
        lease = store.lease(10)
        assert lease is not None
        assert lease.gaps == []


def test_newest_policy_drops_incoming_and_keeps_old(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db", max_bytes=CAP, drop_policy="newest") as store:
        _fill(store, 20)
        stats = store.stats()
        assert stats.dropped > 0
        assert stored_seqs(tmp_path / "b.db")[0] == 1
        everything = store.lease(100_000)  # all rows in flight
        assert everything is not None
        [gap] = everything.gaps
        assert (gap.last_seq, gap.count) == (stats.last_seq, stats.dropped)
        assert gap.first_seq == stats.depth + 1
        store.append(readings(3000, start=10_000))
        store.commit()
        only_gaps = store.lease(100)
        assert only_gaps is not None
        assert only_gaps.rows == []
        assert (only_gaps.first_seq, only_gaps.last_seq) == (None, None)
        assert only_gaps.gaps[0].last_seq == store.last_seq
        store.ack(everything)
        store.ack(only_gaps)
        before = store.stats().dropped
        store.append(readings(100, start=20_000))
        store.commit()
        assert store.stats().dropped == before  # room again once delivered


def _account(lease: Lease, delivered: list[int], lost: list[int]) -> None:
    delivered.extend(seqs(lease.rows))
    for gap in lease.gaps:
        assert gap.count == gap.last_seq - gap.first_seq + 1
        lost.extend(range(gap.first_seq, gap.last_seq + 1))


def test_store_at_the_cap_keeps_accepting_for_many_rounds(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    cap = 64 * 1024
    delivered: list[int] = []
    lost: list[int] = []
    with Store(path, max_bytes=cap) as store:
        for r in range(400):
            store.append(readings(100 + r % 37, start=r * 200))
            assert store.commit() == 100 + r % 37
            assert store.stats().used_bytes <= cap
            if r % 9 == 0:
                lease = store.lease(120)
                assert lease is not None
                _account(lease, delivered, lost)
                store.ack(lease)
        assert path.stat().st_size <= cap * 5 // 4
        for lease in drain(store):
            _account(lease, delivered, lost)
        stats = store.stats()
        assert stats.appended == stats.delivered + stats.dropped + stats.depth
        assert stats.depth == 0
        assert stats.dropped == len(lost) > 0
        assert sorted(delivered + lost) == list(range(1, stats.last_seq + 1))
