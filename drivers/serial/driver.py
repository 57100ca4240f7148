"""The ``serial`` driver: one port, streaming or polled devices, typed readings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from drivers.api import (
    Driver,
    DriverContext,
    Poller,
    Quality,
    Reading,
    SimulatedSetup,
    Sink,
    Value,
    WriteError,
)
from drivers.serial._bus import BusLock
from drivers.serial._model import DecodeError
from drivers.serial.config import QueryConfig, SerialConfig
from drivers.serial.pipeline import DeviceRuntime, Pipeline
from drivers.serial.port import PortUnavailableError, SerialLink
from drivers.serial.writes import BadValueError, Confirmed, Refused, WriteTemplate

__all__ = ["SerialDriver"]

T = TypeVar("T")


def _encode(tpl: WriteTemplate, value: Value) -> tuple[bytes, Value]:
    try:
        return tpl.encode(value)
    except BadValueError as exc:
        raise WriteError("bad-value", str(exc)) from None


class SerialDriver(Driver[SerialConfig]):
    """Serial devices (RS-232/RS-485/USB): NMEA, regex, key=value and binary frames.

    A port carries either one streaming device (it talks on its own) or any number of
    polled devices (``query``: a command on a schedule, one answer within a timeout).
    A device's ``writes`` make points writable (:meth:`write`).
    """

    name = "serial"
    config_schema = SerialConfig
    simulator = "drivers.serial.sim"

    def __init__(self, config: SerialConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.pipeline = Pipeline(config, context.instance, context.health)
        self.port_health = context.health.device("port")
        self._sink: Sink | None = None
        self._link: SerialLink | None = None
        self._bus: BusLock | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._watchers: dict[str, asyncio.Future[Value]] = {}
        self._gap = asyncio.Event()
        self._writes = {dev.prefix + w.point: (dev, WriteTemplate(w, dev.cfg.decoder,
                                                                  config.framing))
                        for dev in self.pipeline.devices for w in dev.cfg.writes}

    def points(self) -> Iterable[tuple[str, str | None]]:
        return self.pipeline.points()

    def writable_points(self) -> Iterable[str]:
        return list(self._writes)

    async def run(self, sink: Sink) -> None:
        cfg, tag = self.config, f"streetgate[serial:{self.context.instance}]"
        self._sink = sink
        bus = BusLock()  # one outstanding query per port (RS-485 is half duplex)
        link = SerialLink(cfg.port, baudrate=cfg.baudrate, bytesize=cfg.bytesize,
                          parity=cfg.parity, stopbits=cfg.stopbits, logger=self.log,
                          health=self.port_health, reopen_min=cfg.reopen_min,
                          reopen_max=cfg.reopen_max, on_state=self._port_state)
        self._link, self._bus = link, bus
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
            self._link = self._bus = None
            link.close()

    async def write(self, point: str, value: Value) -> Value:
        """Send the point's write command, match the reply, return the value in effect.

        The value is checked and formatted first (``bad-value``: nothing is sent). The write
        waits for the port like a query, ahead of queued polls; on a streaming port it is
        sent between two frames.

        Raises:
            WriteError: ``not-writable``, ``bad-value``, ``device-error`` (with the device's
                code), ``timeout``, ``unavailable`` or ``mismatch`` (with the value).
        """
        entry = self._writes.get(point)
        if entry is None:
            raise WriteError("not-writable", f"{point} has no write template")
        dev, tpl = entry
        try:
            data, wanted = _encode(tpl, value)
            link, bus = self._running()
            async with bus.hold(urgent=True):
                confirmed = await self._write_locked(link, dev, tpl, data, wanted)
        except WriteError as exc:
            dev.health.count("write_" + exc.reason.replace("-", "_"))
            self.log.debug("write %s = %r failed: %s", point, value, exc)
            raise
        dev.health.count("write_ok")
        self.log.debug("write %s = %r: device reports %r", point, value, confirmed)
        return confirmed

    def _running(self) -> tuple[SerialLink, BusLock]:
        link, bus = self._link, self._bus
        if link is None or bus is None:
            raise WriteError("unavailable", "the serial driver is not running")
        return link, bus

    async def _write_locked(self, link: SerialLink, dev: DeviceRuntime, tpl: WriteTemplate,
                            data: bytes, wanted: Value) -> Value:
        timeout = float(tpl.cfg.timeout)
        if not link.is_open:
            raise WriteError("unavailable", f"{link.port}: {link.reason}")
        self.log.debug("write %s%s: sending %r", dev.prefix, tpl.point, data)
        streaming = self.pipeline.stream is not None
        if streaming:  # half-duplex lines: do not talk into a frame being received
            cfg = self.config
            await self._frame_gap(min(timeout, cfg.framing.max_frame * 10 / cfg.baudrate))
        try:
            reply: Confirmed | Refused | None = await self._exchange(
                link, data, tpl.match, timeout, reset=not streaming)
        except PortUnavailableError as exc:
            raise WriteError("unavailable", str(exc)) from None
        if reply is None:
            raise WriteError("timeout", f"no reply within {tpl.cfg.timeout}")
        if isinstance(reply, Refused):
            raise WriteError("device-error", f"error reply {reply.text!r}", code=reply.code)
        confirmed = await self._confirmed(link, dev, tpl, reply, wanted)
        if not tpl.same(confirmed, wanted):
            raise WriteError("mismatch", f"wrote {wanted!r}, the device reports {confirmed!r}",
                             value=confirmed)
        return confirmed

    async def _confirmed(self, link: SerialLink, dev: DeviceRuntime, tpl: WriteTemplate,
                         reply: Confirmed, wanted: Value) -> Value:
        if tpl.cfg.confirm == "readback":
            try:
                return await self._read_back(link, dev, tpl)
            except PortUnavailableError as exc:
                raise WriteError("unavailable", str(exc)) from None
        if reply.has_value:
            return reply.value
        return wanted if tpl.cfg.confirm == "ack" else None

    async def _read_back(self, link: SerialLink, dev: DeviceRuntime, tpl: WriteTemplate) -> Value:
        """The point's value from the device's next answer (polled) or frame (streaming)."""
        point, query, loop = dev.prefix + tpl.point, dev.cfg.query, asyncio.get_running_loop()
        if query is None:
            return await self._next_reading(point, float(tpl.cfg.timeout))

        def carries(frame: bytes) -> bytes | None:
            try:
                fields = dev.decoder.decode(frame)
            except DecodeError:
                return None
            found = any(f.name == tpl.point and f.quality == Quality.GOOD for f in fields)
            return frame if found else None

        frame = await self._exchange(link, query.payload, carries, float(query.timeout))
        if frame is None:
            raise WriteError("timeout", f"no read-back answer within {query.timeout}")
        ts = self._sink.now_ms() if self._sink else 0
        readings = dev.decode(frame, ts, loop.time())
        if self._sink is not None:
            self._sink.emit(readings)
        return next(r.value for r in readings if r.point == point)

    async def _next_reading(self, point: str, timeout: float) -> Value:
        fut: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        self._watchers[point] = fut
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise WriteError("timeout", f"no frame with {point} within {timeout:g}s") from None
        finally:
            self._watchers.pop(point, None)

    async def _frame_gap(self, limit: float) -> None:
        """Wait until no frame is half received, at most ``limit`` seconds."""
        if not self.pipeline.framer.buffered:
            return
        self._gap.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._gap.wait()

    def _port_state(self, up: bool) -> None:
        if up:  # silence is measured from the reopen, not from before the outage
            now = asyncio.get_running_loop().time()
            for dev in self.pipeline.devices:
                dev.last_good, dev.silence_reported = now, None
            return
        if self._inflight is not None and not self._inflight.done():
            reason = self._link.reason if self._link else "lost"
            self._inflight.set_exception(PortUnavailableError(f"port lost: {reason}"))
        if self._sink is not None:
            self._sink.emit(self.pipeline.lost(self._sink.now_ms()))

    async def _receive(self, link: SerialLink, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        async with contextlib.aclosing(link.chunks()) as stream:
            async for chunk in stream:
                readings = self.pipeline.feed(chunk, sink.now_ms(), loop.time())
                if not self.pipeline.framer.buffered:
                    self._gap.set()
                if readings:
                    self._notify_watchers(readings)
                    sink.emit(readings)

    def _notify_watchers(self, readings: Iterable[Reading]) -> None:
        if not self._watchers:
            return
        for r in readings:
            fut = self._watchers.get(r.point)
            if fut is not None and not fut.done() and r.quality == Quality.GOOD:
                fut.set_result(r.value)

    async def _poll(self, dev: DeviceRuntime, query: QueryConfig, link: SerialLink,
                    bus: BusLock, sink: Sink) -> None:
        loop = asyncio.get_running_loop()
        async for _due in Poller(query.interval, jitter=min(float(query.interval), 1.0)):
            if not link.is_open:
                dev.health.count("skipped_port_down")
                continue
            try:
                async with bus.hold():
                    frame = await self._transact(link, query)
            except PortUnavailableError:
                dev.health.count("skipped_port_down")
                continue
            sink.emit(dev.answer(frame, sink.now_ms(), loop.time()))

    async def _transact(self, link: SerialLink, query: QueryConfig) -> bytes | None:
        return await self._exchange(link, query.payload, lambda frame: frame,
                                    float(query.timeout))

    async def _exchange(self, link: SerialLink, payload: bytes,
                        accept: Callable[[bytes], T | None], timeout: float, *,
                        reset: bool = True) -> T | None:
        """Send ``payload``; the first frame ``accept`` makes something of is the answer.

        Raises:
            PortUnavailableError: the port is not open, or was lost before the answer.
        """
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def take(frame: bytes) -> bool:
            if answer.done() or (result := accept(frame)) is None:
                return False
            answer.set_result(result)
            return True

        self.pipeline.expect(take, reset=reset)
        self._inflight = answer
        try:
            await link.write(payload)
            # asyncio.timeout, not wait_for: in 3.11 wait_for loses a cancel that arrives
            # together with the answer (CPython gh-86296), and run() must stop when cancelled.
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            return None
        finally:
            self._inflight = None
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
