"""The Modbus simulator: simulated units over TCP (MBAP) or an RTU line on a pty pair.

pymodbus parses each request (``FramerSocket`` / ``FramerRTU``, ``DecodePDU``) and builds
each answer (the request PDU's ``datastore_update`` against :class:`SimStore`, then the
framer's ``buildFrame``). Faults post-process what pymodbus built: ``silent`` sends nothing,
``exception`` answers an exception PDU, ``crc`` flips the last CRC byte (TCP has no CRC, so
there it breaks the MBAP protocol id instead), ``short`` drops the frame's last bytes, and
``slow`` answers after a delay. On the pty the simulator owns the master side and keeps the
slave open, so the device path stays valid while the driver closes and reopens it.

Writes (FC 5, 6, 15, 16) go to the units' stores with their rules (``_simstore``); a unit
that takes one answers the echo Modbus Application Protocol V1.1b3 §6.5/6.6/6.11/6.12 asks for,
and ``on_write`` hears of every write a unit received (taken or refused). ``log`` keeps the
requests in the order they arrived, for tests that check who went first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tty
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import WriteSingleCoilResponse
from pymodbus.pdu.register_message import WriteSingleRegisterResponse

from drivers.modbus._errors import EXCEPTION_NAMES
from drivers.modbus._simstore import Fault, SimStore, SimUnit
from drivers.modbus.config import DeviceConfig
from drivers.modbus.profiles import resolve_points

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

__all__ = ["Fault", "ModbusSimulator", "Request", "SimUnit", "WriteEvent", "device_unit",
           "profile_unit", "running"]

#: Write function codes -> table (Modbus Application Protocol V1.1b3 §6.5, 6.6, 6.11, 6.12).
WRITES = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
#: Requests kept in :attr:`ModbusSimulator.log`.
_LOG_SIZE = 10_000


class Request(NamedTuple):
    """One request as it arrived: unit, function code, first address, number of items."""

    unit: int
    function: int
    address: int
    size: int


class WriteEvent(NamedTuple):
    """A write a unit received: its items, and the exception code when it refused it."""

    unit: int
    table: str
    address: int
    items: list[int]
    refused: int | None

    def describe(self) -> str:
        """One line for a technician: ``unit 7 coil 0 <- 1``."""
        last = self.address + len(self.items) - 1
        where = f"{self.address}" if last == self.address else f"{self.address}..{last}"
        shown = " ".join(str(i) for i in self.items)
        outcome = "" if self.refused is None else \
            f" refused: exception {self.refused} ({EXCEPTION_NAMES.get(self.refused, '?')})"
        return f"unit {self.unit} {self.table} {where} <- {shown}{outcome}"


def device_unit(dev: DeviceConfig, **kwargs: Any) -> SimUnit:
    """A unit serving a configured device's points (profile and overrides merged)."""
    points, issues = resolve_points(dev)
    if issues:
        raise ValueError("; ".join(f"{k}: {m}" for k, m in issues))
    return SimUnit(dev.unit, points, **kwargs)


def profile_unit(unit: int, profile: str, **kwargs: Any) -> SimUnit:
    """A unit serving a profile's register map."""
    return device_unit(DeviceConfig(name=f"unit-{unit}", unit=unit, profile=profile), **kwargs)


class ModbusSimulator:
    """Serves :class:`SimUnit` s; ``stop``/``start`` take them off the bus and back."""

    def __init__(self, units: Iterable[SimUnit], *, seed: int | None = None) -> None:
        self.units = {u.unit: u for u in units}
        self.store = SimStore(self.units)
        self.stats: Counter[str] = Counter()
        self.log: deque[Request] = deque(maxlen=_LOG_SIZE)
        self.on_write: Callable[[WriteEvent], None] | None = None
        self.answering = True
        self._active = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._host = "127.0.0.1"
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pty: tuple[int, int] | None = None
        self.path = ""
        self._rtu_buf = b""
        self._rtu_busy: set[int] = set()
        self._rtu_framer = FramerRTU(DecodePDU(is_server=True))

    # -- control -------------------------------------------------------------------
    def set_fault(self, unit: int | None, fault: Fault | str | None) -> None:
        """Give one unit (or every unit, for None) a fault; None heals."""
        parsed = Fault.parse(fault) if isinstance(fault, str) else fault
        for u in self.units.values() if unit is None else [self.units[unit]]:
            u.fault = parsed

    async def stop(self) -> None:
        """Stop answering; TCP also closes the listener and every connection."""
        self.answering = False
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=2.0)
            await self._server.wait_closed()
            self._server = None

    async def start(self) -> None:
        """Answer again (TCP: on the same port), with every fault healed."""
        self.set_fault(None, None)
        self.answering = True
        if self.port and self._server is None:
            await self.serve_tcp(self._host, self.port)

    async def close(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._pty is not None:
            master, slave = self._pty
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)
            os.close(slave)
            self._pty = None

    # -- answers ---------------------------------------------------------------------
    async def _answer(self, request: ModbusPDU, framer: FramerRTU | FramerSocket) -> bytes:
        """The frame for ``request``, faults applied; empty when the unit stays silent."""
        unit = self.units.get(request.dev_id)
        if unit is None or not self.answering:
            self.stats["unanswered"] += 1
            return b""
        unit.requests += 1
        self.stats["requests"] += 1
        self.log.append(Request(request.dev_id, request.function_code,
                                request.address, _items(request)))
        self._active += 1
        self.stats["max_concurrent"] = max(self.stats["max_concurrent"], self._active)
        try:
            return await self._respond(unit, request, framer)
        finally:
            self._active -= 1

    async def _respond(self, unit: SimUnit, request: ModbusPDU,
                       framer: FramerRTU | FramerSocket) -> bytes:
        fault = unit.fault if unit.fault and self._rng.random() < unit.fault.rate else None
        if fault is not None:
            self.stats[f"fault_{fault.kind}"] += 1
            if fault.kind == "silent":
                return b""
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "exception":
            response: ModbusPDU = ExceptionResponse(request.function_code, fault.code)
        else:
            response = await self._execute(request)
        response.dev_id = request.dev_id
        response.transaction_id = request.transaction_id
        return _damaged(framer.buildFrame(response), fault, rtu=isinstance(framer, FramerRTU))

    async def _execute(self, request: ModbusPDU) -> ModbusPDU:
        try:
            response = await request.datastore_update(cast("Any", self.store), request.dev_id)
        except Exception:  # noqa: BLE001 - a device answers 4 (device failure), it does not crash
            self.stats["device_failures"] += 1
            return ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        if request.function_code in WRITES:
            return self._written(request, response)
        return response

    def _written(self, request: ModbusPDU, response: ModbusPDU) -> ModbusPDU:
        """Count and report a write; answer FC 5 / 6 with the echo of the request.

        pymodbus answers them with the stored value instead, but a device that clamps or
        ignores a write still echoes it (§6.5, 6.6): only a read-back tells.
        """
        fc = request.function_code
        refused = response.exception_code if response.isError() else None
        self.stats["writes" if refused is None else "writes_refused"] += 1
        items = [int(b) for b in request.bits[:request.count or 1]] if WRITES[fc] == "coil" \
            else [int(r) for r in request.registers]
        if self.on_write is not None:
            self.on_write(WriteEvent(request.dev_id, WRITES[fc], request.address, items,
                                     refused))
        if refused is not None:
            return response
        if fc == 5:
            return WriteSingleCoilResponse(address=request.address, bits=request.bits[:1])
        if fc == 6:
            return WriteSingleRegisterResponse(address=request.address,
                                               registers=request.registers[:1])
        return response

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- TCP ---------------------------------------------------------------------------
    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); return the port."""
        self._server = await asyncio.start_server(self._tcp_client, host, port,
                                                  reuse_address=True)
        self._host = host
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        framer = FramerSocket(DecodePDU(is_server=True))
        buf = b""
        try:
            while data := await reader.read(4096):
                buf += data
                while len(buf) >= 8:
                    used, unit, tid, pdu = framer.decode(buf)
                    if not used:
                        break
                    buf = buf[used:]
                    self._spawn(self._tcp_reply(framer, unit, tid, pdu, writer))
        except OSError:
            self.stats["connection_errors"] += 1
        finally:
            self._writers.discard(writer)
            self._handlers.discard(me)
            writer.close()

    async def _tcp_reply(self, framer: FramerSocket, unit: int, tid: int, pdu: bytes,
                         writer: asyncio.StreamWriter) -> None:
        request = framer.decoder.decode(pdu) if pdu else None
        if request is None:
            self.stats["bad_requests"] += 1
            return
        request.dev_id, request.transaction_id = unit, tid
        frame = await self._answer(request, framer)
        if frame and not writer.is_closing():
            writer.write(frame)

    # -- RTU -----------------------------------------------------------------------------
    async def serve_rtu(self) -> str:
        """Open a pty pair; return the device path the driver should open."""
        master, slave = os.openpty()
        tty.setraw(slave)  # a serial line carries bytes: no echo, no line editing
        os.set_blocking(master, False)
        self._pty = (master, slave)
        self.path = os.ttyname(slave)
        asyncio.get_running_loop().add_reader(master, self._on_pty)
        return self.path

    def _on_pty(self) -> None:
        assert self._pty is not None  # noqa: S101 - the reader is removed before closing
        try:
            data = os.read(self._pty[0], 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stats["line_errors"] += 1
            return
        self._rtu_buf += data
        used, _unit, _tid, pdu = self._rtu_framer.decode(self._rtu_buf)
        if not used:
            return
        self._rtu_buf = self._rtu_buf[used:]
        request = self._rtu_framer.decoder.decode(pdu) if pdu else None
        if request is None:
            self.stats["bad_requests"] += 1
        elif _unit in self._rtu_busy:
            # A device still busy answering does not hear the line (half duplex).
            self.stats["ignored_busy"] += 1
        else:
            request.dev_id = _unit
            self._rtu_busy.add(_unit)
            self._spawn(self._rtu_reply(request))

    async def _rtu_reply(self, request: ModbusPDU) -> None:
        try:
            frame = await self._answer(request, self._rtu_framer)
            if frame and self._pty is not None:
                try:
                    os.write(self._pty[0], frame)
                except OSError:
                    self.stats["line_errors"] += 1
        finally:
            self._rtu_busy.discard(request.dev_id)


def _items(request: ModbusPDU) -> int:
    if request.function_code in (5, 6):
        return 1
    if request.function_code == 16:
        return len(request.registers)
    return int(request.count)


def _damaged(frame: bytes, fault: Fault | None, *, rtu: bool) -> bytes:
    if fault is None:
        return frame
    if fault.kind == "crc":
        if rtu:
            return frame[:-1] + bytes([frame[-1] ^ 0xFF])
        return frame[:2] + b"\x00\x01" + frame[4:]
    if fault.kind == "short":
        return frame[:-3] if rtu else frame[:-2]
    return frame


@contextlib.asynccontextmanager
async def running(units: Iterable[SimUnit], *, tcp: bool = True,
                  seed: int | None = None) -> AsyncIterator[ModbusSimulator]:
    """A simulator serving ``units`` on a free loopback TCP port, or on a pty pair."""
    sim = ModbusSimulator(units, seed=seed)
    if tcp:
        await sim.serve_tcp()
    else:
        await sim.serve_rtu()
    try:
        yield sim
    finally:
        await sim.close()
