"""The field tools' logic: scan a bus for units, read registers once, write one value.
Printing is in ``cli``."""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.api import DriverContext, Value
from drivers.modbus import codec
from drivers.modbus._errors import (
    EXCEPTION_NAMES,
    CrcError,
    ExceptionCodeError,
    MalformedFrameError,
    ModbusError,
    classify,
)
from drivers.modbus._link import Link, RtuLink, TcpLink, read_request
from drivers.modbus.codec import ORDERS, PointSpec
from drivers.modbus.planner import plan

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Answer", "Endpoint", "read_points", "read_raw", "scan", "side_by_side",
           "write_point"]

WIDE = ("u32", "i32", "f32", "u64", "i64", "f64")


@dataclass(frozen=True)
class Endpoint:
    """Where to talk: a TCP ``host:port`` or a serial device with line settings."""

    tcp: str | None = None
    rtu: str | None = None
    baud: int = 9600
    parity: str = "E"
    stop_bits: int = 1

    def link(self) -> Link:
        if self.tcp is not None:
            host, _, port = self.tcp.rpartition(":") if ":" in self.tcp else (self.tcp, "", "502")
            return TcpLink(host, int(port), connect_timeout=2.0)
        return RtuLink(str(self.rtu), baud=self.baud, parity=self.parity,
                       stop_bits=self.stop_bits)

    @property
    def settings(self) -> str:
        return "tcp" if self.tcp is not None else f"{self.baud} 8{self.parity}{self.stop_bits}"

    def describe(self) -> str:
        return f"tcp://{self.tcp}" if self.tcp is not None else f"{self.rtu} {self.settings}"

    def bus_table(self) -> dict[str, Any]:
        """The driver's ``bus`` table for this endpoint."""
        if self.tcp is not None:
            host, _, port = self.tcp.rpartition(":") if ":" in self.tcp else (self.tcp, "", "502")
            return {"kind": "tcp", "host": host, "port": int(port), "connect_timeout": "2s"}
        return {"kind": "rtu", "port": self.rtu, "baud": self.baud, "parity": self.parity,
                "stop_bits": self.stop_bits}

    @property
    def silence(self) -> float:
        """t3.5 between frames (Modbus over Serial Line V1.02 §2.5.1.1)."""
        return 0.0 if self.tcp is not None else max(0.00175, 3.5 * 11 / self.baud)


@dataclass
class Answer:
    """What one unit said to the scan's probe."""

    settings: str
    unit: int
    kind: str  # "data" or "exception"
    value: int | None = None
    exception: int | None = None

    def describe(self, table: str, address: int) -> str:
        if self.kind == "exception":
            code = self.exception or 0
            return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        return f"{table}[{address}] = {self.value} (0x{(self.value or 0) & 0xFFFF:04x})"


@dataclass
class ScanResult:
    answers: list[Answer] = field(default_factory=list)
    #: settings -> CRC errors or garbled frames seen (a hint of wrong baud rate or parity).
    garbled: dict[str, int] = field(default_factory=dict)
    #: settings -> why the port could not be opened with them.
    unavailable: dict[str, str] = field(default_factory=dict)


async def _probe(link: Link, unit: int, table: str, address: int,
                 reply_timeout: float) -> tuple[str, int | None]:
    """('data', first item) / ('exception', code) / ('garbled', None) / ('silent', None)."""
    try:
        response = await link.transact(read_request(table, address, 1, unit), reply_timeout)
    except ExceptionCodeError as exc:
        return "exception", exc.code
    except (CrcError, MalformedFrameError):
        return "garbled", None
    except ModbusError:
        return "silent", None
    items = response.bits if table in ("coil", "discrete") else response.registers
    return "data", int(items[0])


async def scan(endpoints: Sequence[Endpoint], units: Sequence[int], *, table: str = "holding",
               address: int = 0, reply_timeout: float = 0.1,
               all_settings: bool = False) -> ScanResult:
    """Probe every unit at every endpoint (line settings); stop at the first that answers."""
    result = ScanResult()
    for ep in endpoints:
        link = ep.link()
        try:
            await link.open()
        except ModbusError as exc:
            result.unavailable[ep.settings] = classify(exc).message
            continue
        found = 0
        try:
            for unit in units:
                kind, item = await _probe(link, unit, table, address, reply_timeout)
                await asyncio.sleep(ep.silence)
                if kind == "garbled":
                    result.garbled[ep.settings] = result.garbled.get(ep.settings, 0) + 1
                elif kind in ("data", "exception"):
                    found += 1
                    result.answers.append(Answer(ep.settings, unit, kind,
                                                 item if kind == "data" else None,
                                                 item if kind == "exception" else None))
        finally:
            link.close()
        if found and not all_settings:
            break
    return result


def serial_endpoints(port: str, bauds: Sequence[int], parities: Sequence[str],
                     stop_bits: Sequence[int]) -> list[Endpoint]:
    return [Endpoint(rtu=port, baud=b, parity=p, stop_bits=s)
            for b, p, s in itertools.product(bauds, parities, stop_bits)]


async def read_raw(ep: Endpoint, unit: int, table: str, address: int, count: int, *,
                   reply_timeout: float) -> list[int] | list[bool]:
    """Items ``address..address+count-1`` once. Raises ModbusError."""
    link = ep.link()
    await link.open()
    try:
        response = await link.transact(read_request(table, address, count, unit), reply_timeout)
    finally:
        link.close()
    if table in ("coil", "discrete"):
        return [bool(b) for b in response.bits[:count]]
    return [int(r) for r in response.registers]


def _number(kind: str, regs: list[int], order: str) -> Any:
    word, byte = ORDERS[order]
    (value,) = struct.unpack(codec.FORMATS[kind], codec.registers_to_bytes(regs, byte, word))
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return codec.short_f32(value) if kind == "f32" else value
    return value


def side_by_side(address: int, regs: list[int],
                 kinds: Sequence[str] = WIDE) -> list[dict[str, Any]]:
    """Every wide type at every start address, in the four word/byte orders."""
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        width = codec.REGISTERS[kind]
        for k in range(len(regs) - width + 1):
            chunk = regs[k:k + width]
            rows.append({"address": address + k, "type": kind,
                         "orders": {o: _number(kind, chunk, o) for o in ORDERS}})
    return rows


async def read_points(ep: Endpoint, unit: int, points: Sequence[PointSpec], reply_timeout: float,
                      *, max_block: int = 125, max_gap: int = 8) -> list[dict[str, Any]]:
    """Each point once, with its raw registers and decoded value (or why there is none)."""
    link = ep.link()
    await link.open()
    rows: list[dict[str, Any]] = []
    try:
        for block in plan(points, max_block=max_block, max_gap=max_gap):
            try:
                response = await link.transact(
                    read_request(block.table, block.start, block.count, unit), reply_timeout)
            except ModbusError as exc:
                failure = classify(exc)
                rows += [_row(p, None, failure.value, failure.quality.name) for p in block.points]
                continue
            finally:
                await asyncio.sleep(ep.silence)
            items = response.bits if block.table in ("coil", "discrete") else response.registers
            for p in block.points:
                raw = list(items[p.address - block.start:p.end - block.start])
                value, quality = codec.decode(p, raw)
                rows.append(_row(p, raw, value, quality.name))
    finally:
        link.close()
    return rows


def _row(p: PointSpec, raw: list[Any] | None, value: Any, quality: str) -> dict[str, Any]:
    order = next((name for name, (w, b) in ORDERS.items()
                  if (w, b) == (p.word_order, p.byte_order)), "ABCD")
    return {"point": p.name, "table": p.table, "address": p.address, "type": p.type,
            "order": order if p.count > 1 else "", "bit": p.bit,
            "raw": None if raw is None else [int(r) for r in raw], "value": value,
            "unit": p.unit, "quality": quality}


async def write_point(ep: Endpoint, unit: int, point: dict[str, Any], value: Value, *,
                      reply_timeout: float, multiple: bool = False) -> Value:
    """Write one point (a driver ``points`` entry) and return the value read back, through
    the driver's own write path.

    Raises:
        ConfigError: the point or the endpoint is not valid config.
        WriteError: the write did not happen as asked.
    """
    from drivers.modbus.driver import ModbusDriver  # noqa: PLC0415 - import cycle via cli

    table = {"bus": ep.bus_table(), "devices": [{
        "name": "device", "unit": unit, "timeout": f"{round(reply_timeout * 1000)}ms",
        "retries": 0, "workarounds": {"write_multiple": multiple},
        "points": [{"name": "value", **point}]}]}
    cfg = ModbusDriver.parse_config(table, file="streetgate modbus write", path="arguments")
    driver = ModbusDriver(cfg, DriverContext.standalone("tool", "modbus"))
    try:
        return await driver.write("tool/device/value", value)
    finally:
        driver.bus.close()
