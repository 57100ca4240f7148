"""Kernel receive drops and the receive buffer of a driver's UDP socket (Linux).

When a UDP socket's receive queue is full the kernel drops the next datagrams: the sender
sees no error and the reader never sees them. The kernel counts them per socket
(``sk_drops``), and there are two ways to read that count:

- ``SO_RXQ_OVFL`` (socket(7), Linux 2.6.33): every datagram read with ``recvmsg`` carries the
  count so far as ancillary data, once it is not zero. Only a receive path that calls
  ``recvmsg`` sees it; asyncio's datagram transport calls ``recvfrom`` and throws it away.
- the ``drops`` column of ``/proc/net/udp`` and ``/proc/net/udp6`` (proc(5)), on the line whose
  ``inode`` is the socket's: readable at any time, whoever reads the socket.

:class:`UdpDrops` turns either into the health counter ``<name>_drops`` (``udp_drops``) and a
degraded state while the count grows; :func:`set_rcvbuf` applies ``SO_RCVBUF``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from drivers.api import HealthBoard

__all__ = ["ANCBUFSIZE", "SO_RXQ_OVFL", "UdpDrops", "ancillary_drops", "enable_rxq_ovfl",
           "proc_drops", "rmem_max", "set_rcvbuf"]

#: include/uapi/asm-generic/socket.h (x86, ARM, RISC-V); Python's socket module lacks it.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
#: ``ancbufsize`` for ``recvmsg``: room for the one 32-bit drop count.
ANCBUFSIZE = socket.CMSG_SPACE(4)
_PROC_TABLES = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
_RMEM_MAX = Path("/proc/sys/net/core/rmem_max")


class Socket(Protocol):
    """What is needed of a socket: a ``socket.socket`` or asyncio's ``TransportSocket``."""

    def fileno(self) -> int: ...

    def getsockopt(self, level: int, optname: int, /) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def set_rcvbuf(sock: Socket, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer; return what the kernel gives.

    Linux caps the request at ``net.core.rmem_max`` and doubles it for its bookkeeping
    overhead (socket(7), SO_RCVBUF), so the result is usually ``2 * min(size, rmem_max)``.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def rmem_max() -> int | None:
    """``net.core.rmem_max``: the most an unprivileged SO_RCVBUF request gets (None: unknown)."""
    try:
        return int(_RMEM_MAX.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


def enable_rxq_ovfl(sock: Socket) -> bool:
    """Turn on SO_RXQ_OVFL; False where the kernel does not have it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    except OSError:
        return False
    return True


def ancillary_drops(ancdata: Iterable[tuple[int, int, bytes]]) -> int | None:
    """The drop count in ``recvmsg`` ancillary data (None when absent: no drop so far)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return int(struct.unpack("=I", data[:4])[0])
    return None


def proc_drops(sock: Socket) -> tuple[int, int] | None:
    """``(drops, queued bytes)`` of ``sock`` from /proc/net/udp{,6}; None when not listed.

    Columns (proc(5), net/ipv4/udp.c ``udp4_format_sock``): ``sl local rem st tx:rx tr:when
    retrnsmt uid timeout inode ref pointer drops``; ``rx`` is the queue in hex bytes.
    """
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in _PROC_TABLES:
        try:
            # procfs is generated in memory on read: no disk, nothing to wait for.
            lines = table.read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) >= 13 and cols[9] == inode:
                return int(cols[-1]), int(cols[4].partition(":")[2], 16)
    return None


class UdpDrops:
    """Counts one UDP socket's kernel receive drops in health; degraded while they grow.

    Health gets the counter ``<name>_drops``, the degraded state ``<name>_drops`` (a warning
    when drops start; an info line once ``recover_after`` seconds pass without new ones), and
    ``extra[<name>]``: ``rcvbuf`` (effective bytes), ``rcvbuf_requested``, ``rmem_max``,
    ``drops`` and ``queued`` (of the current socket) and ``source`` (``proc``,
    ``SO_RXQ_OVFL``, or None when the count cannot be read).

    Args:
        health: the driver's :class:`~drivers.api.HealthBoard`.
        logger: the driver's logger.
        rcvbuf: SO_RCVBUF to ask for in :meth:`attach`; None keeps the system default.
        name: prefix of the counter and key in health, for a driver with several sockets.
        recover_after: seconds without a new drop before health is no longer degraded.

    Example (asyncio transport; a ``recvmsg`` loop would pass ``rxq_ovfl=True`` to
    :meth:`attach`, read with ``sock.recvmsg(size, UdpDrops.ANCBUFSIZE)`` and hand each
    result's ancillary data to :meth:`ancillary`)::

        drops = UdpDrops(self.health, self.log, rcvbuf=self.config.rcvbuf)
        transport, _ = await loop.create_datagram_endpoint(...)
        drops.attach(transport.get_extra_info("socket"), "0.0.0.0:1700")
        tg.create_task(drops.watch())   # polls /proc every second; recovers health
    """

    ANCBUFSIZE = ANCBUFSIZE

    def __init__(self, health: HealthBoard, logger: logging.Logger, *,
                 rcvbuf: int | None = None, name: str = "udp", recover_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.health = health
        self.log = logger
        self.rcvbuf = rcvbuf
        self.counter = f"{name}_drops"
        self.recover_after = recover_after
        self._clock = clock
        self._sock: Socket | None = None
        self._label = ""
        self._seen = 0
        self._last_drop = 0.0
        self._view: dict[str, Any] = {"rcvbuf": None, "rcvbuf_requested": rcvbuf,
                                      "rmem_max": None, "drops": 0, "queued": None,
                                      "source": None}
        health.extra[name] = self._view

    def attach(self, sock: Socket, label: str, *, rxq_ovfl: bool = False) -> None:
        """Watch ``sock`` (a new socket: its count starts at 0); apply ``rcvbuf`` first.

        ``label`` names the socket in messages (its address); ``rxq_ovfl`` turns SO_RXQ_OVFL on.
        """
        self._sock, self._label, self._seen = sock, label, 0
        if rxq_ovfl and not enable_rxq_ovfl(sock):
            self.log.debug("UDP %s: no SO_RXQ_OVFL here; drops are read from /proc", label)
        if self.rcvbuf is not None:
            effective = set_rcvbuf(sock, self.rcvbuf)
            self.log.debug("UDP %s: SO_RCVBUF %d asked, %d given (2 x min(asked, rmem_max))",
                           label, self.rcvbuf, effective)
        self._view.update(rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          rmem_max=rmem_max(), drops=0, queued=None)

    def ancillary(self, ancdata: Iterable[tuple[int, int, bytes]]) -> None:
        """Take the count from one ``recvmsg``'s ancillary data (``attach(rxq_ovfl=True)``)."""
        total = ancillary_drops(ancdata)
        if total is not None:
            self._view["source"] = "SO_RXQ_OVFL"
            self.update(total)

    def poll(self) -> bool:
        """Read the count from /proc; False when the socket is not listed there."""
        found = proc_drops(self._sock) if self._sock is not None else None
        if found is None:
            self.tick()
            return False
        total, self._view["queued"] = found
        self._view["source"] = self._view["source"] or "proc"
        self.update(total)
        return True

    def update(self, total: int) -> None:
        """The kernel's count for the attached socket is now ``total``."""
        new = total - self._seen
        if new <= 0:
            self.tick()
            return
        self._seen = total
        self._view["drops"] = total
        self._last_drop = self._clock()
        self.health.count(self.counter, new)
        self.log.debug("UDP %s: the kernel dropped %d more datagrams (%d on this socket)",
                       self._label, new, total)
        self.health.degrade(self.counter, f"kernel drops datagrams on UDP {self._label}: "
                                          "receive buffer full")

    def tick(self) -> None:
        """Recover once ``recover_after`` seconds passed without a new drop."""
        if (self.counter in self.health.degraded
                and self._clock() - self._last_drop >= self.recover_after):
            self.health.recover(self.counter)

    async def watch(self, period: float = 1.0) -> None:
        """Poll /proc every ``period`` seconds until cancelled."""
        missing_logged = False
        while True:
            await asyncio.sleep(period)
            if not self.poll() and self._sock is not None and not missing_logged:
                missing_logged = True
                self.log.info("UDP %s: no /proc/net/udp line for the socket: only "
                              "SO_RXQ_OVFL, if on, can count its drops", self._label)
