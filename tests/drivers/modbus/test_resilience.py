"""Bus discipline and dead devices, against the simulator over TCP and a pty pair."""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import pairwise
from typing import Any

import pytest

from drivers.api import Quality
from drivers.modbus.sim import SimUnit, profile_unit

from ._harness import Recorder, bus_table, make_driver, running, simulated, wait_until

POINTS = [{"name": "x", "address": 0, "type": "u16"}, {"name": "y", "address": 10, "type": "f32"}]


def device(name: str, unit: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "unit": unit, "interval": "100ms", "timeout": "100ms", "retries": 1,
            "dead_after": 2, "backoff_max": "400ms", "points": POINTS, **extra}


def unit(n: int) -> SimUnit:
    u = profile_unit(n, "energy-meter-1ph")
    u.write("holding", 0, [n])
    return u


def good(sink: Recorder, point: str) -> list[Any]:
    return [r for r in sink.of(point) if r.quality is Quality.GOOD]


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_dead_device_is_backed_off_and_does_not_stall_the_others(
        transport: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streetgate.driver.modbus")

    async def main() -> tuple[Recorder, Any]:
        async with simulated([unit(1), unit(2)], transport) as sim:
            driver = make_driver({"bus": bus_table(sim), "devices": [
                device("a", 1), device("b", 2), device("dead", 3)]})
            sink = Recorder()
            async with running(driver, sink):
                await asyncio.sleep(2.0)
            return sink, driver.health.snapshot()

    sink, health = asyncio.run(main())
    for live in ("a", "b"):
        assert len(good(sink, f"t/{live}/x")) >= 12, len(good(sink, f"t/{live}/x"))
        assert health["devices"][live]["state"] == "ok"
    dead = sink.of("t/dead/x")
    assert dead
    assert {r.quality for r in dead + sink.of("t/dead/y")} == {Quality.TIMEOUT}
    # Backed off: far fewer attempts than polls of a live device, but never a silent gap.
    assert 3 <= len(dead) <= 10
    gaps = [b.ts - a.ts for a, b in pairwise(dead)]
    assert max(gaps) <= 400 + 100 + 300
    assert health["backed_off"] == {"dead": 0.4}
    assert health["devices"]["dead"]["state"] == "failing"
    assert health["devices"]["dead"]["counters"]["timeout"] >= 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "dead" in r.message]
    assert len(warnings) == 1, [r.message for r in warnings]


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_device_that_comes_back_is_picked_up(transport: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streetgate.driver.modbus")

    async def main() -> tuple[Recorder, Any, float]:
        async with simulated([unit(1)], transport) as sim:
            driver = make_driver({"bus": bus_table(sim), "devices": [
                device("a", 1), device("late", 4)]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: "late" in driver.health.extra.get(
                    "backed_off", {}))
                sim.units[4] = unit(4)
                back = time.time()
                await wait_until(task, sink, lambda: bool(good(sink, "t/late/x")))
                await asyncio.sleep(0.5)
            return sink, driver.health.snapshot(), back

    sink, health, back = asyncio.run(main())
    assert health["devices"]["late"]["state"] == "ok"
    assert "late" not in health["backed_off"]
    after = [r for r in good(sink, "t/late/x") if r.ts >= back * 1000]
    assert after[0].value == 4
    assert len(after) >= 4  # back on its 100ms schedule, not the backed-off one
    infos = [r.message for r in caplog.records if "late is back" in r.message]
    assert len(infos) == 1


def test_tcp_gateway_restart_is_recovered() -> None:
    async def main() -> tuple[Recorder, Any, float]:
        async with simulated([unit(1)], "tcp") as sim:
            driver = make_driver({"bus": bus_table(sim, reconnect_max="200ms"),
                                  "devices": [device("a", 1)]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: bool(good(sink, "t/a/x")))
                await sim.stop()
                await wait_until(task, sink, lambda: sink.last()["t/a/x"].quality
                                 is not Quality.GOOD)
                await asyncio.sleep(0.3)
                await sim.start()
                restarted = time.time()
                await wait_until(task, sink, lambda: sink.last()["t/a/x"].quality
                                 is Quality.GOOD)
            return sink, driver.health.snapshot(), restarted

    sink, health, restarted = asyncio.run(main())
    bad = {r.quality for r in sink.of("t/a/x")} - {Quality.GOOD}
    assert bad <= {Quality.UNAVAILABLE, Quality.TIMEOUT}
    assert bad
    assert health["counters"]["opens"] >= 2
    assert sink.last()["t/a/x"].ts >= restarted * 1000


@pytest.mark.parametrize("bus", [
    {"kind": "rtu", "port": "/nonexistent/ttyUSB9", "parity": "N"},
    {"kind": "tcp", "host": "127.0.0.1", "port": 1},
], ids=["missing-serial-port", "refused-tcp"])
def test_missing_port_gives_unavailable_readings(bus: dict[str, Any],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[Recorder, Any]:
        driver = make_driver({"bus": {**bus, "reconnect_max": "100ms"},
                              "devices": [device("a", 1, dead_after=100)]})
        sink = Recorder()
        async with running(driver, sink) as task:
            await wait_until(task, sink, lambda: len(sink.of("t/a/y")) >= 5)
        return sink, driver.health.snapshot()

    sink, health = asyncio.run(main())
    assert {(r.quality, r.value) for r in sink.readings} == {(Quality.UNAVAILABLE, None)}
    assert health["counters"]["open_failures"] >= 2
    assert health["devices"]["a"]["counters"]["unavailable"] >= 5
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1


@pytest.mark.parametrize(("in_flight", "concurrent"), [(1, 1), (4, 4)])
def test_tcp_requests_serialized_or_pipelined(in_flight: int, concurrent: int) -> None:
    async def main() -> tuple[Recorder, Any]:
        units = [unit(n) for n in range(1, 5)]
        for u in units:
            u.fault = None
        async with simulated(units, "tcp") as sim:
            sim.set_fault(None, "slow=100ms")
            driver = make_driver({"bus": bus_table(sim, max_in_flight=in_flight), "devices": [
                device(f"d{n}", n, timeout="600ms", points=POINTS[:1]) for n in range(1, 5)]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: all(
                    len(good(sink, f"t/d{n}/x")) >= 3 for n in range(1, 5)))
            return sink, sim.stats

    sink, stats = asyncio.run(main())
    assert stats["max_concurrent"] == concurrent
    for n in range(1, 5):
        assert {r.value for r in good(sink, f"t/d{n}/x")} == {n}  # answers matched by tid


def test_rtu_line_carries_one_transaction_at_a_time() -> None:
    async def main() -> tuple[Recorder, Any, Any]:
        async with simulated([unit(n) for n in range(1, 6)], "rtu") as sim:
            driver = make_driver({"bus": bus_table(sim), "devices": [
                device(f"d{n}", n, interval="20ms") for n in range(1, 6)]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: all(
                    len(good(sink, f"t/d{n}/y")) >= 5 for n in range(1, 6)))
            return sink, sim.stats, driver.bus.link

    sink, stats, link = asyncio.run(main())
    assert stats["max_concurrent"] == 1
    assert stats["ignored_busy"] == 0
    assert link.stray == 0
    assert {r.quality for r in sink.readings} == {Quality.GOOD}


def test_retries_absorb_intermittent_crc_errors() -> None:
    async def main() -> tuple[Recorder, Any]:
        async with simulated([unit(1)], "rtu", seed=7) as sim:
            sim.set_fault(1, "crc@0.3")
            driver = make_driver({"bus": bus_table(sim), "devices": [
                device("a", 1, interval="20ms", retries=4)]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: len(sink.of("t/a/x")) >= 30)
            return sink, driver.health.snapshot()

    sink, health = asyncio.run(main())
    counters = health["devices"]["a"]["counters"]
    assert counters["retries"] >= 3
    assert counters["crc_error"] >= counters["retries"] - counters.get("timeout", 0)
    assert len(good(sink, "t/a/x")) >= 0.9 * len(sink.of("t/a/x"))


def test_per_point_interval() -> None:
    async def main() -> Recorder:
        async with simulated([unit(1)], "tcp") as sim:
            points = [{"name": "fast", "address": 0, "interval": "50ms"},
                      {"name": "slow", "address": 1}]
            driver = make_driver({"bus": bus_table(sim), "devices": [
                device("a", 1, interval="2s", points=points)]})
            sink = Recorder()
            async with running(driver, sink):
                await asyncio.sleep(0.7)
            return sink

    sink = asyncio.run(main())
    assert len(sink.of("t/a/fast")) >= 8
    assert len(sink.of("t/a/slow")) == 1


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_cancel_with_a_request_outstanding_is_prompt(transport: str) -> None:
    async def main() -> float:
        async with simulated([unit(1)], transport) as sim:
            sim.set_fault(1, "slow=3s")
            driver = make_driver({"bus": bus_table(sim), "devices": [
                device("a", 1, timeout="5s")]})
            task = asyncio.create_task(driver.run(Recorder()))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not driver.bus.link.is_open
            return time.monotonic() - start

    assert asyncio.run(main()) < 0.5
