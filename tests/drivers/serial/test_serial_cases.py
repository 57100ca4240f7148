"""Golden cases: cases/<behaviour>/{config.toml, input.script, expected.jsonl, health.json}.

The input (a simulator script) goes through the driver's pipeline, chunk by chunk and then
byte by byte, and through the running driver over a real pty pair; all must give exactly
the expected readings and counters. A regression test
is a new folder. ``cases/config_*/`` hold configs that must fail with ``expected.err``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.api import ConfigError, HealthBoard, Reading
from drivers.serial import SerialDriver
from drivers.serial.pipeline import Pipeline
from drivers.serial.sim import load_script

CASES = Path(__file__).parent / "cases"
STREAM_CASES = sorted(p.name for p in CASES.iterdir() if (p / "input.script").exists())
CONFIG_CASES = sorted(p.name for p in CASES.iterdir() if (p / "expected.err").exists())


def table(case: Path) -> tuple[str, dict[str, Any]]:
    data = dict(tomllib.loads((case / "config.toml").read_text("utf-8"))["drivers"]["serial"][0])
    return data.pop("instance"), data


def run_case(case: Path, bytewise: bool) -> tuple[list[Reading], dict[str, Any]]:
    instance, data = table(case)
    cfg = SerialDriver.parse_config(data, file="config.toml", path="drivers.serial[0]")
    board = HealthBoard(logging.getLogger("test.serial.cases"))
    pipeline = Pipeline(cfg, instance, board)
    out: list[Reading] = []
    now = 0.0
    for step in load_script((case / "input.script").read_text("utf-8")):
        now += step.delay
        chunks = [step.data[i:i + 1] for i in range(len(step.data))] if bytewise else [step.data]
        for chunk in chunks:
            out += pipeline.feed(chunk, 1000, now)
    health = {"port": board.counters,
              "devices": {name: dev.counters for name, dev in board.devices.items()}}
    return out, health


def as_json(r: Reading) -> dict[str, Any]:
    return {"point": r.point, "value": r.value, "quality": r.quality.name, "unit": r.unit}


@pytest.mark.parametrize("name", STREAM_CASES)
def test_stream_case(name: str) -> None:
    case = CASES / name
    readings, health = run_case(case, bytewise=False)
    got = [as_json(r) for r in readings]
    if os.environ.get("SERIAL_CASES_WRITE"):  # regenerate, then review the diff by hand
        (case / "expected.jsonl").write_text("".join(json.dumps(g) + "\n" for g in got))
        (case / "health.json").write_text(json.dumps(health, indent=1, sort_keys=True) + "\n")
    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines()]
    assert got == expected
    assert health == json.loads((case / "health.json").read_text())
    bytewise, health_bytewise = run_case(case, bytewise=True)
    assert [as_json(r) for r in bytewise] == expected
    assert health_bytewise["devices"] == health["devices"]


@pytest.mark.parametrize("name", STREAM_CASES)
def test_stream_case_over_a_pty(name: str, harness, sink, raw_pty) -> None:
    case = CASES / name
    dev = raw_pty()
    instance, data = table(case)
    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines()]
    steps = load_script((case / "input.script").read_text("utf-8"))

    async def body() -> dict[str, Any]:
        drv = harness.driver(data | {"port": str(dev.link)}, instance)
        async with harness.running(drv, sink):
            await harness.until(lambda: drv.port_health.ok and drv.port_health.counters,
                                what="port open")  # opening flushes input, as a UART does
            for step in steps:
                dev.write(step.data)
                await asyncio.sleep(0.005)
            await harness.until(lambda: len(sink.readings) >= len(expected), what="readings")
            await asyncio.sleep(0.05)  # nothing more may come
        return {k: v.counters for k, v in drv.health.devices.items() if k != "port"}

    devices = harness.run(body())
    assert [as_json(r) for r in sink.readings] == expected
    assert devices == json.loads((case / "health.json").read_text())["devices"]


@pytest.mark.parametrize("name", CONFIG_CASES)
def test_config_case(name: str) -> None:
    case = CASES / name
    _instance, data = table(case)
    with pytest.raises(ConfigError) as err:
        SerialDriver.parse_config(data, file="gateway.toml", path="drivers.serial[0]")
    assert str(err.value) + "\n" == (case / "expected.err").read_text()


def test_every_case_folder_is_used() -> None:
    assert {p.name for p in CASES.iterdir()} == set(STREAM_CASES) | set(CONFIG_CASES)
