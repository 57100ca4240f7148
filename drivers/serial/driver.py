"""The ``serial`` driver: one port, streaming or polled devices, typed readings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from drivers.api import Driver, DriverContext, Poller, Quality, SimulatedSetup, Sink
from drivers.serial.config import QueryConfig, SerialConfig
from drivers.serial.pipeline import DeviceRuntime, Pipeline
from drivers.serial.port import PortUnavailableError, SerialLink

__all__ = ["SerialDriver"]


class SerialDriver(Driver[SerialConfig]):
    """Serial devices (RS-232/RS-485/USB): NMEA, regex, key=value and binary frames.

    A port carries either one streaming device (it talks on its own) or any number of
    polled devices (``query``: a command on a schedule, one answer within a timeout).
    """

    name = "serial"
    config_schema = SerialConfig
    simulator = "drivers.serial.sim"

    def __init__(self, config: SerialConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.pipeline = Pipeline(config, context.instance, context.health)
        self.port_health = context.health.device("port")
        self._sink: Sink | None = None

    def points(self) -> Iterable[tuple[str, str | None]]:
        return self.pipeline.points()

    async def run(self, sink: Sink) -> None:
        cfg, tag = self.config, f"streetgate[serial:{self.context.instance}]"
        self._sink = sink
        bus = asyncio.Lock()  # one outstanding query per port (RS-485 is half duplex)
        link = SerialLink(cfg.port, baudrate=cfg.baudrate, bytesize=cfg.bytesize,
                          parity=cfg.parity, stopbits=cfg.stopbits, logger=self.log,
                          health=self.port_health, reopen_min=cfg.reopen_min,
                          reopen_max=cfg.reopen_max, on_state=self._port_state)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(link, sink), name=f"{tag}.read")
                for dev in self.pipeline.devices:
                    if dev.cfg.query is not None:
                        tg.create_task(self._poll(dev, dev.cfg.query, link, bus, sink),
                                       name=f"{tag}.poll.{dev.name}")
                    elif dev.cfg.silence_timeout is not None:
                        tg.create_task(self._watch(dev, dev.cfg.silence_timeout, link, sink),
                                       name=f"{tag}.watch.{dev.name}")
        finally:
            link.close()

    def _port_state(self, up: bool) -> None:
        if up:  # silence is measured from the reopen, not from before the outage
            now = asyncio.get_running_loop().time()
            for dev in self.pipeline.devices:
                dev.last_good, dev.silence_reported = now, None
        elif self._sink is not None:
            self._sink.emit(self.pipeline.lost(self._sink.now_ms()))

    async def _receive(self, link: SerialLink, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        async with contextlib.aclosing(link.chunks()) as stream:
            async for chunk in stream:
                readings = self.pipeline.feed(chunk, sink.now_ms(), loop.time())
                if readings:
                    sink.emit(readings)

    async def _poll(self, dev: DeviceRuntime, query: QueryConfig, link: SerialLink,
                    bus: asyncio.Lock, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        async for _due in Poller(query.interval, jitter=min(float(query.interval), 1.0)):
            if not link.is_open:
                dev.health.count("skipped_port_down")
                continue
            try:
                async with bus:
                    frame = await self._transact(link, query)
            except PortUnavailableError:
                dev.health.count("skipped_port_down")
                continue
            sink.emit(dev.answer(frame, sink.now_ms(), loop.time()))

    async def _transact(self, link: SerialLink, query: QueryConfig) -> bytes | None:
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def take(frame: bytes) -> bool:
            if answer.done():
                return False
            answer.set_result(frame)
            return True

        self.pipeline.expect(take)
        try:
            await link.write(query.payload)
            # asyncio.timeout, not wait_for: in 3.11 wait_for loses a cancel that arrives
            # together with the answer (CPython gh-86296), and run() must stop when cancelled.
            async with asyncio.timeout(query.timeout):
                return await answer
        except TimeoutError:
            return None
        finally:
            self.pipeline.expect(None)

    async def _watch(self, dev: DeviceRuntime, timeout: float, link: SerialLink,
                     sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(timeout / 4)
            now = loop.time()
            since = dev.last_good if dev.last_good is not None else started
            last = dev.silence_reported
            if not link.is_open or now - since < timeout or (
                    last is not None and now - last < timeout):
                continue
            dev.silence_reported = now
            dev.health.failure(f"no valid frame for {now - since:.0f}s", "silent")
            sink.emit(dev.bad(Quality.TIMEOUT, sink.now_ms()))

    @classmethod
    def register_cli(
        cls,
        sim: argparse._SubParsersAction[argparse.ArgumentParser],
        tools: argparse._SubParsersAction[argparse.ArgumentParser],
    ) -> None:
        from drivers.serial.cli import register  # noqa: PLC0415 - loaded only when asked for

        register(sim, tools)

    @classmethod
    @contextlib.asynccontextmanager
    async def simulate(cls, workdir: Path) -> AsyncIterator[SimulatedSetup]:
        from drivers.serial.sim import contract_setup  # noqa: PLC0415 - test-only code path

        async with contract_setup(workdir) as setup:
            yield setup
