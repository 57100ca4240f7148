"""Downlinks (writes): the forwarder driver and the simulated forwarder and devices over real
UDP on loopback with a SQLite state store, and the modem driver against the module on a pty."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from buffer.store import Store
from drivers.api import ConfigError, WriteError, load
from drivers.lora import LoraForwarderDriver, LoraModemDriver, downlink, lorawan
from drivers.lora.config import DeviceConfig, DownlinkConfig
from drivers.lora.gwmp import RxPacket
from drivers.lora.lorawan import MType
from drivers.lora.sim import ForwarderSimulator, demo_devices, free_udp_port, parse_devices
from drivers.lora.simmodem import ModemSimulator
from drivers.lora.simnode import SimNode
from tests.drivers.lora.conftest import RecordingSink, StoreState, context, running, wait_for

LAMP, DIM = "lora/light-1/lamp", "lora/light-1/dim"


def light(**extra: Any) -> list[dict[str, Any]]:
    """A street light: lamp on/off (unconfirmed, FPort 10), dim level (confirmed, FPort 11)."""
    return [{**demo_devices(1, random_keys=True)[0], "name": "light-1", "decoder": "struct",
             "fields": [{"name": "lamp", "offset": 0, "type": "bool", "bit": 0},
                        {"name": "dim", "offset": 1, "type": "u8", "unit": "%"}],
             "downlinks": [{"name": "lamp", "fport": 10, "type": "bool"},
                           {"name": "dim", "fport": 11, "type": "u8", "confirmed": True}],
             **extra}]


class Rig:
    def __init__(self, driver: LoraForwarderDriver, sim: ForwarderSimulator,
                 sink: RecordingSink) -> None:
        self.driver, self.sim, self.sink = driver, sim, sink
        self.node = next(iter(sim.nodes.values()))
        self.rounds = 0

    async def round(self) -> None:
        """One PULL_DATA and one uplink; returns once the driver has handled the uplink."""
        before = self.driver.health.counters.get("packets", 0)
        self.sim.send_round()
        await wait_for(lambda: self.driver.health.counters.get("packets", 0) > before)

    def queued(self) -> int:
        return self.driver.downlinks.queued("light-1")

    def frame(self, index: int = -1) -> bytes:
        return base64.b64decode(self.sim.txpks[index]["data"])

    def tmst(self) -> int:
        return self.sim.uplink_tmst[self.node.cfg.dev_addr or ""]


@contextlib.asynccontextmanager
async def rig(state: Any, tables: list[dict[str, Any]], *, fcnt_start: int = 0,
              **extra: Any) -> AsyncIterator[Rig]:
    port = free_udp_port()
    cfg = LoraForwarderDriver.parse_config(
        {"port": port, "devices": tables, "tx_ack_timeout": "400ms", **extra}, file="test",
        path="drivers.lora_forwarder[0]")
    driver = LoraForwarderDriver(cfg, context("lora", state))
    sink = RecordingSink()
    sim = ForwarderSimulator("127.0.0.1", port, parse_devices(tables), stat_every=0,
                             fcnt_start=fcnt_start)
    async with running(driver, sink):
        await wait_for(lambda: driver.bound is not None)
        await sim.open()
        try:
            yield Rig(driver, sim, sink)
        finally:
            await sim.close()


async def queue(r: Rig, point: str, value: Any) -> asyncio.Task[Any]:
    """Start a write and wait until its downlink waits for the device's next uplink."""
    before = r.queued()
    task = asyncio.create_task(r.driver.write(point, value))
    await wait_for(lambda: r.queued() > before or task.done())
    return task


def test_downlink_reaches_the_device_and_changes_its_state(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, light()) as r:
            assert sorted(r.driver.writable_points()) == [DIM, LAMP]
            await r.round()
            assert r.sink.values(LAMP) == [False]
            task = await queue(r, LAMP, True)
            await r.round()  # the uplink that opens the receive windows
            assert await asyncio.wait_for(task, 2) is True
            assert r.node.state["lamp"] is True
            assert r.node.counters["downlinks"] == 1
            await r.round()  # the light reports its new state
            assert r.sink.values(LAMP) == [False, False, True]
            assert r.driver.health.counters["tx_ok"] == 1
    asyncio.run(go())


def test_frame_is_encrypted_and_signed_for_the_downlink_direction(state: StoreState) -> None:
    async def go() -> None:
        tables = light()
        async with rig(state, tables) as r:
            await r.round()
            task = await queue(r, LAMP, True)
            await r.round()
            await asyncio.wait_for(task, 2)
            phy = r.frame()
        dev = parse_devices(tables)[0]
        nwk, app = bytes.fromhex(dev.nwk_skey or ""), bytes.fromhex(dev.app_skey or "")
        frame = lorawan.parse_data_frame(phy)
        assert frame.mtype is MType.UNCONFIRMED_DOWN
        assert frame.dev_addr_hex == dev.dev_addr
        assert (frame.fport, frame.fcnt16, frame.ack) == (10, 0, False)
        assert frame.frm_payload != b"\x01"  # encrypted on the air
        assert lorawan.crypt_frm_payload(app, frame.frm_payload, dev_addr=frame.dev_addr,
                                         fcnt=0, uplink=False) == b"\x01"
        assert lorawan.verify_mic(frame, nwk, 0)
        assert lorawan.compute_mic(nwk, frame.signed, dev_addr=frame.dev_addr, fcnt=0,
                                   uplink=True) != frame.mic  # B0 carries the direction
        # The device refuses the same frame with other keys, and the same frame again.
        stranger = SimNode(parse_devices([{**tables[0], "nwk_skey": "00" * 16}])[0])
        assert "MIC does not match" in (stranger.receive(phy) or "")
        assert stranger.state["lamp"] is False
        assert stranger.counters["mic_errors"] == 1
        node = SimNode(dev)
        assert "lamp False -> True" in (node.receive(phy) or "")
        assert "refused" in (node.receive(phy) or "")
        assert node.counters["fcnt_errors"] == 1
    asyncio.run(go())


@pytest.mark.parametrize(("options", "delay", "freq", "datr"), [
    ({}, 1_000_000, 868.1, "SF7BW125"),
    ({"rx1_delay": "3s"}, 3_000_000, 868.1, "SF7BW125"),
    ({"rx_window": "rx2"}, 2_000_000, 869.525, "SF12BW125"),
    ({"rx_window": "rx2", "rx2_frequency": 869.7, "rx2_datarate": "SF9BW125", "tx_power": 27},
     2_000_000, 869.7, "SF9BW125"),
])
def test_txpk_timing_and_window(state: StoreState, options: dict[str, Any], delay: int,
                                freq: float, datr: str) -> None:
    async def go() -> None:
        async with rig(state, light(), **options) as r:
            await r.round()
            task = await queue(r, LAMP, True)
            await r.round()
            uplink = r.tmst()
            await asyncio.wait_for(task, 2)
            txpk = r.sim.txpks[0]
            assert txpk["tmst"] == (uplink + delay) & 0xFFFF_FFFF
            assert (txpk["freq"], txpk["datr"]) == (freq, datr)
            assert txpk["imme"] is False
            assert txpk["ipol"] is True
            assert (txpk["modu"], txpk["codr"], txpk["rfch"]) == ("LORA", "4/5", 0)
            assert txpk["powe"] == options.get("tx_power", 14)
            assert txpk["size"] == len(r.frame())
            assert r.node.state["lamp"] is True
    asyncio.run(go())


def test_rx2_when_the_uplink_gives_no_rx1_parameters() -> None:
    packet = lorawan_packet(freq=None)
    window = downlink.rx_window(packet, prefer="rx1", rx1_delay=1.0, rx2_freq=869.525,
                                rx2_datr="SF12BW125")
    assert window == downlink.Window("RX2", 2_000_000 + 5, 869.525, "SF12BW125", "4/5")
    assert downlink.rx_window(lorawan_packet(tmst=None), prefer="rx1", rx1_delay=1.0,
                              rx2_freq=869.525, rx2_datr="SF12BW125") is None
    wrapped = downlink.rx_window(lorawan_packet(tmst=0xFFFF_FFFF), prefer="rx1",
                                 rx1_delay=1.0, rx2_freq=869.525, rx2_datr="SF12BW125")
    assert wrapped is not None
    assert wrapped.tmst == 999_999  # the concentrator's 32-bit counter wraps


def lorawan_packet(*, freq: float | None = 868.3, tmst: int | None = 5) -> RxPacket:
    return RxPacket(data=b"", freq=freq, datr="SF10BW125", tmst=tmst)


def test_fcnt_down_increases_is_stored_first_and_survives_a_restart(db_path: Path) -> None:
    tables = light()
    key = f"lora/fcnt_down/{tables[0]['dev_addr']}/"
    seen: list[tuple[int, int]] = []

    def stored_when_sent(r: Rig) -> None:
        def check(_line: str) -> None:
            reader = Store(db_path)  # a second connection sees only what was committed
            try:
                dev = r.driver.receiver.devices[0]
                raw = reader.kv_get(dev.down_key)
            finally:
                reader.close()
            assert dev.down_key.startswith(key)
            seen.append((lorawan.parse_data_frame(r.frame()).fcnt16,
                         int.from_bytes(raw or b"\xff" * 4, "big")))
        r.sim.report = check

    async def life(state: StoreState, writes: int) -> list[int]:
        async with rig(state, tables, fcnt_start=100 * (3 - writes)) as r:
            stored_when_sent(r)
            await r.round()
            for n in range(writes):
                task = await queue(r, LAMP, n % 2 == 0)
                await r.round()
                await asyncio.wait_for(task, 2)
            return [lorawan.parse_data_frame(r.frame(i)).fcnt16 for i in range(writes)]

    for writes, expected in ((2, [0, 1]), (1, [2])):
        store = Store(db_path)
        try:
            assert asyncio.run(life(StoreState(store), writes)) == expected
        finally:
            store.close()
    assert seen == [(0, 0), (1, 1), (2, 2)]


def test_tx_ack_error_is_rejected(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, light()) as r:
            await r.round()
            r.sim.tx_error = "TOO_LATE"
            task = await queue(r, LAMP, True)
            await r.round()
            with pytest.raises(WriteError) as err:
                await asyncio.wait_for(task, 2)
            assert err.value.reason == "rejected"
            assert "TOO_LATE" in err.value.detail
            assert r.node.state["lamp"] is False
            assert r.driver.health.counters["tx_rejected"] == 1
            assert r.queued() == 0
    asyncio.run(go())


def test_no_tx_ack_is_a_timeout(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, light()) as r:
            await r.round()
            r.sim.tx_silent = True
            task = await queue(r, LAMP, True)
            await r.round()
            with pytest.raises(WriteError) as err:
                await asyncio.wait_for(task, 2)
            assert err.value.reason == "timeout"
            assert "TX_ACK" in err.value.detail
            assert r.sim.counters["pull_resp"] == 1
    asyncio.run(go())


def test_confirmed_downlink_is_done_only_after_the_ack_uplink(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, light()) as r:
            await r.round()
            task = await queue(r, DIM, 40)
            await r.round()
            await wait_for(lambda: r.driver.health.counters.get("tx_ok", 0) == 1)
            await asyncio.sleep(0.2)
            assert not task.done()  # the forwarder sent it; the device has not said so yet
            assert r.node.state["dim"] == 40
            assert lorawan.parse_data_frame(r.frame()).mtype is MType.CONFIRMED_DOWN
            await r.round()  # carries FCtrl.ACK
            assert await asyncio.wait_for(task, 2) == 40
            assert r.sink.values(DIM)[-1] == 40
            # A device that does not take the downlink (its FCntDown is ahead) sends no ACK.
            r.node.fcnt_down = 1000
            task = await queue(r, DIM, 80)
            await r.round()
            await wait_for(lambda: r.driver.health.counters.get("tx_ok", 0) == 2)
            await r.round()
            with pytest.raises(WriteError) as err:
                await asyncio.wait_for(task, 2)
            assert err.value.reason == "timeout"
            assert "no ACK" in err.value.detail
            assert r.node.state["dim"] == 40
    asyncio.run(go())


def test_cancelling_a_write_removes_its_queued_downlink(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, light()) as r:
            await r.round()
            task = await queue(r, LAMP, True)
            assert r.queued() == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert r.queued() == 0
            await r.round()
            await r.round()
            assert r.sim.counters["pull_resp"] == 0
            assert r.node.state["lamp"] is False
            counters = r.driver.health.snapshot()["devices"]["light-1"]["counters"]
            assert counters["downlinks_withdrawn"] == 1
    asyncio.run(go())


def test_refusals_before_anything_is_queued(state: StoreState) -> None:
    async def go() -> None:
        async with rig(state, light()) as r:
            with pytest.raises(WriteError) as err:
                await r.driver.write(LAMP, True)
            assert err.value.reason == "unavailable"  # no PULL_DATA yet
            await r.round()
            for point, value, reason in ((DIM, 300, "bad-value"), (DIM, "bright", "bad-value"),
                                         ("lora/light-1/fcnt", 1, "not-writable")):
                with pytest.raises(WriteError) as err:
                    await r.driver.write(point, value)
                assert err.value.reason == reason
            assert r.queued() == 0
    asyncio.run(go())


def _dl(**table: Any) -> DownlinkConfig:
    return load(DownlinkConfig, {"name": "x", "fport": 1, **table}, file="t", path="d")


@pytest.mark.parametrize(("table", "value", "payload"), [
    ({"type": "bool"}, True, "01"),
    ({"type": "u16", "endian": "little"}, 0x1234, "3412"),
    ({"type": "i8"}, -2, "fe"),
    ({"type": "u8", "scale": 0.5, "prefix": "a0"}, 21.5, "a02b"),
    ({"type": "struct", "format": ">h", "scale": 0.1}, -1.5, "fff1"),
    ({"type": "struct", "format": "<f"}, 1.0, "0000803f"),
])
def test_value_encoding_round_trips(table: dict[str, Any], value: Any, payload: str) -> None:
    cfg = _dl(**table)
    assert downlink.encode_value(cfg, value).hex() == payload
    assert downlink.decode_value(cfg, bytes.fromhex(payload)) == value


@pytest.mark.parametrize(("table", "value"), [
    ({"type": "u8"}, 256), ({"type": "u8"}, -1), ({"type": "u8", "scale": 0.5}, 1.25),
    ({"type": "bool"}, 2), ({"type": "i16"}, True), ({"type": "struct", "format": ">b"}, 200),
])
def test_values_that_do_not_fit(table: dict[str, Any], value: Any) -> None:
    with pytest.raises(WriteError) as err:
        downlink.encode_value(_dl(**table), value)
    assert err.value.reason == "bad-value"


def test_downlink_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        load(DeviceConfig, {"name": "d", "downlinks": [
            {"name": "a", "fport": 0, "type": "u8"},
            {"name": "a", "fport": 2, "type": "struct", "format": "hh"},
            {"name": "b", "fport": 2, "type": "u8", "prefix": "abc", "format": ">h"}]},
             file="gateway.toml", path="devices[0]")
    text = str(err.value)
    assert "devices[0].downlinks[0].fport" in text
    assert "devices[0].downlinks[1].format" in text
    assert "devices[0].downlinks[2].prefix" in text
    assert "devices[0].downlinks[2].format: only type struct" in text
    with pytest.raises(ConfigError) as err:
        load(DeviceConfig, {"name": "d", "downlinks": [
            {"name": "a", "fport": 1, "type": "u8"}, {"name": "a", "fport": 2, "type": "bool"}]},
             file="gateway.toml", path="devices[0]")
    assert 'devices[0].downlinks: downlink name "a" is used twice' in str(err.value)


# -- the modem --------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def modem(tmp_path: Path, state: Any, tables: list[dict[str, Any]],
                **options: Any) -> AsyncIterator[tuple[LoraModemDriver, ModemSimulator]]:
    link = tmp_path / "ttyLORA"
    sim = ModemSimulator(link, parse_devices(tables), interval=0.05)
    sim.plug()
    cfg = LoraModemDriver.parse_config(
        {"port": str(link), "reply_timeout": "300ms", "reopen_min": "50ms",
         "reopen_max": "300ms", "tx_timeout": "500ms", "devices": tables, **options},
        file="test", path="drivers.lora_modem[0]")
    driver = LoraModemDriver(cfg, context("uart", state, "lora_modem"))
    try:
        async with running(driver, RecordingSink()):
            sim.resume()
            await wait_for(lambda: sim.counters["packets"] >= 1)
            yield driver, sim
    finally:
        await sim.close()


def test_modem_transmits_and_the_device_obeys(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        lines: list[str] = []
        async with modem(tmp_path, state, light()) as (driver, sim):
            sim.report = lines.append
            assert sorted(driver.writable_points()) == ["uart/light-1/dim", "uart/light-1/lamp"]
            assert await asyncio.wait_for(driver.write("uart/light-1/lamp", True), 3) is True
            assert sim.nodes[0].state["lamp"] is True
            assert len(sim.transmitted) == 1
            frame = lorawan.parse_data_frame(sim.transmitted[0])
            assert (frame.fport, frame.fcnt16, frame.uplink) == (10, 0, False)
            tx = next(i for i, c in enumerate(sim.commands) if c.startswith("radio tx "))
            assert sim.commands[tx - 1] == "radio rxstop"
            await wait_for(lambda: "radio rx 0" in sim.commands[tx + 1:])
            assert any("lamp False -> True" in line for line in lines)
            await driver.write("uart/light-1/lamp", False)
            assert lorawan.parse_data_frame(sim.transmitted[1]).fcnt16 == 1
    asyncio.run(go())


@pytest.mark.parametrize(("reply", "result", "reason"), [
    ("busy", "radio_tx_ok", "rejected"),
    ("no_free_ch", "radio_tx_ok", "rejected"),
    ("invalid_param", "radio_tx_ok", "device-error"),
    (None, "radio_err", "device-error"),
])
def test_modem_transmit_errors(tmp_path: Path, state: StoreState, reply: str | None,
                               result: str, reason: str) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, light()) as (driver, sim):
            sim.tx_reply, sim.tx_result = reply, result
            with pytest.raises(WriteError) as err:
                await asyncio.wait_for(driver.write("uart/light-1/lamp", True), 3)
            assert err.value.reason == reason
            assert driver.health.counters["tx_failed"] == 1
            sim.tx_reply, sim.tx_result = None, "radio_tx_ok"
            before = sim.counters["packets"]
            await wait_for(lambda: sim.counters["packets"] > before)  # receiving again
            assert await driver.write("uart/light-1/lamp", True) is True
    asyncio.run(go())


def test_modem_unplugged_is_unavailable(tmp_path: Path, state: StoreState) -> None:
    async def go() -> None:
        async with modem(tmp_path, state, light()) as (driver, sim):
            sim.unplug()
            await wait_for(lambda: not driver.port_health.ok)
            with pytest.raises(WriteError) as err:
                await driver.write("uart/light-1/lamp", True)
            assert err.value.reason == "unavailable"
    asyncio.run(go())



def test_sim_cli_prints_downlinks_and_state_changes(state: StoreState,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.drivers.lora.test_cli import run  # noqa: PLC0415 - the CLI test's parser

    port = free_udp_port()

    async def go() -> Any:
        cfg = LoraForwarderDriver.parse_config({"port": port, "devices": demo_devices()},
                                               file="t", path="p")
        driver = LoraForwarderDriver(cfg, context("lora", state))
        async with running(driver, RecordingSink()):
            await wait_for(lambda: driver.bound is not None)
            cli = asyncio.create_task(asyncio.to_thread(run, [
                "sim", "lora-forwarder", "--port", str(port), "--interval", "50ms",
                "--count", "40"]))
            await wait_for(lambda: driver.health.counters.get("pull_data", 0) >= 1)
            value = await asyncio.wait_for(driver.write("lora/sensor-2/valve", True), 5)
            assert await cli == 0
            return value

    assert asyncio.run(go()) is True
    out = capsys.readouterr().out
    assert "SF7BW125 868.1MHz tmst" in out
    assert "sensor-2: confirmed downlink FCntDown 0 FPort 10 payload 01: valve False -> True" in out
    assert "PULL_RESP 1, downlinks 1" in out
