"""The packet forwarder driver over real UDP sockets on loopback, with a SQLite state store."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer.store import Store
from drivers.api import Quality, Reading
from drivers.lora import LoraForwarderDriver, cayenne, gwmp
from drivers.lora.sim import (
    ForwarderSimulator,
    demo_devices,
    forwarder_setup,
    free_udp_port,
    garbage_datagrams,
    parse_devices,
    sample_payload,
    uplink_for,
)
from tests.drivers.lora.conftest import RecordingSink, StoreState, context, running, wait_for

EUI = "AA555A0000000001"


class Client(asyncio.DatagramProtocol):
    """Plays the packet forwarder's socket: sends datagrams, keeps the answers."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def answer(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.answers.get(), timeout)


class Rig:
    def __init__(self, driver: LoraForwarderDriver, sink: RecordingSink, client: Client,
                 tables: list[dict[str, Any]]) -> None:
        self.driver, self.sink, self.client = driver, sink, client
        self.devices = parse_devices(tables)
        self._token = 0

    @property
    def health(self) -> dict[str, Any]:
        return self.driver.health.snapshot()

    def counter(self, name: str) -> int:
        return int(self.health["counters"].get(name, 0))

    def device_counter(self, device: str, name: str) -> int:
        return int(self.health["devices"].get(device, {}).get("counters", {}).get(name, 0))

    def push(self, *frames: bytes, rssi: int = -87, snr: float = 7.5) -> None:
        self._token += 1
        rxpk = [gwmp.rxpk_json(gwmp.RxPacket(data=f, freq=868.1, datr="SF7BW125", rssi=rssi,
                                             lsnr=snr)) for f in frames]
        self.client.send(gwmp.build_push_data(self._token, EUI, {"rxpk": rxpk}))

    async def settle(self, counter: str = "packets", n: int = 1) -> None:
        await wait_for(lambda: self.counter(counter) >= n)


@contextlib.asynccontextmanager
async def rig(state: Any, tables: list[dict[str, Any]] | None = None,
              **extra: Any) -> AsyncIterator[Rig]:
    tables = demo_devices(2, random_keys=True) if tables is None else tables
    port = free_udp_port()
    cfg = LoraForwarderDriver.parse_config({"port": port, "devices": tables, **extra},
                                           file="test", path="drivers.lora_forwarder[0]")
    driver = LoraForwarderDriver(cfg, context("lora", state))
    sink = RecordingSink()
    async with running(driver, sink):
        await wait_for(lambda: driver.bound is not None)
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", port))
        try:
            yield Rig(driver, sink, client, tables)
        finally:
            transport.close()


def fcnts(sink: RecordingSink, device: str) -> list[Any]:
    return sink.values(f"lora/{device}/fcnt")


def test_acks_echo_version_and_token(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state) as r:
            r.client.send(bytes([2, 0xBE, 0xEF, 0]) + bytes.fromhex(EUI) + b'{"rxpk":[]}')
            assert await r.client.answer() == bytes([2, 0xBE, 0xEF, 1])  # PUSH_ACK
            r.client.send(bytes([1, 0x01, 0x02, 2]) + bytes.fromhex(EUI))
            assert await r.client.answer() == bytes([1, 0x01, 0x02, 4])  # PULL_ACK
            for junk in garbage_datagrams():
                r.client.send(junk)
            r.client.send(gwmp.build_pull_data(7, EUI))
            # Four garbage PUSH_DATA parse (their damage is inside rxpk) and are acknowledged.
            answers = [await r.client.answer() for _ in range(5)]
            assert answers[-1] == bytes([2, 0, 7, 4])
            gw = r.health["concentrator"][EUI]
            assert gw["pull_data"] == 2
            assert gw["address"].startswith("127.0.0.1:")
    asyncio.run(go())


def test_uplinks_become_verified_readings(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state) as r:
            meter, sensor = r.devices[1], r.devices[0]
            r.push(uplink_for(sensor, 0), uplink_for(meter, 0), rssi=-101, snr=-4.25)
            await r.settle(n=2)
            await wait_for(lambda: len(r.sink.readings) >= 12)
            by_point = {x.point: x for x in r.sink.readings}
            assert by_point["lora/sensor-1/rssi"] == Reading(
                "lora/sensor-1/rssi", by_point["lora/sensor-1/rssi"].ts, -101, unit="dBm")
            assert by_point["lora/sensor-1/snr"].value == -4.25
            assert by_point["lora/sensor-1/snr"].unit == "dB"
            assert by_point["lora/sensor-1/fcnt"].value == 0
            sent = cayenne.decode(sample_payload(sensor, 0)[1])
            expected = {p.name: p.value for p in sent.points}
            assert {k: by_point[f"lora/sensor-1/{k}"].value for k in expected} == expected
            assert by_point["lora/sensor-1/temperature_1"].unit == "Cel"
            assert by_point["lora/sensor-2/volume"].unit == "m3"
            assert by_point["lora/sensor-2/leak"].value is False
            assert all(x.quality is Quality.GOOD for x in r.sink.readings)
            assert r.device_counter("sensor-1", "ok") == 1
            assert set(dict(r.driver.points())) >= {"lora/sensor-2/volume", "lora/sensor-1/rssi"}
    asyncio.run(go())


def test_wrong_mic_replay_duplicate_and_unknown_devaddr(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state) as r:
            dev = r.devices[0]
            first, second = uplink_for(dev, 0), uplink_for(dev, 1)
            r.push(first, second)
            await r.settle(n=2)
            forged = second[:-1] + bytes([second[-1] ^ 1])
            other_key = parse_devices([{**demo_devices(1, random_keys=True)[0]}])[0]
            r.push(forged, uplink_for(other_key, 2), second, first)
            stranger = uplink_for(parse_devices([{**demo_devices(1, random_keys=True)[0],
                                                  "dev_addr": "01ABCDEF"}])[0], 0)
            r.push(stranger)
            await r.settle(n=7)
            await wait_for(lambda: r.counter("unknown_devaddr") == 1)
            assert r.device_counter("sensor-1", "mic_errors") == 2
            assert r.device_counter("sensor-1", "duplicates") == 1
            assert r.device_counter("sensor-1", "replays") == 1
            assert fcnts(r.sink, "sensor-1") == [0, 1]
            assert r.health["devices"]["sensor-1"]["state"] == "failing"
            r.push(uplink_for(dev, 2))
            await wait_for(lambda: fcnts(r.sink, "sensor-1") == [0, 1, 2])
            assert r.health["devices"]["sensor-1"]["state"] == "ok"
    asyncio.run(go())


def test_counter_rolls_over_the_16_bits_on_air(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state) as r:
            dev = r.devices[0]
            for n in range(0xFFFC, 0x1_0003):
                r.push(uplink_for(dev, n))
            await wait_for(lambda: len(fcnts(r.sink, "sensor-1")) == 7)
            assert fcnts(r.sink, "sensor-1") == list(range(0xFFFC, 0x1_0003))
            r.push(uplink_for(dev, 0xFFFF))  # an old frame from before the roll-over
            r.push(uplink_for(dev, 0x1_0003 + 16384 + 1))  # beyond MAX_FCNT_GAP
            await r.settle(n=9)
            await wait_for(lambda: r.device_counter("sensor-1", "fcnt_gaps") == 1)
            assert r.device_counter("sensor-1", "replays") == 1
            assert len(fcnts(r.sink, "sensor-1")) == 7
    asyncio.run(go())


def test_counters_survive_a_restart(db_path: Path) -> None:
    tables = demo_devices(1, random_keys=True)
    dev = parse_devices(tables)[0]

    async def first_life(state: StoreState) -> None:
        async with rig(state, tables) as r:
            for n in (65_535, 69_999, 70_000):  # each within MAX_FCNT_GAP of the one before
                r.push(uplink_for(dev, n))
            await wait_for(lambda: fcnts(r.sink, "sensor-1") == [65_535, 69_999, 70_000])

    async def second_life(state: StoreState) -> None:
        async with rig(state, tables) as r:
            r.push(uplink_for(dev, 70_000))  # the attacker replays the last frame
            r.push(uplink_for(dev, 69_999))
            r.push(uplink_for(dev, 70_001))  # the upper 16 bits come from the stored counter
            await wait_for(lambda: fcnts(r.sink, "sensor-1") == [70_001])
            assert r.device_counter("sensor-1", "duplicates") == 1
            assert r.device_counter("sensor-1", "replays") == 1

    store = Store(db_path)
    asyncio.run(first_life(StoreState(store)))
    store.close()
    store = Store(db_path)
    try:
        asyncio.run(second_life(StoreState(store)))
    finally:
        store.close()


class CheckingSink(RecordingSink):
    """Asserts the frame counter is durable before a frame's readings are emitted."""

    def __init__(self, db_path: Path, key: str) -> None:
        super().__init__()
        self.db_path = db_path
        self.key = key
        self.checked = 0

    def emit(self, readings: Any) -> None:
        batch = list(readings)
        fcnt = next(x.value for x in batch if x.point.endswith("/fcnt"))
        reader = Store(self.db_path)  # a second connection sees only what was committed
        try:
            stored = reader.kv_get(self.key)
        finally:
            reader.close()
        assert stored is not None
        assert int.from_bytes(stored, "big") == fcnt
        self.checked += 1
        super().emit(batch)


def test_counter_is_persisted_before_readings_are_emitted(db_path: Path) -> None:
    tables = demo_devices(1, random_keys=True)

    async def go(state: StoreState) -> None:
        port = free_udp_port()
        cfg = LoraForwarderDriver.parse_config({"port": port, "devices": tables}, file="t",
                                               path="p")
        driver = LoraForwarderDriver(cfg, context("lora", state))
        sink = CheckingSink(db_path, driver.receiver.devices[0].state_key)
        sim = ForwarderSimulator("127.0.0.1", port, parse_devices(tables), interval=0.02)
        async with running(driver, sink):
            await wait_for(lambda: driver.bound is not None)
            await sim.open()
            sim.resume()
            await wait_for(lambda: sink.checked >= 5)
            await sim.close()

    store = Store(db_path)
    try:
        asyncio.run(go(StoreState(store)))
    finally:
        store.close()


def test_relaxed_device_may_restart_its_counter(state: StoreState) -> None:
    tables = [{**demo_devices(1, random_keys=True)[0], "fcnt_check": "relaxed"}]

    async def go() -> None:
        async with rig(state, tables) as r:
            dev = r.devices[0]
            for n in (500, 501, 0, 1):
                r.push(uplink_for(dev, n))
            await wait_for(lambda: fcnts(r.sink, "sensor-1") == [500, 501, 0, 1])
            r.push(uplink_for(dev, 1))
            await r.settle(n=5)
            assert r.device_counter("sensor-1", "fcnt_resets") == 1
            assert r.device_counter("sensor-1", "duplicates") == 1
    asyncio.run(go())


def test_stat_goes_to_health_and_foreign_gateways_are_ignored(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, gateways=[EUI]) as r:
            stat = {"time": "2014-01-12 08:59:28 GMT", "rxnb": 9, "rxok": 8, "temp": 40.5}
            r.client.send(gwmp.build_push_data(1, EUI, {"stat": stat}))
            assert await r.client.answer() == bytes([2, 0, 1, 1])
            r.client.send(gwmp.build_push_data(2, "0000000000000BAD",
                                               {"rxpk": [gwmp.rxpk_json(gwmp.RxPacket(
                                                   data=uplink_for(r.devices[0], 0)))]}))
            await wait_for(lambda: r.counter("foreign_gateway") == 1)
            await wait_for(lambda: "stat" in r.health["concentrator"].get(EUI, {}))
            assert r.health["concentrator"][EUI]["stat"] == stat
            assert r.client.answers.empty()
            assert r.sink.readings == []
    asyncio.run(go())


def test_silent_forwarder_is_reported_and_recovers(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, silence="1s") as r:
            await wait_for(lambda: r.health["forwarder"]["state"] == "failing", timeout=4)
            assert "no datagram" in r.health["forwarder"]["last_error"]
            r.client.send(gwmp.build_pull_data(1, EUI))
            await wait_for(lambda: r.health["forwarder"]["state"] == "ok")
    asyncio.run(go())


def test_port_in_use_is_retried_until_free(state: StoreState) -> None:
    async def go() -> None:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        cfg = LoraForwarderDriver.parse_config({"port": port}, file="t", path="p")
        driver = LoraForwarderDriver(cfg, context("lora", state))
        async with running(driver, RecordingSink()):
            await wait_for(lambda: driver.health.extra["forwarder"]["state"] == "failing")
            assert "cannot listen" in driver.health.extra["forwarder"]["last_error"]
            blocker.close()
            await wait_for(lambda: driver.bound == ("127.0.0.1", port), timeout=10)
    asyncio.run(go())


def test_contract_simulator_stop_start_malformed(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with forwarder_setup(tmp_path, interval=0.05) as setup:
            cfg = LoraForwarderDriver.parse_config(setup.config, file="t", path="p")
            driver = LoraForwarderDriver(cfg, context("lora", state))
            sink = RecordingSink()
            async with running(driver, sink):
                await wait_for(lambda: len(fcnts(sink, "sensor-1")) >= 3)
                await setup.stop()
                await asyncio.sleep(0.2)
                paused = len(sink.readings)
                await asyncio.sleep(0.3)
                assert len(sink.readings) == paused
                await setup.start()
                await wait_for(lambda: len(sink.readings) > paused)
                await setup.inject_malformed()
                await wait_for(lambda: driver.health.counters.get("bad_json", 0) >= 1)
                await setup.heal()
                before = len(fcnts(sink, "sensor-2"))
                await wait_for(lambda: len(fcnts(sink, "sensor-2")) > before)
            values = fcnts(sink, "sensor-1")
            assert values == sorted(set(values))  # strictly increasing: nothing replayed
            for x in sink.readings:
                assert x.point.startswith("lora/sensor-")
    asyncio.run(go())


_FRAMES = itertools.count(1)
_TABLES = demo_devices(1, random_keys=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=1, max_size=48) | st.builds(
    lambda junk, body: bytes([2, 0, 1, 0]) + bytes.fromhex(EUI) + body, st.booleans(),
    st.binary(max_size=60) | st.builds(lambda d: b'{"rxpk":[{"data":"' + d + b'"}]}',
                                       st.binary(max_size=20).map(__import__("base64")
                                                                   .b64encode))),
    min_size=1, max_size=25))
def test_random_datagrams_over_udp_never_stop_the_driver(state: StoreState,
                                                         datagrams: list[bytes]) -> None:
    async def go() -> None:
        async with rig(state, _TABLES) as r:
            for d in datagrams:
                r.client.send(d)
            n = next(_FRAMES)  # the state store lives across examples: a new frame each time
            r.push(uplink_for(r.devices[0], n))
            await wait_for(lambda: r.counter("datagrams") >= len(datagrams) + 1)
            await wait_for(lambda: fcnts(r.sink, "sensor-1") == [n])
    asyncio.run(go())
