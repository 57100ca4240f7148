"""End to end: simulated serial devices on pty pairs, through the real daemon and a real
broker, to signed batches the verifier accepts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.api import Reading
from drivers.serial.profiles import profile_config
from drivers.serial.sim import SerialSimulator
from tests.helpers.e2e import deliver
from tests.helpers.mosquitto import Mosquitto


def test_weather_station_and_counter_to_verified_batches(mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    async def main() -> list[Reading]:
        async with SerialSimulator(tmp_path / "ttyWX", "nmea-weather", rate=10, seed=1) as wx, \
                SerialSimulator(tmp_path / "ttyCNT", "ascii-counter", seed=2) as cnt:
            counter = profile_config("ascii-counter", str(cnt.link))
            counter["devices"][0]["query"].update(interval="100ms", timeout="80ms")
            drivers = {"serial": [
                {"instance": "weather", **profile_config("nmea-weather", str(wx.link))},
                {"instance": "counters", **counter},
            ]}
            wanted = {"weather/ws/wind_speed_true", "weather/ws/pressure",
                      "weather/ws/xdr_tempair", "counters/door-counter/entries"}
            result = await deliver(drivers, mosquitto, tmp_path / "state",
                                   until=lambda rs: wanted <= {r.point for r in rs})
            assert result.duplicates == 0
            return result.readings

    readings = {r.point: r for r in asyncio.run(main())}
    assert readings["weather/ws/pressure"].unit == "Pa"
    assert isinstance(readings["weather/ws/pressure"].value, float)
    assert readings["weather/ws/xdr_tempair"].unit == "Cel"
    entries = readings["counters/door-counter/entries"]
    assert entries.unit == "count"
    assert isinstance(entries.value, int)
    assert entries.value >= 100
