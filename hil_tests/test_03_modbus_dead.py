"""A Modbus device dead, then back: while it does not answer its points arrive as TIMEOUT
readings (the gap is visible to the platform) and its neighbours on the line keep delivering;
when it answers again its readings are good again, without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.api import Quality
from hil_tests._bench import Bench
from hil_tests.rig import Device, Rig


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_modbus_device_dead_then_back(dead_device: Device, up: Bench, rig: Rig,
                                      report: Callable[[str], None]) -> None:
    obs, dev = up.obs, dead_device
    bus = rig.bus(dev.bus)
    assert dev.dead is not None
    mine = {f"{dev.bus}/{dev.name}/{p}" for p in dev.points}
    others = {f"{d.bus}/{d.name}/{p}" for d in rig.on_bus(dev.bus) if d is not dev
              for p in d.points}
    timeout = float(rig.recover_timeout)

    def seen(points: set[str], quality: Quality, after_ms: int) -> bool:
        return any(s.reading.point in points and s.reading.quality == quality
                   and s.reading.ts >= after_ms for s in obs.seen)

    start = now_ms()
    obs.wait(lambda: seen(mine, Quality.GOOD, start), timeout, f"{dev.name} good before")
    killed = now_ms()  # before the switch: the gateway may notice within microseconds
    up.dead(bus, dev, dead=True)
    try:
        noticed = obs.wait(lambda: seen(mine, Quality.TIMEOUT, killed), timeout,
                           f"TIMEOUT readings from {dev.name} while it is dead")
        if others:  # still dead: good readings of the others must keep coming meanwhile
            obs.wait(lambda: seen(others, Quality.GOOD, killed), float(dev.dead.time) + 5,
                     f"good readings from the other devices on {dev.bus} while {dev.name} "
                     "is dead")
        time.sleep(max(0.0, float(dev.dead.time) - (now_ms() - killed) / 1000))
    finally:
        revived = now_ms()
        up.dead(bus, dev, dead=False)
    back = obs.wait(lambda: seen(mine, Quality.GOOD, revived), timeout,
                    f"good readings from {dev.name} after it answers again")
    neighbours = f", {len(rig.on_bus(dev.bus)) - 1} neighbour(s) kept delivering" if others \
        else ""
    report(f"dead {float(dev.dead.time):g}s: TIMEOUT readings after {noticed:.1f}s"
           f"{neighbours}, good again {back:.1f}s after it answered")
