"""A serial device unplugged and plugged back: the gateway reports its points UNAVAILABLE
(or TIMEOUT when the port stays but the device falls silent), reopens the port by itself
and delivers good readings again, without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.api import Quality
from hil_tests._bench import Bench
from hil_tests.rig import Bus, Rig

BAD = (Quality.UNAVAILABLE, Quality.TIMEOUT)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_serial_unplug_and_replug(unplug_bus: Bus, up: Bench, rig: Rig,
                                  report: Callable[[str], None]) -> None:
    obs, bus = up.obs, unplug_bus
    assert bus.unplug is not None
    devices = rig.on_bus(bus.instance)
    points = {f"{bus.instance}/{d.name}/{p}" for d in devices for p in d.points}
    timeout = float(rig.recover_timeout)

    def seen(qualities: tuple[Quality, ...], after_ms: int) -> bool:
        return any(s.reading.point in points and s.reading.quality in qualities
                   and s.reading.ts >= after_ms for s in obs.seen)

    start = now_ms()
    obs.wait(lambda: seen((Quality.GOOD,), start), timeout, f"{bus.instance} good before")
    pulled = now_ms()  # before the switch: the gateway may notice within microseconds
    up.unplug(bus, plugged=False)
    try:
        noticed = obs.wait(lambda: seen(BAD, pulled), timeout,
                           f"UNAVAILABLE or TIMEOUT readings from {bus.instance} unplugged")
        time.sleep(max(0.0, float(bus.unplug.time) - noticed))
    finally:
        plugged = now_ms()
        up.unplug(bus, plugged=True)
    back = obs.wait(lambda: seen((Quality.GOOD,), plugged), timeout,
                    f"good readings from {bus.instance} after the replug")
    kinds = sorted({s.reading.quality.name for s in obs.seen if s.reading.point in points
                    and s.reading.quality in BAD and pulled <= s.reading.ts < plugged})
    report(f"unplugged {float(bus.unplug.time):g}s: {'/'.join(kinds)} after {noticed:.1f}s, "
           f"good again {back:.1f}s after the replug")
