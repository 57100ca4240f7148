"""Synthetic point generators: pure functions of a tick, no I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import accumulate

from drivers.api import Value


@dataclass
class Generator:
    point: str
    unit: str | None
    kind: str
    phase: float
    state: float

    def sample(self, tick: int, rng: random.Random, decimals: int) -> Value:
        if self.kind == "counter":
            self.state += int(rng.random() * 4)
            return int(self.state)
        if self.kind == "sine":
            return round(230.0 + 10.0 * math.sin(self.phase + tick / 60.0), decimals)
        if self.kind == "walk":
            step = (rng.random() - 0.5) * 0.2
            self.state = min(60.0, max(-30.0, self.state + step))
            return round(self.state, decimals)
        if self.kind == "light":
            return int(self.state)
        if rng.random() < 0.01:
            self.state = 1.0 - self.state
        return self.state >= 0.5

    def block(self, tick: int, n: int, rng: random.Random, decimals: int) -> list[Value]:
        """Samples for ticks ``tick .. tick + n - 1``, made like :meth:`sample` makes them but a
        column at a time (``rng`` is drawn from in another order, halves round up): the flood
        mode's column."""
        r = rng.random
        if self.kind == "counter":
            counts = list(accumulate([int(r() * 4) for _ in range(n)], initial=int(self.state)))
            self.state = float(counts[-1])
            return list[Value](counts[1:])
        scale = 10.0 ** decimals
        floor = math.floor  # floor(x * scale + 0.5) / scale: round() at a third of its cost
        if self.kind == "sine":
            sin, ph = math.sin, self.phase
            return [floor((230.0 + 10.0 * sin(ph + t / 60.0)) * scale + 0.5) / scale
                    for t in range(tick, tick + n)]
        s = self.state
        out: list[Value] = []
        if self.kind == "light":
            return [int(s)] * n
        if self.kind == "walk":
            for _ in range(n):
                s += (r() - 0.5) * 0.2
                s = 60.0 if s > 60.0 else -30.0 if s < -30.0 else s  # noqa: FURB136 - no calls
                out.append(floor(s * scale + 0.5) / scale)
        else:
            for _ in range(n):
                if r() < 0.01:
                    s = 1.0 - s
                out.append(s >= 0.5)
        self.state = s
        return out


def build(instance: str, devices: int, counts: dict[str, int],
          rng: random.Random) -> list[Generator]:
    units = {"counter": ("energy", "Wh"), "sine": ("voltage", "V"),
             "walk": ("temperature", "Cel"), "switch": ("door_open", None),
             "light": ("light", "%")}
    gens: list[Generator] = []
    for d in range(devices):
        for kind, n in counts.items():
            stem, unit = units[kind]
            for j in range(n):
                name = f"{instance}/dev-{d:03d}/{stem}" + (f"_{j}" if n > 1 else "")
                start = 15.0 + rng.uniform(-5, 5) if kind == "walk" else 0.0
                gens.append(Generator(name, unit, kind, rng.uniform(0, 6.28), start))
    return gens
