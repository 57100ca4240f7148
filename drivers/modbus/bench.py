"""``streetgate bench --modbus``: poll throughput against the simulator over TCP.

The simulator runs in its own process (as a real gateway's devices would), serving ten
three-phase meters on one TCP port; the driver polls them as fast as the bus allows, first
serialized (one transaction at a time), then pipelined (eight in flight). Transactions per
poll are compared with the planner's optimum and with one request per point.

Then a short fleet run (``_bench_fleet``): ``devices`` units of ``registers`` holding
registers polled every ``interval``, reported as ``fleet_*``: CPU per reading, readings/s,
polls on time, lost. ``streetgate modbus bench`` runs the fleet alone, at any size.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import DriverContext
from drivers.modbus._bench_fleet import bench_fleet
from drivers.modbus.driver import ModbusDriver

if TYPE_CHECKING:
    from collections.abc import Iterable

    from drivers.api import Reading

__all__ = ["bench_modbus"]

DEVICES = 10
PROFILE = "energy-meter-3ph"
_SERVE = ("import asyncio, sys\n"
          "from drivers.modbus.sim import ModbusSimulator, profile_unit\n"
          "async def main():\n"
          f"    units = [profile_unit(u, {PROFILE!r}) for u in range(1, {DEVICES + 1})]\n"
          "    sim = ModbusSimulator(units)\n"
          "    print(await sim.serve_tcp(), flush=True)\n"
          "    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
          "    await sim.close()\n"
          "asyncio.run(main())\n")


class _Counter:
    def __init__(self) -> None:
        self.readings = 0

    def emit(self, readings: Iterable[Reading]) -> None:
        self.readings += sum(1 for _ in readings)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


async def _run(port: int, seconds: float, in_flight: int) -> dict[str, float]:
    table: dict[str, Any] = {
        "bus": {"kind": "tcp", "host": "127.0.0.1", "port": port, "max_in_flight": in_flight},
        "devices": [{"name": f"meter-{u}", "unit": u, "profile": PROFILE, "interval": "10ms",
                     "timeout": "1s", "retries": 0} for u in range(1, DEVICES + 1)],
    }
    driver = ModbusDriver(ModbusDriver.parse_config(table, file="bench", path="bench"),
                          DriverContext.standalone("bench", "modbus"))
    sink = _Counter()
    task = asyncio.create_task(driver.run(sink))
    await asyncio.sleep(min(0.5, seconds / 4))  # connect and settle
    polls0 = _polls(driver)
    tx0 = driver.health.counters.get("transactions", 0)
    readings0, start = sink.readings, time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - start
    polls = _polls(driver) - polls0
    tx = driver.health.counters.get("transactions", 0) - tx0
    readings = sink.readings - readings0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    plan = driver.pollers[0].full_plan
    return {"polls_per_s": polls / elapsed,
            "registers_per_s": polls * sum(b.count for b in plan) / elapsed,
            "readings_per_s": readings / elapsed,
            "transactions_per_poll": tx / max(polls, 1),
            "planned_transactions_per_poll": float(len(plan)),
            "optimum_transactions_per_poll": float(
                driver.health.extra["plan"]["meter-1"]["optimum"]),
            "naive_transactions_per_poll": float(len(driver.pollers[0].points))}


def _polls(driver: ModbusDriver) -> int:
    return sum(d.counters.get("polls", 0) for d in driver.health.devices.values())


def bench_modbus(seconds: float, *, devices: int = 10, registers: int = 100,
                 interval: float = 0.1) -> dict[str, float]:
    """Polls and registers per second over TCP, serialized and pipelined, then a short fleet
    run; see module doc."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", _SERVE], cwd=root, text=True,  # noqa: S603
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None  # noqa: S101 - set by PIPE above
        port = int(proc.stdout.readline())
        serial = asyncio.run(_run(port, seconds / 2, 1))
        pipelined = asyncio.run(_run(port, seconds / 2, 8))
    finally:
        proc.communicate(input="", timeout=10)
    fleet = bench_fleet(devices, registers, interval, max(1.0, seconds / 2))
    return {"devices": float(DEVICES), **serial,
            "pipelined_polls_per_s": pipelined["polls_per_s"],
            "pipelined_registers_per_s": pipelined["registers_per_s"],
            "pipelined_transactions_per_poll": pipelined["transactions_per_poll"],
            **{f"fleet_{k}": v for k, v in fleet.items()}}
