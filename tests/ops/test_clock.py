"""Clock sync detection and stamping under a faked unsynchronized clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from buffer.store import Store
from drivers.api import Reading
from gateway.batch import decode_batch, encode_batch
from gateway.clock import (
    FLOOR_MS,
    K_CLOCK,
    ClockState,
    ClockTracker,
    boot_id,
    kernel_synchronized,
)

HOUR = 3_600_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _fake(tmp_path: Path, spec: str) -> tuple[Path, ClockState]:
    """A clock faked through a file the test rewrites, as STREETGATE_FAKE_CLOCK names it."""
    f = tmp_path / "fake-clock"
    f.write_text(spec)
    return f, ClockState(environ={"STREETGATE_FAKE_CLOCK": str(f)})


# -- detection ---------------------------------------------------------------------------------
def test_kernel_state_is_read_with_adjtimex() -> None:
    # The real syscall: a bool where adjtimex is allowed, None where a seccomp filter denies it.
    assert kernel_synchronized() in (True, False, None)


def test_timesyncd_flag_then_kernel_then_timesyncd_directory(tmp_path: Path) -> None:
    run = tmp_path / "timesync"
    flag = run / "synchronized"

    def probe(kernel: bool | None) -> tuple[bool, str]:
        p = ClockState(environ={}, timesyncd_flag=flag, kernel=lambda: kernel).probe()
        return p.synced, p.source

    assert probe(None) == (True, "unknown")  # nothing to ask: trust a clock past the floor
    run.mkdir()
    assert probe(None) == (False, "timesyncd")  # timesyncd runs, has not synced yet
    assert probe(False) == (False, "kernel")
    assert probe(True) == (True, "kernel")
    flag.touch()
    assert probe(False) == (True, "timesyncd")


def test_a_clock_before_the_floor_is_never_synchronized(tmp_path: Path) -> None:
    state = ClockState(environ={}, timesyncd_flag=tmp_path / "synchronized",
                       kernel=lambda: True, floor_ms=_now_ms() + HOUR)
    assert state.probe().source == "floor"
    assert not state.synchronized()


def test_fake_clock_from_env_and_file(tmp_path: Path) -> None:
    skewed = ClockState(environ={"STREETGATE_FAKE_CLOCK": f"unsynced:{-HOUR}"})
    assert not skewed.synchronized()
    assert abs(skewed.wall_ms() - (_now_ms() - HOUR)) < 1000
    assert ClockState(environ={"STREETGATE_FAKE_CLOCK": "synced"}).synchronized()
    f, state = _fake(tmp_path, "unsynced")
    assert not state.synchronized()
    f.write_text("synced\n")
    assert state.synchronized()
    assert abs(state.wall_ms() - _now_ms()) < 1000


def test_boot_id_falls_back_to_a_runtime_marker(tmp_path: Path) -> None:
    first = boot_id(str(tmp_path))
    assert first
    assert boot_id(str(tmp_path)) == first  # stable within a boot


# -- stamping and spans --------------------------------------------------------------------------
def test_unsynced_readings_get_a_span_and_the_offset_once_synced(tmp_path: Path) -> None:
    f, clock = _fake(tmp_path, f"unsynced:{-HOUR}")
    tracker = ClockTracker(clock, boot="b1")
    tracker.start(next_seq=1)
    ts, synced = tracker.stamp()
    assert not synced
    assert abs(ts - (_now_ms() - HOUR)) < 1000
    assert tracker.poll(next_seq=5) is None  # still unsynced
    assert tracker.extension(1, 4) == [[1, 4, None]]  # open: marked, offset not known yet

    f.write_text("synced")
    span = tracker.poll(next_seq=11)  # readings 1..10 were stamped unsynced
    assert span is not None
    assert (span.first_seq, span.last_seq) == (1, 10)
    assert abs(span.offset_ms - HOUR) < 200
    ts, synced = tracker.stamp()
    assert synced
    assert abs(ts - _now_ms()) < 200

    # The correction travels until a batch carrying it is acknowledged, then only with overlaps.
    assert tracker.extension(11, 20) == [[1, 10, span.offset_ms]]
    assert tracker.extension(5, 12) == [[1, 10, span.offset_ms]]
    tracker.delivered(11, 20)
    assert tracker.extension(21, 30) is None
    assert tracker.extension(8, 9) == [[1, 10, span.offset_ms]]
    snap = tracker.snapshot()
    assert snap["synced"]
    assert snap["corrections_pending"] == 0
    assert abs(snap["last_offset_ms"] - HOUR) < 200


def test_synced_from_the_start_marks_nothing(tmp_path: Path) -> None:
    _f, clock = _fake(tmp_path, "synced")
    tracker = ClockTracker(clock)
    tracker.start(next_seq=1)
    assert tracker.synced
    assert tracker.extension(1, 100) is None
    assert tracker.poll(next_seq=100) is None


def test_sync_before_any_reading_leaves_no_span(tmp_path: Path) -> None:
    f, clock = _fake(tmp_path, "unsynced")
    tracker = ClockTracker(clock)
    tracker.start(next_seq=7)
    f.write_text("synced")
    assert tracker.poll(next_seq=7) is None
    assert tracker.spans == []


def test_never_1970_and_never_before_the_last_synchronized_time(tmp_path: Path) -> None:
    _f, clock = _fake(tmp_path, f"unsynced:{-_now_ms()}")  # the clock says 1970
    tracker = ClockTracker(clock)
    tracker.start(next_seq=1)
    assert tracker.now_ms() >= FLOOR_MS
    # A gateway that was synchronized until a minute ago, then lost power.
    last_good = _now_ms() - 60_000
    saved = f'{{"v":1,"last_good_ms":{last_good},"spans":[]}}'.encode()
    _f2, behind = _fake(tmp_path, f"unsynced:{-10 * HOUR}")
    again = ClockTracker(behind, saved=saved)
    again.start(next_seq=1)
    first = again.now_ms()
    assert first >= last_good
    assert first <= _now_ms()  # and never ahead of the true time it stands in for
    time.sleep(0.02)
    assert again.now_ms() > first  # one continuous timeline


def test_restart_in_the_same_boot_continues_the_span(tmp_path: Path) -> None:
    saved: list[bytes] = []
    f, clock = _fake(tmp_path, f"unsynced:{-HOUR}")
    one = ClockTracker(clock, save=saved.append, boot="boot-A")
    one.start(next_seq=1)
    stamp_before = one.now_ms()
    # The process dies with seqs 1..50 in the buffer; a new one starts in the same boot.
    two = ClockTracker(clock, saved=saved[-1], save=saved.append, boot="boot-A")
    two.start(next_seq=51)
    assert two.now_ms() >= stamp_before
    assert two.extension(1, 60) == [[1, 60, None]]
    f.write_text("synced")
    span = two.poll(next_seq=101)
    assert span is not None
    assert (span.first_seq, span.last_seq) == (1, 100)
    assert abs(span.offset_ms - HOUR) < 200


def test_restart_after_sync_in_the_same_boot_computes_the_offset(tmp_path: Path) -> None:
    saved: list[bytes] = []
    f, clock = _fake(tmp_path, f"unsynced:{-HOUR}")
    ClockTracker(clock, save=saved.append, boot="boot-A").start(next_seq=1)
    f.write_text("synced")  # synced while the gateway was down
    two = ClockTracker(clock, saved=saved[-1], save=saved.append, boot="boot-A")
    two.start(next_seq=31)
    assert two.synced
    [span] = two.spans
    assert (span.first_seq, span.last_seq) == (1, 30)
    assert abs(span.offset_ms - HOUR) < 200


def test_a_reboot_before_sync_makes_the_offset_unknowable(tmp_path: Path) -> None:
    saved: list[bytes] = []
    _f, clock = _fake(tmp_path, f"unsynced:{-HOUR}")
    ClockTracker(clock, save=saved.append, boot="boot-A").start(next_seq=1)
    later = ClockTracker(clock, saved=saved[-1], save=saved.append, boot="boot-B")
    later.start(next_seq=21)
    # Seqs 1..20: never correctable (false); 21..: this boot's span, offset still to come.
    assert later.extension(1, 30) == [[1, 20, False], [21, 30, None]]
    later.delivered(1, 30)
    assert later.extension(31, 40) == [[21, 40, None]]


def test_corrupt_saved_state_is_reported_and_dropped(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _f, clock = _fake(tmp_path, "synced")
    tracker = ClockTracker(clock, saved=b"{not json")
    tracker.start(next_seq=1)
    assert tracker.spans == []
    assert "clock state unreadable" in caplog.text


# -- through the real buffer and batch encoder ---------------------------------------------------
def test_batches_carry_the_marks_and_the_correction(tmp_path: Path) -> None:
    """The daemon's path without MQTT: stamp, append, commit, lease, encode, decode, correct."""
    f, clock = _fake(tmp_path, f"unsynced:{-2 * HOUR}")
    store = Store(tmp_path / "buffer.db", synchronous="off")
    tracker = ClockTracker(clock, save=lambda b: store.kv_set("clock", b), boot="boot-A")
    base = store.last_seq + 1  # seqs follow append order from here

    def emit(n: int) -> list[int]:
        truth = []
        for i in range(n):
            truth.append(_now_ms())
            store.append([Reading(f"cab/m1/p{i % 3}", tracker.now_ms(), i, unit="V")])
        return truth

    tracker.start(base + store.appended)
    truth = emit(6)
    store.commit()
    lease = store.lease(100)
    assert lease is not None
    first = decode_batch(encode_batch(
        gateway_id="cab", epoch=store.epoch, batch_seq=1, rows=lease.rows,
        extra={K_CLOCK: tracker.extension(lease.first_seq, lease.last_seq)}))
    store.ack(lease)
    tracker.delivered(lease.first_seq, lease.last_seq)
    assert first.extra[K_CLOCK] == [[1, 6, None]]  # marked, correction to come

    f.write_text("synced")
    assert tracker.poll(base + store.appended) is not None
    truth += emit(4)
    store.commit()
    lease = store.lease(100)
    assert lease is not None
    second = decode_batch(encode_batch(
        gateway_id="cab", epoch=store.epoch, batch_seq=2, rows=lease.rows,
        extra={K_CLOCK: tracker.extension(lease.first_seq, lease.last_seq)}))
    [[lo, hi, offset]] = second.extra[K_CLOCK]
    assert (lo, hi) == (1, 6)  # a correction for readings delivered earlier
    readings = dict(first.readings) | dict(second.readings)
    for seq, reading in sorted(readings.items()):
        corrected = reading.ts + offset if lo <= seq <= hi else reading.ts
        assert abs(corrected - truth[seq - 1]) < 200, seq
        assert corrected <= _now_ms()
    # The spans live in the buffer's own database: same fate as the readings they describe.
    assert ClockTracker(clock, saved=store.kv_get("clock")).spans[0].offset_ms == offset
    store.close()


def test_seqs_counted_but_never_committed_leave_the_span(tmp_path: Path) -> None:
    saved: list[bytes] = []
    f, clock = _fake(tmp_path, f"unsynced:{-HOUR}")
    one = ClockTracker(clock, save=saved.append, boot="boot-A")
    one.start(next_seq=1)
    f.write_text("synced")
    assert one.poll(next_seq=61) is not None  # 1..60 counted, then a crash before the commit
    # The buffer only ever assigned 1..40: the new process hands out 41.. to synced readings.
    two = ClockTracker(clock, saved=saved[-1], boot="boot-A")
    two.start(next_seq=41)
    assert [(s.first_seq, s.last_seq) for s in two.spans] == [(1, 40)]
    assert two.extension(41, 50) == [[1, 40, two.spans[0].offset_ms]]
