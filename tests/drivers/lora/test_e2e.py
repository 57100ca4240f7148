"""End to end: simulated LoRa sensors, signed and encrypted, through a simulated packet
forwarder, the real daemon and a real broker, to batches whose signatures the verifier
accepts; forged and replayed frames never reach the platform."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.api import Reading
from drivers.lora import cayenne
from drivers.lora.sim import (
    ForwarderSimulator,
    demo_devices,
    free_udp_port,
    parse_devices,
    sample_payload,
)
from tests.helpers.e2e import deliver
from tests.helpers.mosquitto import Mosquitto


def test_sensor_to_verified_batch(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_udp_port()
    tables = demo_devices(2, random_keys=True)
    devices = parse_devices(tables)

    async def main() -> list[Reading]:
        sim = ForwarderSimulator("127.0.0.1", port, devices, interval=0.1, wrong_mic_every=3,
                                 replay_every=4, malformed_every=2)
        await sim.open()
        sim.resume()
        try:
            drivers = {"lora_forwarder": [{"instance": "lora", "port": port,
                                           "devices": tables}]}
            wanted = {"lora/sensor-1/temperature_1", "lora/sensor-1/rssi", "lora/sensor-1/snr",
                      "lora/sensor-2/volume", "lora/sensor-2/leak", "lora/sensor-2/fcnt"}

            def enough(rs: list[Reading]) -> bool:
                return wanted <= {r.point for r in rs} and sum(
                    r.point == "lora/sensor-1/fcnt" for r in rs) >= 4

            result = await deliver(drivers, mosquitto, tmp_path / "state", until=enough)
            assert result.duplicates == 0
            health = result.health["lora"]["health"]
            assert health["devices"]["sensor-1"]["counters"]["ok"] >= 4
            errors = sum(d["counters"].get("mic_errors", 0) + d["counters"].get("duplicates", 0)
                         for d in health["devices"].values())
            assert errors >= 1
            return result.readings
        finally:
            await sim.close()

    readings = asyncio.run(main())
    fcnt = [int(r.value) for r in readings if r.point == "lora/sensor-1/fcnt"
            and isinstance(r.value, int)]
    assert fcnt == sorted(set(fcnt))  # each frame once, in order: no replay got through
    temps = {r.ts: r.value for r in readings if r.point == "lora/sensor-1/temperature_1"}
    sent = {cayenne.decode(sample_payload(devices[0], n)[1]).points[0].value for n in fcnt}
    assert set(temps.values()) <= sent
    unit = {r.point: r.unit for r in readings}
    assert unit["lora/sensor-1/temperature_1"] == "Cel"
    assert unit["lora/sensor-1/rssi"] == "dBm"
    assert unit["lora/sensor-2/volume"] == "m3"
