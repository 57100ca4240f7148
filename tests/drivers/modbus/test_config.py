"""Config: the example validates, the README carries it verbatim, bad maps are clear errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.api import ConfigError, load
from drivers.modbus import ModbusDriver
from drivers.modbus.config import BusConfig, DeviceConfig
from drivers.modbus.profiles import available, load_profile, resolve_points

HERE = Path(__file__).parent
PACKAGE = Path(__file__).parents[3] / "drivers" / "modbus"
CASES = sorted((HERE / "cases" / "config").iterdir())


def parse_file(path: Path, file: str) -> list[Any]:
    """Every ``[[drivers.modbus]]`` table of a file, instance popped, as the daemon does."""
    data = tomllib.loads(path.read_text())
    out = []
    for i, raw in enumerate(data["drivers"]["modbus"]):
        table = dict(raw)
        instance = table.pop("instance")
        assert isinstance(instance, str)
        out.append(ModbusDriver.parse_config(table, file=file, path=f"drivers.modbus[{i}]"))
    return out


def test_example_validates() -> None:
    configs = parse_file(PACKAGE / "example.toml", "example.toml")
    kinds = {c.bus.kind for c in configs}
    assert kinds == {"rtu", "tcp"}
    assert all(resolve_points(d)[0] for c in configs for d in c.devices)


def test_readme_includes_example_verbatim() -> None:
    readme = (PACKAGE / "README.md").read_text()
    example = (PACKAGE / "example.toml").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert example in blocks
    assert readme.rstrip().split("\n## ")[-1].startswith("Troubleshooting")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_config_case(case: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_file(case / "config.toml", "gateway.toml")
    expected = (case / "expected.err").read_text().splitlines()
    assert err.value.lines() == expected


@pytest.mark.parametrize("name", available())
def test_shipped_profiles_resolve(name: str) -> None:
    profile = load_profile(name)
    points, issues = resolve_points(DeviceConfig(name="d", unit=1, profile=name))
    assert issues == []
    assert len(points) == len(profile.points) >= 8
    assert all(p.unit is None or re.fullmatch(r"[A-Za-z%/]+", p.unit) for p in points)


def test_profiles_include_the_required_models() -> None:
    descriptions = " ".join(load_profile(n).description for n in available())
    for needle in ("three-phase energy meter, float32", "single-phase energy meter",
                   "lighting controller"):
        assert needle in descriptions


def test_profile_by_path(tmp_path: Path) -> None:
    path = tmp_path / "pump.toml"
    path.write_text('description = "pump"\nword_order = "little"\n'
                    '[[points]]\nname = "flow"\naddress = 4\ntype = "f32"\nunit = "m3/s"\n')
    dev = load(DeviceConfig, {"name": "p", "unit": 5, "profile": str(path)}, file="x")
    (point,) = resolve_points(dev)[0]
    assert (point.word_order, point.byte_order, point.address) == ("little", "big", 4)


def test_bad_profile_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[points]]\nname = "x"\naddress = 4\ntype = "float"\n')
    with pytest.raises(ConfigError) as err:
        load(DeviceConfig, {"name": "p", "unit": 5, "profile": str(path)}, file="gw.toml",
             path="drivers.modbus[0].devices[0]")
    assert err.value.lines() == [(
        'gw.toml: drivers.modbus[0].devices[0].profile: profile bad.toml: points[0].type: '
        'expected one of u16, i16, u32, i32, u64, i64, f32, f64, string, bit; got "float"')]


def test_device_orders_override_profile_defaults() -> None:
    dev = DeviceConfig(name="m", unit=1, profile="energy-meter-3ph", word_order="little")
    points = resolve_points(dev)[0]
    assert {p.word_order for p in points} == {"little"}


@pytest.mark.parametrize(("baud", "silence"), [(9600, 3.5 * 11 / 9600), (19200, 3.5 * 11 / 19200),
                                               (115200, 0.00175)])
def test_inter_frame_silence(baud: int, silence: float) -> None:
    bus = load(BusConfig, {"kind": "rtu", "port": "/dev/ttyUSB0", "baud": baud}, file="x")
    assert bus.silence() == pytest.approx(silence)
