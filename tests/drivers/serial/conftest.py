"""Fixtures for the serial driver tests: a recording sink and an async harness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.api import DriverContext, Reading
from drivers.serial import SerialDriver

T = TypeVar("T")


class RecordingSink:
    """Keeps what the driver emits; ``emit`` never blocks."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def emit(self, readings: Any) -> None:
        self.readings.extend(readings)

    def now_ms(self) -> int:
        return 1_700_000_000_000

    def good(self, point: str) -> list[Reading]:
        return [r for r in self.readings if r.point == point and r.quality.name == "GOOD"]

    def quality(self, name: str) -> list[Reading]:
        return [r for r in self.readings if r.quality.name == name]


class Harness:
    """Runs async test bodies and drivers; every wait is bounded."""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)
        return asyncio.run(bounded())

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0,
                    what: str = "condition") -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)

    def driver(self, table: dict[str, Any], instance: str = "t") -> SerialDriver:
        cfg = SerialDriver.parse_config(table, file="test.toml", path="drivers.serial[0]")
        return SerialDriver(cfg, DriverContext.standalone(instance, "serial"))

    @contextlib.asynccontextmanager
    async def running(self, driver: SerialDriver, sink: RecordingSink) -> AsyncIterator[None]:
        """Run the driver; on exit cancel it and require it to stop within 2 s."""
        task = asyncio.create_task(driver.run(sink), name="test-serial-driver")
        try:
            yield
            assert not task.done(), task.exception() if task.done() else None
        finally:
            task.cancel()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)
            assert loop.time() - started < 2.0


class RawPty:
    """A bare pty pair behind a symlink: the test plays the device by hand."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(self.slave))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    async def read(self, until: Callable[[bytes], bool], timeout: float = 3.0) -> bytes:
        got = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(got):
            if loop.time() > deadline:
                raise AssertionError(f"device side got only {got!r}")
            with contextlib.suppress(BlockingIOError):
                got += os.read(self.master, 4096)
            await asyncio.sleep(0.01)
        return got

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.link.unlink(missing_ok=True)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def raw_pty(tmp_path: Path) -> Iterator[Callable[[], RawPty]]:
    made: list[RawPty] = []

    def make() -> RawPty:
        pty = RawPty(tmp_path / f"ttyRAW{len(made)}")
        made.append(pty)
        return pty

    yield make
    for pty in made:
        pty.close()


