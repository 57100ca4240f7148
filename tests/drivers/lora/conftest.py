"""Fixtures for the LoRa drivers: a real SQLite-backed state store, a recording sink."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buffer.store import DriverState, Store
from drivers.api import Driver, DriverContext, HealthBoard
from drivers.testing import RecordingSink as ContractSink

#: The daemon's view of driver state: the buffer database's durable kv table.
StoreState = DriverState


class RecordingSink(ContractSink):
    """Keeps what a driver emits; emit never blocks."""

    def points(self) -> set[str]:
        return {r.point for r in self.readings}

    def values(self, point: str) -> list[Any]:
        return [r.value for r in self.readings if r.point == point]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.db"


@pytest.fixture
def state(db_path: Path) -> Iterator[StoreState]:
    store = Store(db_path)
    try:
        yield StoreState(store)
    finally:
        store.close()


def context(instance: str, state: Any, driver: str = "lora_forwarder") -> DriverContext:
    ctx = DriverContext.standalone(instance, driver)
    return DriverContext(instance=instance, logger=ctx.logger, health=HealthBoard(ctx.logger),
                         state=state)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(driver: Driver[Any], sink: RecordingSink) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``driver`` in a task; cancel it (and check it stops within 2 s) on exit."""
    task = asyncio.create_task(driver.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert task in done, "driver did not stop within 2 s of cancellation"
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
