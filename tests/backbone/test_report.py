"""Report by exception: readings held back within a deadband are accounted for upstream as
"unchanged" (batch key 13), quality changes and heartbeats always go, nothing else is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from drivers.api import Quality, Reading
from gateway.broker import Mosquitto
from gateway.config import ReportRule
from gateway.report import ReportFilter
from tests.helpers.e2e import running_gateway


def _r(ts: int, value: Any, quality: Quality = Quality.GOOD, point: str = "b/m/v") -> Reading:
    return Reading(point, ts, value, quality, "V")


def _rule(**kw: Any) -> ReportRule:
    return ReportRule(points=kw.pop("points", "b/*"), **kw)


def test_deadband_heartbeat_quality_and_min_interval() -> None:
    f = ReportFilter([_rule(deadband=0.5, max_silence=10.0, min_interval=1.0)])
    sent = f.filter([_r(0, 230.0), _r(1000, 230.4), _r(2000, 230.6), _r(2500, 240.0),
                     _r(3000, 230.6), _r(4000, None, Quality.TIMEOUT), _r(5000, None,
                                                                          Quality.TIMEOUT),
                     _r(6000, 230.6), _r(16_000, 230.6), _r(16_500, 230.6)])
    # 0: first; 230.4: within 0.5; 230.6: beyond; 240 at 2500: only 500 ms after 2000 (held);
    # 230.6 at 3000: back within the band of 230.6; TIMEOUT: quality changed; second TIMEOUT:
    # same; GOOD again at 6000: quality changed; 16000: heartbeat (10 s); 16500: within band.
    assert [r.ts for r in sent] == [0, 2000, 4000, 6000, 16_000]
    u = f.take_unchanged()
    assert u is not None
    assert (u.count, u.first_ts, u.last_ts) == (5, 1000, 16_500)
    assert f.take_unchanged() is None
    assert (f.held, f.passed) == (5, 5)
    assert f.heartbeats() == {"b/m/v": 10_000}


def test_percent_deadband_other_types_and_unmatched_points() -> None:
    f = ReportFilter([_rule(points="b/m/*", deadband_percent=1.0)])
    sent = f.filter([_r(0, 100), _r(1, 100.9), _r(2, 101.5), _r(3, "on", point="b/m/s"),
                     _r(4, "on", point="b/m/s"), _r(5, "off", point="b/m/s"),
                     _r(6, 1, point="x/y/z"), _r(7, 1, point="x/y/z"),
                     _r(8, True, point="b/m/s"), _r(9, 1.0e9, point="b/m/s")])
    assert [(r.point, r.ts) for r in sent] == [
        ("b/m/v", 0), ("b/m/v", 2), ("b/m/s", 3), ("b/m/s", 5), ("x/y/z", 6), ("x/y/z", 7),
        ("b/m/s", 8), ("b/m/s", 9)]


def test_put_back_and_flush_keep_every_reading_accounted_for() -> None:
    f = ReportFilter([_rule(deadband=1.0)])
    assert len(f.filter([_r(t, 5.0) for t in range(0, 10)])) == 1
    taken = f.take_unchanged()
    assert taken is not None and taken.count == 9
    f.put_back(taken)  # its batch did not go out
    assert len(f.filter([_r(t, 5.0) for t in range(10, 15)])) == 0
    last = f.flush()
    assert [r.ts for r in last] == [14]
    u = f.take_unchanged()
    assert u is not None and (u.count, u.first_ts, u.last_ts) == (13, 1, 14)


def test_every_reading_is_sent_or_counted_unchanged_end_to_end(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The truth is the sim driver's own count: every reading it emitted reaches the
    verifier either as a reading or inside an "unchanged" record."""
    drivers = {"sim": [{"instance": "sim-1", "devices": 3, "interval": "20ms", "seed": 3}]}
    rules = [{"points": "sim-1/*/temperature", "deadband": 0.5, "max_silence": "300ms"},
             {"points": "sim-1/*/door_open", "max_silence": "1h"}]

    async def scenario() -> None:
        async with running_gateway(drivers, mosquitto, tmp_path / "state",
                                   report=rules) as run:  # type: ignore[arg-type]
            await asyncio.sleep(3.0)
            sim = run.gateway.drivers["sim-1"][0]
            await run.drain()
            emitted = sim.emitted
        held = sum(u.count for u in run.result.unchanged)
        readings = run.result.readings
        assert len(readings) + held == emitted
        assert held > emitted // 10  # the rules did hold readings back
        assert run.result.heartbeats == {
            **{f"sim-1/dev-{d:03d}/temperature": 300 for d in range(3)},
            **{f"sim-1/dev-{d:03d}/door_open": 3_600_000 for d in range(3)}}
        # Energy and voltage have no rule: every one of them went (4 points per device).
        energy = [r for r in readings if r.point.endswith("/energy")]
        assert len(energy) == emitted // 4
        # The heartbeat: no temperature point goes much longer than 300 ms without a reading
        # (a sample after the bound is sent; samples come every 20 ms, later under load).
        for d in range(3):
            ts = sorted(r.ts for r in readings if r.point == f"sim-1/dev-{d:03d}/temperature")
            assert len(ts) >= 3
            assert max(b - a for a, b in zip(ts, ts[1:], strict=False)) <= 1000

    asyncio.run(scenario())
