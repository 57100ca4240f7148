"""One transaction on a serial line or a TCP connection, built on pymodbus framers and PDUs.

pymodbus builds and parses every frame (``FramerRTU`` with its CRC, ``FramerSocket`` with the
MBAP header, ``DecodePDU``) and owns the serial port (``SerialTransport``). This module only
decides what a transaction's outcome is, which pymodbus's client does not tell apart: its RTU
framer drops a frame with a bad CRC and the client then reports a timeout, and it holds one
transaction per connection, retries and reconnects on its own. Here a bad CRC is a
:class:`CrcError`, leftover bytes at the deadline are a short frame, requests on TCP are
matched by transaction id so several may be in flight, and retries belong to the caller.
"""

from __future__ import annotations

import asyncio
import math
import struct
import termios
from typing import TYPE_CHECKING, Any, Protocol

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)
from pymodbus.transport.serialtransport import create_serial_connection

from drivers.modbus._errors import (
    ConnectionLostError,
    CrcError,
    ExceptionCodeError,
    InconsistentAnswerError,
    MalformedFrameError,
    PortUnavailableError,
    ResponseTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Link", "RtuLink", "TcpLink", "check_response", "client_decoder", "read_request",
           "registers_bytes", "write_request"]

_REQUESTS: dict[str, Callable[..., ModbusPDU]] = {
    "coil": ReadCoilsRequest, "discrete": ReadDiscreteInputsRequest,
    "holding": ReadHoldingRegistersRequest, "input": ReadInputRegistersRequest,
}
_MBAP = 7  # MBAP header bytes (Modbus Messaging on TCP/IP Implementation Guide V1.0b §3.1.3)


class _RegistersAnswer(ReadHoldingRegistersResponse):
    """pymodbus's answer to FC 3, decoded with one unpack, keeping its bytes in ``raw``.

    Registered with the link's ``DecodePDU`` (pymodbus's way to add PDU classes), so framing,
    dispatch and the error answers stay pymodbus's. The block decoders read ``raw`` directly.
    """

    raw: bytes = b""

    def decode(self, data: bytes) -> None:
        size = int(data[0])
        if size >= len(data) or size % 2:
            # What pymodbus's own decode fails on (DecodePDU turns it into None).
            raise ValueError(f"byte_count {size} in a packet of {len(data)} bytes")
        self.raw = data[1:1 + size]
        self.registers = list(struct.unpack_from(f">{size // 2}H", data, 1))

    def __str__(self) -> str:
        # DecodePDU formats every PDU for a debug line even when debug logging is off.
        return (f"{type(self).__name__}(dev_id={self.dev_id}, "
                f"transaction_id={self.transaction_id}, {len(self.registers)} registers)")


class _InputAnswer(_RegistersAnswer):
    """The same for FC 4."""

    function_code = ReadInputRegistersResponse.function_code


def client_decoder() -> DecodePDU:
    """pymodbus's client-side PDU decoder, with the register answers above."""
    decoder = DecodePDU(is_server=False)
    decoder.register(_RegistersAnswer)
    decoder.register(_InputAnswer)
    return decoder


def registers_bytes(response: ModbusPDU) -> bytes:
    """A register read's data as received: two bytes per register, big-endian."""
    raw = getattr(response, "raw", None)
    if isinstance(raw, bytes) and len(raw) == 2 * len(response.registers):
        return raw
    return struct.pack(f">{len(response.registers)}H", *response.registers)


def read_request(table: str, address: int, count: int, unit: int) -> ModbusPDU:
    """The pymodbus read request for a table."""
    return _REQUESTS[table](address=address, count=count, dev_id=unit)


def write_request(table: str, address: int, items: Sequence[int] | Sequence[bool], unit: int,
                  *, multiple: bool = False) -> ModbusPDU:
    """The pymodbus write request: FC 5 or 6 for one item, else (or when ``multiple``) FC 15
    or 16 (Modbus Application Protocol V1.1b3 §6.5, 6.6, 6.11, 6.12)."""
    if table == "coil":
        bits = [bool(b) for b in items]
        if len(bits) == 1 and not multiple:
            return WriteSingleCoilRequest(address=address, bits=bits, dev_id=unit)
        return WriteMultipleCoilsRequest(address=address, bits=bits, dev_id=unit)
    if table != "holding":
        raise ValueError(f"the {table} table is read-only")
    regs = [int(r) for r in items]
    if len(regs) == 1 and not multiple:
        return WriteSingleRegisterRequest(address=address, registers=regs, dev_id=unit)
    return WriteMultipleRegistersRequest(address=address, registers=regs, count=len(regs),
                                         dev_id=unit)


def _echo_differs(request: ModbusPDU, response: ModbusPDU) -> str | None:
    """Why a write's answer is not the echo §6.5/6.6 (whole) or §6.11/6.12 (address, count)
    ask for; None when it is."""
    fc = request.function_code
    if fc == 5:
        sent, got = (request.address, int(bool(request.bits[0]))), \
            (response.address, int(bool(response.bits[0])))
    elif fc == 6:
        sent, got = (request.address, request.registers[0]), \
            (response.address, response.registers[0])
    else:
        sent, got = (request.address, request.count), (response.address, response.count)
    return None if sent == got else f"answer {got} to a write of {sent}"


def check_response(request: ModbusPDU, response: ModbusPDU) -> ModbusPDU:
    """Return ``response`` if it answers ``request``; raise the matching error otherwise."""
    if response.isError():
        if response.function_code & 0x7F != request.function_code:
            raise InconsistentAnswerError(f"exception for function "
                                          f"{response.function_code & 0x7F} in answer to "
                                          f"function {request.function_code}")
        raise ExceptionCodeError(response.exception_code)
    if response.function_code != request.function_code:
        raise InconsistentAnswerError(f"function {response.function_code} in answer to "
                                      f"function {request.function_code}")
    if request.function_code in (5, 6, 15, 16):
        if (why := _echo_differs(request, response)) is not None:
            raise InconsistentAnswerError(why)
        return response
    if request.function_code in (1, 2):
        got, want = len(response.bits), 8 * math.ceil(request.count / 8)
    else:
        got, want = len(response.registers), request.count
    if got != want:
        raise InconsistentAnswerError(f"{got} items in answer to a read of {want}")
    return response


class Link(Protocol):
    """A byte pipe carrying Modbus transactions."""

    @property
    def is_open(self) -> bool: ...

    async def open(self) -> None: ...

    def close(self) -> None: ...

    async def transact(self, request: ModbusPDU, reply_timeout: float) -> ModbusPDU: ...


class _Stream(asyncio.Protocol):
    """Hands received bytes and a lost connection to its link."""

    def __init__(self, on_data: Callable[[bytes], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class RtuLink:
    """A serial line: one request, then its answer (Modbus over Serial Line V1.02 §2.1)."""

    def __init__(self, port: str, *, baud: int, parity: str, stop_bits: int) -> None:
        self.port = port
        self._params = {"baudrate": baud, "bytesize": 8, "parity": parity,
                        "stopbits": stop_bits, "timeout": 0}
        self._framer = FramerRTU(client_decoder())
        self._transport: asyncio.BaseTransport | None = None
        self._buf = bytearray()
        self._event = asyncio.Event()
        #: Frames from other units and bytes arriving with no request outstanding.
        self.stray = 0

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Opening a serial port is a quick ioctl/open; SerialTransport then reads with
            # add_reader, so nothing blocks the loop afterwards.
            transport, _ = await create_serial_connection(
                loop, lambda: _Stream(self._on_data, self._on_lost), self.port,
                **self._params)
        except (OSError, ValueError, termios.error) as exc:
            # termios.error: the port refuses the line settings (a pty refuses parity).
            raise PortUnavailableError(f"{self.port}: {exc}") from exc
        self._transport = transport

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _on_data(self, data: bytes) -> None:
        self._buf += data
        self._event.set()

    def _on_lost(self, _exc: Exception | None) -> None:
        self._transport = None
        self._event.set()

    async def transact(self, request: ModbusPDU, reply_timeout: float) -> ModbusPDU:
        transport = self._transport
        if transport is None:
            raise ConnectionLostError(f"{self.port} is closed")
        if self._buf:
            self.stray += 1
            self._buf.clear()
        transport.write(self._framer.buildFrame(request))  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(reply_timeout):
                return await self._answer(request)
        except TimeoutError:
            left, self._buf = bytes(self._buf), bytearray()
            if left:
                raise MalformedFrameError(f"short or garbled frame: {left.hex(' ')}") from None
            raise ResponseTimeoutError from None

    async def _answer(self, request: ModbusPDU) -> ModbusPDU:
        while True:
            self._event.clear()
            if self._transport is None:
                raise ConnectionLostError(f"{self.port} went away")
            used, unit, _tid, data = self._framer.decode(bytes(self._buf))
            if used:
                frame = bytes(self._buf[:used])
                del self._buf[:used]
                if not data:
                    raise CrcError(f"CRC mismatch in {frame.hex(' ')}")
                if unit == request.dev_id:
                    return _decoded(self._framer, request, data, frame)
                self.stray += 1
                continue
            await self._event.wait()


class TcpLink:
    """A TCP connection; answers are matched to requests by MBAP transaction id."""

    def __init__(self, host: str, port: int, *, connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self._connect_timeout = connect_timeout
        self._framer = FramerSocket(client_decoder())
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: dict[int, tuple[ModbusPDU, asyncio.Future[ModbusPDU]]] = {}
        self._tid = 0
        #: Answers whose request had already timed out.
        self.late = 0

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _Stream(self._on_data, self._on_lost), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise PortUnavailableError(f"{self.host}:{self.port}: {exc or 'timed out'}") from exc
        self._buf.clear()
        self._transport = transport

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all(ConnectionLostError("connection closed"))

    def _on_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_all(ConnectionLostError(f"connection lost: {exc or 'closed by peer'}"))

    def _fail_all(self, error: Exception) -> None:
        self._buf.clear()
        for _request, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    def _resync(self, reason: str) -> None:
        """A stream without a valid MBAP header cannot be re-framed: drop the connection."""
        self._fail_all(MalformedFrameError(reason))
        self.close()

    def _on_data(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= _MBAP + 1:
            if self._buf[2:4] != b"\x00\x00":
                self._resync(f"not an MBAP header: {bytes(self._buf[:8]).hex(' ')}")
                return
            used, _unit, tid, pdu = self._framer.decode(bytes(self._buf))
            if not used:
                return
            frame = bytes(self._buf[:used])
            del self._buf[:used]
            entry = self._pending.pop(tid, None)
            if entry is None:
                self.late += 1
                continue
            request, fut = entry
            if fut.done():
                continue
            try:
                fut.set_result(_decoded(self._framer, request, pdu, frame))
            except (MalformedFrameError, ExceptionCodeError) as exc:
                fut.set_exception(exc)

    def _next_tid(self) -> int:
        for _ in range(65535):
            self._tid = self._tid % 65535 + 1
            if self._tid not in self._pending:
                return self._tid
        raise MalformedFrameError("no free transaction id")  # pragma: no cover

    async def transact(self, request: ModbusPDU, reply_timeout: float) -> ModbusPDU:
        transport = self._transport
        if transport is None:
            raise ConnectionLostError(f"{self.host}:{self.port} is not connected")
        tid = request.transaction_id = self._next_tid()
        fut: asyncio.Future[ModbusPDU] = asyncio.get_running_loop().create_future()
        self._pending[tid] = (request, fut)
        transport.write(self._framer.buildFrame(request))
        try:
            async with asyncio.timeout(reply_timeout):
                return await fut
        except TimeoutError:
            if self._buf[:2] == tid.to_bytes(2, "big"):
                self._resync(f"short frame: {bytes(self._buf).hex(' ')}")
                raise MalformedFrameError(f"short frame for transaction {tid}") from None
            raise ResponseTimeoutError from None
        finally:
            self._pending.pop(tid, None)


def _decoded(framer: Any, request: ModbusPDU, pdu_bytes: bytes, frame: bytes) -> ModbusPDU:
    response = framer.decoder.decode(pdu_bytes) if pdu_bytes else None
    if response is None:
        raise InconsistentAnswerError(f"undecodable frame {frame.hex(' ')}")
    return check_response(request, response)
