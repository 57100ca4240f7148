"""One device's poll loop: schedules, retries, dead-device backoff, readings.

Each distinct point interval is a schedule; the schedules due together are read with one
plan. A failed request is retried (timeouts, CRC and framing errors only) up to
``retries`` times; when the first requests of a poll get no answer at all, the rest of the
poll is not tried and all its points get the same bad quality, so a dead device costs the
bus one timeout per attempt. After ``dead_after`` failed polls in a row the device is
backed off (interval doubling, capped at ``backoff_max``), each attempt still emitting
bad-quality readings for every point so the gap is visible; the first answer puts it back
on its normal schedule.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.api import HealthBoard, Quality, Reading, Sink
from drivers.modbus._errors import Failure, ModbusError, classify
from drivers.modbus.decoders import BlockDecoder
from drivers.modbus.planner import Block, plan

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence

    from drivers.modbus.bus import Bus
    from drivers.modbus.codec import PointSpec
    from drivers.modbus.config import DeviceConfig

__all__ = ["DevicePoller"]

#: ``Reading`` from a 5-tuple in C: ``Reading(...)`` is a Python-level ``__new__``.
_reading = functools.partial(tuple.__new__, Reading)
_GOOD = Quality.GOOD


class _Step:
    """A block of a plan, with what its readings need, worked out once."""

    __slots__ = ("block", "decoder", "names", "units")

    def __init__(self, block: Block, prefix: str) -> None:
        self.block = block
        self.decoder = BlockDecoder(block.table, block.start, block.points)
        self.names = [prefix + p.name for p in block.points]
        self.units = [p.unit for p in block.points]


@dataclass
class _Schedule:
    interval: float
    points: list[PointSpec]
    due: float = 0.0


class DevicePoller:
    """Polls one unit on its bus until cancelled."""

    def __init__(self, instance: str, dev: DeviceConfig, points: list[PointSpec], *, bus: Bus,
                 health: HealthBoard, log: logging.Logger) -> None:
        self.dev = dev
        self.points = points
        self.bus = bus
        self._prefix = f"{instance}/{dev.name}/"
        self._board = health
        self.health = health.device(dev.name)
        self._log = log
        groups: dict[float, list[PointSpec]] = {}
        for p in points:
            groups.setdefault(p.interval or float(dev.interval), []).append(p)
        self._schedules = [_Schedule(k, v) for k, v in sorted(groups.items())]
        self._plans: dict[tuple[int, ...], list[_Step]] = {}
        self._full = self._plan(tuple(range(len(self._schedules))))
        self.full_plan = [step.block for step in self._full]
        #: Failed polls in a row; at ``dead_after`` the device is backed off.
        self.failed = 0
        self._retry_at: float | None = None

    def point_names(self) -> list[tuple[str, str | None]]:
        return [(self._prefix + p.name, p.unit) for p in self.points]

    def _plan(self, due: tuple[int, ...]) -> list[_Step]:
        if due not in self._plans:
            pts = [p for i in due for p in self._schedules[i].points]
            blocks = plan(pts, max_block=self.dev.max_block, max_gap=self.dev.max_gap)
            self._plans[due] = [_Step(b, self._prefix) for b in blocks]
        return self._plans[due]

    async def run(self, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        # Spread the devices of one bus a little so they do not all start at once.
        start = loop.time() + random.uniform(0, min(float(self.dev.interval), 1.0) / 4)
        for s in self._schedules:
            s.due = start
        while True:
            wake = self._retry_at if self._retry_at is not None \
                else min(s.due for s in self._schedules)
            delay = wake - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._retry_at is not None:
                answered = await self.poll(self._full, sink, probe=True)
            else:
                due = tuple(i for i, s in enumerate(self._schedules) if s.due <= loop.time())
                if not due:
                    continue
                answered = await self.poll(self._plan(due), sink)
                self._advance(due, loop.time())
            self._settle(answered, loop.time())

    def _advance(self, due: tuple[int, ...], now: float) -> None:
        for i in due:
            s = self._schedules[i]
            s.due += s.interval
            if s.due <= now:
                missed = int((now - s.due) // s.interval) + 1
                self.health.count("skipped", missed)
                s.due += missed * s.interval

    def _settle(self, answered: bool, now: float) -> None:
        """Track failed polls; back the device off or put it back on schedule."""
        backoffs = self._board.extra.setdefault("backed_off", {})
        if answered:
            if self._retry_at is not None:
                self._retry_at = None
                backoffs.pop(self.dev.name, None)
                for s in self._schedules:
                    s.due = now
            self.failed = 0
            return
        self.failed += 1
        if self.failed < self.dev.dead_after:
            return
        level = self.failed - self.dev.dead_after + 1
        delay = min(float(self.dev.interval) * 2 ** min(level, 30), float(self.dev.backoff_max))
        if self._retry_at is None:
            self._log.info("device %s silent for %d polls; trying every %.1fs at most",
                           self.dev.name, self.failed, float(self.dev.backoff_max))
            self.health.count("backoffs")
        self._retry_at = now + delay
        backoffs[self.dev.name] = round(delay, 3)

    async def poll(self, steps: Sequence[_Step], sink: Sink, *, probe: bool = False) -> bool:
        """Read the blocks of ``steps`` once and emit a reading for each of their points.

        Returns whether the device answered at all (data or an exception PDU).
        """
        readings: list[Reading] = []
        answered = False
        first: Failure | None = None
        for n, step in enumerate(steps):
            attempts = 1 if probe and not answered else 1 + self.dev.retries
            data, failure = await self._read(step.block, attempts)
            ts = sink.now_ms()
            if failure is None and data is not None:
                answered = True
                readings += self._decoded(step, data, ts)
                continue
            assert failure is not None  # noqa: S101 - _read returns data or a failure
            first = first or failure
            answered = answered or failure.quality is Quality.EXCEPTION
            if failure.silent and (not answered or failure.quality is Quality.UNAVAILABLE):
                # Nothing answered: the rest of the poll would only wait for timeouts too.
                for rest in steps[n:]:
                    readings += self._bad(rest, failure, ts)
                break
            readings += self._bad(step, failure, ts)
        sink.emit(readings)
        self.health.count("polls")
        if first is None:
            self.health.success()
        else:
            self.health.failure(first.message, "failed_polls")
        return answered

    async def _read(self, block: Block, attempts: int) -> tuple[
            bytes | Sequence[bool] | None, Failure | None]:
        failure: Failure | None = None
        for attempt in range(attempts):
            if attempt:
                self.health.count("retries")
            try:
                values = await self.bus.read_block(self.dev.unit, block.table, block.start,
                                                   block.count, float(self.dev.timeout))
            except ModbusError as exc:
                failure = classify(exc)
                self.health.count(failure.counter)
                self._log.debug("device %s %s %d+%d: %s", self.dev.name, block.table,
                                block.start, block.count, failure.message)
                if not failure.retryable:
                    break
            else:
                return values, None
        return None, failure

    def _decoded(self, step: _Step, data: bytes | Sequence[bool], ts: int) -> list[Reading]:
        values, qualities = step.decoder.decode(data)
        if qualities is None:
            return list(map(_reading, zip(step.names, itertools.repeat(ts), values,
                                          itertools.repeat(_GOOD), step.units)))
        self.health.count("out_of_range", sum(q is not _GOOD for q in qualities))
        return list(map(_reading, zip(step.names, itertools.repeat(ts), values, qualities,
                                      step.units)))

    def _bad(self, step: _Step, failure: Failure, ts: int) -> list[Reading]:
        return list(map(_reading, zip(step.names, itertools.repeat(ts),
                                      itertools.repeat(failure.value),
                                      itertools.repeat(failure.quality), step.units)))
