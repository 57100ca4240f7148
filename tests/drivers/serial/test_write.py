"""Writes: templates, replies and the port discipline, over real pty pairs and the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from pathlib import Path
from typing import Any

import pytest

from drivers.api import Quality, WriteError
from drivers.serial import SerialDriver
from drivers.serial._bus import BusLock
from drivers.serial.framing import make_framer, wire_frame
from drivers.serial.profiles import profile_config
from drivers.serial.sim import SerialSimulator
from drivers.serial.writes import BadValueError, Confirmed, Refused, WriteTemplate

FAST = {"reopen_min": "50ms", "reopen_max": "300ms"}
LEVEL, RELAY = "cab/lamp/level", "cab/lamp/relay"


def dimmer(link: Path, interval: str = "10s", timeout: str = "200ms") -> dict[str, Any]:
    table = profile_config("ascii-dimmer", str(link), **FAST)
    table["devices"][0]["query"] |= {"interval": interval, "timeout": timeout}
    return table


async def failure(coro: Any) -> WriteError:
    with pytest.raises(WriteError) as err:
        await coro
    return err.value


def template(table: dict[str, Any], index: int = 0) -> WriteTemplate:
    cfg = SerialDriver.parse_config(table, file="t", path="p")
    dev = cfg.devices[0]
    return WriteTemplate(dev.writes[index], dev.decoder, cfg.framing)


def test_ascii_write_confirms_from_the_reply_and_later_readings_show_it(
        harness, sink, tmp_path) -> None:
    events: list[str] = []

    async def body() -> tuple[Any, SerialDriver, dict[str, float]]:
        async with SerialSimulator(tmp_path / "tty", "ascii-dimmer", seed=1,
                                   on_event=events.append) as sim:
            drv = harness.driver(dimmer(sim.link, interval="50ms", timeout="40ms"), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: bool(sink.good(LEVEL)), what="a first reading")
                assert sink.good(LEVEL)[-1].value == 100
                result = await drv.write(LEVEL, 40)
                seen = len(sink.readings)
                await harness.until(lambda: any(r.point == LEVEL for r in sink.readings[seen:]),
                                    what="a reading after the write")
            return result, drv, dict(sim.profile.state)

    result, drv, state = harness.run(body())
    assert result == 40
    assert state["level"] == 40
    assert sink.good(LEVEL)[-1].value == 40  # the device now reports the new level
    assert events == ["write b'SET DIM 40': level 100 -> 40"]
    assert set(drv.writable_points()) == {LEVEL, RELAY}
    assert drv.health.devices["lamp"].counters["write_ok"] == 1


def test_relay_write_is_confirmed_by_reading_it_back(harness, sink, tmp_path) -> None:
    async def body() -> tuple[Any, int]:
        async with SerialSimulator(tmp_path / "tty", "ascii-dimmer", seed=2) as sim:
            drv = harness.driver(dimmer(sim.link), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
                answers = sim.stats["answers"]
                result = await drv.write(RELAY, False)
                return result, sim.stats["answers"] - answers

    result, answers = harness.run(body())
    assert result is False
    assert answers == 2  # "OK", then the READ answer
    assert sink.good(RELAY)[-1].value is False  # the read-back is a reading too


def test_binary_write_carries_the_checksum_and_puts_the_sensor_to_sleep(
        harness, sink, tmp_path) -> None:
    events: list[str] = []

    async def body() -> tuple[list[Any], int, int]:
        async with SerialSimulator(tmp_path / "tty", "pm-sensor", rate=50, seed=3,
                                   on_event=events.append) as sim:
            drv = harness.driver(profile_config("pm-sensor", str(sim.link), **FAST), "air")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good("air/pm/pm2_5")) >= 3)
                asleep = await drv.write("air/pm/running", 0)
                await asyncio.sleep(0.1)
                count = len(sink.good("air/pm/pm2_5"))
                await asyncio.sleep(0.3)
                during_sleep = len(sink.good("air/pm/pm2_5")) - count
                awake = await drv.write("air/pm/running", 1)
                await harness.until(lambda: len(sink.good("air/pm/pm2_5")) > count + 3,
                                    what="frames after waking")
            return [asleep, awake], during_sleep, drv.health.devices["pm"].counters.get(
                "malformed", 0)

    results, during_sleep, malformed = harness.run(body())
    assert results == [0, 1]
    assert during_sleep == 0
    # the sensor checks the sum16: a command with a wrong one would have been ignored
    assert events == ["write 42 4d e4 00 00 01 73: running -> asleep",
                      "write 42 4d e4 00 01 01 74: asleep -> running"]
    assert malformed == 0  # replies were not decoded as stream frames
    assert all(r.quality == Quality.GOOD for r in sink.readings)


def test_device_error_reply_gives_its_code(harness, sink, tmp_path) -> None:
    async def body() -> tuple[WriteError, float]:
        async with SerialSimulator(tmp_path / "tty", "ascii-dimmer", seed=4) as sim:
            drv = harness.driver(dimmer(sim.link), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
                err = await failure(drv.write(LEVEL, 5))  # below the device's minimum level
            return err, sim.profile.state["level"]

    err, level = harness.run(body())
    assert (err.reason, err.code) == ("device-error", 3)
    assert "ERR 3" in err.detail
    assert level == 100


def test_confirmed_value_that_differs_is_a_mismatch(harness, sink, tmp_path) -> None:
    async def body() -> WriteError:
        async with SerialSimulator(tmp_path / "tty", "ascii-dimmer", seed=5) as sim:
            sim.profile.state["limit"] = 70  # too hot: the dimmer caps its level
            drv = harness.driver(dimmer(sim.link), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
                return await failure(drv.write(LEVEL, 90))

    err = harness.run(body())
    assert (err.reason, err.value) == ("mismatch", 70)


def test_no_reply_is_a_timeout_and_the_command_went_out_whole(harness, sink, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> tuple[WriteError, bytes, float]:
        drv = harness.driver(dimmer(dev.link), "cab")
        async with harness.running(drv, sink):
            await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
            loop = asyncio.get_running_loop()
            started = loop.time()
            err = await failure(drv.write(LEVEL, 40))
            took = loop.time() - started
            got = await dev.read(lambda b: b"SET" in b)
        return err, got, took

    err, got, took = harness.run(body())
    assert err.reason == "timeout"
    assert 0.4 <= took < 1.5  # the template's 500ms
    assert got.replace(b"READ\r\n", b"") == b"SET DIM 40\r\n"


def test_unplugged_port_is_unavailable_then_writes_work_again(harness, sink, tmp_path) -> None:
    async def body() -> tuple[WriteError, Any]:
        async with SerialSimulator(tmp_path / "tty", "ascii-dimmer", seed=6) as sim:
            drv = harness.driver(dimmer(sim.link), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
                await sim.stop()
                await harness.until(lambda: not drv.port_health.ok, what="port lost")
                err = await failure(drv.write(LEVEL, 40))
                await sim.start()
                await harness.until(lambda: drv.port_health.ok, what="port back")
                return err, await drv.write(LEVEL, 60)

    err, after = harness.run(body())
    assert err.reason == "unavailable"
    assert after == 60


def test_port_lost_while_waiting_for_the_reply_is_unavailable(harness, sink, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> tuple[WriteError, float]:
        table = dimmer(dev.link)
        table["devices"][0]["writes"][0]["timeout"] = "5s"
        drv = harness.driver(table, "cab")
        async with harness.running(drv, sink):
            await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
            loop = asyncio.get_running_loop()
            started = loop.time()
            pending = asyncio.create_task(drv.write(LEVEL, 40))
            await dev.read(lambda b: b"SET DIM 40\r\n" in b)
            dev.close()  # unplugged before answering
            err = await failure(pending)
            return err, loop.time() - started

    err, took = harness.run(body())
    assert err.reason == "unavailable"
    assert took < 2.0  # not the 5 s reply timeout


def test_text_write_with_an_odd_value_is_refused_and_nothing_is_sent(
        harness, sink, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> tuple[list[WriteError], bytes]:
        drv = harness.driver(dimmer(dev.link), "cab")
        async with harness.running(drv, sink):
            await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
            errors = [await failure(drv.write(LEVEL, v))
                      for v in (150, -1, 12.5, "40", math.nan, None, True)]
            errors.append(await failure(drv.write(RELAY, 2)))
            errors.append(await failure(drv.write("cab/lamp/temperature", 3)))
            await asyncio.sleep(0.3)
            got = b""
            with contextlib.suppress(BlockingIOError):
                got = os.read(dev.master, 4096)
        return errors, got

    errors, got = harness.run(body())
    assert [e.reason for e in errors] == ["bad-value"] * 8 + ["not-writable"]
    assert "above the maximum 100" in errors[0].detail
    assert b"SET" not in got


def test_line_injection_through_a_text_value_is_refused() -> None:
    table = {"port": "/dev/null", "devices": [{
        "name": "sign", "decoder": {"type": "keyvalue"},
        "writes": [{"point": "text", "type": "str", "command": "SHOW {value}\r\n",
                    "reply": "OK", "confirm": "ack"}]}]}
    tpl = template(table)
    assert tpl.encode("HELLO") == (b"SHOW HELLO\r\n", "HELLO")
    with pytest.raises(BadValueError, match="control characters"):
        tpl.encode("HI\r\nSET DIM 0")
    with pytest.raises(BadValueError, match="Latin-1"):
        tpl.encode("€")


def test_garbage_during_a_write_is_not_taken_as_the_reply(harness, sink, raw_pty) -> None:
    dev = raw_pty()

    async def body() -> tuple[Any, WriteError, Any, SerialDriver]:
        drv = harness.driver(dimmer(dev.link), "cab")
        async with harness.running(drv, sink):
            await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
            pending = asyncio.create_task(drv.write(LEVEL, 40))
            await dev.read(lambda b: b"SET DIM 40\r\n" in b)
            dev.write(b"\x00\xff\x13#?gar\xe6bage\r\n")
            dev.write(b"OK DIX 40\r\n")  # close, but not the reply
            dev.write(b"\r\n\r\n" + bytes(range(0x80, 0xC0)) + b"\r\n")
            dev.write(b"xxOK DIM 40\r\n")  # noise glued to a reply: not a reply
            await asyncio.sleep(0.05)
            assert not pending.done()
            dev.write(b"OK DIM 40\r\n")
            first = await pending
            only_garbage = asyncio.create_task(drv.write(LEVEL, 50))
            await dev.read(lambda b: b"SET DIM 50\r\n" in b)
            dev.write(b"OK\r\nERR\r\n\xff" * 3)
            err = await failure(only_garbage)
            again = asyncio.create_task(drv.write(LEVEL, 60))
            await dev.read(lambda b: b"SET DIM 60\r\n" in b)
            dev.write(b"OK DIM 60\r\n")
            return first, err, await again, drv

    first, err, again, drv = harness.run(body())
    assert (first, again) == (40, 60)
    assert err.reason == "timeout"
    assert drv.health.counters["unsolicited_frames"] >= 6


def test_writes_never_interleave_with_queries(harness, sink, tmp_path) -> None:
    async def body() -> tuple[list[Any], dict[str, int], SerialDriver]:
        async with SerialSimulator(tmp_path / "tty", "ascii-dimmer", seed=7,
                                   latency=0.03) as sim:
            drv = harness.driver(dimmer(sim.link, interval="50ms", timeout="45ms"), "cab")
            async with harness.running(drv, sink):
                await harness.until(lambda: len(sink.good(LEVEL)) >= 2)
                results = []
                for level in range(20, 100, 5):
                    results.append(await drv.write(LEVEL, level))
                    await asyncio.sleep(0.013)  # land anywhere in the poll cycle
                await harness.until(lambda: sink.good(LEVEL)[-1].value == 95)
            return results, dict(sim.stats), drv

    results, stats, drv = harness.run(body())
    assert results == list(range(20, 100, 5))
    assert stats["overlaps"] == 0  # no command while an answer was on its way
    assert not sink.quality("TIMEOUT")
    assert not sink.quality("MALFORMED")
    assert drv.health.devices["lamp"].counters["write_ok"] == len(results)


def test_a_waiting_write_goes_before_waiting_polls(harness) -> None:
    async def body() -> list[str]:
        bus, order = BusLock(), []

        async def use(name: str, *, urgent: bool) -> None:
            async with bus.hold(urgent=urgent):
                order.append(name)
                await asyncio.sleep(0.01)

        async with bus.hold():
            tasks = [asyncio.create_task(use("poll-1", urgent=False)),
                     asyncio.create_task(use("poll-2", urgent=False))]
            await asyncio.sleep(0)
            cancelled = asyncio.create_task(use("cancelled", urgent=True))
            tasks.append(asyncio.create_task(use("write", urgent=True)))
            await asyncio.sleep(0)
            cancelled.cancel()
            order.append("holder")
        await asyncio.gather(*tasks)
        assert not bus.locked
        return order

    assert harness.run(body()) == ["holder", "write", "poll-1", "poll-2"]


def test_binary_template_fills_in_value_and_checksum() -> None:
    cfg = profile_config("pm-sensor", "/dev/null")
    tpl = template(cfg)
    assert tpl.encode(1) == (bytes.fromhex("42 4D E4 00 01 01 74"), 1)
    with pytest.raises(BadValueError, match="above the maximum 1"):
        tpl.encode(2)
    ok, bad_sum = bytes.fromhex("42 4D 00 04 E4 01 01 78"), bytes.fromhex("42 4D 00 04 E4 01 01 79")
    assert tpl.match(ok) == Confirmed(1, has_value=True)
    assert tpl.match(bad_sum) is None
    refusal = "42 4D 00 04 EE 02 01 83"
    assert tpl.match(bytes.fromhex(refusal)) == Refused(2, refusal)


def test_binary_template_on_a_delimited_port_is_stuffed_and_scaled() -> None:
    table = {"port": "/dev/null",
             "framing": {"mode": "delimited", "end": "C0", "escape": "DB",
                         "escape_map": {"DC": "C0", "DD": "DB"}},
             "devices": [{"name": "heater", "decoder": {
                 "type": "binary", "checksum": "crc8_smbus", "byte_order": "little",
                 "fields": [{"name": "setpoint", "at": 1, "type": "i16", "scale": 0.5}]},
                 "writes": [{"point": "setpoint", "type": "i16", "scale": 0.5,
                             "command_hex": "01 00 00 00", "value_at": 1,
                             "reply_hex": "81", "reply_value_at": 1}]}]}
    tpl = template(table)
    cfg = SerialDriver.parse_config(table, file="t", path="p")
    wire, effective = tpl.encode(96.0)  # raw 192 = 0xC0, a delimiter inside the frame
    assert effective == 96.0
    assert wire.startswith(b"\xc0\x01\xdb\xdc\x00")
    assert wire.endswith(b"\xc0")
    (frame,) = make_framer(cfg.framing).feed(wire)  # what the device's framer cuts out
    assert frame[:3] == b"\x01\xc0\x00"
    with pytest.raises(BadValueError, match="whole number of steps"):
        tpl.encode(1.2)
    with pytest.raises(BadValueError, match="does not fit i16"):
        tpl.encode(20000)
    assert wire_frame(cfg.framing, b"\x01") == b"\xc0\x01\xc0"


def test_float_template_confirms_what_the_format_sent() -> None:
    table = {"port": "/dev/null", "devices": [{
        "name": "hvac", "decoder": {"type": "keyvalue"},
        "writes": [{"point": "setpoint", "type": "float", "command": "SP {value:.1f}\r\n",
                    "reply": r"SP=(?P<value>[-\d.]+)", "error": r"NAK(\d*)",
                    "tolerance": 0.05}]}]}
    tpl = template(table)
    assert tpl.encode(21.46) == (b"SP 21.5\r\n", 21.5)
    assert tpl.match(b"SP=21.5") == Confirmed(21.5, has_value=True)
    assert tpl.match(b"NAK7") == Refused(7, "NAK7")
    assert tpl.match(b"NAK") == Refused(None, "NAK")
    assert tpl.match(b"SP 21.5") is None
    assert tpl.same(21.48, 21.5)
    assert not tpl.same(21.6, 21.5)


def test_streaming_readback_waits_for_the_next_frame_with_the_point(
        harness, sink, raw_pty) -> None:
    dev = raw_pty()
    pattern = r"RPM=(?P<rpm>\d+) LVL=(?P<level>\d+)"
    table = {"port": str(dev.link), **FAST, "devices": [{
        "name": "fan", "decoder": {"type": "regex", "pattern": pattern,
                                   "fields": [{"name": "rpm", "type": "int"},
                                              {"name": "level", "type": "int"}]},
        "writes": [{"point": "level", "command": "L {value:d}\r\n", "reply": "OK",
                    "confirm": "readback", "timeout": "1s"}]}]}

    async def body() -> tuple[Any, list[Any]]:
        drv = harness.driver(table, "st")
        async with harness.running(drv, sink):
            await harness.until(lambda: drv.port_health.ok and drv.port_health.counters)
            dev.write(b"RPM=900 LVL=20\r\n")
            await harness.until(lambda: bool(sink.good("st/fan/level")))
            pending = asyncio.create_task(drv.write("st/fan/level", 60))
            await dev.read(lambda b: b"L 60\r\n" in b)
            dev.write(b"RPM=900 LVL=20\r\nOK\r\n")  # a frame in flight, then the reply
            await asyncio.sleep(0.05)
            assert not pending.done()
            dev.write(b"RPM=1500 LVL=60\r\n")
            return await pending, [r.value for r in sink.good("st/fan/level")]

    result, levels = harness.run(body())
    assert result == 60
    assert levels == [20, 20, 60]  # stream frames still became readings
