"""Is the wall clock right yet? Stamps that say so, and the correction once it is.

A Pi has no battery-backed clock: after a power cut it boots with a wrong time until NTP syncs,
possibly hours later. :class:`ClockState` tells whether the clock is synchronized (the kernel's
NTP state from adjtimex(2), systemd-timesyncd's flag file, never before :data:`FLOOR_MS`).
:class:`ClockTracker` stamps readings: while unsynchronized it counts from an anchor on
CLOCK_BOOTTIME, so the unsynchronized stamps form one continuous timeline that the clock cannot
step under, never earlier than the floor or the last synchronized time it saw. Readings stamped
that way form a *span* of buffer seqs; when the clock syncs, the span gets the offset that puts
them at their true time, and batches carry the spans (docs/wire-format.md, key 9).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["FLOOR_MS", "K_CLOCK", "ClockProbe", "ClockState", "ClockTracker", "Span", "boot_id"]

_log = logging.getLogger("streetgate.clock")

#: No reading is stamped earlier than this (2025-01-01T00:00:00Z): a clock before it is wrong.
FLOOR_MS = 1_735_689_600_000
#: Batch extension key of the clock spans (docs/wire-format.md; 0-8 are the core keys).
K_CLOCK = 9
_FAKE_ENV = "STREETGATE_FAKE_CLOCK"
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
# adjtimex(2): the return value TIME_ERROR and the status bit STA_UNSYNC mean "not synchronized".
_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
_MAX_SENT = 256
_SAVE_GOOD_EVERY_MS = 3_600_000


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h>; longs follow the platform (adjtimex(2))."""

    _fields_ = (
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
        ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11),
        ("_slack", ctypes.c_char * 64),  # room should a libc's struct be larger
    )


@functools.cache
def _libc() -> ctypes.CDLL:
    # find_library runs `ldconfig -p` in a subprocess: once per process, not once a second.
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def kernel_synchronized() -> bool | None:
    """The kernel's NTP state by a read-only adjtimex(2) (modes = 0); None if unavailable."""
    try:
        libc = _libc()
        tx = _Timex()
        rc = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if rc == -1:  # EPERM under a seccomp filter without adjtimex (systemd ProtectClock=yes)
        return None
    return rc != _TIME_ERROR and not tx.status & _STA_UNSYNC


@dataclasses.dataclass(frozen=True, slots=True)
class ClockProbe:
    """One look at the clock: synchronized or not, and who said so."""

    synced: bool
    source: str  # kernel, timesyncd, floor, fake, unknown
    wall_ms: int


class ClockState:
    """Reads the wall clock and whether it is synchronized.

    ``STREETGATE_FAKE_CLOCK`` fakes an unsynchronized clock for tests: ``unsynced[:SKEW_MS]``,
    ``synced``, or the path of a file holding one of those (re-read on every probe). While
    unsynced the wall clock reads ``SKEW_MS`` off.
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None,
                 timesyncd_flag: Path = _TIMESYNCD_FLAG, floor_ms: int = FLOOR_MS,
                 kernel: Callable[[], bool | None] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.fake = env.get(_FAKE_ENV) or None
        self.timesyncd_flag = timesyncd_flag
        self.floor_ms = floor_ms
        self._kernel = kernel or kernel_synchronized

    def _fake_state(self) -> tuple[bool, int] | None:
        spec = self.fake
        if spec is None:
            return None
        if spec.startswith("/"):
            try:
                spec = Path(spec).read_text(encoding="utf-8").strip()
            except OSError:
                spec = "unsynced"
        state, _, skew = spec.partition(":")
        if state.strip() == "synced":
            return True, 0
        try:
            return False, int(skew or 0)
        except ValueError:
            return False, 0

    def wall_ms(self) -> int:
        fake = self._fake_state()
        return time.time_ns() // 1_000_000 + (fake[1] if fake else 0)

    @staticmethod
    def boot_ms() -> int:
        """CLOCK_BOOTTIME: monotonic, and keeps counting through a suspend."""
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000

    def probe(self) -> ClockProbe:
        fake = self._fake_state()
        wall = self.wall_ms()
        if fake is not None:
            return ClockProbe(fake[0] and wall >= self.floor_ms, "fake", wall)
        if wall < self.floor_ms:
            return ClockProbe(False, "floor", wall)
        # systemd-timesyncd.service(8): the flag is touched on each synchronization; the
        # directory is its RuntimeDirectory, there while it runs.
        if self.timesyncd_flag.exists():
            return ClockProbe(True, "timesyncd", wall)
        kernel = self._kernel()
        if kernel is not None:
            return ClockProbe(kernel, "kernel", wall)
        if self.timesyncd_flag.parent.is_dir():
            return ClockProbe(False, "timesyncd", wall)
        # Nothing to ask (no timesyncd, adjtimex denied): trust a clock past the floor.
        return ClockProbe(True, "unknown", wall)

    def synchronized(self) -> bool:
        return self.probe().synced


def boot_id(runtime_dir: str | None = None) -> str | None:
    """This boot's id: the kernel's, else a marker in the (tmpfs) runtime directory."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        pass  # hidden by systemd ProcSubset=pid
    base = runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not base:
        return None
    marker = Path(base) / "boot_id"
    try:
        return marker.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        value = uuid.uuid4().hex
        try:
            marker.write_text(value, encoding="ascii")
        except OSError:
            return None
        return value
    except OSError:
        return None


@dataclasses.dataclass(slots=True)
class Span:
    """Buffer seqs ``first_seq..last_seq`` stamped while the clock was unsynchronized."""

    first_seq: int
    last_seq: int | None  # None while still open
    anchor_wall: int  # the unsynchronized timeline: anchor_wall + (boottime - anchor_boot)
    anchor_boot: int
    boot: str | None
    offset_ms: int | None = None  # true time = ts + offset_ms, once known
    lost: bool = False  # rebooted before the clock synced: the offset can never be known
    delivered: bool = False  # an acknowledged batch carried the offset (or the loss)

    def wire(self, batch_last: int) -> list[Any]:
        """``[first_seq, last_seq, offset_ms | null (not yet known) | false (never)]``."""
        last = self.last_seq if self.last_seq is not None else batch_last
        return [self.first_seq, last, False if self.lost else self.offset_ms]


class ClockTracker:
    """Stamps readings and keeps the spans of unsynchronized ones until they are settled.

    The daemon calls :meth:`start` once the buffer is open, :meth:`poll` every second or so from
    the loop (``next_seq`` = the seq the next appended reading will get), :meth:`extension` when
    encoding a batch and :meth:`delivered` when the broker acknowledged it. State (spans, the
    last synchronized time) is handed to ``save`` as bytes and given back as ``saved``.
    """

    def __init__(self, clock: ClockState | None = None, *, saved: bytes | None = None,
                 save: Callable[[bytes], object] | None = None, boot: str | None = None,
                 max_spans: int = 64) -> None:
        self.clock = clock or ClockState()
        self.boot = boot
        self._save = save
        self._max_spans = max_spans
        self._lock = threading.Lock()
        self.spans: list[Span] = []
        self.last_good_ms = 0
        self._saved_good_ms = 0
        self._load(saved)
        self._sent: dict[tuple[int, int], list[int]] = {}
        self.probe = self.clock.probe()
        self.synced = False
        self.synced_at_ms: int | None = None
        self._anchor = (max(self.clock.wall_ms(), self.clock.floor_ms, self.last_good_ms),
                        self.clock.boot_ms())

    # -- stamping ---------------------------------------------------------------------------
    def now_ms(self) -> int:
        return self.stamp()[0]

    def stamp(self) -> tuple[int, bool]:
        """``(ms since the epoch, synchronized)`` for a reading taken now."""
        if self.synced:
            return self.clock.wall_ms(), True
        wall, boot = self._anchor
        return wall + self.clock.boot_ms() - boot, False

    def _open(self, next_seq: int) -> None:
        floor = max(self.clock.floor_ms, self.last_good_ms)
        self._anchor = (max(self.clock.wall_ms(), floor), self.clock.boot_ms())
        self.spans.append(Span(next_seq, None, *self._anchor, self.boot))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, next_seq: int) -> None:
        """Settle spans a previous process left open; open one if the clock is not synced."""
        with self._lock:
            self.probe = self.clock.probe()
            resumed = None
            for span in self.spans:
                if span.last_seq is None:
                    resumed = self._settle_left_open(span, next_seq)
                elif span.last_seq >= next_seq:
                    # Counted but never committed (the process died first): those seqs go to
                    # this process's readings.
                    span.last_seq = next_seq - 1
            self.spans = [s for s in self.spans if s.last_seq is None or s.last_seq >= s.first_seq]
            if self.probe.synced:
                self._set_synced()
            elif resumed is not None:
                self._anchor = (resumed.anchor_wall, resumed.anchor_boot)
            else:
                self._open(next_seq)
                _log.warning("clock not synchronized (%s): readings are marked until it is",
                             self.probe.source)
            if self.probe.source == "unknown":
                _log.warning("cannot tell whether the clock is synchronized (no timesyncd, "
                             "adjtimex denied): trusting it")
            self._persist()

    def _settle_left_open(self, span: Span, next_seq: int) -> Span | None:
        same_boot = self.boot is not None and span.boot == self.boot
        if same_boot and not self.probe.synced:
            return span  # same boot, still unsynced: the same timeline goes on
        span.last_seq = next_seq - 1
        if same_boot:
            span.offset_ms = self._offset(span)
        else:
            span.lost = True
        return None

    def _offset(self, span: Span) -> int:
        return self.clock.wall_ms() - (span.anchor_wall + self.clock.boot_ms() - span.anchor_boot)

    def _set_synced(self) -> None:
        self.synced = True
        self.synced_at_ms = self.clock.wall_ms()
        self.last_good_ms = max(self.last_good_ms, self.synced_at_ms)

    def poll(self, next_seq: int) -> Span | None:
        """Look at the clock; returns the span closed when it has just synchronized."""
        with self._lock:
            self.probe = self.clock.probe()
            if self.synced:
                self._note_good()
                return None
            if not self.probe.synced:
                return None
            span = next((s for s in self.spans if s.last_seq is None), None)
            if span is not None:
                span.last_seq = next_seq - 1
                span.offset_ms = self._offset(span)
                if span.last_seq < span.first_seq:
                    self.spans.remove(span)
            self._set_synced()
            self._persist()
        if span is not None and span.last_seq is not None and span.last_seq >= span.first_seq:
            _log.info("clock synchronized (%s): %d readings (seq %d..%d) were stamped %+d ms "
                      "off; the correction travels with the next batch", self.probe.source,
                      span.last_seq - span.first_seq + 1, span.first_seq, span.last_seq,
                      span.offset_ms or 0)
            return span
        _log.info("clock synchronized (%s)", self.probe.source)
        return None

    def _note_good(self) -> None:
        now = self.clock.wall_ms()
        self.last_good_ms = max(self.last_good_ms, now)
        if now - self._saved_good_ms >= _SAVE_GOOD_EVERY_MS:
            self._persist()

    def close(self) -> None:
        """Save the last synchronized time (call at shutdown)."""
        with self._lock:
            if self.synced:
                self.last_good_ms = max(self.last_good_ms, self.clock.wall_ms())
            self._persist()

    # -- batches -----------------------------------------------------------------------------
    def extension(self, first_seq: int | None, last_seq: int | None) -> list[list[Any]] | None:
        """Value of batch key 9 for a batch carrying seqs ``first_seq..last_seq``, or None.

        It lists the spans that overlap the batch and the settled spans whose offset no
        acknowledged batch has carried yet.
        """
        if first_seq is None or last_seq is None:
            return None
        with self._lock:
            out: list[list[Any]] = []
            news: list[int] = []
            for s in self.spans:
                overlaps = s.first_seq <= last_seq and (s.last_seq or last_seq) >= first_seq
                settled = s.last_seq is not None and (s.lost or s.offset_ms is not None)
                if overlaps or (settled and not s.delivered):
                    out.append(s.wire(last_seq))
                if settled and not s.delivered:
                    news.append(s.first_seq)
            if news:
                self._sent[first_seq, last_seq] = news
                while len(self._sent) > _MAX_SENT:
                    del self._sent[next(iter(self._sent))]
            return out or None

    def delivered(self, first_seq: int | None, last_seq: int | None) -> None:
        """The batch for ``first_seq..last_seq`` was acknowledged."""
        if first_seq is None or last_seq is None:
            return
        with self._lock:
            firsts = self._sent.pop((first_seq, last_seq), [])
            changed = [s for s in self.spans if s.first_seq in firsts and not s.delivered]
            for s in changed:
                s.delivered = True
            if changed:
                self._prune()
                self._persist()

    def _prune(self) -> None:
        extra = len(self.spans) - self._max_spans
        for s in [s for s in self.spans if s.delivered][:max(0, extra)]:
            self.spans.remove(s)

    # -- status and state ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            open_span = next((s for s in self.spans if s.last_seq is None), None)
            last = next((s for s in reversed(self.spans) if s.offset_ms is not None), None)
            return {
                "synced": self.synced, "source": self.probe.source,
                "kernel_synced": self.probe.synced,
                "synced_at_ms": self.synced_at_ms,
                "unsynced_since_seq": open_span.first_seq if open_span else None,
                "last_offset_ms": last.offset_ms if last else None,
                "corrections_pending": sum(
                    1 for s in self.spans if s.last_seq is not None and not s.delivered),
            }

    def _load(self, saved: bytes | None) -> None:
        if not saved:
            return
        try:
            doc = json.loads(saved)
            self.last_good_ms = int(doc.get("last_good_ms", 0))
            self.spans = [Span(**s) for s in doc.get("spans", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            _log.error("clock state unreadable, starting without it: %s", exc)
            self.spans = []

    def _persist(self) -> None:
        self._saved_good_ms = self.last_good_ms
        if self._save is None:
            return
        doc = {"v": 1, "last_good_ms": self.last_good_ms,
               "spans": [dataclasses.asdict(s) for s in self.spans]}
        self._save(json.dumps(doc, separators=(",", ":")).encode())
