"""Writing one point: encode, write, read back, compare.

The value is encoded with the point's register map (:func:`codec.encode_exact`: nothing is
sent when it does not fit), written with FC 5 / 6 for one coil or register and FC 15 / 16 for
more (or always, for a device with ``workarounds.write_multiple``), then read back through
the same bus and decoded. The written value is compared after the same encode/decode round
trip, so scaling and float32 precision do not count as a mismatch. A ``bit`` point of a
holding register is read, changed in that bit only and written whole; writes to one unit take
turns, so two bits of one register written at once do not undo each other.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from drivers.api import DeviceHealth, Quality, Value, WriteError
from drivers.modbus import codec
from drivers.modbus._errors import ModbusError, write_failure
from drivers.modbus.bus import WRITE

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable

    from drivers.modbus.bus import Bus
    from drivers.modbus.codec import PointSpec
    from drivers.modbus.config import DeviceConfig
    from drivers.modbus.poller import DevicePoller

__all__ = ["WRITABLE_TABLES", "PointWriter"]

#: Tables a master can write (Modbus Application Protocol V1.1b3 §4.3): the others are inputs.
WRITABLE_TABLES = ("coil", "holding")


class PointWriter:
    """The writable points of one bus's devices, by full point name."""

    def __init__(self, bus: Bus, pollers: Iterable[DevicePoller], log: logging.Logger) -> None:
        self.bus = bus
        self._log = log
        self._points: dict[str, tuple[DeviceConfig, DeviceHealth, PointSpec]] = {}
        for poller in pollers:
            for (name, _unit), spec in zip(poller.point_names(), poller.points, strict=True):
                if spec.table in WRITABLE_TABLES:
                    self._points[name] = (poller.dev, poller.health, spec)
        self._turns: dict[int, asyncio.Lock] = {}

    def names(self) -> list[str]:
        return list(self._points)

    async def write(self, point: str, value: Value) -> Value:
        """Write, read back and return the value read back; see ``Driver.write``."""
        if point not in self._points:
            raise WriteError("not-writable", f"{point} is not a coil or holding register point "
                                             "of this bus")
        dev, health, spec = self._points[point]
        try:
            items = codec.encode_exact(spec, value)
        except codec.EncodeError as exc:
            raise WriteError("bad-value", str(exc)) from None
        expected, _quality = codec.decode(spec, list(items))
        health.count("writes")
        try:
            async with self._turns.setdefault(dev.unit, asyncio.Lock()):
                back = await self._write_and_read(dev, spec, items)
        except WriteError as exc:
            health.count("write_failures")
            self._log.debug("write %s = %r: %s", point, value, exc)
            raise
        got, quality = codec.decode(spec, back)
        if quality is not Quality.GOOD or got != expected:
            health.count("write_failures")
            raise WriteError("mismatch", f"wrote {expected!r}, read back {got!r}", value=got)
        self._log.debug("wrote %s = %r", point, got)
        return got

    async def _write_and_read(self, dev: DeviceConfig, spec: PointSpec,
                              items: list[int] | list[bool]) -> list[int] | list[bool]:
        timeout = float(dev.timeout)
        try:
            if spec.type == "bit" and not spec.is_bit_table:
                items = await self._merged_bit(dev, spec, items)
            await self.bus.write(dev.unit, spec.table, spec.address, items, timeout,
                                 multiple=dev.workarounds.write_multiple)
        except ModbusError as exc:
            raise write_failure(exc) from exc
        try:
            back = await self.bus.read(dev.unit, spec.table, spec.address, spec.count,
                                       timeout, priority=WRITE)
        except ModbusError as exc:
            raise write_failure(exc, "written, but reading it back: ") from exc
        return list(back)

    async def _merged_bit(self, dev: DeviceConfig, spec: PointSpec,
                          items: list[int] | list[bool]) -> list[int]:
        """The register with the point's bit changed and the other bits as they are."""
        (current,) = await self.bus.read(dev.unit, spec.table, spec.address, 1,
                                         float(dev.timeout), priority=WRITE)
        mask = 1 << (spec.bit or 0)
        return [(int(current) & ~mask & 0xFFFF) | int(items[0])]
