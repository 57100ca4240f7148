"""The driver contract, through ``ModbusDriver.simulate`` as the contract suite uses it."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from drivers.api import Quality
from drivers.modbus import ModbusDriver
from drivers.registry import load_registry

from ._harness import Recorder, make_driver, running, wait_until

SENML = {"V", "A", "W", "VA", "Wh", "Hz", "Cel", "%RH", "%", "/", "lx", "s"}


def test_registered_under_its_name() -> None:
    assert load_registry().get("modbus") is ModbusDriver
    assert ModbusDriver.simulator == "drivers.modbus.sim"


def test_contract(tmp_path: Path) -> None:
    async def main() -> tuple[Recorder, float, set[str]]:
        async with ModbusDriver.simulate(tmp_path) as setup:
            driver = make_driver(dict(setup.config), instance="cab-1")
            names = {name for name, _unit in driver.points()}
            sink = Recorder()

            def latest(quality: Quality) -> bool:
                last = sink.last()
                return len(last) == len(names) and all(
                    r.quality is quality for r in last.values())

            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: latest(Quality.GOOD))
                await setup.inject_malformed()
                await wait_until(task, sink, lambda: latest(Quality.MALFORMED))
                await setup.heal()
                await wait_until(task, sink, lambda: latest(Quality.GOOD))
                await setup.stop()
                await wait_until(task, sink, lambda: not any(
                    r.quality is Quality.GOOD for r in sink.last().values()))
                await setup.start()
                await wait_until(task, sink, lambda: latest(Quality.GOOD), timeout=5.0)
                start = time.monotonic()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                stopped = time.monotonic() - start
            return sink, stopped, names

    sink, stopped, names = asyncio.run(main())
    assert stopped < 2.0
    assert {r.point for r in sink.readings} == names
    for r in sink.readings:
        assert re.fullmatch(r"cab-1/(meter-1|io-1)/[a-z0-9_]+", r.point), r.point
        assert r.unit is None or r.unit in SENML, r
        assert (r.value is None) == (r.quality is not Quality.GOOD), r
