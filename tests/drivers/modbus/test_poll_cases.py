"""Golden cases: a folder per behaviour, run against the simulator over TCP and a pty pair.

``case.toml`` holds the driver table (``[driver]``, bus filled in here), what the simulator
does per device (``[sim.<device>]``: ``raw`` registers, ``values``, ``fault``, ``unmapped``,
``absent``) and the transports it applies to; ``expected.jsonl`` holds the first reading of
every point (``"value": "*"`` accepts any value of a GOOD reading). A new case is a new folder.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.api import load
from drivers.modbus.config import DeviceConfig
from drivers.modbus.sim import Fault, device_unit

from ._harness import Recorder, bus_table, make_driver, running, simulated, wait_until

CASES = sorted((Path(__file__).parent / "cases" / "poll").iterdir())
PARAMS = [pytest.param(case, transport, id=f"{case.name}-{transport}")
          for case in CASES
          for transport in tomllib.loads((case / "case.toml").read_text())["transports"]]


def _units(spec: dict[str, Any]) -> list[Any]:
    units = []
    for dev in spec["driver"]["devices"]:
        sim = spec.get("sim", {}).get(dev["name"], {})
        if sim.get("absent"):
            continue
        unit = device_unit(DeviceConfig(**{k: v for k, v in dev.items()
                                           if k in ("name", "unit", "profile")},
                                        points=_point_configs(dev)),
                           values=sim.get("values"), unmapped=sim.get("unmapped", "zero"))
        for raw in sim.get("raw", []):
            unit.write(raw["table"], raw["address"], raw["items"])
        if "fault" in sim:
            unit.fault = Fault.parse(sim["fault"])
        units.append(unit)
    return units


def _point_configs(dev: dict[str, Any]) -> list[Any]:
    table = {"name": dev["name"], "unit": dev["unit"], "points": dev.get("points", [])}
    if "profile" in dev:
        table["profile"] = dev["profile"]
    return list(load(DeviceConfig, table, file="case.toml").points)


def _expected(case: Path, transport: str) -> list[dict[str, Any]]:
    path = case / f"expected.{transport}.jsonl"
    if not path.exists():
        path = case / "expected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("case", "transport"), PARAMS)
def test_case(case: Path, transport: str) -> None:
    spec = tomllib.loads((case / "case.toml").read_text())
    expected = _expected(case, transport)
    wanted = {e["point"] for e in expected}

    async def main() -> dict[str, Any]:
        async with simulated(_units(spec), transport) as sim:
            driver = make_driver({"bus": bus_table(sim), **spec["driver"]})
            sink = Recorder()
            async with running(driver, sink) as task:
                await wait_until(task, sink, lambda: wanted <= set(sink.first()))
            return sink.first()

    first = asyncio.run(main())
    assert set(first) == wanted
    for e in expected:
        got = first[e["point"]]
        assert got.quality.name == e["quality"], (e["point"], got)
        assert got.unit == e.get("unit"), (e["point"], got)
        if e["value"] != "*":
            assert (got.value, type(got.value)) == (e["value"], type(e["value"])), \
                (e["point"], got)
