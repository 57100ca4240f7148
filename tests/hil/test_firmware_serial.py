"""The rig firmware's serial sensor against the serial driver, case by case with the Python
simulator: the same driver config (drivers/serial/profiles.py, i.e. example.toml) must give
the same points and units from both; noise, silence and unplugging behave the same way."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.api import DriverContext, Quality
from drivers.serial import SerialDriver
from drivers.serial.profiles import profile_config
from drivers.serial.sim import SerialSimulator
from hil_tests.firmware.mkconfig import board_config
from tests.drivers.modbus._harness import Recorder, running, wait_until

from ._firmware import FirmwareHost

PROFILES = ["nmea-weather", "pm-sensor", "ascii-counter"]
#: Point names per profile that a good run must show (a subset; the comparison checks all).
MUST = {"nmea-weather": "weather/ws/pressure", "pm-sensor": "air/pm/pm2_5",
        "ascii-counter": "counters/door-counter/entries"}
#: Counters the driver keeps for damaged input, port-wide and per device.
DAMAGE = ("garbage_bytes", "partial_frames", "oversized_frames", "rejected_frames",
          "crc_error", "malformed", "failed_answers")


def _table(profile: str, link: Path, **device: Any) -> dict[str, Any]:
    table = profile_config(profile, str(link), reopen_min="50ms", reopen_max="300ms")
    dev = table["devices"][0]
    if "query" in dev:
        dev["query"].update(interval="100ms", timeout="80ms")
    elif device:
        dev.update(device)
    return table


def _driver(profile: str, table: dict[str, Any]) -> SerialDriver:
    from drivers.serial.profiles import PROFILES as INSTANCES  # noqa: PLC0415

    cfg = SerialDriver.parse_config(table, file="test.toml", path="drivers.serial[0]")
    return SerialDriver(cfg, DriverContext.standalone(INSTANCES[profile], "serial"))


def _good(sink: Recorder) -> set[tuple[str, str | None]]:
    return {(r.point, r.unit) for r in sink.readings if r.quality == Quality.GOOD}


def _damage(driver: SerialDriver) -> int:
    board = driver.context.health
    counters = dict(board.counters)
    for dev in board.devices.values():
        for k, v in dev.counters.items():
            counters[k] = counters.get(k, 0) + v
    return sum(counters.get(k, 0) for k in DAMAGE)


@contextlib.asynccontextmanager
async def _reading(driver: SerialDriver) -> AsyncIterator[tuple[Recorder, asyncio.Task[None]]]:
    sink = Recorder()
    async with running(driver, sink) as task:  # type: ignore[arg-type]
        yield sink, task


async def _until(task: asyncio.Task[None], sink: Recorder, cond: Callable[[], bool],
                 timeout: float = 6.0) -> None:
    await wait_until(task, sink, cond, timeout)


def _python_points(profile: str, tmp: Path) -> set[tuple[str, str | None]]:
    """What the Python simulator gives through the driver after a few frames."""
    async def main() -> set[tuple[str, str | None]]:
        async with SerialSimulator(tmp / "ttyPY", profile, rate=20, seed=3) as sim:
            driver = _driver(profile, _table(profile, sim.link))
            async with _reading(driver) as (sink, task):
                await _until(task, sink, lambda: len(sink.readings) >= 40)
                return _good(sink)

    return asyncio.run(main())


@pytest.mark.parametrize("profile", PROFILES)
def test_firmware_sensor_gives_what_the_simulator_gives(profile: str, tmp_path: Path) -> None:
    expected = _python_points(profile, tmp_path)
    assert any(p == MUST[profile] for p, _u in expected)
    link = tmp_path / "ttyFW"
    with FirmwareHost(board_config([], serial=profile, rate=20), tmp_path / "fw",
                      serial_link=link) as board:
        async def main() -> tuple[set[tuple[str, str | None]], list[Any]]:
            driver = _driver(profile, _table(profile, link))
            async with _reading(driver) as (sink, task):
                await _until(task, sink, lambda: expected <= _good(sink))
                return _good(sink), [r for r in sink.readings if r.quality != Quality.GOOD]

        got, bad = asyncio.run(main())
        assert board.command("status").startswith("ok serial profile=" + profile)
    assert got == expected
    assert bad == []


@pytest.mark.parametrize("profile", ["nmea-weather", "pm-sensor"])
def test_noise_is_counted_and_good_frames_still_arrive(profile: str, tmp_path: Path) -> None:
    link = tmp_path / "ttyFW"
    with FirmwareHost(board_config([], serial=profile, rate=40, seed=5), tmp_path / "fw",
                      serial_link=link) as board:
        assert board.command("fault serial noise 0.4") == "ok fault serial noise 0.4"

        async def main() -> tuple[int, int]:
            driver = _driver(profile, _table(profile, link))
            async with _reading(driver) as (sink, task):
                await _until(task, sink, lambda: _damage(driver) >= 3 and sum(
                    r.point == MUST[profile] for r in sink.readings) >= 5)
                bad = sum(r.quality != Quality.GOOD for r in sink.readings)
                return _damage(driver), bad

        damage, bad = asyncio.run(main())
    assert damage >= 3
    assert bad == 0, "damaged streaming frames are dropped and counted, not emitted"


def test_silence_then_talking_again(tmp_path: Path) -> None:
    link = tmp_path / "ttyFW"
    point = MUST["nmea-weather"]
    with FirmwareHost(board_config([], serial="nmea-weather", rate=20), tmp_path / "fw",
                      serial_link=link) as board:
        async def main() -> list[Quality]:
            driver = _driver("nmea-weather", _table("nmea-weather", link,
                                                    silence_timeout="300ms"))
            async with _reading(driver) as (sink, task):
                await _until(task, sink, lambda: any(r.point == point for r in sink.readings))
                assert board.command("fault serial silent").startswith("ok")
                await _until(task, sink, lambda: sink.last()[point].quality == Quality.TIMEOUT)
                assert board.command("fault serial none").startswith("ok")
                await _until(task, sink, lambda: sink.last()[point].quality == Quality.GOOD)
                return [r.quality for r in sink.of(point)]

        qualities = asyncio.run(main())
    first_timeout = qualities.index(Quality.TIMEOUT)
    assert Quality.GOOD in qualities[:first_timeout]
    assert qualities[-1] == Quality.GOOD


def test_unplug_and_replug(tmp_path: Path) -> None:
    link = tmp_path / "ttyFW"
    point = MUST["nmea-weather"]
    with FirmwareHost(board_config([], serial="nmea-weather", rate=20), tmp_path / "fw",
                      serial_link=link) as board:
        async def main() -> float:
            driver = _driver("nmea-weather", _table("nmea-weather", link))
            async with _reading(driver) as (sink, task):
                await _until(task, sink, lambda: any(r.point == point for r in sink.readings))
                assert board.command("unplug serial").startswith("ok unplug")
                await _until(task, sink,
                             lambda: sink.last()[point].quality == Quality.UNAVAILABLE)
                t0 = time.monotonic()
                assert board.command("plug serial").startswith("ok plug")
                await _until(task, sink, lambda: sink.last()[point].quality == Quality.GOOD)
                return time.monotonic() - t0

        back_after = asyncio.run(main())
    assert back_after < 5.0
