"""Writes: encode, FC 5/6/15/16, read-back, errors and bus priority, against the simulator over
loopback TCP and an RTU line on a pty pair."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.api import Value, WriteError, load
from drivers.modbus import ModbusDriver
from drivers.modbus.codec import EncodeError, PointSpec, decode, encode_exact
from drivers.modbus.config import DeviceConfig
from drivers.modbus.sim import ModbusSimulator, Request, device_unit

from ._harness import Recorder, bus_table, make_driver, running, simulated, wait_until
from .test_cli import start_sim, stop, streetgate

TRANSPORTS = ["tcp", "rtu"]
POINTS: list[dict[str, Any]] = [
    {"name": "setpoint", "address": 0, "type": "u16"},
    {"name": "count", "address": 2, "type": "i32", "word_order": "little"},
    {"name": "level", "address": 4, "type": "f32"},
    {"name": "volts", "address": 6, "type": "u16", "scale": 0.1},
    {"name": "temp", "address": 7, "type": "i16", "scale": 0.5, "offset": -40},
    {"name": "flag", "address": 8, "type": "bit", "bit": 3},
    {"name": "ready", "address": 8, "type": "bit", "bit": 0},
    {"name": "label", "address": 10, "type": "string", "count": 2},
    {"name": "locked", "address": 20},
    {"name": "limited", "address": 21},
    {"name": "stuck", "address": 22},
    {"name": "relay", "table": "coil", "address": 0},
    {"name": "sensor", "table": "input", "address": 0},
    {"name": "contact", "table": "discrete", "address": 0},
]
#: Fixed values in the simulator (no waveforms), so its state can be compared.
VALUES: dict[str, Any] = {"setpoint": 1, "count": 2, "level": 3.0, "volts": 4.0, "temp": 5.0,
                          "label": "X", "locked": 6, "limited": 50, "stuck": 5, "relay": False,
                          "sensor": 7, "contact": False}
#: A point the driver knows but the simulated device does not map.
GHOST = {"name": "ghost", "address": 30}


def device(unit: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": f"d{unit}", "unit": unit, "interval": "1s", "timeout": "200ms",
            "retries": 0, "points": [*POINTS, GHOST], **extra}


def sim_unit(unit: int = 1, **kwargs: Any) -> Any:
    table = {"name": f"d{unit}", "unit": unit, "points": POINTS}
    kwargs = {"unmapped": "exception", "read_only": ["locked"], "ignored": ["stuck"],
              "clamp": {"limited": (0, 100)}, "values": VALUES, **kwargs}
    u = device_unit(load(DeviceConfig, table, file="test.toml"), **kwargs)
    u.write("holding", 8, [0x0001])  # "ready" (bit 0) is set; "flag" (bit 3) is not
    return u


@contextlib.asynccontextmanager
async def setup(transport: str, *, bus: dict[str, Any] | None = None,
                units: list[Any] | None = None, devices: list[dict[str, Any]] | None = None,
                ) -> AsyncIterator[tuple[ModbusSimulator, ModbusDriver]]:
    async with simulated(units or [sim_unit()], transport) as sim:
        driver = make_driver({"bus": bus_table(sim, **(bus or {})),
                              "devices": devices or [device()]})
        try:
            yield sim, driver
        finally:
            driver.bus.close()


def holding(sim: ModbusSimulator, address: int, count: int = 1, unit: int = 1) -> list[int]:
    return list(sim.units[unit].read("holding", address, count))  # type: ignore[arg-type]


def state(sim: ModbusSimulator) -> list[Any]:
    """Every mapped register and coil of unit 1."""
    spans = sorted({(p["address"], {"i32": 2, "f32": 2, "string": 2}.get(p.get("type", ""), 1))
                    for p in POINTS if "table" not in p})
    return [holding(sim, a, n) for a, n in spans] + [sim.units[1].read("coil", 0, 1)]


def writes(sim: ModbusSimulator) -> list[Request]:
    return [r for r in sim.log if r.function in (5, 6, 15, 16)]


# -- the codec ---------------------------------------------------------------------------------
def spec(kind: str = "u16", **kw: Any) -> PointSpec:
    count = kw.pop("count", {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "f64": 4,
                             "u64": 4, "i64": 4, "bit": 1, "string": 2}[kind])
    return PointSpec(name="p", table=kw.pop("table", "holding"), address=0, count=count,
                     type=kind, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("point", "value", "registers"), [
    (spec("u16"), 65535, [0xFFFF]),
    (spec("i16"), -1, [0xFFFF]),
    (spec("i32", word_order="little"), -123456, [0x1DC0, 0xFFFE]),
    (spec("u32", byte_order="little"), 0x12345678, [0x3412, 0x7856]),
    (spec("u16", scale=0.1), 230.1, [2301]),
    (spec("i16", scale=0.5, offset=-40), 21.5, [123]),
    (spec("u16", scale=1000), 5000, [5]),
    (spec("f32"), 230.1, [0x4366, 0x199A]),
    (spec("bit", bit=3), True, [8]),
    (spec("bit", table="coil"), 1, [True]),
    (spec("string"), "AB", [0x4142, 0]),
])
def test_encode_exact_round_trips(point: PointSpec, value: Any, registers: list[Any]) -> None:
    assert encode_exact(point, value) == registers
    assert decode(point, encode_exact(point, value))[0] == value


@pytest.mark.parametrize(("point", "value", "why"), [
    (spec("u16"), 65536, "outside u16 (0..65535)"),
    (spec("u16"), -1, "outside u16"),
    (spec("i16"), 40000, "outside i16 (-32768..32767)"),
    (spec("u16", scale=0.1), 6553.6, "outside u16 scaled by 0.1 (0..6553.5)"),
    (spec("u16", scale=0.1), 230.15, "not a whole number of steps (steps of 0.1)"),
    (spec("u16"), 2.5, "not a whole number of steps for u16"),
    (spec("f32"), 1e39, "beyond the range of f32"),
    (spec("f32"), float("nan"), "finite"),
    (spec("u16"), True, "expected a number"),
    (spec("u16"), "7", "expected a number"),
    (spec("bit", table="coil"), 2, "expected true or false"),
    (spec("string"), "ABCDE", "5 bytes do not fit in 2 registers"),
])
def test_encode_exact_refuses_what_does_not_fit(point: PointSpec, value: Any, why: str) -> None:
    with pytest.raises(EncodeError, match=why.replace("(", r"\(").replace(")", r"\)")):
        encode_exact(point, value)


# -- writes against the simulator ------------------------------------------------------------
def test_writable_points_are_the_coil_and_holding_points() -> None:
    driver = make_driver({"bus": {"kind": "tcp", "host": "127.0.0.1", "port": 1},
                          "devices": [device()]})
    assert sorted(driver.writable_points()) == sorted(
        f"t/d1/{p['name']}" for p in [*POINTS, GHOST] if p.get("table") not in ("input",
                                                                               "discrete"))


#: point, value, (address, registers in the device), function code
CASES: list[tuple[str, Value, tuple[int, list[int]], int]] = [
    ("setpoint", 4660, (0, [0x1234]), 6),
    ("count", -123456, (2, [0x1DC0, 0xFFFE]), 16),
    ("level", 12.75, (4, [0x414C, 0x0000]), 16),
    ("volts", 230.1, (6, [2301]), 6),
    ("temp", -12.5, (7, [55]), 6),
    ("label", "OK", (10, [0x4F4B, 0]), 16),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_values_are_written_encoded_and_read_back(transport: str) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            for name, value, (address, registers), fc in CASES:
                before = len(sim.log)
                assert await driver.write(f"t/d1/{name}", value) == value
                assert holding(sim, address, len(registers)) == registers, name
                new = list(sim.log)[before:]
                assert [r.function for r in new] == [fc, 3], name  # write, then read back

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_coil_on_and_off(transport: str) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            for value in (True, False, True):
                assert await driver.write("t/d1/relay", value) is value
                assert sim.units[1].read("coil", 0, 1) == [value]
            assert [r.function for r in writes(sim)] == [5, 5, 5]

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bit_of_a_register_leaves_the_other_bits(transport: str) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            assert await driver.write("t/d1/flag", True) is True
            assert holding(sim, 8) == [0x0009]
            assert await driver.write("t/d1/flag", False) is False
            assert holding(sim, 8) == [0x0001]

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_write_multiple_for_devices_without_fc5_and_fc6(transport: str) -> None:
    async def main() -> None:
        units = [sim_unit(1, single_writes=False), sim_unit(2, single_writes=False)]
        devices = [device(1), device(2, workarounds={"write_multiple": True})]
        async with setup(transport, units=units, devices=devices) as (sim, driver):
            with pytest.raises(WriteError) as plain:
                await driver.write("t/d1/setpoint", 7)
            assert (plain.value.reason, plain.value.code) == ("device-error", 1)
            assert "illegal function" in plain.value.detail
            assert await driver.write("t/d2/setpoint", 7) == 7
            assert await driver.write("t/d2/relay", True) is True
            assert holding(sim, 0, unit=2) == [7]
            assert [(r.unit, r.function) for r in writes(sim)] == [(1, 6), (2, 16), (2, 15)]

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("point", ["locked", "ghost"])
def test_read_only_or_missing_address_is_a_device_error_with_code_2(transport: str,
                                                                    point: str) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            before = holding(sim, 20)
            with pytest.raises(WriteError) as err:
                await driver.write(f"t/d1/{point}", 9)
            assert (err.value.reason, err.value.code) == ("device-error", 2)
            assert err.value.detail == "exception 2 (illegal data address)"
            assert holding(sim, 20) == before
            assert sim.stats["writes_refused"] == 1
            assert driver.health.snapshot()["devices"]["d1"]["counters"]["write_failures"] == 1

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("point", "value", "why"), [
    ("setpoint", 70000, "70000 is outside u16 (0..65535)"),
    ("volts", 230.15, "230.15 is not a whole number of steps (steps of 0.1) for u16"),
    ("temp", 20000, "20000 is outside i16 scaled by 0.5 -40 (-16424..16343.5)"),
    ("level", 1e39, "1e+39 is beyond the range of f32"),
    ("relay", 5, "expected true or false (or 1 or 0); got 5"),
    ("label", "TOO LONG", "8 bytes do not fit in 2 registers (4 bytes)"),
])
def test_a_value_that_does_not_fit_is_bad_value_and_nothing_is_sent(
        transport: str, point: str, value: Any, why: str) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            assert await driver.write("t/d1/setpoint", 1) == 1
            sent, before = len(sim.log), state(sim)
            with pytest.raises(WriteError) as err:
                await driver.write(f"t/d1/{point}", value)
            assert (err.value.reason, err.value.detail) == ("bad-value", why)
            assert len(sim.log) == sent
            assert state(sim) == before

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_back_that_differs_is_a_mismatch(transport: str) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            with pytest.raises(WriteError) as clamped:
                await driver.write("t/d1/limited", 150)
            assert (clamped.value.reason, clamped.value.value) == ("mismatch", 100)
            assert clamped.value.detail == "wrote 150, read back 100"
            with pytest.raises(WriteError) as ignored:
                await driver.write("t/d1/stuck", 9)
            assert (ignored.value.reason, ignored.value.value) == ("mismatch", 5)
            assert await driver.write("t/d1/limited", 60) == 60  # in range: no mismatch
            # Both writes were acknowledged with an echo: only the read-back told.
            assert sim.stats["writes"] == 3

    asyncio.run(main())


@pytest.mark.parametrize("point", ["t/d1/sensor", "t/d1/contact", "t/d1/nothing", "t/d9/x"])
def test_inputs_and_unknown_points_are_not_writable(point: str) -> None:
    async def main() -> None:
        async with setup("tcp") as (sim, driver):
            with pytest.raises(WriteError) as err:
                await driver.write(point, 1)
            assert err.value.reason == "not-writable"
            assert len(sim.log) == 0

    asyncio.run(main())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("fault", "reason", "code", "done"), [
    ("silent", "timeout", None, False),
    ("exception=6", "device-error", 6, False),
    ("crc", "timeout", None, True),  # executed, the answer garbled: "no usable answer"
    ("short", "timeout", None, True),
])
def test_faults_apply_to_writes(transport: str, fault: str, reason: str, code: int | None,
                                done: bool) -> None:
    async def main() -> None:
        async with setup(transport) as (sim, driver):
            sim.set_fault(1, fault)
            with pytest.raises(WriteError) as err:
                await driver.write("t/d1/setpoint", 321)
            assert (err.value.reason, err.value.code) == (reason, code)
            assert (holding(sim, 0) == [321]) is done
            sim.set_fault(1, None)
            assert await driver.write("t/d1/setpoint", 322) == 322

    asyncio.run(main())


def test_stopped_tcp_simulator_is_unavailable_then_written_when_back() -> None:
    async def main() -> None:
        async with setup("tcp", bus={"reconnect_max": "50ms"}) as (sim, driver):
            assert await driver.write("t/d1/setpoint", 1) == 1
            await sim.stop()
            with pytest.raises(WriteError) as err:
                await driver.write("t/d1/setpoint", 2)
            assert err.value.reason == "unavailable"
            await sim.start()
            for _ in range(50):  # the bus reopens with backoff: the runner retries like this
                with contextlib.suppress(WriteError):
                    assert await driver.write("t/d1/setpoint", 2) == 2
                    break
                await asyncio.sleep(0.05)
            assert holding(sim, 0) == [2]

    asyncio.run(main())


def test_stopped_rtu_simulator_times_out_and_a_missing_port_is_unavailable() -> None:
    async def main() -> None:
        async with setup("rtu") as (sim, driver):
            await sim.stop()
            with pytest.raises(WriteError) as err:
                await driver.write("t/d1/setpoint", 2)
            assert (err.value.reason, err.value.detail) == ("timeout", "no answer")
        driver = make_driver({"bus": {"kind": "rtu", "port": "/nonexistent/ttyUSB9",
                                      "parity": "N"}, "devices": [device()]})
        with pytest.raises(WriteError) as missing:
            await driver.write("t/d1/setpoint", 2)
        assert missing.value.reason == "unavailable"
        assert "/nonexistent/ttyUSB9" in missing.value.detail

    asyncio.run(main())


# -- bus discipline ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_write_goes_before_polls_queued_before_it(transport: str) -> None:
    async def main() -> list[tuple[int, int]]:
        units = [sim_unit(n) for n in (1, 2, 3)]
        devices = [device(n, timeout="2s") for n in (1, 2, 3)]
        async with setup(transport, units=units, devices=devices) as (sim, driver):
            sim.set_fault(1, "slow=300ms")
            bus = driver.bus
            polls = [asyncio.create_task(bus.read(n, "holding", 0, 1, 2.0)) for n in (1, 2, 3)]
            await asyncio.sleep(0.1)  # unit 1 is answering; units 2 and 3 wait for the bus
            assert bus.gate.waiting == 2
            assert await driver.write("t/d2/setpoint", 77) == 77
            await asyncio.gather(*polls)
            assert sim.stats["max_concurrent"] == 1
            assert sim.stats["ignored_busy"] == 0
            return [(r.unit, r.function) for r in sim.log]

    order = asyncio.run(main())
    assert order == [(1, 3), (2, 6), (2, 3), (2, 3), (3, 3)]


def test_writes_on_tcp_respect_max_in_flight() -> None:
    async def main() -> Any:
        units = [sim_unit(n) for n in range(1, 6)]
        devices = [device(n, timeout="2s") for n in range(1, 6)]
        async with setup("tcp", bus={"max_in_flight": 2}, units=units,
                         devices=devices) as (sim, driver):
            sim.set_fault(None, "slow=100ms")
            got = await asyncio.gather(*(driver.write(f"t/d{n}/setpoint", n)
                                         for n in range(1, 6)))
            assert got == [1, 2, 3, 4, 5]
            return sim.stats

    assert asyncio.run(main())["max_concurrent"] == 2


def test_writes_while_polling_an_rtu_line_never_interleave() -> None:
    async def main() -> None:
        units = [sim_unit(n) for n in (1, 2, 3)]
        devices = [device(n, interval="20ms", points=POINTS[:1]) for n in (1, 2, 3)]
        async with setup("rtu", units=units, devices=devices) as (sim, driver):
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: len(sink.readings) >= 6)
                for k in range(20):
                    assert await driver.write(f"t/d{k % 3 + 1}/setpoint", 100 + k) == 100 + k
                await wait_until(task, sink, lambda: sink.last()["t/d2/setpoint"].value == 119)
            assert sim.stats["max_concurrent"] == 1
            assert sim.stats["ignored_busy"] == 0
            assert driver.bus.link.stray == 0  # type: ignore[attr-defined]
            assert sim.stats["writes"] == 20
            counters = driver.health.snapshot()["devices"]["d1"]["counters"]
            assert counters["writes"] == 7
            assert "write_failures" not in counters

    asyncio.run(main())


# -- field tools -------------------------------------------------------------------------------
def test_write_tool_and_the_simulator_log(capsys: pytest.CaptureFixture[str]) -> None:
    proc, url = start_sim("--tcp", "0", "--device", "3:io-module", "--unmapped", "exception")
    try:
        where = ["modbus", "write", "--tcp", url.removeprefix("tcp://"), "--unit", "3"]
        assert streetgate([*where, "--address", "0", "40"]) == 0
        assert "wrote 40, read back 40" in capsys.readouterr().out
        assert streetgate([*where, "--table", "coil", "--address", "1", "on"]) == 0
        assert "wrote True, read back True" in capsys.readouterr().out
        assert streetgate([*where, "--address", "10", "--type", "f32", "--order", "CDAB",
                           "12.5"]) == 0
        assert streetgate([*where, "--address", "5", "1"]) == 1
        assert "device-error: exception 2 (illegal data address)" in capsys.readouterr().out
        assert streetgate([*where, "--address", "0", "70000"]) == 1
        assert "bad-value: 70000 is outside u16" in capsys.readouterr().out
        assert streetgate([*where, "--table", "coil", "--address", "0", "--type", "f32",
                           "1"]) == 2
        assert "--type: expected bit for table coil" in capsys.readouterr().err
    finally:
        out = stop(proc)
    assert "write unit 3 holding 0 <- 40\n" in out
    assert "write unit 3 coil 1 <- 1\n" in out
    assert "write unit 3 holding 10..11 <- 0 16712\n" in out
    assert "write unit 3 holding 5 <- 1 refused: exception 2 (illegal data address)\n" in out
    assert out.count("write unit") == 4  # the value that did not fit was never sent


def test_a_poll_cancelled_while_waiting_for_the_bus_does_not_hold_it() -> None:
    async def main() -> None:
        async with setup("tcp", units=[sim_unit(1), sim_unit(2)],
                         devices=[device(1, timeout="2s"), device(2)]) as (sim, driver):
            sim.set_fault(1, "slow=200ms")
            first = asyncio.create_task(driver.bus.read(1, "holding", 0, 1, 2.0))
            await asyncio.sleep(0.05)
            queued = asyncio.create_task(driver.bus.read(2, "holding", 0, 1, 2.0))
            await asyncio.sleep(0.05)
            queued.cancel()
            async with asyncio.timeout(1.0):
                assert await driver.write("t/d2/setpoint", 5) == 5
            await first
            assert driver.bus.gate.waiting == 0
            assert [(r.unit, r.function) for r in sim.log] == [(1, 3), (2, 6), (2, 3)]

    asyncio.run(main())
