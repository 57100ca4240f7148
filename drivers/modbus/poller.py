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
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.api import HealthBoard, Quality, Reading, Sink
from drivers.modbus import codec
from drivers.modbus._errors import Failure, ModbusError, classify
from drivers.modbus.planner import Block, plan

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence

    from drivers.modbus.bus import Bus
    from drivers.modbus.codec import PointSpec
    from drivers.modbus.config import DeviceConfig

__all__ = ["DevicePoller"]


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
        self._plans: dict[tuple[int, ...], list[Block]] = {}
        self.full_plan = self._plan(tuple(range(len(self._schedules))))
        #: Failed polls in a row; at ``dead_after`` the device is backed off.
        self.failed = 0
        self._retry_at: float | None = None

    def point_names(self) -> list[tuple[str, str | None]]:
        return [(self._prefix + p.name, p.unit) for p in self.points]

    def _plan(self, due: tuple[int, ...]) -> list[Block]:
        if due not in self._plans:
            pts = [p for i in due for p in self._schedules[i].points]
            self._plans[due] = plan(pts, max_block=self.dev.max_block, max_gap=self.dev.max_gap)
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
                answered = await self.poll(self.full_plan, sink, probe=True)
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

    async def poll(self, blocks: Sequence[Block], sink: Sink, *, probe: bool = False) -> bool:
        """Read ``blocks`` once and emit a reading for each of their points.

        Returns whether the device answered at all (data or an exception PDU).
        """
        readings: list[Reading] = []
        answered = False
        first: Failure | None = None
        for n, block in enumerate(blocks):
            attempts = 1 if probe and not answered else 1 + self.dev.retries
            values, failure = await self._read(block, attempts)
            ts = sink.now_ms()
            if failure is None:
                answered = True
                readings += self._decoded(block, values or [], ts)
                continue
            first = first or failure
            answered = answered or failure.quality is Quality.EXCEPTION
            if failure.silent and (not answered or failure.quality is Quality.UNAVAILABLE):
                # Nothing answered: the rest of the poll would only wait for timeouts too.
                for rest in blocks[n:]:
                    readings += self._bad(rest, failure, ts)
                break
            readings += self._bad(block, failure, ts)
        sink.emit(readings)
        self.health.count("polls")
        if first is None:
            self.health.success()
        else:
            self.health.failure(first.message, "failed_polls")
        return answered

    async def _read(self, block: Block, attempts: int) -> tuple[
            Sequence[int] | Sequence[bool] | None, Failure | None]:
        failure: Failure | None = None
        for attempt in range(attempts):
            if attempt:
                self.health.count("retries")
            try:
                values = await self.bus.read(self.dev.unit, block.table, block.start,
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

    def _decoded(self, block: Block, values: Sequence[int] | Sequence[bool],
                 ts: int) -> list[Reading]:
        out = []
        for p in block.points:
            offset = p.address - block.start
            value, quality = codec.decode(p, list(values[offset:offset + p.count]))
            if quality is not Quality.GOOD:
                self.health.count("out_of_range")
            out.append(Reading(self._prefix + p.name, ts, value, quality, p.unit))
        return out

    def _bad(self, block: Block, failure: Failure, ts: int) -> list[Reading]:
        return [Reading(self._prefix + p.name, ts, failure.value, failure.quality, p.unit)
                for p in block.points]
