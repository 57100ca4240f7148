"""The fleet half of ``streetgate bench --modbus``: many devices of many holding registers.

A simulator process serves ``devices`` units of ``registers`` holding registers each on one
TCP port (values that change every tick, framed by pymodbus as always); this process runs
only the driver, polling every unit each ``interval``, into a sink that counts. The driver's
CPU is this process's CPU time (user + system) over the measured window, so the figures are
the gateway's Modbus path alone: poll, decode, readings, emit.

- ``cpu_us_per_reading``: CPU time over readings emitted in the window;
- ``polls_on_time_pct``: polls over poll ticks due (a tick that passed while the device's
  previous poll was still running is skipped, and counted as not on time);
- ``lost``: readings that a tick should have produced but did not (skipped ticks times the
  points) plus readings of bad quality.
"""

from __future__ import annotations

import asyncio
import operator
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import DriverContext, Quality
from drivers.modbus.driver import ModbusDriver

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from drivers.api import Reading

__all__ = ["bench_fleet", "serve"]

_quality = operator.itemgetter(3)


def serve(devices: int) -> None:
    """Serve the bench's units over TCP until stdin closes (runs in the simulator process)."""
    from drivers.modbus._simstore import SimUnit  # noqa: PLC0415 - simulator process only
    from drivers.modbus.sim import ModbusSimulator  # noqa: PLC0415

    class _Ramp(SimUnit):
        """Every register a ramp that moves each 100 ms: cheap to serve, never constant."""

        def read(self, table: str, address: int, count: int) -> list[int]:  # noqa: ARG002
            tick = int(time.monotonic() * 10) + self.unit
            return [(tick + a) & 0xFFFF for a in range(address, address + count)]

    async def main() -> None:
        sim = ModbusSimulator([_Ramp(u, []) for u in range(1, devices + 1)])
        print(await sim.serve_tcp(), flush=True)  # noqa: T201 - the port, for the parent
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await sim.close()

    asyncio.run(main())


class _Counter:
    def __init__(self) -> None:
        self.readings = 0
        self.bad = 0

    def emit(self, readings: Iterable[Reading]) -> None:
        batch: Sequence[Reading] = readings if isinstance(readings, list) else list(readings)
        self.readings += len(batch)
        self.bad += len(batch) - list(map(_quality, batch)).count(Quality.GOOD)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def _table(port: int, devices: int, registers: int, interval: float,
           in_flight: int) -> dict[str, Any]:
    points = [{"name": f"reg_{i}", "address": i} for i in range(registers)]
    return {"bus": {"kind": "tcp", "host": "127.0.0.1", "port": port,
                    "max_in_flight": in_flight},
            "devices": [{"name": f"dev-{u}", "unit": u, "interval": f"{round(interval * 1000)}ms",
                         "timeout": "1s", "retries": 0, "points": points}
                        for u in range(1, devices + 1)]}


def _counts(driver: ModbusDriver) -> tuple[int, int]:
    devices = driver.health.devices.values()
    return (sum(d.counters.get("polls", 0) for d in devices),
            sum(d.counters.get("skipped", 0) for d in devices))


async def _run(port: int, devices: int, registers: int, interval: float, *, seconds: float,
               in_flight: int) -> dict[str, float]:
    table = _table(port, devices, registers, interval, in_flight)
    driver = ModbusDriver(ModbusDriver.parse_config(table, file="bench", path="bench"),
                          DriverContext.standalone("bench", "modbus"))
    sink = _Counter()
    task = asyncio.create_task(driver.run(sink))
    await asyncio.sleep(max(1.0, 3 * interval))  # connect and settle
    polls0, skipped0 = _counts(driver)
    readings0, bad0 = sink.readings, sink.bad
    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - start
    polls1, skipped1 = _counts(driver)
    readings, bad = sink.readings - readings0, sink.bad - bad0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    polls, skipped = polls1 - polls0, skipped1 - skipped0
    return {"devices": float(devices), "registers": float(registers),
            "interval_s": interval, "seconds": round(elapsed, 2),
            "cpu_us_per_reading": round(1e6 * cpu / max(readings, 1), 2),
            "cpu_pct": round(100 * cpu / elapsed, 1),
            "readings_per_s": round(readings / elapsed),
            "target_readings_per_s": round(devices * registers / interval),
            "polls_on_time_pct": round(100 * polls / max(polls + skipped, 1), 2),
            "lost": float(skipped * registers + bad)}


def bench_fleet(devices: int = 10, registers: int = 100, interval: float = 0.1,
                seconds: float = 2.0, in_flight: int = 1) -> dict[str, float]:
    """Poll ``devices`` x ``registers`` holding registers every ``interval``; see module doc."""
    root = Path(__file__).resolve().parents[2]
    code = f"from drivers.modbus._bench_fleet import serve; serve({devices})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, text=True,  # noqa: S603
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None  # noqa: S101 - set by PIPE above
        port = int(proc.stdout.readline())
        return asyncio.run(_run(port, devices, registers, interval, seconds=seconds,
                                in_flight=in_flight))
    finally:
        proc.communicate(input="", timeout=10)
