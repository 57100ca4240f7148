"""Storage faults end to end: a WAL damaged after kill -9, a database corrupt while stopped, a
full disk, and the SIGTERM drain line.

The daemon runs as a subprocess (``python -m gateway run``) against a real mosquitto. The
truth is an independent subscriber that opens and decodes every batch itself (gateway.cose,
gateway.batch) besides feeding a :class:`ingest.verify.Verifier`: a seq of an epoch must never
carry two different readings, a batch_seq of an epoch never two different payloads, and after
the drain every seq of every epoch is delivered or covered by a gap or loss record.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import pytest

from buffer.types import Loss
from gateway.batch import decode_batch
from gateway.broker import Mosquitto
from gateway.cose import kid_for, open1
from gateway.status import read_status
from ingest.subscriber import BatchSubscriber
from ingest.verify import Verifier
from provisioning.keys import load_or_create_signing_key

GW = "cab-faults"
STOP_RE = re.compile(
    r"stopping: (\d+) readings delivered during the drain; (\d+) left in the buffer for the"
    r" next start \((\d+) batches not acknowledged within (\d+) s\)"
    r"(?:; (\d+) could not be written and are recorded as lost)?")
UNWRITTEN_RE = re.compile(
    r"(\d+) readings could not be written \(disk full\); recorded as lost"
    r" \(epoch (\d+), seqs (\d+)-(\d+)\)")
UP_RE = re.compile(r" up: .*\(epoch (\d+)\)")
FAST_SIM = {"instance": "s", "devices": 10, "interval": "10ms", "seed": 7}  # 4000 readings/s


# -- config and processes ---------------------------------------------------------------------
def _toml(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _config(path: Path, *, state: Path, port: int, sim: dict[str, Any] | None = None,
            buffer: dict[str, Any] | None = None, uplink: dict[str, Any] | None = None) -> Path:
    sections: dict[str, dict[str, Any]] = {
        # An absolute status file, off the buffer's filesystem, like /run/streetgate in service.
        "gateway": {"id": GW, "state_dir": str(state),
                    "status_socket": str(path.parent / "run" / "status.json")},
        "buffer": {"commit_window": "20ms", **(buffer or {})},
        "uplink": {"port": port, "batch_linger": "50ms", "reconnect_min": "100ms",
                   "reconnect_max": "500ms", **(uplink or {})},
    }
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in body.items())
                   for name, body in sections.items())
    if sim is not None:
        text += "[[drivers.sim]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in sim.items())
    path.write_text(text)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def _buffer_stats(conf: Path) -> dict[str, Any]:
    out = _cli("buffer", "stats", "--json", "-c", str(conf))
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _status(conf: Path) -> dict[str, Any]:
    out = _cli("status", "-c", str(conf), "--json")
    assert out.returncode in (0, 1), out.stderr  # 1: degraded (disk full), which is shown
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


class Daemon:
    """``python -m gateway run`` with its log in a file; killed at exit if still running."""

    def __init__(self, conf: Path, log: Path) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--log-level", "info", "run", "--config",
             str(conf)], stdout=subprocess.DEVNULL, stderr=self._out)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float, *, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(needle) >= count:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before "
                                     f"{needle!r}:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in the daemon log within {timeout}s:\n{self.text()}")

    def up(self) -> int:
        """Wait for the up line; returns the buffer's epoch."""
        match = UP_RE.search(self.wait_for(" up: ", 20))
        assert match, self.text()
        return int(match.group(1))

    def terminate(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within {timeout}s of SIGTERM:\n{self.text()}") from None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop_lines(self) -> list[re.Match[str]]:
        return list(STOP_RE.finditer(self.text()))

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


# -- the independent truth --------------------------------------------------------------------
class Seen(NamedTuple):
    """A reading as decoded from a batch, its value's type kept apart (1 vs 1.0 vs True)."""

    point: str
    unit: str | None
    ts: int
    kind: str
    value: str
    quality: int


class Truth:
    """A persistent subscriber that decodes every batch itself and feeds a Verifier."""

    def __init__(self, key_path: Path, broker: Mosquitto, name: str = "truth") -> None:
        pub = load_or_create_signing_key(key_path).public_key()
        self.keys = {kid_for(pub): pub}
        self.verifier = Verifier(self.keys, origin=1)
        self.sub = BatchSubscriber(broker.host, broker.port, "streetgate/+/batch",
                                   client_id=f"{name}-{broker.port}")
        self.sub.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.sub.start()
        #: (epoch, seq) -> the reading as decoded, from every batch (duplicates included).
        self.rows: dict[tuple[int, int], Seen] = {}
        self.conflicts: list[str] = []
        self.payloads: dict[tuple[int, int], bytes] = {}
        self.reused: list[str] = []
        self.seen: set[bytes] = set()
        self.bad_replays: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.delivered: dict[int, set[int]] = {}
        self.losses: list[Loss] = []
        self.epochs: list[int] = []
        self.batch_sizes: list[int] = []

    def stop(self) -> None:
        self.sub.stop()

    def pump(self) -> int:
        n = 0
        while True:
            try:
                _topic, message = self.sub.messages.get_nowait()
            except queue.Empty:
                return n
            n += 1
            self._check(message)

    def _check(self, message: bytes) -> None:
        digest = hashlib.sha256(message).digest()
        _kid, payload = open1(message, self.keys)
        batch = decode_batch(payload)
        assert batch.gateway_id == GW
        if batch.epoch not in self.epochs:
            self.epochs.append(batch.epoch)
        self.batch_sizes.append(len(batch.readings))
        body = hashlib.sha256(payload).digest()
        before = self.payloads.setdefault((batch.epoch, batch.batch_seq), body)
        if before != body:
            self.reused.append(f"epoch {batch.epoch} batch_seq {batch.batch_seq}")
        for seq, r in batch.readings:
            ident = Seen(r.point, r.unit, r.ts, type(r.value).__name__, repr(r.value),
                         int(r.quality))
            had = self.rows.setdefault((batch.epoch, seq), ident)
            if had != ident:
                self.conflicts.append(f"epoch {batch.epoch} seq {seq}: {had} then {ident}")
        res = self.verifier.feed(message)
        self.statuses[res.status] += 1
        if res.status == "replay" and digest not in self.seen:
            self.bad_replays.append(f"epoch {batch.epoch} batch_seq {batch.batch_seq}: "
                                    f"{res.error}")
        self.seen.add(digest)
        assert res.authentic, res.error
        self.delivered.setdefault(batch.epoch, set()).update(s for s, _ in res.readings)
        self.losses.extend(res.losses)

    def until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        """Pump and test ``cond`` until it holds; fail after ``timeout`` s."""
        _until(lambda: self.pump() >= 0 and cond(), timeout, what)

    def wait_delivered(self, epoch: int, n: int, timeout: float = 20.0) -> None:
        self.until(lambda: len(self.delivered.get(epoch, ())) >= n, timeout,
                   f"{n} readings delivered in epoch {epoch}")

    def all_epochs(self) -> set[int]:
        return set(self.epochs) | {x.epoch for x in self.losses}

    def missing(self) -> dict[int, list[tuple[int, int]]]:
        return {e: m for e in self.all_epochs() if (m := self.verifier.missing(GW, e))}

    def has_prefix(self, epoch: int, top: int) -> bool:
        got = self.delivered.get(epoch, set())
        return len(got) >= top and all(s in got for s in range(1, top + 1))

    def assert_consistent(self) -> None:
        assert not self.conflicts, f"a seq carried two different readings: {self.conflicts[:3]}"
        assert not self.reused, f"a batch_seq was used for two payloads: {self.reused[:3]}"
        assert not self.bad_replays, f"replay for never-seen bytes: {self.bad_replays[:3]}"
        assert not self.missing(), f"seqs neither delivered nor reported lost: {self.missing()}"


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _status_file(conf: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError, TypeError):
        return read_status(conf.parent / "run" / "status.json")
    return {}


def _drained(conf: Path, d: Daemon) -> bool:
    """The running daemon's own last status says nothing is left to send."""
    doc = _status_file(conf)
    buf = doc.get("buffer", {})
    return (doc.get("pid") == d.proc.pid and buf.get("depth") == 0 and buf.get("pending") == 0
            and buf.get("losses_pending", 0) == 0 and buf.get("gaps_pending") == 0
            and doc.get("uplink", {}).get("inflight") == 0)


def _committed_top(db: Path) -> int:
    """The highest seq committed to the live database (read-only, beside the daemon)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT max(hi) FROM chunks").fetchone()
    finally:
        con.close()
    return int(row[0] or 0)


def _stored_seqs(db: Path) -> set[int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        spans = con.execute("SELECT lo, hi FROM chunks").fetchall()
    finally:
        con.close()
    return {s for lo, hi in spans for s in range(lo, hi + 1)}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # Persistent, so the truth subscriber's session keeps queued batches across stop/start.
    b = Mosquitto(tmp_path / "broker", persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def truth(tmp_path: Path, broker: Mosquitto) -> Iterator[Truth]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    t = Truth(state / "keys" / "signing.key", broker)
    try:
        yield t
    finally:
        t.stop()


# -- 1. a WAL damaged after kill -9 -----------------------------------------------------------
def _wal_round(tmp: Path, broker: Mosquitto, truth: Truth, *, max_size: str,
               down_s: float) -> str:
    """Deliver, stop the broker for ``down_s``, kill -9, zero the WAL header, restart with a
    driver and drain; check what the truth saw. Returns which way the buffer went."""
    state = tmp / "state"
    run = _config(tmp / "run.toml", state=state, port=broker.port, sim=FAST_SIM,
                  buffer={"max_size": max_size})
    again = _config(tmp / "again.toml", state=state, port=broker.port,
                    sim={**FAST_SIM, "max_readings": 400}, buffer={"max_size": max_size})
    with Daemon(run, tmp / "run1.log") as d:
        first_epoch = d.up()
        truth.wait_delivered(first_epoch, 2000)
        broker.stop()
        # Commits go on into the WAL with nothing leased; a checkpoint may or may not come.
        time.sleep(down_s)
        wal = state / "buffer.db-wal"
        assert wal.exists(), "the daemon should have a WAL while it runs"
        assert wal.stat().st_size > 32 + 24 + 4096, "expected WAL frames after the checkpoint"
        d.kill9()
        killed_ms = time.time_ns() // 1_000_000
    truth.pump()
    delivered_before = set(truth.delivered.get(first_epoch, set()))
    with wal.open("r+b") as f:
        f.write(bytes(32))  # the WAL header: SQLite ignores every frame after this
    broker.start()
    # The restart runs a driver too: new readings must not take a seq that carried another.
    with Daemon(again, tmp / "run2.log") as d:
        epoch = d.up()
        truth.until(lambda: not truth.missing() and _drained(again, d)
                    and _status_file(again).get("counters", {}).get("produced") == 400
                    and any(x.epoch == first_epoch for x in truth.losses), 30,
                    "the drain: nothing missing, buffer empty, loss records acknowledged")
        assert d.terminate() == 0
    truth.pump()
    truth.assert_consistent()
    old = [x for x in truth.losses if x.epoch == first_epoch]
    assert truth.losses == old, "loss records beyond the one for the damaged epoch"
    if epoch != first_epoch:
        _check_history_lost(truth, old, delivered_before, first_epoch, epoch)
        path = "new epoch"
    else:
        _check_unclean_stop(truth, old, epoch, killed_ms)
        path = "same epoch"
    stats = _buffer_stats(again)
    assert (stats["depth"], stats["losses_pending"], stats["clean_stop"]) == (0, 0, True)
    return path


def _check_history_lost(truth: Truth, old: list[Loss], delivered_before: set[int],
                        first_epoch: int, epoch: int) -> None:
    """The old epoch ends with one open-ended record from the first seq not known delivered;
    the new epoch counts from 1, its first readings the old file's survivors in order."""
    # The run was killed, so what it held in memory (no seq yet) has its own record too.
    memory = [x for x in old if x.first_seq is None]
    assert [(x.reason, x.last_ts is not None) for x in memory] == [("unclean-stop", True)], old
    ranged = [x for x in old if x.first_seq is not None]
    assert [(x.reason, x.last_seq) for x in ranged] == [("history-lost", None)], old
    first = ranged[0].first_seq
    assert first is not None
    assert all(s in delivered_before for s in range(1, first)), "claimed delivered, was not"
    assert truth.verifier.missing(GW, first_epoch) == []
    new = truth.delivered.get(epoch, set())
    assert new == set(range(1, len(new) + 1)), "the new epoch must count from 1, no holes"
    assert len(new) >= 400
    # A survivor keeps its order (renumbered densely from 1), and where its old seq was
    # delivered it is the very same reading; only seqs the old epoch's record covers survive.
    old_rows = {(r.point, r.ts): (s, r) for (e, s), r in truth.rows.items() if e == first_epoch}
    pairs: list[tuple[int, int]] = []
    for (e, s), r in truth.rows.items():
        hit = old_rows.get((r.point, r.ts)) if e == epoch else None
        if hit is not None:
            assert hit[1] == r, f"new seq {s} is old seq {hit[0]} with another value"
            pairs.append((s, hit[0]))
    pairs.sort()
    olds = [o for _n, o in pairs]
    assert olds == sorted(set(olds)), f"survivors renumbered out of order: {pairs[:10]}"
    assert all(o >= first for o in olds), (pairs[:3], first)


def _check_unclean_stop(truth: Truth, old: list[Loss], epoch: int, killed_ms: int) -> None:
    """The database kept every seq it says had left: same epoch. What the process held (or
    lost with the WAL) is one seq-less record spanning the kill, plus, when seqs above what the
    database knows were reserved (they may have left), one record naming them; the seqs after
    the restart start above it."""
    assert {x.reason for x in old} == {"unclean-stop"}, old
    seqless = [x for x in old if x.first_seq is None]
    ranged = [x for x in old if x.first_seq is not None]
    assert len(seqless) == 1, old
    assert len(ranged) <= 1, old
    (x,) = seqless
    assert x.last_seq is None
    assert x.first_ts is not None
    assert x.last_ts is not None
    assert x.first_ts <= killed_ms <= x.last_ts
    restarted = sorted(s for (e, s), r in truth.rows.items()
                       if e == epoch and r.ts > killed_ms)
    assert len(restarted) >= 400
    for y in ranged:
        assert y.first_seq is not None
        assert y.last_seq is not None
        assert y.first_seq <= y.last_seq, y
        assert restarted[0] > y.last_seq, f"seq {restarted[0]} reused inside the record {y}"
    # Readings committed into the lost WAL frames never arrive: the record's time range must
    # start no later than the newest first-run reading that did arrive.
    first_run = [r.ts for (e, _s), r in truth.rows.items() if e == epoch and r.ts < killed_ms]
    assert x.first_ts <= max(first_run), (x, max(first_run))


@pytest.mark.parametrize(("max_size", "path"), [
    # A 256 MB cap checkpoints every 1000 pages: the frames holding the seqs that left are
    # still in the WAL at the kill, so the database comes back with fewer seqs.
    ("256MB", "new epoch"),
    # A 1 MB cap checkpoints every 16 pages: the WAL holds only readings that never left, so
    # the database keeps every seq that left and only the process's state is lost.
    ("1MB", "same epoch"),
])
def test_wal_zeroed_after_kill_9_loses_nothing_silently(
        tmp_path: Path, broker: Mosquitto, truth: Truth, max_size: str, path: str) -> None:
    went = _wal_round(tmp_path, broker, truth, max_size=max_size, down_s=1.5)
    if went != path:  # checkpoint timing is not ours to decide; both ways were checked
        pytest.xfail(f"checkpoint timing took the {went!r} way, not the {path!r} one")


@pytest.mark.slow
def test_wal_zeroed_after_kill_9_soak(tmp_path: Path, broker: Mosquitto) -> None:
    """Caps and outage lengths that land the checkpoint anywhere, survivors renumbered too."""
    rng = random.Random(2024)
    ways: Counter[str] = Counter()
    for i in range(10):
        tmp = tmp_path / f"round{i}"
        (tmp / "state").mkdir(parents=True, mode=0o700)
        truth = Truth(tmp / "state" / "keys" / "signing.key", broker, name=f"truth{i}")
        try:
            ways[_wal_round(tmp, broker, truth, max_size=rng.choice(["256MB", "16MB", "4MB"]),
                            down_s=rng.uniform(0.2, 2.0))] += 1
        finally:
            truth.stop()
    assert sum(ways.values()) == 10, ways


# -- 2. a corrupt database file while stopped -------------------------------------------------
def test_database_corrupt_while_stopped_is_moved_aside_and_reported(
        tmp_path: Path, broker: Mosquitto, truth: Truth) -> None:
    state = tmp_path / "state"
    run = _config(tmp_path / "run.toml", state=state, port=broker.port, sim=FAST_SIM)
    again = _config(tmp_path / "again.toml", state=state, port=broker.port,
                    sim={**FAST_SIM, "max_readings": 400})
    with Daemon(run, tmp_path / "run1.log") as d:
        old_epoch = d.up()
        truth.wait_delivered(old_epoch, 1000)
        broker.stop()
        time.sleep(1.5)
        assert d.terminate() == 0
        (line,) = d.stop_lines()
    left = int(line.group(2))
    assert left > 0, "readings should have been left in the buffer with the broker down"
    garbage = bytes(range(7, 107))
    db = state / "buffer.db"
    with db.open("r+b") as f:
        f.write(garbage)
    broker.start()
    with Daemon(again, tmp_path / "run2.log") as d:
        new_epoch = d.up()
        assert new_epoch != old_epoch
        truth.until(lambda: truth.has_prefix(new_epoch, 400)
                    and not truth.missing() and _drained(again, d)
                    and any(x.epoch == old_epoch for x in truth.losses), 30,
                    "400 new readings and the old epoch accounted for")
        assert d.terminate() == 0
    truth.pump()
    truth.assert_consistent()
    old = [x for x in truth.losses if x.epoch == old_epoch]
    assert [(x.reason, x.last_seq) for x in truth.losses] == [("moved-aside", None)], old
    first = old[0].first_seq
    assert first is not None
    delivered = truth.delivered[old_epoch]
    assert all(s in delivered for s in range(1, first)), "the record claims undelivered seqs"
    assert max(delivered) + 1 >= first
    assert truth.verifier.missing(GW, old_epoch) == []
    assert truth.delivered[new_epoch] == set(range(1, 401)), "the new epoch counts from 1"
    moved = sorted(state.glob("buffer.db.corrupt-*"))
    moved = [p for p in moved if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1, moved
    assert moved[0].read_bytes()[:100] == garbage, "the moved file is the damaged one"


# -- 3. a full disk ---------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("filling a disk needs a small tmpfs, and mounting one needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mnt)],
                   check=True, capture_output=True, timeout=10)
    try:
        yield mnt
    finally:
        done = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        if done.returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(directory: Path, name: str, leave: int = 0) -> Path:
    """Allocate a file that leaves about ``leave`` bytes free on ``directory``'s filesystem."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        for step in (1 << 20, 64 << 10, 4 << 10):
            while shutil.disk_usage(directory).free - step >= leave:
                try:
                    os.posix_fallocate(fd, size, step)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                size += step
    finally:
        os.close(fd)
    return path


def test_disk_full_drains_without_resend_storm_and_reports_unwritten(
        tmp_path: Path, small_disk: Path, broker: Mosquitto) -> None:
    state = small_disk / "state"
    state.mkdir(mode=0o700)
    truth = Truth(state / "keys" / "signing.key", broker)
    db = state / "buffer.db"
    # max_size above the disk: the disk fills before the size cap could drop anything.
    conf = _config(tmp_path / "run.toml", state=state, port=broker.port, sim=FAST_SIM,
                   buffer={"max_size": "8MB"}, uplink={"batch_max_readings": 500})
    after = _config(tmp_path / "after.toml", state=state, port=broker.port,
                    sim={**FAST_SIM, "max_readings": 400})
    fillers: list[Path] = []
    try:
        broker.stop()
        with Daemon(conf, tmp_path / "run1.log") as d:
            epoch = d.up()
            time.sleep(1.0)
            fillers.append(_fill(small_disk, "filler-1", leave=16 << 10))
            d.wait_for("the disk is full", 20)
            # The technician's view: streetgate status says the disk is full.
            _until(lambda: _status(conf).get("buffer", {}).get("disk_full") is True, 10,
                   "streetgate status to show disk_full")
            doc = _status(conf)
            assert 0 <= doc["buffer"]["free_bytes"] < 256 << 10, doc["buffer"]
            assert doc["buffer"]["pending"] > 0, doc["buffer"]
            assert any("disk full" in p for p in doc["problems"]), doc["problems"]

            # The broker comes back: everything committed so far is delivered, without a storm.
            top = _committed_top(db)
            assert top > 0
            broker.start()
            truth.until(lambda: truth.has_prefix(epoch, top), 30,
                        f"seqs 1..{top} (committed before the broker came back) delivered")
            time.sleep(1.0)
            truth.pump()
            stats = truth.verifier.stats
            largest = max(truth.batch_sizes)
            assert stats["duplicate_batches"] <= 3, stats
            assert stats["duplicates"] <= 3 * largest, stats
            assert "will be sent again" not in d.text()

            # Full again, broker gone, readings piling up in memory: then SIGTERM.
            broker.stop()
            fillers.append(_fill(small_disk, "filler-2"))
            _until(lambda: _status_file(conf).get("buffer", {}).get("pending", 0) >= 2000, 30,
                   "readings queued in memory on the full disk")
            assert _status_file(conf)["buffer"]["disk_full"] is True
            assert d.terminate() == 0
            (line,) = d.stop_lines()
            unwritten = UNWRITTEN_RE.findall(d.text())
        assert line.group(5) is not None, f"the drain line does not say what is lost: {line[0]}"
        queued = int(line.group(5))
        assert queued >= 2000
        assert len(unwritten) == 1, unwritten
        count, loss_epoch, first, last = map(int, unwritten[0])
        assert (count, loss_epoch, last - first + 1) == (queued, epoch, queued)
        stats_after = _buffer_stats(conf)
        assert (stats_after["losses_pending"], stats_after["clean_stop"]) == (1, True)

        # With room again, the record goes upstream and new readings follow the lost seqs.
        for f in fillers:
            f.unlink()
        broker.start()
        with Daemon(after, tmp_path / "run2.log") as d:
            assert d.up() == epoch
            truth.until(lambda: truth.has_prefix(epoch, first - 1)
                        and max(truth.delivered[epoch]) >= last + 400 and not truth.missing()
                        and _drained(after, d), 30, "the unwritten record and the new readings")
            assert d.terminate() == 0
        truth.pump()
        truth.assert_consistent()
        lost = truth.losses
        assert [(x.epoch, x.first_seq, x.last_seq, x.count) for x in lost] == [
            (epoch, first, last, queued)]
        delivered = truth.delivered[epoch]
        assert not any(first <= s <= last for s in delivered), "a lost seq was delivered"
        assert first - 1 in delivered
        assert set(range(last + 1, last + 401)) <= delivered
        x = lost[0]
        assert x.first_ts is not None
        assert x.last_ts is not None
        assert truth.rows[epoch, first - 1].ts <= x.first_ts <= x.last_ts
        assert x.last_ts <= truth.rows[epoch, last + 1].ts
    finally:
        truth.stop()


# -- 4. the SIGTERM drain line ----------------------------------------------------------------
def test_sigterm_drain_line_with_broker_up_matches_what_is_left(
        tmp_path: Path, broker: Mosquitto, truth: Truth) -> None:
    """Several stops, the first in the middle of draining an outage's backlog: each time the
    line's "left" is what ``streetgate buffer stats`` finds afterwards."""
    state = tmp_path / "state"
    conf = _config(tmp_path / "run.toml", state=state, port=broker.port, sim=FAST_SIM,
                   uplink={"batch_max_readings": 100, "max_inflight": 1})
    for round_ in range(6):  # the race below loses about every other stop
        with Daemon(conf, tmp_path / f"run{round_}.log") as d:
            epoch = d.up()
            truth.wait_delivered(epoch, len(truth.delivered.get(epoch, ())) + 500)
            if round_ == 0:
                broker.stop()
                time.sleep(2.0)
                broker.start()
                d.wait_for("uplink connected to", 10, count=2)
                time.sleep(0.2)  # SIGTERM while the backlog drains
            assert d.terminate() == 0
            lines = d.stop_lines()
        assert len(lines) == 1, [m[0] for m in lines]
        left = int(lines[0].group(2))
        stats = _buffer_stats(conf)
        assert stats["depth"] == left, (
            f"round {round_}: the drain line says {left} left, the buffer holds "
            f"{stats['depth']}: {lines[0][0]!r}")
        time.sleep(0.5)
        truth.pump()
        truth.assert_consistent()
        stored = _stored_seqs(state / "buffer.db")
        assert len(stored) == left
        top = int(stats["last_seq"])
        lost = set(range(1, top + 1)) - truth.delivered[epoch] - stored
        assert not lost, f"seqs neither delivered nor in the buffer: {sorted(lost)[:10]}"


def test_sigterm_drain_line_with_broker_down_reports_every_reading_left(
        tmp_path: Path, broker: Mosquitto, truth: Truth) -> None:
    state = tmp_path / "state"
    conf = _config(tmp_path / "run.toml", state=state, port=broker.port, sim=FAST_SIM)
    drain = _config(tmp_path / "drain.toml", state=state, port=broker.port)
    broker.stop()
    with Daemon(conf, tmp_path / "run.log") as d:
        epoch = d.up()
        time.sleep(1.5)
        assert d.terminate() == 0
        lines = d.stop_lines()
    assert len(lines) == 1, [m[0] for m in lines]
    delivered, left, unacked = (int(lines[0].group(i)) for i in (1, 2, 3))
    assert (delivered, unacked, lines[0].group(5)) == (0, 0, None)
    assert left > 1000
    stats = _buffer_stats(conf)
    assert (stats["depth"], stats["last_seq"], stats["clean_stop"]) == (left, left, True)
    # Every one of them arrives after the next start, and nothing else.
    broker.start()
    with Daemon(drain, tmp_path / "drain.log") as d:
        assert d.up() == epoch
        truth.until(lambda: truth.has_prefix(epoch, left) and _drained(drain, d),
                    30, f"seqs 1..{left}")
        assert d.terminate() == 0
    truth.pump()
    truth.assert_consistent()
    assert truth.delivered == {epoch: set(range(1, left + 1))}
    assert truth.losses == []


def test_sigterm_drain_line_on_a_full_disk_counts_lost_readings_once(
        tmp_path: Path, small_disk: Path, broker: Mosquitto) -> None:
    """Readings that cannot be written at exit are lost, not "left in the buffer for the next
    start": the line's "left" is still what the buffer holds afterwards."""
    state = small_disk / "state"
    state.mkdir(mode=0o700)
    load_or_create_signing_key(state / "keys" / "signing.key")
    conf = _config(tmp_path / "run.toml", state=state, port=broker.port, sim=FAST_SIM,
                   buffer={"max_size": "8MB"})
    broker.stop()
    with Daemon(conf, tmp_path / "run.log") as d:
        d.up()
        time.sleep(0.5)
        _fill(small_disk, "filler")
        d.wait_for("the disk is full", 20)
        _until(lambda: _status_file(conf).get("buffer", {}).get("pending", 0) >= 1000, 20,
               "readings queued in memory on the full disk")
        assert d.terminate() == 0
        lines = d.stop_lines()
        unwritten = UNWRITTEN_RE.findall(d.text())
    assert len(lines) == 1, [m[0] for m in lines]
    left, lost = int(lines[0].group(2)), int(lines[0].group(5) or 0)
    assert len(unwritten) == 1, unwritten
    assert lost == int(unwritten[0][0]) >= 1000
    stats = _buffer_stats(conf)
    assert stats["depth"] > 0
    assert stats["depth"] == left, (
        f"the drain line says {left} left for the next start, the buffer holds "
        f"{stats['depth']} and {lost} were recorded as lost: {lines[0][0]!r}")
