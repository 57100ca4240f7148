"""A serial port as an async byte stream that survives unplugging (shared with LoRa UART).

pyserial and OS errors are mapped here, and only here (STYLE §7)::

    OSError / serial.SerialException (an OSError)
      ENOENT, ENODEV, ENXIO   -> "not found"          unplugged, wrong path, dangling symlink
      EACCES, EPERM           -> "permission denied"  user not in group dialout
      EBUSY, EAGAIN (flock)   -> "busy"               another program holds the port
      EIO, read() == b""      -> "lost"               USB unplug, pty master closed
      anything else           -> its own message
    -> chunks(): health.failure(..., "unavailable") once, reopen with backoff
    -> write():  PortUnavailableError

Nothing here blocks the event loop: the fd is non-blocking and read through
``loop.add_reader``; only pyserial's open runs in the default executor, because USB-serial
drivers may sleep in open()/tcsetattr().
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import termios
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import serial

from drivers.api import Backoff, DeviceHealth

__all__ = ["PortUnavailableError", "SerialLink", "describe_error"]

_READ_SIZE = 4096


class PortUnavailableError(OSError):
    """The port is not open (unplugged, not found, busy) or was lost while writing."""


def describe_error(exc: BaseException) -> str:
    """A technician's words for a pyserial/OS error."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return "not found (unplugged or wrong path)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (is the user in group dialout?)"
    if code in (errno.EBUSY, errno.EAGAIN):
        return "busy (another program has the port open)"
    if code == errno.EIO:
        return "lost (I/O error: unplugged?)"
    return str(exc) or type(exc).__name__


class SerialLink:
    """Opens, reads, writes and reopens one serial port.

    Args:
        port: device path; a udev ``/dev/serial/by-id/...`` symlink survives replugging.
        baudrate, bytesize, parity, stopbits: line settings (pyserial names).
        logger: debug lines for each attempt (transitions are logged by ``health``).
        health: gets ``failure(..., "unavailable")`` once per outage, ``success()`` once
            when the port is back, and a ``reopen_failures`` count per failed attempt.
        reopen_min, reopen_max: reopen delay bounds in seconds (capped exponential
            backoff with full jitter on top of ``reopen_min``).
        on_state: called with False when the port is lost and True when it (re)opens.
        exclusive: take an advisory lock so two programs do not share the port.

    Example::

        link = SerialLink("/dev/ttyUSB0", baudrate=9600, logger=log, health=h)
        async with contextlib.aclosing(link.chunks()) as stream:
            async for data in stream:
                frames = framer.feed(data)
    """

    def __init__(self, port: str, *, baudrate: int, bytesize: int = 8, parity: str = "N",
                 stopbits: float = 1, logger: logging.Logger, health: DeviceHealth,
                 reopen_min: float = 0.5, reopen_max: float = 30.0,
                 on_state: Callable[[bool], None] | None = None,
                 exclusive: bool = True) -> None:
        self.port = port
        self._settings: dict[str, Any] = {
            "baudrate": baudrate, "bytesize": bytesize, "parity": parity,
            "stopbits": stopbits, "exclusive": exclusive,
        }
        self._log = logger
        self._health = health
        self.reopen_min = reopen_min
        self.reopen_max = max(reopen_max, reopen_min)
        self._on_state = on_state
        self._serial: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._write_lock = asyncio.Lock()
        self._down = False
        self._closed = False
        self._closing = asyncio.Event()
        self.reason = "not opened yet"

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Raw bytes as they arrive, across losses and reopens, until ``close()``.

        An async generator (an ``AsyncIterator[bytes]`` with ``aclose``): wrap it in
        ``contextlib.aclosing`` so the port closes when the consumer stops early.

        Raises:
            asyncio.CancelledError: only that; port problems are reported and retried.
        """
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(self.reopen_min, self.reopen_max)
        try:
            while not self._closed:
                if not await self._open():
                    await self._pause(min(self.reopen_max, self.reopen_min + backoff.next_delay()))
                    continue
                opened = time.monotonic()
                async for data in self._read(self._serial.fileno()):
                    backoff.reset()
                    yield data
                if time.monotonic() - opened > self.reopen_max:
                    backoff.reset()
                self._drop()
        finally:
            self._drop()

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` without blocking the loop.

        Raises:
            PortUnavailableError: the port is not open or failed during the write.
        """
        async with self._write_lock:
            view = memoryview(data)
            while view:
                ser = self._serial
                if ser is None:
                    raise PortUnavailableError(f"{self.port}: {self.reason}")
                fd = ser.fileno()
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    await self._wait(fd, write=True)
                except OSError as exc:
                    raise PortUnavailableError(f"{self.port}: {describe_error(exc)}") from exc

    def close(self) -> None:
        """Close the port for good; a running ``chunks()`` ends."""
        self._closed = True
        self._closing.set()
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)
        self._drop()

    async def _pause(self, delay: float) -> None:
        """Sleep before the next reopen; ``close()`` cuts it short."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()

    async def _open(self) -> bool:
        loop = asyncio.get_running_loop()
        # pyserial's open and tcsetattr can sleep in USB-serial drivers: keep them off the loop.
        fut = loop.run_in_executor(None, self._open_blocking)
        try:
            ser = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_opened)
            raise
        except (OSError, ValueError, termios.error) as exc:
            self._report_down(describe_error(exc))
            self._health.count("reopen_failures")
            self._log.debug("open %s failed: %s", self.port, exc)
            return False
        if self._closed:
            ser.close()
            return False
        self._serial = ser
        self._down = False
        self.reason = "open"
        self._health.success()
        self._notify(True)
        return True

    def _open_blocking(self) -> Any:
        ser = serial.Serial(self.port, timeout=0, write_timeout=0, **self._settings)
        try:
            # pyserial sets VMIN=0/VTIME=0, a polling read that returns 0 bytes when idle;
            # VMIN=1 makes an idle non-blocking read fail with EAGAIN, so 0 bytes means
            # hangup (termios(3), "Canonical and noncanonical mode").
            attrs = termios.tcgetattr(ser.fileno())
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
            termios.tcsetattr(ser.fileno(), termios.TCSANOW, attrs)
        except BaseException:
            ser.close()
            raise
        return ser

    async def _read(self, fd: int) -> AsyncIterator[bytes]:
        while not self._closed:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await self._wait(fd, write=False)
                continue
            except OSError as exc:
                self._report_down(describe_error(exc))
                return
            if not data:  # readable but empty: hangup (pty master closed, USB gone)
                self._report_down("lost (hangup: unplugged?)")
                return
            yield data

    async def _wait(self, fd: int, *, write: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        add, remove = (loop.add_writer, loop.remove_writer) if write else (
            loop.add_reader, loop.remove_reader)
        add(fd, _wake, fut)
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            remove(fd)

    def _report_down(self, reason: str) -> None:
        self.reason = reason
        if self._down:
            return
        self._down = True
        self._health.failure(f"{self.port}: {reason}", "unavailable")
        self._notify(False)

    def _notify(self, up: bool) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(up)
        except Exception:  # noqa: BLE001 - a faulty callback must not stop the port
            self._log.exception("on_state callback of %s failed", self.port)

    def _drop(self) -> None:
        ser, self._serial = self._serial, None
        if ser is None:
            return
        fd = ser.fileno()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        # Discard unsent output first: closing a tty otherwise waits for it to drain.
        with contextlib.suppress(OSError, termios.error):
            termios.tcflush(fd, termios.TCOFLUSH)
        with contextlib.suppress(OSError):
            ser.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _close_opened(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
