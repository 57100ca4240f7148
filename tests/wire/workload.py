"""Demo-like readings from the sim driver's own generators, as buffer rows."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from drivers.sim import generators

if TYPE_CHECKING:
    from buffer.types import Row

GATEWAY_ID = "cab-0042"


def demo_rows(points: int, readings: int, *, seed: int = 7, jitter_ms: int = 3,
              first_seq: int = 1) -> list[Row]:
    """``points`` sim points (counter, sine, walk, switch per device) sampled in lockstep at 1 Hz.

    Each tick shares one wall-clock timestamp that wanders by up to ``jitter_ms``, as
    ``SimDriver`` in realtime mode stamps a tick with ``sink.now_ms()``.
    """
    rng = random.Random(seed)
    counts = {"counter": 1, "sine": 1, "walk": 1, "switch": 1}
    gens = generators.build("sim-1", math.ceil(points / 4), counts, rng)[:points]
    rows: list[Row] = []
    seq, ts, tick = first_seq, 1_733_000_000_000, 0
    while len(rows) < readings:
        ts += 1000 + rng.randint(-jitter_ms, jitter_ms)
        for g in gens:
            rows.append((seq, g.point, g.unit, ts, g.sample(tick, rng, 2), 0))
            seq += 1
        tick += 1
    return rows[:readings]
