"""Bus discipline: who may talk when, and keeping the port or connection open.

An RTU line carries one transaction at a time, with a silence of 3.5 characters between
frames (Modbus over Serial Line V1.02 §2.5.1.1). A TCP endpoint takes ``max_in_flight``
transactions at once (1: serialized; more: pipelined on one connection, matched by
transaction id, Modbus Messaging on TCP/IP Implementation Guide V1.0b §4.2). A port that
is missing is reopened with capped, jittered backoff while every request fails fast as
UNAVAILABLE, so devices keep reporting instead of waiting.

Who goes next is decided by one gate with priorities: a write (and its read-back) waiting for
the bus goes before every poll waiting with it, polls keep their order among themselves, and
a transaction in progress is never interrupted. A write therefore waits at most for the
transactions already on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from typing import TYPE_CHECKING

from drivers.api import Backoff, HealthBoard
from drivers.modbus._errors import ModbusError, PortUnavailableError, ResponseTimeoutError
from drivers.modbus._link import (
    Link,
    RtuLink,
    TcpLink,
    read_request,
    registers_bytes,
    write_request,
)

if TYPE_CHECKING:
    import logging
    from collections.abc import AsyncIterator, Sequence

    from pymodbus.pdu import ModbusPDU

    from drivers.modbus.config import BusConfig

__all__ = ["POLL", "WRITE", "Bus", "PriorityGate", "make_link"]

#: Gate priorities: lower goes first.
WRITE = 0
POLL = 1

#: Timeouts in a row on a TCP connection before it is dropped and reopened.
_TCP_RESET_AFTER = 3


def make_link(cfg: BusConfig) -> Link:
    """The link for a bus config."""
    if cfg.kind == "rtu":
        baud, parity, stop_bits = cfg.line
        return RtuLink(str(cfg.port), baud=baud, parity=parity, stop_bits=stop_bits)
    return TcpLink(str(cfg.host), cfg.tcp_port, connect_timeout=float(cfg.connect_timeout))


class PriorityGate:
    """A semaphore of ``slots`` whose waiters are let in by (priority, arrival)."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        entry = (priority, next(self._arrival), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, entry)
        try:
            await entry[2]
        except asyncio.CancelledError:
            if entry[2].done() and not entry[2].cancelled():
                self._release()  # let in, then cancelled before it ran: pass the slot on
            elif entry in self._waiting:  # a release may have dropped it already
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        while self._waiting:
            _priority, _n, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)  # the slot goes straight to the next waiter
                return
        self._free += 1


class Bus:
    """Serializes (or pipelines) transactions on one link; reopens it when it goes away."""

    def __init__(self, cfg: BusConfig, health: HealthBoard, log: logging.Logger,
                 link: Link | None = None) -> None:
        self.cfg = cfg
        self.link = link or make_link(cfg)
        self._health = health
        self._log = log
        self.gate = PriorityGate(cfg.in_flight)
        self._opening = asyncio.Lock()
        self._backoff = Backoff(base=0.2, cap=float(cfg.reconnect_max))
        self._retry_at = 0.0
        self._down: str | None = None
        self._quiet_until = 0.0
        self._timeouts = 0
        self._silence = cfg.silence() if cfg.kind == "rtu" else 0.0

    async def read(self, unit: int, table: str, address: int, count: int,
                   reply_timeout: float, *, priority: int = POLL,
                   ) -> Sequence[int] | Sequence[bool]:
        """Registers or bits ``address..address+count-1`` of ``unit``.

        Raises:
            ModbusError: the subclass says what went wrong (see ``_errors``).
        """
        response = await self._read(unit, table, address, count, reply_timeout,
                                    priority=priority)
        if table in ("coil", "discrete"):
            return list(response.bits[:count])
        return list(response.registers)

    async def read_block(self, unit: int, table: str, address: int, count: int,
                         reply_timeout: float) -> bytes | Sequence[bool]:
        """Like :meth:`read`, but registers as received: ``2 * count`` bytes, big-endian.

        Raises:
            ModbusError: the subclass says what went wrong (see ``_errors``).
        """
        response = await self._read(unit, table, address, count, reply_timeout, priority=POLL)
        if table in ("coil", "discrete"):
            return response.bits
        return registers_bytes(response)

    async def _read(self, unit: int, table: str, address: int, count: int,
                    reply_timeout: float, *, priority: int) -> ModbusPDU:
        request = read_request(table, address, count, unit)
        # Time on the wire counts too: request + answer at the line's baud rate.
        data = math.ceil(count / 8) if table in ("coil", "discrete") else 2 * count
        return await self._transact(request, reply_timeout, 8 + 5 + data, priority)

    async def write(self, unit: int, table: str, address: int,
                    items: Sequence[int] | Sequence[bool], reply_timeout: float, *,
                    multiple: bool = False) -> None:
        """Write ``items`` from ``address`` on, ahead of any poll waiting for the bus.

        Raises:
            ModbusError: the subclass says what went wrong (see ``_errors``).
        """
        request = write_request(table, address, items, unit, multiple=multiple)
        data = math.ceil(len(items) / 8) if table == "coil" else 2 * len(items)
        await self._transact(request, reply_timeout, 9 + data + 8, WRITE)

    async def _transact(self, request: ModbusPDU, reply_timeout: float, chars: int,
                        priority: int) -> ModbusPDU:
        async with self.gate.slot(priority):
            await self._ensure_open()
            await self._wait_quiet()
            self._health.count("transactions")
            try:
                response = await self.link.transact(
                    request, reply_timeout + self.cfg.char_time() * chars)
            except ModbusError as exc:
                self._after_failure(exc)
                raise
            finally:
                self._quiet_until = asyncio.get_running_loop().time() + self._silence
            self._timeouts = 0
        return response

    async def _wait_quiet(self) -> None:
        wait = self._quiet_until - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _after_failure(self, exc: ModbusError) -> None:
        if not isinstance(exc, ResponseTimeoutError) or self.cfg.kind != "tcp":
            return
        self._timeouts += 1
        if self._timeouts >= _TCP_RESET_AFTER:
            # A half-open TCP connection only times out; a fresh one tells.
            self._timeouts = 0
            self._health.count("reconnects")
            self.link.close()

    async def _ensure_open(self) -> None:
        if self.link.is_open:
            return
        async with self._opening:
            if self.link.is_open:
                return
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at:
                raise PortUnavailableError(self._down or "port unavailable")
            try:
                await self.link.open()
            except PortUnavailableError as exc:
                self._retry_at = loop.time() + self._backoff.next_delay()
                if self._down is None:
                    self._log.warning("bus %s unavailable: %s", self.cfg.describe(), exc)
                self._down = str(exc)
                self._health.count("open_failures")
                raise
            self._backoff.reset()
            self._health.count("opens")
            if self._down is not None:
                self._log.info("bus %s is back", self.cfg.describe())
                self._down = None

    def close(self) -> None:
        self.link.close()
