"""Writes to a Modbus device: a holding register and a coil are written through the driver's
write path on the line the gateway polls, read back by the driver, then seen by the platform in
the gateway's own readings; the values from before are written back at the end.

Until commands reach the gateway from the platform, the suite writes with the driver itself, so
the gateway lets go of the line meanwhile (one master per RS-485 line): its daemon is stopped
for the write and started again after it. A rig whose gateway runs on a remote board skips this.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import pytest

from drivers.api import DriverContext, Quality, Value
from drivers.modbus import ModbusDriver
from hil_tests._bench import Bench
from hil_tests.rig import Device, Rig


def _other(value: Value) -> Value:
    """A value different from ``value`` that any coil or dimming register takes."""
    if isinstance(value, bool):
        return not value
    return 38 if value == 37 else 37


def _write(bench: Bench, dev: Device, values: Mapping[str, Value]) -> dict[str, Value]:
    """Write ``values`` with the gateway stopped; return what the driver read back."""
    driver = ModbusDriver(bench.drivers[dev.bus].config,
                          DriverContext.standalone(dev.bus, "modbus"))

    async def write_all() -> dict[str, Value]:
        try:
            return {point: await driver.write(point, value) for point, value in values.items()}
        finally:
            driver.bus.close()

    bench.daemon.stop()
    try:
        return asyncio.run(write_all())
    finally:
        bench.ensure_up()


def test_modbus_write_and_read_back(write_device: Device, up: Bench, rig: Rig,
                                    report: Callable[[str], None]) -> None:
    if rig.remote:
        pytest.skip("the gateway on the board owns its line; writes reach it as commands")
    obs, dev = up.obs, write_device
    points = [f"{dev.bus}/{dev.name}/{p}" for p in dev.write]
    timeout = float(rig.recover_timeout)

    def latest(point: str, since: float) -> Value:
        good = [r for r in obs.of(point, since) if r.quality is Quality.GOOD]
        return good[-1].value if good else None

    start = time.monotonic()
    obs.wait(lambda: all(latest(p, start) is not None for p in points), timeout,
             f"good readings of {', '.join(dev.write)} before writing")
    before = {p: latest(p, start) for p in points}
    wanted = {p: _other(v) for p, v in before.items()}
    try:
        assert _write(up, dev, wanted) == wanted
        restarted = time.monotonic()
        seen = obs.wait(lambda: all(latest(p, restarted) == wanted[p] for p in points),
                        timeout, f"the written values of {', '.join(dev.write)} in the "
                                 "gateway's readings")
    finally:
        restored = _write(up, dev, before)
    assert restored == before
    shown = ", ".join(f"{p.rsplit('/', 1)[1]} {before[p]!r} -> {wanted[p]!r}" for p in points)
    report(f"wrote {shown}: read back, and in the gateway's readings {seen:.1f}s after it "
           "restarted; restored")
