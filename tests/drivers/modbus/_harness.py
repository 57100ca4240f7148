"""Running the Modbus driver against its simulator in tests: a recording sink and helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from drivers.api import DriverContext, Reading
from drivers.modbus import ModbusDriver
from drivers.modbus.sim import ModbusSimulator, SimUnit
from drivers.modbus.sim import running as sim_running

#: Device settings that keep tests fast.
FAST: dict[str, Any] = {"interval": "50ms", "timeout": "150ms", "retries": 0}


class Recorder:
    """A Sink that keeps everything (emit never blocks)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.emits = 0

    def emit(self, readings: Iterable[Reading]) -> None:
        self.readings.extend(readings)
        self.emits += 1

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def of(self, point: str) -> list[Reading]:
        return [r for r in self.readings if r.point == point]

    def first(self) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        for r in self.readings:
            out.setdefault(r.point, r)
        return out

    def last(self) -> dict[str, Reading]:
        return {r.point: r for r in self.readings}


def make_driver(table: dict[str, Any], instance: str = "t") -> ModbusDriver:
    cfg = ModbusDriver.parse_config(table, file="test.toml", path="drivers.modbus[0]")
    return ModbusDriver(cfg, DriverContext.standalone(instance, "modbus"))


def bus_table(sim: ModbusSimulator, **extra: Any) -> dict[str, Any]:
    """The bus table pointing at a running simulator (TCP or its pty)."""
    if sim.path:
        # A pty refuses parity settings; the baud rate only sizes the timeouts.
        return {"kind": "rtu", "port": sim.path, "baud": 115200, "parity": "N", **extra}
    return {"kind": "tcp", "host": "127.0.0.1", "port": sim.port, "connect_timeout": "500ms",
            **extra}


def simulated(units: Iterable[SimUnit], transport: str,
              seed: int | None = 1) -> contextlib.AbstractAsyncContextManager[ModbusSimulator]:
    return sim_running(units, tcp=transport == "tcp", seed=seed)


@contextlib.asynccontextmanager
async def running(driver: ModbusDriver, sink: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    """The driver's run() as a task, cancelled (and checked) on exit."""
    task = asyncio.create_task(driver.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 2.0)


async def wait_until(task: asyncio.Task[None], sink: Recorder, until: Callable[[], bool],
                     timeout: float = 5.0) -> None:
    """Poll ``until`` while the driver runs; fail with a summary on timeout."""
    deadline = time.monotonic() + timeout
    while not until():
        if task.done():
            task.result()
            raise AssertionError("driver stopped by itself")
        if time.monotonic() > deadline:
            seen = sorted({(r.point, r.quality.name) for r in sink.readings})[:20]
            raise AssertionError(f"condition not met in {timeout}s; seen {seen}")
        await asyncio.sleep(0.01)
