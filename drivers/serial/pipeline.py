"""Bytes in, readings out: framing, dispatch, decoding and counting, with no I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from drivers.api import DeviceHealth, HealthBoard, Quality, Reading
from drivers.serial._model import DecodeError, Decoder, Field
from drivers.serial.config import DeviceConfig, SerialConfig
from drivers.serial.decoders import make_decoder
from drivers.serial.framing import Framer, FramerStats, make_framer

__all__ = ["DeviceRuntime", "Pipeline"]

_log = logging.getLogger("streetgate.driver.serial")
#: FramerStats field -> health board counter.
_COUNTERS = {"frames": "frames", "garbage_bytes": "garbage_bytes",
             "oversized": "oversized_frames", "partial_dropped": "partial_frames",
             "rejected": "rejected_frames"}


class DeviceRuntime:
    """One configured device: its decoder, the points it has shown, and its health."""

    def __init__(self, cfg: DeviceConfig, decoder: Decoder, instance: str,
                 health: DeviceHealth) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.decoder = decoder
        self.health = health
        self.prefix = f"{instance}/{cfg.name}/"
        self.known: dict[str, str | None] = dict(decoder.points())
        self.last_good: float | None = None
        self.silence_reported: float | None = None

    def points(self) -> list[tuple[str, str | None]]:
        return [(self.prefix + name, unit) for name, unit in self.known.items()]

    def readings(self, fields: Iterable[Field], ts: int) -> list[Reading]:
        out = []
        for f in fields:
            self.known.setdefault(f.name, f.unit)
            out.append(Reading(self.prefix + f.name, ts, f.value, f.quality, f.unit))
        return out

    def bad(self, quality: Quality, ts: int) -> list[Reading]:
        """One bad-quality reading per known point, so the gap shows upstream."""
        return [Reading(self.prefix + n, ts, None, quality, u) for n, u in self.known.items()]

    def decode(self, frame: bytes, ts: int, now: float) -> list[Reading]:
        """Readings of a frame; counts and re-raises :class:`DecodeError`."""
        try:
            fields = self.decoder.decode(frame)
        except DecodeError as exc:
            self.health.count(exc.counter)
            self.health.last_error = f"{exc} in {frame[:48]!r}"
            _log.debug("%s: %s in %r", self.name, exc, frame[:48])
            raise
        if not fields:
            self.health.count("ignored")
            return []
        bad = sum(f.quality != Quality.GOOD for f in fields)
        if bad:
            self.health.count("bad_values", bad)
        self.health.success()
        self.last_good = now
        self.silence_reported = None
        return self.readings(fields, ts)

    def answer(self, frame: bytes | None, ts: int, now: float) -> list[Reading]:
        """Readings for one query: decoded, or bad quality for every point."""
        if frame is None:
            timeout = self.cfg.query.timeout if self.cfg.query else 0.0
            self.health.failure(f"no answer within {timeout}", "timeout")
            return self.bad(Quality.TIMEOUT, ts)
        try:
            return self.decode(frame, ts, now)
        except DecodeError as exc:
            self.health.failure(f"bad answer: {exc}", "failed_answers")
            return self.bad(exc.quality, ts)


class Pipeline:
    """One port's framer and devices; the driver feeds it bytes and forwards readings."""

    def __init__(self, config: SerialConfig, instance: str, health: HealthBoard) -> None:
        self.framer: Framer = make_framer(config.framing)
        self.devices = [DeviceRuntime(d, make_decoder(d.decoder, config.framing), instance,
                                      health.device(d.name)) for d in config.devices]
        streaming = [d for d in self.devices if d.cfg.query is None]
        self.stream = streaming[0] if streaming else None
        self.health = health
        self._idle_reset = config.framing.idle_reset
        self._last_rx: float | None = None
        self._answer: Callable[[bytes], bool] | None = None
        self._seen = FramerStats()

    def points(self) -> list[tuple[str, str | None]]:
        return [p for d in self.devices for p in d.points()]

    def expect(self, take: Callable[[bytes], bool] | None, *, reset: bool = True) -> None:
        """Offer the next frames to ``take`` (a pending query or write) until called with None.

        ``take`` returns whether the frame was its answer; a streaming device's frames it
        does not take are decoded as usual. ``reset=False`` keeps a frame being received.
        """
        if take is not None and reset:
            self.framer.reset()  # bytes from before the query are not its answer
            self._sync_counters()
        self._answer = take

    def feed(self, chunk: bytes, ts: int, now: float) -> list[Reading]:
        """Readings of the frames ``chunk`` completes (``now``: monotonic seconds)."""
        if self._idle_reset and self._last_rx is not None and \
                now - self._last_rx > self._idle_reset:
            self.framer.reset()
        self._last_rx = now
        self.framer.push(chunk)
        out: list[Reading] = []
        while (frame := self.framer.pop()) is not None:
            out += self._frame(frame, ts, now)
        self._sync_counters()
        return out

    def lost(self, ts: int) -> list[Reading]:
        """The port went away: drop the partial frame, mark every point unavailable."""
        self.framer.reset()
        self._sync_counters()
        out: list[Reading] = []
        for dev in self.devices:
            dev.health.failure("port unavailable", "unavailable")
            out += dev.bad(Quality.UNAVAILABLE, ts)
        return out

    def _frame(self, frame: bytes, ts: int, now: float) -> list[Reading]:
        taken = self._answer is not None and self._answer(frame)
        if self.stream is None:
            if not taken:
                self.health.count("unsolicited_frames")
            return []
        if taken:
            return []
        try:
            return self.stream.decode(frame, ts, now)
        except DecodeError:
            self.framer.reject()  # fixed/length framers rescan: the sync may have been false
            return []

    def _sync_counters(self) -> None:
        now = self.framer.stats
        for attr, counter in _COUNTERS.items():
            delta = getattr(now, attr) - getattr(self._seen, attr)
            if delta:
                self.health.count(counter, delta)
                setattr(self._seen, attr, getattr(now, attr))
