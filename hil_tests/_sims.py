"""The simulator rig: the project's simulators and the rig firmware core, and the driver tables
that point the gateway at them.

The Python simulators are asyncio code; they run on an event loop in a background thread, so
the daemon (a child process) and the tests (plain functions) can both use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from drivers.lora.sim import (
    ForwarderSimulator,
    demo_devices,
    free_udp_port,
    parse_devices,
)
from drivers.modbus.config import DeviceConfig
from drivers.modbus.sim import ModbusSimulator, profile_unit
from drivers.serial.profiles import profile_config
from drivers.serial.sim import SerialSimulator
from hil_tests.firmware.hostctl import FirmwareHost
from hil_tests.firmware.mkconfig import board_config, unit_config

if TYPE_CHECKING:
    from hil_tests.rig import Bus, Device, Rig

__all__ = ["LoopThread", "Simulators"]

T = TypeVar("T")
#: Device settings that make a simulated bus notice faults and recover within seconds.
_MODBUS_DEVICE = {"timeout": "200ms", "retries": 0, "dead_after": 2, "backoff_max": "1s"}
_REOPEN = {"reopen_min": "100ms", "reopen_max": "500ms"}


class LoopThread:
    """An asyncio loop in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hil-simulators",
                                       daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_rest(), 5.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        self.loop.close()


def _lora_table(i: int, dev: Device) -> dict[str, Any]:
    """A demo sensor (fresh random keys) of the device's kind, under its rig name."""
    base = demo_devices(2, random_keys=True)[0 if dev.profile == "cayenne" else 1]
    return {**base, "name": dev.name, "dev_addr": f"26{i + 1:06X}"}


class Simulators:
    """Every simulated bus of a rig: started, driven (unplug, dead) and stopped."""

    def __init__(self, rig: Rig, workdir: Path) -> None:
        self.rig = rig
        self.workdir = workdir
        self.loop = LoopThread()
        self.modbus: dict[str, ModbusSimulator] = {}
        self.serial: dict[str, SerialSimulator] = {}
        self.lora: dict[str, ForwarderSimulator] = {}
        self.board: FirmwareHost | None = None
        self.tables: dict[str, list[dict[str, Any]]] = {}

    # -- start -----------------------------------------------------------------------------
    def start(self) -> dict[str, list[dict[str, Any]]]:
        """Start every simulator; return the gateway's ``drivers`` tables pointing at them."""
        firmware = [b for b in self.rig.buses if b.simulator == "firmware"]
        if firmware:
            self._start_board(firmware)
        for bus in self.rig.buses:
            devices = self.rig.on_bus(bus.instance)
            if bus.simulator == "firmware":
                table = self._board_table(bus, devices)
            elif bus.driver == "modbus":
                table = self.loop.call(self._start_modbus(bus, devices))
            elif bus.driver == "serial":
                table = self.loop.call(self._start_serial(bus, devices[0]))
            else:
                table = self.loop.call(self._start_lora(bus, devices))
            self.tables.setdefault(bus.driver, []).append({"instance": bus.instance, **table})
        return self.tables

    async def _start_modbus(self, bus: Bus, devices: list[Device]) -> dict[str, Any]:
        sim = ModbusSimulator([profile_unit(d.unit or 1, d.profile or "") for d in devices],
                              seed=1)
        self.modbus[bus.instance] = sim
        return {"bus": _rtu(await sim.serve_rtu()), "devices": [_modbus_dev(d) for d in devices]}

    async def _start_serial(self, bus: Bus, dev: Device) -> dict[str, Any]:
        link = self.workdir / f"tty-{bus.instance}"
        sim = SerialSimulator(link, dev.profile or "", rate=1 / dev.interval, seed=2)
        await sim.start()
        self.serial[bus.instance] = sim
        return _serial_table(dev, link)

    async def _start_lora(self, bus: Bus, devices: list[Device]) -> dict[str, Any]:
        port = free_udp_port()
        tables = [_lora_table(i, d) for i, d in enumerate(devices)]
        sim = ForwarderSimulator("127.0.0.1", port, parse_devices(tables),
                                 interval=min(d.interval for d in devices))
        await sim.open()
        sim.resume()
        self.lora[bus.instance] = sim
        return {"port": port, "silence": "10s", "devices": tables}

    def _start_board(self, buses: list[Bus]) -> None:
        units, serial, rate = [], None, 1.0
        for bus in buses:
            for dev in self.rig.on_bus(bus.instance):
                if bus.driver == "modbus":
                    units.append(unit_config(DeviceConfig(name=dev.name, unit=dev.unit or 1,
                                                          profile=dev.profile)))
                else:
                    serial, rate = dev.profile, 1 / dev.interval
        link = self.workdir / "tty-rig-board-serial"
        self.board = FirmwareHost(board_config(units, serial=serial, rate=rate),
                                  self.workdir / "rig-board",
                                  serial_link=link if serial else None)

    def _board_table(self, bus: Bus, devices: list[Device]) -> dict[str, Any]:
        assert self.board is not None
        if bus.driver == "modbus":
            return {"bus": _rtu(self.board.paths["modbus"]),
                    "devices": [_modbus_dev(d) for d in devices]}
        return _serial_table(devices[0], Path(self.board.paths["serial"]))

    # -- faults ----------------------------------------------------------------------------
    def unplug(self, bus: Bus) -> None:
        if bus.simulator == "firmware":
            self.console("unplug serial")
        else:
            self.loop.call(self.serial[bus.instance].stop())

    def replug(self, bus: Bus) -> None:
        if bus.simulator == "firmware":
            self.console("plug serial")
        else:
            self.loop.call(self.serial[bus.instance].start())

    def set_dead(self, bus: Bus, dev: Device, *, dead: bool) -> None:
        if bus.simulator == "firmware":
            self.console(f"fault modbus {'silent' if dead else 'none'} unit {dev.unit}")
            return
        sim = self.modbus[bus.instance]

        async def switch() -> None:
            sim.set_fault(dev.unit, "silent" if dead else None)

        self.loop.call(switch())

    def console(self, line: str) -> str:
        assert self.board is not None
        answer = self.board.command(line)
        if not answer.startswith("ok"):
            raise RuntimeError(f"rig board refused {line!r}: {answer}")
        return answer

    # -- stop ------------------------------------------------------------------------------
    def close(self) -> None:
        async def stop_all() -> None:
            for sim in self.modbus.values():
                await sim.close()
            for ser in self.serial.values():
                await ser.close()
            for fwd in self.lora.values():
                await fwd.close()

        try:
            self.loop.call(stop_all())
        finally:
            self.loop.close()
            if self.board is not None:
                self.board.close()


def _rtu(path: str) -> dict[str, Any]:
    # A pty refuses parity settings; the baud rate only sizes the timeouts.
    return {"kind": "rtu", "port": path, "baud": 115200, "parity": "N", "reconnect_max": "1s"}


def _modbus_dev(dev: Device) -> dict[str, Any]:
    return {"name": dev.name, "unit": dev.unit, "profile": dev.profile,
            "interval": str(dev.interval), **_MODBUS_DEVICE}


def _serial_table(dev: Device, link: Path) -> dict[str, Any]:
    table = profile_config(dev.profile or "", str(link), **_REOPEN)
    table.pop("instance", None)
    device = table["devices"][0]
    device["name"] = dev.name
    if "query" in device:
        device["query"].update(interval=str(dev.interval), timeout="200ms")
    else:
        device["silence_timeout"] = "2s"
    return table
