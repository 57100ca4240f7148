"""Delivery: every device's points reach a verifying subscriber end to end, often enough and
within their ranges; every batch on the wire is authentic and nothing is missing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from drivers.api import Quality, Reading
from hil_tests._bench import Bench
from hil_tests.rig import Device, Rig


@dataclass
class Window:
    """The readings whose timestamps fall inside one measuring window."""

    start_ms: int
    end_ms: int
    readings: dict[str, list[Reading]] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def _points(rig: Rig) -> set[str]:
    return {f"{d.bus}/{d.name}/{p}" for d in rig.devices for p in d.points}


@pytest.fixture(scope="module")
def window(bench: Bench, rig: Rig) -> Window:
    """Wait until every point has arrived once, then measure one window for all devices."""
    bench.ensure_up()
    obs = bench.obs
    wanted = _points(rig)

    def all_good() -> bool:
        return wanted <= {s.reading.point for s in obs.seen if s.reading.quality == Quality.GOOD}

    with contextlib.suppress(AssertionError):  # each device's test says what is missing
        obs.wait(all_good, float(rig.recover_timeout), "every point")
    start = time.time_ns() // 1_000_000
    time.sleep(float(rig.delivery_window))
    end = time.time_ns() // 1_000_000
    with contextlib.suppress(AssertionError):
        obs.wait(lambda: any(s.reading.ts >= end for s in obs.seen), 10.0, "the window's end")
    win = Window(start, end)
    for s in obs.seen:
        if start <= s.reading.ts < end and s.reading.point in wanted:
            win.readings.setdefault(s.reading.point, []).append(s.reading)
    return win


def _last_quality(bench: Bench, point: str) -> str:
    seen = bench.obs.of(point)
    return seen[-1].quality.name if seen else "nothing at all"


def test_delivery(device: Device, window: Window, bench: Bench,
                  report: Callable[[str], None]) -> None:
    problems, rates = [], []
    for name in device.points:
        point = f"{device.bus}/{device.name}/{name}"
        good = [r for r in window.readings.get(point, []) if r.quality == Quality.GOOD]
        if not good:
            problems.append(f"{name}: no good reading (last: {_last_quality(bench, point)})")
            continue
        rate = len(good) / window.seconds
        rates.append(rate)
        if rate < device.min_rate:
            problems.append(f"{name}: {rate:.2f} readings/s, needs {device.min_rate:g}")
        if name in device.ranges:
            lo, hi = device.ranges[name]
            out = [r.value for r in good if not isinstance(r.value, (int, float))
                   or not lo <= r.value <= hi]
            if out:
                problems.append(f"{name}: {out[0]!r} {good[0].unit or ''} outside "
                                f"[{lo:g}, {hi:g}]".replace("  ", " "))
    assert not problems, "; ".join(problems)
    ranged = f", {len(device.ranges)} in range" if device.ranges else ""
    spread = f"{min(rates):.1f}" if f"{min(rates):.1f}" == f"{max(rates):.1f}" else \
        f"{min(rates):.1f}-{max(rates):.1f}"
    report(f"{len(device.points)} points, {spread} readings/s each (min {device.min_rate:g})"
           f"{ranged}")


def test_every_batch_verifies(bench: Bench, window: Window,
                              report: Callable[[str], None]) -> None:
    obs = bench.obs
    obs.wait(lambda: not obs.missing(), 10.0, "a sequence without holes")
    assert not obs.rejected, f"{len(obs.rejected)} batches rejected, first: {obs.rejected[0]}"
    seqs = [s.seq for s in obs.seen]
    assert len(seqs) == len(set(seqs)), "a reading was passed on twice"
    report(f"{obs.verifier.stats['batches']} signed batches, {len(seqs)} readings, "
           "none rejected, no holes, no duplicates")
