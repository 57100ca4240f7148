"""The ``sim`` driver: synthetic devices for the demo, the bench and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from itertools import repeat
from pathlib import Path
from typing import Any

from drivers.api import (
    Driver,
    DriverContext,
    Poller,
    Quality,
    Reading,
    SimulatedSetup,
    Sink,
    Value,
    WriteError,
)
from drivers.sim import generators
from drivers.sim.config import SimConfig

#: Pause flooding while this many readings wait for the buffer's group commit.
_FLOOD_BACKLOG = 10_000
#: Readings the flood mode makes at a time (whole ticks of every point).
_FLOOD_BLOCK = 4096


class SimDriver(Driver[SimConfig]):
    """Counters, sine waves, random walks and switches on N simulated devices."""

    name = "sim"
    config_schema = SimConfig
    simulator = "drivers.sim.driver"

    def __init__(self, config: SimConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self._rng = random.Random(config.seed)
        counts = {"counter": config.counters, "sine": config.sines,
                  "walk": config.walks, "switch": config.switches, "light": config.lights}
        self._gens = generators.build(context.instance, config.devices, counts, self._rng)
        self.emitted = 0
        self.writes = 0

    def points(self) -> Iterable[tuple[str, str | None]]:
        return [(g.point, g.unit) for g in self._gens]

    def writable_points(self) -> Iterable[str]:
        return [g.point for g in self._gens if g.kind == "light"]

    async def write(self, point: str, value: Value) -> Value:
        """Set a light's level (0-100; True/False are 100/0); it reports the new level from
        its next sample on."""
        gen = next((g for g in self._gens if g.point == point and g.kind == "light"), None)
        if gen is None:
            raise WriteError("not-writable", f"{point} is not a simulated light")
        level = (100 if value else 0) if isinstance(value, bool) else value
        if not isinstance(level, int) or not 0 <= level <= 100:
            raise WriteError("bad-value", f"{value!r}: a light takes a level 0-100 or a bool")
        gen.state = float(level)
        self.writes += 1
        self.log.info("%s set to %d", point, level)
        return int(gen.state)

    def _tick(self, tick: int, ts: int) -> list[Reading]:
        dec = self.config.decimals
        rng, good = self._rng, Quality.GOOD
        return [Reading(g.point, ts, g.sample(tick, rng, dec), good, g.unit) for g in self._gens]

    def _flood(self, tick: int, n: int, ts0: int, step_ms: int) -> list[Reading]:
        """Ticks ``tick .. tick + n - 1`` of every point, tick by tick, built column-wise: the
        flood mode is the bench's device, and a device should not cost its gateway's CPU."""
        dec, rng, gens = self.config.decimals, self._rng, self._gens
        cols = [g.block(tick, n, rng, dec) for g in gens]
        points, units = [g.point for g in gens], [g.unit for g in gens]
        new, good = tuple.__new__, Quality.GOOD
        out: list[Reading] = []
        for k, values in enumerate(zip(*cols, strict=True)):
            ts = ts0 + (tick + k) * step_ms
            out += map(new, repeat(Reading),
                       zip(points, repeat(ts), values, repeat(good), units, strict=False))
        return out

    async def run(self, sink: Sink) -> None:
        limit = self.config.max_readings or None
        step_ms = max(1, round(self.config.interval * 1000))
        health = self.health.device("sim")
        tick = 0
        if self.config.mode == "flood":
            ts0 = sink.now_ms()
            backlog = getattr(sink, "backlog", lambda: 0)  # sinks written before backlog()
            ticks = max(1, _FLOOD_BLOCK // len(self._gens))
            while limit is None or self.emitted < limit:
                if backlog() > _FLOOD_BACKLOG:
                    await asyncio.sleep(0.002)
                    continue
                batch = self._flood(tick, ticks, ts0, step_ms)
                if limit is not None:
                    batch = batch[: limit - self.emitted]
                sink.emit(batch)
                self.emitted += len(batch)
                tick += ticks
                await asyncio.sleep(0)
            health.success()
            return
        async for _due in Poller(self.config.interval):
            batch = self._tick(tick, sink.now_ms())
            if limit is not None:
                batch = batch[: limit - self.emitted]
            sink.emit(batch)
            self.emitted += len(batch)
            health.success()
            tick += 1
            if limit is not None and self.emitted >= limit:
                return

    @classmethod
    @contextlib.asynccontextmanager
    async def simulate(cls, workdir: Path) -> AsyncIterator[SimulatedSetup]:  # noqa: ARG003
        yield _InProcess()


class _InProcess:
    """The sim driver is its own device: nothing to stop or corrupt."""

    config: Mapping[str, Any]
    writes: Mapping[str, Any]

    def __init__(self) -> None:
        self.config = {"devices": 2, "interval": "50ms", "lights": 1}
        self.writes = {"dev-001/light": 40}

    async def stop(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def inject_malformed(self) -> None:
        return None

    async def heal(self) -> None:
        return None

    async def close(self) -> None:
        return None
