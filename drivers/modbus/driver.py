"""The ``modbus`` driver: polls the devices of one RTU line or TCP endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from drivers.api import Driver, DriverContext, SimulatedSetup, Sink, Value
from drivers.modbus.config import ModbusConfig
from drivers.modbus.planner import limits, optimum
from drivers.modbus.profiles import resolve_points

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Iterable, Mapping
    from pathlib import Path

    from drivers.modbus.poller import DevicePoller
    from drivers.modbus.sim import ModbusSimulator

__all__ = ["ModbusDriver"]


class ModbusDriver(Driver[ModbusConfig]):
    """Modbus RTU and TCP devices, polled on schedule into typed readings.

    One instance owns one bus (an RS-485 line or a TCP endpoint, often a gateway in front of
    a line). Each device is a task polling its points with the fewest requests the planner
    finds; failures become bad-quality readings and health counters, never exceptions.
    Coil and holding register points can be written (:meth:`write`), ahead of queued polls.

    Example::

        [[drivers.modbus]]
        instance = "rs485-1"
        bus = { kind = "rtu", port = "/dev/ttyUSB0", baud = 9600, parity = "E" }
        [[drivers.modbus.devices]]
        name = "meter-1"
        unit = 1
        profile = "energy-meter-3ph"
    """

    name = "modbus"
    config_schema = ModbusConfig
    simulator = "drivers.modbus.sim"

    def __init__(self, config: ModbusConfig, context: DriverContext) -> None:
        # Imported here: `streetgate check` loads this class for its schema only, and the
        # protocol stack (pymodbus) was a fifth of its time.
        from drivers.modbus._writer import PointWriter  # noqa: PLC0415
        from drivers.modbus.bus import Bus  # noqa: PLC0415
        from drivers.modbus.poller import DevicePoller  # noqa: PLC0415

        super().__init__(config, context)
        self.bus = Bus(config.bus, context.health, context.logger)
        self.pollers = [DevicePoller(context.instance, dev, resolve_points(dev)[0], bus=self.bus,
                                     health=context.health, log=context.logger)
                        for dev in config.devices]
        self._writer = PointWriter(self.bus, self.pollers, context.logger)
        context.health.extra["plan"] = {
            p.dev.name: {"requests": len(p.full_plan), "optimum": _optimum(p),
                         "points": len(p.points)} for p in self.pollers}

    def points(self) -> Iterable[tuple[str, str | None]]:
        return [pair for p in self.pollers for pair in p.point_names()]

    def writable_points(self) -> Iterable[str]:
        """The points of the ``coil`` and ``holding`` tables (the others are inputs)."""
        return self._writer.names()

    async def write(self, point: str, value: Value) -> Value:
        """Write ``value`` to ``point``, read it back through the same bus and return it.

        The value is encoded with the point's type, scale, offset and orders; one register or
        coil goes out with FC 6 / FC 5, more with FC 16 / FC 15 (always FC 16 / FC 15 with
        ``workarounds.write_multiple``). The write waits only for the transaction on the
        wire, never for polls queued before it. Nothing is retried here.

        Raises:
            WriteError: ``not-writable`` (not a coil or holding point of this bus);
                ``bad-value`` (does not fit the point's type, range or steps; nothing sent);
                ``device-error`` (an exception answer, ``code`` is its code; or an answer that
                does not match the request); ``timeout`` (no answer, or only a garbled one:
                a CRC error or a short frame, so the write may or may not have happened);
                ``unavailable`` (the port or connection is not there); ``mismatch`` (written,
                but the read-back value differs: ``value`` is what was read back).

        Example::

            await driver.write("rs485-1/lights/dimming_1", 40)   # -> 40
        """
        return await self._writer.write(point, value)

    async def run(self, sink: Sink) -> None:
        prefix = f"streetgate[modbus:{self.context.instance}]"
        try:
            async with asyncio.TaskGroup() as tg:
                for poller in self.pollers:
                    tg.create_task(poller.run(sink), name=f"{prefix}.{poller.dev.name}")
        finally:
            self.bus.close()

    @classmethod
    def register_cli(
        cls,
        sim: argparse._SubParsersAction[argparse.ArgumentParser],
        tools: argparse._SubParsersAction[argparse.ArgumentParser],
    ) -> None:
        from drivers.modbus import cli  # noqa: PLC0415 - the CLI loads only when asked for

        cli.register(sim, tools)

    @classmethod
    @contextlib.asynccontextmanager
    async def simulate(cls, workdir: Path) -> AsyncIterator[SimulatedSetup]:  # noqa: ARG003
        from drivers.modbus.sim import ModbusSimulator, profile_unit  # noqa: PLC0415

        sim = ModbusSimulator([profile_unit(1, "energy-meter-3ph"),
                               profile_unit(2, "io-module")])
        port = await sim.serve_tcp()
        try:
            yield _Setup(sim, port)
        finally:
            await sim.close()


def _optimum(poller: DevicePoller) -> int:
    total = 0
    for table in ("coil", "discrete", "holding", "input"):
        spans = [(p.address, p.count) for p in poller.points if p.table == table]
        if spans:
            total += optimum(spans, *limits(table, poller.dev.max_block, poller.dev.max_gap))
    return total


class _Setup:
    """The contract suite's handle on a TCP simulator with a meter and an I/O module."""

    def __init__(self, sim: ModbusSimulator, port: int) -> None:
        self.sim = sim
        device = {"interval": "100ms", "timeout": "150ms", "retries": 0, "dead_after": 2,
                  "backoff_max": "400ms"}
        self.config: Mapping[str, Any] = {
            "bus": {"kind": "tcp", "host": "127.0.0.1", "port": port,
                    "connect_timeout": "500ms", "reconnect_max": "300ms"},
            "devices": [{"name": "meter-1", "unit": 1, "profile": "energy-meter-3ph", **device},
                        {"name": "io-1", "unit": 2, "profile": "io-module", **device}],
        }
        self.writes: Mapping[str, Any] = {"io-1/relay_1": True, "io-1/dimming_1": 55}

    async def stop(self) -> None:
        await self.sim.stop()

    async def start(self) -> None:
        await self.sim.start()

    async def inject_malformed(self) -> None:
        self.sim.set_fault(None, "crc")

    async def heal(self) -> None:
        self.sim.set_fault(None, None)

    async def close(self) -> None:
        await self.sim.close()
