"""The contract every driver keeps, runnable by integrators on their own drivers.

Use it from pytest::

    from drivers.testing import check_contract, check_package

    def test_contract(tmp_path):
        asyncio.run(check_contract(MyDriver, tmp_path))

    def test_package():
        check_package(MyDriver, Path(my_package.__file__).parent)

Each check raises ``AssertionError`` with a sentence saying what the driver did wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import tomllib
from collections.abc import Iterable
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from drivers.api import (
    ConfigError,
    Driver,
    DriverContext,
    Quality,
    Reading,
    SimulatedSetup,
    WriteError,
)

__all__ = ["RecordingSink", "check_contract", "check_package", "example_tables"]

POINT_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.:@-]+)+$")
INSTANCE = "contract"
DAY_MS = 86_400_000


class RecordingSink:
    """A sink that keeps everything and notes how long each emit took."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.slowest_emit = 0.0

    def emit(self, readings: Iterable[Reading]) -> None:
        t0 = time.perf_counter()
        self.readings.extend(readings)
        self.slowest_emit = max(self.slowest_emit, time.perf_counter() - t0)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def backlog(self) -> int:
        return 0

    def good(self) -> list[Reading]:
        return [r for r in self.readings if r.quality == Quality.GOOD]


def example_tables(cls: type[Driver[Any]], example: Path) -> list[dict[str, Any]]:
    """The ``[[drivers.<name>]]`` tables of an example.toml."""
    raw = tomllib.loads(example.read_text())
    tables = raw.get("drivers", {}).get(cls.name)
    assert isinstance(tables, list) and tables, (
        f"{example}: expected at least one [[drivers.{cls.name}]] table")
    return tables


def check_package(cls: type[Driver[Any]], folder: Path) -> None:
    """Schema, example.toml, README and simulator are there and agree (STYLE §1, §2, §5)."""
    assert cls.name, f"{cls.__qualname__}: class attribute `name` is empty"
    assert is_dataclass(getattr(cls, "config_schema", None)), (
        f"driver {cls.name}: config_schema must be a frozen keyword-only dataclass")
    example = folder / "example.toml"
    readme = folder / "README.md"
    assert example.is_file(), f"driver {cls.name}: {example} is missing"
    assert readme.is_file(), f"driver {cls.name}: {readme} is missing"
    for i, table in enumerate(example_tables(cls, example)):
        assert "instance" in table, f"{example}: drivers.{cls.name}[{i}] has no instance"
        body = {k: v for k, v in table.items() if k != "instance"}
        try:
            cls.parse_config(body, file=example.name, path=f"drivers.{cls.name}[{i}]")
        except ConfigError as exc:
            msg = f"driver {cls.name}: example.toml does not validate:\n{exc}"
            raise AssertionError(msg) from None
    text = example.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    assert text in blocks, (
        f"driver {cls.name}: README.md must include example.toml verbatim in a ```toml block")
    assert "## Troubleshooting" in readme.read_text(), (
        f"driver {cls.name}: README.md must end with a Troubleshooting section")
    assert cls.simulator, f"driver {cls.name}: no simulator declared"
    assert cls.simulate is not Driver.simulate, f"driver {cls.name}: simulate() not implemented"


async def _run_until(cls: type[Driver[Any]], sim: SimulatedSetup, sink: RecordingSink,
                     context: DriverContext, *, want: int, timeout: float,
                     ) -> tuple[asyncio.Task[None], Driver[Any]]:
    config = cls.parse_config(dict(sim.config), file="contract.toml", path=f"drivers.{cls.name}[0]")
    driver = cls(config, context)
    task = asyncio.create_task(driver.run(sink), name=f"contract[{cls.name}]")
    deadline = time.monotonic() + timeout
    while len(sink.good()) < want and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # re-raises what escaped run()
        msg = f"driver {cls.name}: run() returned while its simulator was up"
        raise AssertionError(msg)
    return task, driver


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and \
            abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    return a == b and type(a) is type(b)


async def _check_writes(cls: type[Driver[Any]], driver: Driver[Any], sim: SimulatedSetup,
                        timeout: float) -> None:
    """Writes: what ``writable_points`` lists can be written and read back; anything else is
    refused as ``not-writable``."""
    writable = set(driver.writable_points())
    writes: dict[str, Any] = dict(getattr(sim, "writes", None) or {})
    assert not writable or writes, (
        f"driver {cls.name}: lists writable points but its simulator's setup has no `writes`"
        " to check them")
    for suffix, value in writes.items():
        point = f"{INSTANCE}/{suffix}"
        assert point in writable, (
            f"driver {cls.name}: {point} is in the simulator's writes but not in "
            f"writable_points() ({sorted(writable)[:5]})")
        try:
            got = await asyncio.wait_for(driver.write(point, value), timeout)
        except WriteError as exc:
            raise AssertionError(f"driver {cls.name}: writing {value!r} to {point} against its"
                                 f" simulator failed: {exc}") from exc
        assert _same(got, value), (
            f"driver {cls.name}: wrote {value!r} to {point}, read back {got!r}")
    if writable:
        reason = None
        try:
            await asyncio.wait_for(driver.write(f"{INSTANCE}/no-such-device/no-such-point", 1),
                                   timeout)
        except WriteError as exc:
            reason = exc.reason
        assert reason == "not-writable", (
            f"driver {cls.name}: an unknown point must be refused as not-writable; got "
            f"{reason or 'a write'}")


async def _loop_lag(stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)
        worst = max(worst, time.perf_counter() - t0 - 0.01)
    return worst


def _check_readings(cls: type[Driver[Any]], readings: list[Reading]) -> None:
    now = time.time_ns() // 1_000_000
    for r in readings:
        assert isinstance(r, Reading), f"driver {cls.name}: emitted {r!r}, not a Reading"
        assert POINT_RE.match(r.point) and r.point.startswith(f"{INSTANCE}/"), (
            f"driver {cls.name}: bad point name {r.point!r} (want '{INSTANCE}/<device>/<point>')")
        assert r.unit is None or (isinstance(r.unit, str) and r.unit), (
            f"driver {cls.name}: point {r.point!r} has unit {r.unit!r}")
        assert isinstance(r.quality, Quality), f"driver {cls.name}: quality {r.quality!r}"
        assert abs(r.ts - now) < DAY_MS, f"driver {cls.name}: ts {r.ts} is not now"


async def check_contract(cls: type[Driver[Any]], workdir: Path, *,
                         timeout: float = 15.0) -> None:
    """Run the driver against its simulator and check the whole contract (STYLE §11)."""
    sink = RecordingSink()
    context = DriverContext.standalone(INSTANCE, cls.name)
    async with cls.simulate(workdir) as sim:
        stop_lag = asyncio.Event()
        lag = asyncio.create_task(_loop_lag(stop_lag))
        task, driver = await _run_until(cls, sim, sink, context, want=1, timeout=timeout)
        assert sink.good(), f"driver {cls.name}: no good reading from its simulator in {timeout}s"
        _check_readings(cls, sink.readings)
        await _check_writes(cls, driver, sim, timeout)
        # malformed data: counted or bad-quality, never an exception out of run()
        await sim.inject_malformed()
        await asyncio.sleep(1.0)
        assert not task.done() or task.exception() is None, (
            f"driver {cls.name}: run() raised on malformed input: {task.exception()!r}")
        assert not task.done(), f"driver {cls.name}: run() stopped on malformed input"
        await sim.heal()
        # the device goes away and comes back: the driver recovers by itself
        await sim.stop()
        await asyncio.sleep(1.0)
        await sim.start()
        mark = len(sink.good())
        deadline = time.monotonic() + timeout
        while len(sink.good()) <= mark and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        assert len(sink.good()) > mark, (
            f"driver {cls.name}: no good reading within {timeout}s after its simulator restarted")
        # cancellation: stops within 2 s
        t0 = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 2.0)
        assert time.monotonic() - t0 < 2.0, f"driver {cls.name}: took too long to stop"
        stop_lag.set()
        worst = await lag
        assert worst < 0.5, f"driver {cls.name}: blocked the event loop for {worst:.2f}s"
        assert sink.slowest_emit < 0.05
        _check_readings(cls, sink.readings)
        await sim.close()
