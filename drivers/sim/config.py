"""Schema of the ``sim`` driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.api import Duration, option


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    devices: int = option(4, doc="simulated devices", minimum=1, maximum=100_000)
    counters: int = option(1, doc="energy counters (Wh, integer) per device", minimum=0)
    sines: int = option(1, doc="voltage waves (V, 2 decimals) per device", minimum=0)
    walks: int = option(1, doc="temperature random walks (Cel) per device", minimum=0)
    switches: int = option(1, doc="door contacts (bool) per device", minimum=0)
    lights: int = option(0, doc="dimmable street lights per device: level 0-100, writable",
                         minimum=0)
    interval: Duration = option(Duration(1.0), doc="time between samples", minimum=0.001)
    decimals: int = option(2, doc="resolution of float points", minimum=0, maximum=9)
    mode: Literal["realtime", "flood"] = option(
        "realtime", doc="flood: emit as fast as the loop allows, timestamps spaced by interval")
    max_readings: int = option(0, doc="stop after this many readings (0: never)", minimum=0)
    seed: int | None = option(None, doc="random seed for repeatable runs")

    def validate(self) -> list[tuple[str, str]]:
        if self.counters + self.sines + self.walks + self.switches + self.lights == 0:
            return [("", "expected at least one point per device; got 0")]
        return []
