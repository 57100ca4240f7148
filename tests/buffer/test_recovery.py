"""Damage and failure: corrupt files, schema versions, a full or read-only disk, kill -9."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer import Store, StoreError, _db
from tests.buffer.helpers import drain, readings, seqs, stored_seqs

REPO = Path(__file__).resolve().parents[2]
ASIDE = re.compile(r"^b\.db\.corrupt-\d{8}T\d{6}Z$")


def _make(path: Path, n: int = 20_000) -> int:
    with Store(path) as store:
        store.append(readings(n))
        store.commit()
        return store.epoch


def _damage_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(os.urandom(100))


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _text(path: Path) -> None:
    path.write_text("this is not a database, it is a note\n" * 10)


@pytest.mark.parametrize("damage", [_damage_header, _truncate, _text])
def test_corrupt_file_is_moved_aside_and_a_fresh_one_works(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object) -> None:
    path = tmp_path / "b.db"
    old_epoch = _make(path)
    damage(path)  # type: ignore[operator]
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="streetgate.buffer"), Store(path) as store:
        aside = store.moved_aside
        assert aside is not None
        assert ASIDE.match(aside.name), aside.name
        assert aside.read_bytes() == damaged  # kept as it was, never deleted
        assert store.stats().moved_aside == str(aside)
        assert store.epoch != old_epoch
        assert store.stats().depth == 0
        store.append(readings(5))
        store.commit()
        lease = store.lease(10)
        assert lease is not None
        assert seqs(lease.rows) == [1, 2, 3, 4, 5]
        store.ack(lease)
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in message
    assert str(aside) in message
    with Store(path) as again:  # the fresh file is healthy: nothing more is moved
        assert again.moved_aside is None


def test_corrupt_file_takes_its_wal_and_shm_along(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    _text(path)
    (tmp_path / "b.db-wal").write_bytes(b"wal bytes")
    (tmp_path / "b.db-shm").write_bytes(b"shm bytes")
    with Store(path) as store:
        aside = store.moved_aside
    assert aside is not None
    assert Path(f"{aside}-wal").read_bytes() == b"wal bytes"
    assert Path(f"{aside}-shm").read_bytes() == b"shm bytes"


def test_empty_file_and_version_0_database_are_migrated(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()
    for path in (empty, bare):
        with Store(path) as store:
            assert store.moved_aside is None
            assert store.schema_version == 3
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        conn.close()


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    _make(path, 10)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="version 99 is newer"):
        Store(path)
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    assert len(stored_seqs(path)) == 10


def test_foreign_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (something TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="cannot open buffer"):
        Store(path)
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []


def test_migrations_run_forward_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.db"
    _make(path, 10)
    runs: list[int] = []

    def later(conn: sqlite3.Connection) -> None:
        runs.append(1)
        conn.execute("ALTER TABLE points ADD COLUMN label TEXT")

    monkeypatch.setattr(_db, "MIGRATIONS", [*_db.MIGRATIONS, later])
    with Store(path) as store:
        assert store.schema_version == len(_db.MIGRATIONS)
        assert store.stats().depth == 10
    with Store(path) as store:
        assert store.schema_version == len(_db.MIGRATIONS)
    assert runs == [1]
    conn = sqlite3.connect(path)
    assert "label" in [c[1] for c in conn.execute("PRAGMA table_info(points)")]
    conn.close()


def test_disk_full_keeps_readings_queued_for_a_retry(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store.append(readings(100))
        store.commit()
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
        store.append(readings(5000, start=100))
        with pytest.raises(StoreError, match=r"full.*stay queued"):
            store.commit()
        assert store.pending() == 5000
        assert store.last_seq == 100
        lease = store.lease(10_000)
        assert lease is not None
        assert seqs(lease.rows) == list(range(1, 101))
        store.release(lease)
        store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert store.commit() == 5000
        rows = [r for lease in drain(store, 2000) for r in lease.rows]
        assert seqs(rows) == list(range(1, 5101))
        assert [r[3] for r in rows] == [r.ts for r in readings(5100)]


def test_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db") as store:
        store._conn.execute("PRAGMA query_only = 1")
        store.append(readings(10))
        with pytest.raises(StoreError, match="readonly"):
            store.commit()
        with pytest.raises(StoreError, match="readonly"):
            store.kv_set("k", b"v")
        assert store.pending() == 10
        store._conn.execute("PRAGMA query_only = 0")
        assert store.commit() == 10


def _parse(out: str) -> tuple[int, int, set[int], set[int]]:
    """What a killed writer reported: top seq and batch seq, seqs acked, seqs maybe acked."""
    top = batch = 0
    acked: set[int] = set()
    acking: set[int] = set()
    for line in out.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut by the kill
        word, *nums = line.split()
        if word == "commit":
            top, batch = int(nums[0]), int(nums[1])
        elif word == "acking":
            acking = set(range(int(nums[0]), int(nums[1]) + 1))
        elif word == "acked":
            acked |= acking
            acking = set()
    return top, batch, acked, acking


def _kill_after(path: Path, seed: int, delay: float) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.buffer.crash_writer", str(path), "normal", str(seed)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("ready"), first
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return out


def test_kill_9_loses_no_committed_reading(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    rng = random.Random(7)
    epoch = None
    gone: set[int] = set()
    maybe: set[int] = set()
    top = batch = 0
    started = time.monotonic()
    for round_ in range(10):
        out = _kill_after(path, round_, rng.uniform(0.02, 0.3))
        round_top, round_batch, acked, acking = _parse(out)
        # An ack's delete rides with the next commit (or comes within 2 s): a kill before it
        # leaves the readings to be sent again, which the platform drops as duplicates.
        maybe |= acked | acking
        gone -= maybe
        assert round_top >= top
        top, batch = max(top, round_top), max(batch, round_batch)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        conn.close()
        present = set(stored_seqs(path))
        assert set(range(1, top + 1)) - gone - maybe <= present
        assert not gone & present
        with Store(path) as store:
            assert store.moved_aside is None
            assert epoch in (None, store.epoch)
            epoch = store.epoch
            assert store.last_seq >= top
            assert store.next_batch_seq() > batch
    assert time.monotonic() - started < 15
    assert top > 0


def test_disk_full_for_long_drops_oldest_queued_readings_as_a_gap(tmp_path: Path) -> None:
    with Store(tmp_path / "b.db", max_pending=1000) as store:
        store.append(readings(100))
        store.commit()
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
        for i in range(5):
            store.append(readings(1000, start=100 + 1000 * i))
            with pytest.raises(StoreError):
                store.commit()
        assert store.pending() == 1000, "memory stays bounded while commits fail"
        store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert store.commit() == 1000
        leases = drain(store, 10_000)
        rows = [r for lease in leases for r in lease.rows]
        gaps = [g for lease in leases for g in lease.gaps]
        assert len(gaps) == 1
        (gap,) = gaps
        assert gap.count == 4000
        assert (gap.first_seq, gap.last_seq) == (101, 4100)
        assert (gap.first_ts, gap.last_ts) == (readings(5100)[100].ts, readings(5100)[4099].ts)
        assert seqs(rows) == list(range(1, 101)) + list(range(4101, 5101))
        assert [r[3] for r in rows[100:]] == [r.ts for r in readings(5100)[4100:]]
        assert store.stats().dropped == 4000


def test_a_point_name_sqlite_cannot_store_is_dropped_not_fatal(tmp_path: Path) -> None:
    from drivers.api import Reading  # noqa: PLC0415

    with Store(tmp_path / "b.db") as store:
        store.append([*readings(3), Reading("bad/x/\udcff", 1, 1), *readings(3, start=3)])
        assert store.commit() == 6
        assert store.rejected == 1
        lease = store.lease(100)
        assert lease is not None
        assert len(lease.rows) == 6


def test_a_damaged_chunk_becomes_a_loss_record_and_the_rest_flows(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Store(path) as store:
        for i in range(3):  # three commits: three chunks, seqs 1-10, 11-20, 21-30
            store.append(readings(10, start=i * 10))
            store.commit()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE chunks SET data = x'00112233' WHERE lo = 11")  # the card lies
    conn.commit()
    conn.close()
    with Store(path) as store:
        got: list[int] = []
        losses = []
        while (lease := store.lease(100)) is not None:
            got += seqs(lease.rows)
            losses += lease.losses
            store.ack(lease)
        damaged = [x for x in losses if x.reason == "damaged"]
        assert [(x.first_seq, x.last_seq, x.count) for x in damaged] == [(11, 20, 10)]
        assert got == [*range(1, 11), *range(21, 31)]
        assert store.stats().depth == 0
        store.append(readings(2, start=30))
        assert store.commit() == 2
        assert store.last_seq == 32
