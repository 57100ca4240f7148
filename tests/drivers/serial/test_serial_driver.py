"""The serial driver against its simulator and bare pty pairs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from drivers.api import Quality
from drivers.serial import SerialDriver
from drivers.serial.nmea import sentence
from drivers.serial.profiles import profile_config
from drivers.serial.sim import SerialSimulator

FAST = {"reopen_min": "50ms", "reopen_max": "300ms"}


def config(profile: str, link: Path, **device: Any) -> dict[str, Any]:
    table = profile_config(profile, str(link), **FAST)
    table["devices"][0].update(device)
    return table


def test_weather_station_stream_has_units_and_good_values(harness, sink, tmp_path) -> None:
    async def body() -> SerialDriver:
        async with SerialSimulator(tmp_path / "tty", "nmea-weather", rate=20, seed=1) as sim:
            drv = harness.driver(config("nmea-weather", sim.link), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("cab/ws/xdr_relhum")) >= 3,
                                    what="three XDR sentences")
        return drv

    drv = harness.run(body())
    units = {r.point: r.unit for r in sink.readings}
    assert units["cab/ws/wind_speed_relative"] == "m/s"
    assert units["cab/ws/pressure"] == "Pa"
    assert units["cab/ws/xdr_tempair"] == "Cel"
    assert all(r.quality == Quality.GOOD for r in sink.readings)
    assert all(isinstance(r.value, float) for r in sink.readings)
    assert set(units) <= {p for p, _ in drv.points()}
    assert drv.health.devices["ws"].counters.get("crc_error", 0) == 0


def test_gps_position_and_ignored_sentences(harness, sink, tmp_path) -> None:
    async def body() -> SerialDriver:
        async with SerialSimulator(tmp_path / "tty", "nmea-gps", rate=20, seed=2) as sim:
            drv = harness.driver(config("nmea-gps", sim.link), "gps")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("gps/gnss/latitude")) >= 2,
                                    what="positions")
        return drv

    drv = harness.run(body())
    lat = sink.good("gps/gnss/latitude")[0]
    assert lat.unit == "lat"
    assert 47 < lat.value < 49
    assert isinstance(sink.good("gps/gnss/satellites")[0].value, int)
    assert drv.health.devices["gnss"].counters["ignored"] >= 1  # GSV: valid, not decoded


def test_particle_sensor_binary_frames_scaled(harness, sink, tmp_path) -> None:
    async def body() -> None:
        async with SerialSimulator(tmp_path / "tty", "pm-sensor", rate=20, seed=3) as sim:
            drv = harness.driver(config("pm-sensor", sim.link), "air")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("air/pm/temperature")) >= 3,
                                    what="frames")

    harness.run(body())
    pm = sink.good("air/pm/pm2_5")[0]
    assert (pm.unit, type(pm.value)) == ("ug/m3", int)
    temp = sink.good("air/pm/temperature")[0]
    assert temp.unit == "Cel"
    assert round(temp.value, 1) == temp.value
    assert 15 < temp.value < 30


def test_query_response_counter(harness, sink, tmp_path) -> None:
    async def body() -> tuple[SerialDriver, dict[str, int]]:
        async with SerialSimulator(tmp_path / "tty", "ascii-counter", seed=4) as sim:
            drv = harness.driver(config("ascii-counter", sim.link,
                                        query={"command": "READ\r\n", "interval": "50ms",
                                               "timeout": "40ms"}), "cnt")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("cnt/door-counter/exits")) >= 5,
                                    what="five answers")
            return drv, dict(sim.stats)

    drv, stats = harness.run(body())
    entries = [r.value for r in sink.good("cnt/door-counter/entries")]
    assert entries == sorted(entries)
    assert all(isinstance(v, int) for v in entries)
    assert sink.good("cnt/door-counter/entries")[0].unit == "count"
    assert stats["answers"] >= 5
    assert drv.health.devices["door-counter"].ok


def test_two_polled_devices_share_one_port(harness, sink, tmp_path) -> None:
    async def body() -> SerialDriver:
        async with SerialSimulator(tmp_path / "tty", "ascii-counter", seed=9) as sim:
            table = config("ascii-counter", sim.link, query={
                "command": "READ\r\n", "interval": "60ms", "timeout": "50ms"})
            table["devices"].append({"name": "ident", "decoder": {"type": "keyvalue"},
                                     "query": {"command": "ID\r\n", "interval": "60ms",
                                               "timeout": "50ms"}})
            drv = harness.driver(table, "bus")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("bus/ident/id")) >= 3
                                    and len(sink.good("bus/door-counter/entries")) >= 3,
                                    what="answers for both devices")
        return drv

    drv = harness.run(body())
    assert {r.value for r in sink.good("bus/ident/id")} == {"CNT-2"}
    assert not sink.quality("MALFORMED")  # no answer went to the wrong device
    assert drv.health.devices["ident"].ok
    assert drv.health.devices["door-counter"].ok


def test_query_timeout_gives_timeout_readings_for_every_point(harness, sink, raw_pty) -> None:
    dev = raw_pty()  # the device is wired but never answers

    async def body() -> tuple[SerialDriver, bytes]:
        drv = harness.driver(config("ascii-counter", dev.link,
                                    query={"command": "READ\r\n", "interval": "300ms",
                                           "timeout": "200ms"}), "cnt")
        async with harness.running(drv, sink):
            await harness.until(lambda: len(sink.quality("TIMEOUT")) >= 4, what="timeouts")
            sent = await dev.read(lambda b: b.count(b"READ\r\n") >= 2)
            # then it starts answering the next query: good readings, health back
            await dev.read(lambda b: b.endswith(b"READ\r\n"))
            dev.write(b"C1=7;C2=9\r\n")
            await harness.until(lambda: bool(sink.good("cnt/door-counter/exits")),
                                what="an answer")
        return drv, sent

    drv, sent = harness.run(body())
    assert sent.startswith(b"READ\r\n")
    assert drv.health.devices["door-counter"].ok
    timeouts = sink.quality("TIMEOUT")
    assert {r.point for r in timeouts} == {"cnt/door-counter/entries", "cnt/door-counter/exits"}
    assert all(r.value is None and r.unit == "count" for r in timeouts)
    assert drv.health.devices["door-counter"].counters["timeout"] >= 2


def test_malformed_answers_give_bad_quality_readings(harness, sink, tmp_path) -> None:
    async def body() -> SerialDriver:
        async with SerialSimulator(tmp_path / "tty", "ascii-counter", seed=5) as sim:
            drv = harness.driver(config("ascii-counter", sim.link,
                                        query={"command": "READ\r\n", "interval": "50ms",
                                               "timeout": "40ms"}), "cnt")
            async with harness.running(drv, sink):
                await harness.until(lambda: bool(sink.good("cnt/door-counter/entries")))
                await sim.inject_malformed()
                await harness.until(lambda: len(sink.quality("MALFORMED")) >= 4,
                                    what="malformed readings")
                await sim.heal()
                count = len(sink.good("cnt/door-counter/entries"))
                await harness.until(lambda: len(sink.good("cnt/door-counter/entries")) > count,
                                    what="good again")
        return drv

    drv = harness.run(body())
    assert drv.health.devices["door-counter"].counters["failed_answers"] >= 2
    assert drv.health.devices["door-counter"].ok


def test_noise_is_counted_and_the_stream_resyncs(harness, sink, tmp_path) -> None:
    async def body() -> tuple[SerialDriver, SerialDriver, dict[str, int]]:
        sims = [SerialSimulator(tmp_path / "tty0", "nmea-weather", rate=50, noise=0.3, seed=6),
                SerialSimulator(tmp_path / "tty1", "pm-sensor", rate=50, noise=0.3, seed=6)]
        async with sims[0] as weather, sims[1] as pm:
            d1 = harness.driver(config("nmea-weather", weather.link), "n")
            d2 = harness.driver(config("pm-sensor", pm.link), "b")
            async with harness.running(d1, sink), harness.running(d2, sink):
                await harness.until(lambda: len(sink.good("n/ws/xdr_relhum")) >= 40
                                    and len(sink.good("b/pm/pm10")) >= 40,
                                    timeout=15, what="enough good frames through the noise")
            return d1, d2, pm.stats

    weather, pm, pm_stats = harness.run(body())
    assert all(r.quality == Quality.GOOD for r in sink.readings)
    w = weather.health.devices["ws"].counters
    assert w.get("crc_error", 0) + w.get("malformed", 0) > 0
    b = pm.health.devices["pm"].counters
    assert b.get("crc_error", 0) > 0
    assert pm.health.counters["garbage_bytes"] > 0
    assert b["ok"] >= 40
    assert pm_stats["noisy"] > 0


def test_unplug_and_replug(harness, sink, tmp_path, caplog) -> None:
    async def body() -> SerialDriver:
        async with SerialSimulator(tmp_path / "tty", "nmea-weather", rate=20, seed=7) as sim:
            drv = harness.driver(config("nmea-weather", sim.link), "ws")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("ws/ws/pressure")) >= 2)
                await sim.stop()
                await harness.until(lambda: bool(sink.quality("UNAVAILABLE")), what="lost")
                await asyncio.sleep(0.6)  # reopen attempts against a missing path
                assert not drv.health.devices["port"].ok
                good_before = len(sink.good("ws/ws/pressure"))
                await sim.start()
                await harness.until(lambda: len(sink.good("ws/ws/pressure")) > good_before + 2,
                                    what="readings after replug")
        return drv

    with caplog.at_level(logging.INFO, logger="streetgate.driver.serial.ws"):
        drv = harness.run(body())
    port = drv.health.devices["port"]
    assert port.ok
    assert port.counters["unavailable"] == 1
    assert port.counters["reopen_failures"] >= 1
    unavailable = sink.quality("UNAVAILABLE")
    assert {r.point for r in unavailable} == {p for p, _ in drv.points()}
    assert len(unavailable) == len({r.point for r in unavailable})  # once per outage
    messages = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("device port ")]
    assert sum("failing" in m for m in messages) == 1
    assert sum("is back" in m for m in messages) == 1


def test_port_that_appears_later(harness, sink, tmp_path) -> None:
    async def body() -> SerialDriver:
        link = tmp_path / "ttyLATE"
        drv = harness.driver(config("nmea-weather", link), "late")
        async with harness.running(drv, sink):
            await harness.until(lambda: not drv.health.devices["port"].ok, what="not found")
            async with SerialSimulator(link, "nmea-weather", rate=20, seed=8):
                await harness.until(lambda: bool(sink.good("late/ws/pressure")), what="data")
        return drv

    drv = harness.run(body())
    assert drv.health.devices["port"].ok
    assert "not found" in (drv.health.devices["port"].last_error or "")


def test_silent_stream_gives_timeout_readings(harness, sink, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> SerialDriver:
        drv = harness.driver(config("nmea-weather", dev.link, silence_timeout="200ms"), "q")
        async with harness.running(drv, sink):
            await harness.until(lambda: bool(sink.quality("TIMEOUT")), what="silence noticed")
            dev.write(sentence("WIMWV,10.0,R,2.0,M,A"))
            await harness.until(lambda: bool(sink.good("q/ws/wind_speed_relative")))
            await harness.until(lambda: drv.health.devices["ws"].ok, what="device back")
        return drv

    drv = harness.run(body())
    timeouts = {r.point for r in sink.quality("TIMEOUT")}
    assert "q/ws/pressure" in timeouts
    assert drv.health.devices["ws"].counters["silent"] >= 1


def test_contract_simulate_setup(harness, sink, tmp_path) -> None:
    async def body() -> SerialDriver:
        async with SerialDriver.simulate(tmp_path) as setup:
            drv = harness.driver(dict(setup.config), "contract")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.readings) >= 10)
                await setup.inject_malformed()
                errors = drv.health.devices["ws"].counters
                await harness.until(lambda: errors.get("crc_error", 0) >= 5, what="drops")
                await setup.heal()
                await setup.stop()
                await harness.until(lambda: bool(sink.quality("UNAVAILABLE")))
                n = len(sink.quality("GOOD"))
                await setup.start()
                await harness.until(lambda: len(sink.quality("GOOD")) > n + 5, what="recovery")
        return drv

    drv = harness.run(body())
    names = {p for p, _ in drv.points()}
    assert {r.point for r in sink.readings} <= names
    assert all(p.startswith("contract/ws/") for p in names)


def test_driver_runs_again_after_being_cancelled(harness, sink, tmp_path) -> None:
    # The daemon restarts a driver by calling run() again, possibly on a new event loop.
    drv: list[SerialDriver] = []

    async def once(start: int) -> None:
        async with SerialSimulator(tmp_path / "tty", "ascii-counter", seed=start) as sim:
            if not drv:
                drv.append(harness.driver(config("ascii-counter", sim.link, query={
                    "command": "READ\r\n", "interval": "50ms", "timeout": "40ms"}), "again"))
            async with harness.running(drv[0], sink):
                await harness.until(lambda: len(sink.good("again/door-counter/exits")) >= start)

    harness.run(once(2))
    harness.run(once(4))
    assert drv[0].health.devices["door-counter"].ok
