"""Register ranges: the points they stand for, in profiles too, and how the planner reads them;
``check`` shows only the bus settings of the bus's kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivers.api import DriverContext, dump, load
from drivers.modbus import ModbusDriver
from drivers.modbus.config import BusConfig, DeviceConfig, ModbusConfig, RangeConfig
from drivers.modbus.planner import plan
from drivers.modbus.profiles import resolve_points
from drivers.modbus.ranges import expand


def device(**table: Any) -> DeviceConfig:
    return load(DeviceConfig, {"name": "d", "unit": 1, **table}, file="t")


def points(**table: Any) -> list[Any]:
    specs, issues = resolve_points(device(**table))
    assert issues == []
    return specs


def test_names_addresses_and_defaults() -> None:
    specs = points(ranges=[{"name": "reg_{i}", "start": 10, "count": 3}])
    assert [(p.name, p.table, p.address, p.count, p.type, p.scale) for p in specs] == [
        ("reg_0", "holding", 10, 1, "u16", 1.0), ("reg_1", "holding", 11, 1, "u16", 1.0),
        ("reg_2", "holding", 12, 1, "u16", 1.0)]


@pytest.mark.parametrize(("kind", "step"), [("u16", 1), ("i16", 1), ("u32", 2), ("i32", 2),
                                            ("f32", 2), ("u64", 4), ("i64", 4), ("f64", 4)])
def test_wide_types_follow_each_other(kind: str, step: int) -> None:
    specs = points(ranges=[{"name": "v{address}", "table": "input", "start": 100, "count": 4,
                            "type": kind}])
    assert [p.address for p in specs] == [100 + k * step for k in range(4)]
    assert [p.name for p in specs] == [f"v{100 + k * step}" for k in range(4)]
    assert {(p.type, p.count, p.table) for p in specs} == {(kind, step, "input")}


def test_first_scale_offset_orders_unit_and_interval() -> None:
    specs = points(word_order="little", ranges=[{
        "name": "t_{i}", "start": 0, "count": 2, "first": 1, "type": "i16", "scale": 0.1,
        "offset": -40.0, "byte_order": "little", "unit": "Cel", "interval": "1s"}])
    assert [p.name for p in specs] == ["t_1", "t_2"]
    assert {(p.scale, p.offset, p.byte_order, p.word_order, p.unit, p.interval)
            for p in specs} == {(0.1, -40.0, "little", "little", "Cel", 1.0)}


def test_coils_are_bits() -> None:
    specs = points(ranges=[{"name": "relay_{i}", "table": "coil", "start": 0, "count": 16}])
    assert {(p.type, p.count) for p in specs} == {("bit", 1)}
    assert [p.address for p in specs] == list(range(16))


def test_points_override_or_drop_range_points() -> None:
    specs = points(ranges=[{"name": "reg_{i}", "start": 0, "count": 3}],
                   points=[{"name": "reg_1", "unit": "V", "scale": 0.5},
                           {"name": "reg_2", "enabled": False},
                           {"name": "extra", "address": 50}])
    by_name = {p.name: p for p in specs}
    assert sorted(by_name) == ["extra", "reg_0", "reg_1"]
    assert (by_name["reg_1"].unit, by_name["reg_1"].scale, by_name["reg_1"].address) == \
        ("V", 0.5, 1)


def test_ranges_in_a_profile_file(tmp_path: Path) -> None:
    path = tmp_path / "logger.toml"
    path.write_text('description = "data logger"\nword_order = "little"\n'
                    '[[ranges]]\nname = "ch_{i}"\ntable = "input"\nstart = 0\ncount = 8\n'
                    'type = "f32"\nfirst = 1\nunit = "V"\n')
    specs = points(profile=str(path), ranges=[{"name": "aux_{i}", "start": 0, "count": 2}])
    assert [p.name for p in specs] == [f"ch_{i}" for i in range(1, 9)] + ["aux_0", "aux_1"]
    assert {(p.word_order, p.type, p.unit) for p in specs[:8]} == {("little", "f32", "V")}


def test_same_as_points_written_out() -> None:
    ranged = points(ranges=[{"name": "p{i}", "start": 3, "count": 5, "type": "f32",
                             "scale": 2.0}])
    written = points(points=[{"name": f"p{i}", "address": 3 + 2 * i, "type": "f32",
                              "scale": 2.0} for i in range(5)])
    assert ranged == written


def test_expand_is_in_address_order() -> None:
    rng = RangeConfig(name="x{i}", start=7, count=3, type="u32")
    assert [(p.name, p.address) for p in expand(rng)] == [("x0", 7), ("x1", 9), ("x2", 11)]


def test_planner_reads_a_range_in_few_requests() -> None:
    specs = points(ranges=[{"name": "reg_{i}", "start": 0, "count": 100}])
    assert [(b.table, b.start, b.count, len(b.points)) for b in plan(specs)] == [
        ("holding", 0, 100, 100)]
    wide = points(ranges=[{"name": "w_{i}", "start": 0, "count": 100, "type": "u32"}])
    blocks = plan(wide, max_block=125)
    assert [(b.start, b.count) for b in blocks] == [(0, 124), (124, 76)]
    assert sum(len(b.points) for b in blocks) == 100


def test_driver_plans_ranges_as_points() -> None:
    cfg = ModbusDriver.parse_config({
        "bus": {"kind": "tcp", "host": "127.0.0.1"},
        "devices": [{"name": "d", "unit": 1, "ranges": [
            {"name": "a_{i}", "start": 0, "count": 50},
            {"name": "b_{i}", "start": 58, "count": 20, "type": "f32"}]}]},
        file="t", path="p")
    driver = ModbusDriver(cfg, DriverContext.standalone("x", "modbus"))
    assert len(list(driver.points())) == 70
    assert driver.health.extra["plan"]["d"] == {"requests": 1, "optimum": 1, "points": 70}


def test_check_shows_only_the_settings_of_the_bus_kind() -> None:
    tcp = dump(load(BusConfig, {"kind": "tcp", "host": "10.0.0.5"}, file="t"))
    assert tcp == {"kind": "tcp", "port": 502, "host": "10.0.0.5", "max_in_flight": 1,
                   "connect_timeout": "2s", "reconnect_max": "30s"}
    rtu = dump(load(BusConfig, {"kind": "rtu", "port": "/dev/ttyUSB0", "max_in_flight": 1},
                    file="t"))
    assert rtu == {"kind": "rtu", "port": "/dev/ttyUSB0", "baud": 9600, "parity": "E",
                   "stop_bits": 1, "connect_timeout": "2s", "reconnect_max": "30s"}


def test_check_keeps_ranges_compact() -> None:
    cfg = load(ModbusConfig, {"bus": {"kind": "tcp", "host": "h"}, "devices": [
        {"name": "d", "unit": 1, "ranges": [{"name": "r{i}", "start": 0, "count": 100}]}]},
        file="t")
    (dev,) = dump(cfg)["devices"]
    assert dev["points"] == []
    assert dev["ranges"] == [{"name": "r{i}", "start": 0, "count": 100, "first": 0}]
