"""The UART LoRa module driver against the module simulator on real pty pairs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.api import Quality
from drivers.lora import LoraModemDriver
from drivers.lora.sim import demo_devices, parse_devices
from drivers.lora.simmodem import BANNER, ModemSimulator, modem_setup
from tests.drivers.lora.conftest import RecordingSink, StoreState, context, running, wait_for


@contextlib.asynccontextmanager
async def modem(tmp_path: Path, state: Any, tables: list[dict[str, Any]],
                **options: Any) -> AsyncIterator[tuple[LoraModemDriver, ModemSimulator,
                                                       RecordingSink]]:
    link = tmp_path / "ttyLORA"
    sim_opts: dict[str, Any] = {k: options.pop(k) for k in ("payload", "encoding") if k in options}
    mode = options.get("mode", "rn2483")
    sim = ModemSimulator(link, parse_devices(tables), mode=mode, interval=0.05, **sim_opts)
    sim.plug()
    cfg = LoraModemDriver.parse_config(
        {"port": str(link), "reply_timeout": "300ms", "reopen_min": "50ms",
         "reopen_max": "300ms", "devices": tables, **sim_opts, **options},
        file="test", path="drivers.lora_modem[0]")
    driver = LoraModemDriver(cfg, context("uart", state, "lora_modem"))
    sink = RecordingSink()
    try:
        async with running(driver, sink):
            sim.resume()
            yield driver, sim, sink
    finally:
        await sim.close()


def test_rn2483_radio_receive(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, demo_devices(2, random_keys=True)) as (drv, sim, sink):
            await wait_for(lambda: len(sink.values("uart/sensor-2/fcnt")) >= 2)
            assert sim.commands[:3] == ["mac pause", "radio set wdt 0", "radio rx 0"]
            assert sim.commands[3:6] == ["radio get snr", "radio get rssi", "radio rx 0"]
            assert sink.values("uart/sensor-1/rssi")[0] == -61
            assert sink.values("uart/sensor-1/snr")[0] == 9
            assert sink.values("uart/sensor-1/fcnt")[:2] == [0, 1]
            assert sink.values("uart/sensor-2/leak")
            assert all(r.quality is Quality.GOOD for r in sink.readings)
            assert ("uart/sensor-1/rssi", "dBm") in set(drv.points())
    asyncio.run(go())


def test_unplug_replug_and_module_reset(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, demo_devices(1, random_keys=True)) as (drv, sim, sink):
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) >= 2)
            sim.unplug()
            await wait_for(lambda: not drv.port_health.ok)
            await asyncio.sleep(0.3)
            sim.plug()
            before = len(sink.values("uart/sensor-1/fcnt"))
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) > before + 1)
            assert drv.port_health.ok
            assert drv.port_health.counters["unavailable"] == 1
            # A brown-out: the module restarts, prints its banner and forgets radio rx.
            pauses = sim.commands.count("mac pause")
            sim.armed = False
            sim._write(BANNER.encode() + b"\r\n")
            await wait_for(lambda: sim.commands.count("mac pause") > pauses)
            before = len(sink.values("uart/sensor-1/fcnt"))
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) > before)
            assert drv.health.counters["module_resets"] >= 1
            values = sink.values("uart/sensor-1/fcnt")
            assert values == sorted(set(values))
    asyncio.run(go())


def test_noise_is_counted_and_reception_continues(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, demo_devices(1, random_keys=True)) as (drv, sim, sink):
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) >= 1)
            sim.garbage = True
            await wait_for(lambda: sim.counters["garbage"] >= 16)
            sim.garbage = False
            before = len(sink.values("uart/sensor-1/fcnt"))
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) > before + 1)
            counters = drv.health.counters
            assert counters["malformed_lines"] >= 2
            assert counters["unexpected_lines"] >= 1
            assert all(r.quality is Quality.GOOD for r in sink.readings)
    asyncio.run(go())


def test_transparent_raw_payloads_with_device_prefix(tmp_path: Path, state: StoreState) -> None:
    tables: list[dict[str, Any]] = [{"name": "air-1", "match": "A1"},
              {"name": "meter-2", "match": "B2", "decoder": "struct", "fields": [
                  {"name": "level", "offset": 0, "type": "u16", "scale": 0.1, "unit": "m"}]}]

    async def go() -> None:
        async with modem(tmp_path, state, tables, mode="transparent", payload="raw",
                         encoding="base64") as (drv, sim, sink):
            await wait_for(lambda: len(sink.values("uart/meter-2/level")) >= 2)
            assert sink.values("uart/air-1/temperature_1")
            assert "uart/air-1/fcnt" not in sink.points()
            assert "uart/air-1/rssi" not in sink.points()
            assert sim.commands == []  # a transparent module is never talked to
            assert drv.health.counters["packets"] >= 3
    asyncio.run(go())


def test_transparent_hex_lorawan(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, demo_devices(2, random_keys=True),
                         mode="transparent") as (_drv, _sim, sink):
            await wait_for(lambda: len(sink.values("uart/sensor-2/fcnt")) >= 2)
            assert sink.values("uart/sensor-1/fcnt")[:2] == [0, 1]
    asyncio.run(go())


def test_contract_setup_stop_start_malformed(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem_setup(tmp_path, interval=0.05) as setup:
            cfg = LoraModemDriver.parse_config(setup.config, file="t", path="p")
            driver = LoraModemDriver(cfg, context("uart", state, "lora_modem"))
            sink = RecordingSink()
            async with running(driver, sink):
                await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) >= 2)
                await setup.stop()
                await wait_for(lambda: not driver.port_health.ok)
                await setup.start()
                before = len(sink.readings)
                await wait_for(lambda: len(sink.readings) > before)
                await setup.inject_malformed()
                await wait_for(lambda: driver.health.counters.get("malformed_lines", 0) >= 1)
                await setup.heal()
                before = len(sink.readings)
                await wait_for(lambda: len(sink.readings) > before)
    asyncio.run(go())


def test_refused_receive_is_reported_and_retried(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, demo_devices(1, random_keys=True)) as (drv, sim, sink):
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) >= 1)
            sim.refuse_rx = True
            await wait_for(lambda: drv.port_health.counters.get("rx_refused", 0) >= 1)
            assert not drv.port_health.ok
            assert "invalid_param" in (drv.port_health.last_error or "")
            sim.refuse_rx = False
            before = len(sink.values("uart/sensor-1/fcnt"))
            await wait_for(lambda: len(sink.values("uart/sensor-1/fcnt")) > before)
            assert drv.port_health.ok
    asyncio.run(go())
