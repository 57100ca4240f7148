"""Config: the example validates, the README carries it verbatim, defaults and dumps."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from drivers.api import ConfigError, DriverContext, dump
from drivers.registry import load_registry
from drivers.serial import SerialDriver
from drivers.serial.profiles import PROFILES, profile_config, profile_toml

PKG = Path(__file__).resolve().parents[3] / "drivers" / "serial"
EXAMPLE = PKG / "example.toml"


def example_tables() -> list[dict[str, object]]:
    return tomllib.loads(EXAMPLE.read_text("utf-8"))["drivers"]["serial"]


def test_example_tables_validate_and_name_their_points() -> None:
    tables = example_tables()
    assert [t["instance"] for t in tables] == ["weather", "gps", "air", "counters", "lights"]
    writable = []
    for i, table in enumerate(tables):
        data = dict(table)
        instance = str(data.pop("instance"))
        cfg = SerialDriver.parse_config(data, file="example.toml", path=f"drivers.serial[{i}]")
        drv = SerialDriver(cfg, DriverContext.standalone(instance, "serial"))
        points = list(drv.points())
        assert points, instance
        assert all(re.fullmatch(rf"{instance}/[\w.-]+/[a-z0-9_]+", p) for p, _ in points)
        writable += drv.writable_points()
    assert writable == ["air/pm/running", "lights/lamp/level", "lights/lamp/relay"]


def test_readme_includes_the_example_verbatim_and_ends_with_troubleshooting() -> None:
    readme = (PKG / "README.md").read_text("utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert EXAMPLE.read_text("utf-8") in blocks
    headings = re.findall(r"(?m)^## (.+)$", readme)
    assert headings[-1] == "Troubleshooting"


def test_example_comment_conventions() -> None:
    # '##' lines are sentences; '# key = value' lines show defaults that must parse.
    for line in EXAMPLE.read_text("utf-8").splitlines():
        if line.startswith("# "):
            tomllib.loads(line[2:])


def test_registered_under_its_name() -> None:
    registry = load_registry()
    assert registry.get("serial") is SerialDriver
    assert SerialDriver.name == "serial"
    assert SerialDriver.simulator == "drivers.serial.sim"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_simulator_profile_has_a_valid_config(profile: str) -> None:
    cfg = SerialDriver.parse_config(profile_config(profile, "/dev/ttySIM0"), file="p", path="p")
    assert cfg.port == "/dev/ttySIM0"
    assert 'port = "/dev/ttySIM0"' in profile_toml(profile, "/dev/ttySIM0")


def test_defaults_and_dump_round_trip() -> None:
    data = {"port": "/dev/ttyUSB0", "devices": [{"name": "d", "decoder": {"type": "nmea"}}]}
    cfg = SerialDriver.parse_config(data, file="t", path="p")
    assert (cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits) == (9600, 8, "N", 1)
    assert cfg.framing.mode == "line"
    assert cfg.framing.terminator == "\r\n"
    dumped = dump(cfg)
    assert dumped["reopen_max"] == "30s"
    assert SerialDriver.parse_config(dumped, file="t", path="p") == cfg


def test_all_errors_reported_at_once_with_paths() -> None:
    data = {"port": 5, "baudrate": 10, "devices": [
        {"name": "d", "decoder": {"type": "binary"}},
        {"name": "e", "decoder": {"type": "regex"}}]}
    with pytest.raises(ConfigError) as err:
        SerialDriver.parse_config(data, file="gw.toml", path="drivers.serial[0]")
    assert err.value.lines() == [
        "gw.toml: drivers.serial[0].baudrate: expected at least 50; got 10",
        ('gw.toml: drivers.serial[0].devices[0].decoder.fields: expected at least one field '
        'for type = "binary"'),
        ('gw.toml: drivers.serial[0].devices[1].decoder.pattern: missing required key for '
        'type = "regex"'),
        "gw.toml: drivers.serial[0].port: expected a string; got 5",
    ]
