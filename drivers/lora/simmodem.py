"""A LoRa module on a UART, played on a pty pair: RN2483 radio receive, or transparent.

RN2483 command reference (Microchip DS40001784): ``mac pause`` answers the pause time,
``radio set ...`` answers ``ok``, ``radio rx 0`` answers ``ok`` (``busy`` when already
receiving) and later ``radio_rx  <hex>`` (two spaces) or ``radio_err``; ``radio get snr`` and
``radio get rssi`` answer a signed integer; ``radio rxstop`` ends receive and ``radio tx
<hex>`` answers ``ok`` (``busy`` while receiving, ``invalid_param`` for bad hex) and then
``radio_tx_ok``. A reset prints the version banner. Transparent
modules just write each received packet (here hex, base64 or binary, as configured).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from drivers.lora.config import DeviceConfig
from drivers.lora.sim import SimSetup, demo_devices, parse_devices, sample_payload, uplink_for
from drivers.lora.simnode import SimNode

__all__ = ["BANNER", "ModemSimulator", "modem_setup"]

BANNER = "RN2483 1.0.5 Oct 31 2018 15:06:52"
_GARBAGE = (b"\xff\x00\xfe", b"radio_rx  ZZ\r\n", b"radio_rx  ABC\r\n", b"\x00\x00\x00\r\n",
            b"rad", b"io_rx\r\n", b"radio_rx\r\n", b"!!\xc3\x28 noise\r\n")


class ModemSimulator:
    """A module behind a pty whose slave path is published as a stable symlink ``link``."""

    def __init__(self, link: Path, devices: Sequence[DeviceConfig], *, mode: str = "rn2483",
                 payload: str = "lorawan", encoding: str = "hex", interval: float = 1.0,
                 fcnt_start: int = 0, rssi: int = -61, snr: int = 9,
                 terminator: bytes = b"\r\n") -> None:
        self.link = link
        self.devices = list(devices)
        self.mode, self.payload, self.encoding = mode, payload, encoding
        self.interval = interval
        self.rssi, self.snr = rssi, snr
        self.terminator = terminator
        self.fcnt = dict.fromkeys((d.name for d in self.devices), fcnt_start)
        self.counters: collections.Counter[str] = collections.Counter()
        self.garbage = False
        #: Answer "radio rx 0" with invalid_param (a module left in LoRaWAN mode).
        self.refuse_rx = False
        self.armed = False
        #: Answer "radio tx" with this (busy, no_free_ch, invalid_param) instead of ok, and
        #: end an accepted transmission with ``tx_result`` (radio_tx_ok or radio_err).
        self.tx_reply: str | None = None
        self.tx_result = "radio_tx_ok"
        #: Packets sent with "radio tx"; LoRaWAN ones reach the devices (``nodes``).
        self.transmitted: list[bytes] = []
        self.nodes = [SimNode(d) for d in self.devices
                      if payload == "lorawan" and d.dev_addr and d.nwk_skey and d.app_skey]
        #: Called with one line per transmitted packet and what a device made of it.
        self.report: Callable[[str], None] | None = None
        self.commands: list[str] = []
        self._fds: tuple[int, int] | None = None
        self._inbox = b""
        self._task: asyncio.Task[None] | None = None
        self._turn = 0

    # -- the pty -----------------------------------------------------------------------------
    def plug(self) -> None:
        """Create a fresh pty pair and point ``link`` at it (a module plugged in)."""
        if self._fds is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: a UART passes bytes as they are
        os.set_blocking(master, False)
        self._fds = (master, slave)
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.armed = False
        self._inbox = b""
        if self.mode == "rn2483":
            self._write(BANNER.encode() + b"\r\n")

    def unplug(self) -> None:
        """Close the pty and remove ``link`` (the module unplugged)."""
        if self._fds is None:
            return
        master, slave = self._fds
        asyncio.get_running_loop().remove_reader(master)
        self.link.unlink(missing_ok=True)
        os.close(master)
        os.close(slave)
        self._fds = None

    def _write(self, data: bytes) -> None:
        if self._fds is None:
            return
        try:
            os.write(self._fds[0], data)
        except BlockingIOError:
            self.counters["overflow"] += 1

    def _readable(self) -> None:
        if self._fds is None:
            return
        try:
            data = os.read(self._fds[0], 4096)
        except OSError:
            return
        self._inbox += data
        while b"\n" in self._inbox:
            line, self._inbox = self._inbox.split(b"\n", 1)
            self._command(line.strip(b"\r").decode("latin-1").strip())

    # -- the module --------------------------------------------------------------------------
    def _command(self, cmd: str) -> None:
        if not cmd:
            return
        self.commands.append(cmd)
        self.counters["commands"] += 1
        if self.mode != "rn2483":
            return
        self._write(self._answer(cmd).encode() + b"\r\n")

    def _answer(self, cmd: str) -> str:
        if cmd == "radio rxstop":
            self.armed = False
            return "ok"
        if cmd.startswith("radio tx "):
            return self._tx(cmd.removeprefix("radio tx ").strip())
        if cmd == "radio rx 0":
            if self.refuse_rx:
                return "invalid_param"
            if self.armed:
                return "busy"
            self.armed = True
            return "ok"
        replies = {"mac pause": "4294967245", "sys get ver": BANNER,
                   "radio get snr": str(self.snr), "radio get rssi": str(self.rssi)}
        if cmd in replies:
            return replies[cmd]
        return "ok" if cmd.startswith("radio set ") else "invalid_param"

    def _tx(self, text: str) -> str:
        if self.tx_reply is not None:
            return self.tx_reply
        if self.armed:
            return "busy"
        try:
            data = bytes.fromhex(text)
        except ValueError:
            return "invalid_param"
        if not data or len(data) > 255:
            return "invalid_param"
        self.transmitted.append(data)
        self.counters["transmitted"] += 1
        # After the "ok" this command's reply is about to write: the end of the airtime.
        asyncio.get_running_loop().call_later(0.02, self._write,
                                              self.tx_result.encode() + b"\r\n")
        lines = [line for node in self.nodes if (line := node.receive(data))]
        for line in lines or [f"radio tx {data.hex().upper()}"]:
            if self.report is not None:
                self.report(line)
        return "ok"

    def packet(self) -> bytes:
        """The next packet on the air: a signed uplink, or a raw payload with its prefix."""
        dev = self.devices[self._turn % len(self.devices)]
        self._turn += 1
        n = self.fcnt[dev.name]
        self.fcnt[dev.name] = n + 1
        if self.payload == "lorawan":
            node = next((x for x in self.nodes if x.name == dev.name), None)
            if node is None:
                return uplink_for(dev, n)
            return uplink_for(dev, n, state=node.state, ack=node.take_ack())
        prefix = bytes.fromhex(dev.match) if dev.match else b""
        return prefix + sample_payload(dev, n)[1]

    def _encoded(self, data: bytes) -> bytes:
        if self.encoding == "base64":
            return base64.b64encode(data) + self.terminator
        if self.encoding == "binary":
            return data
        return data.hex().upper().encode() + self.terminator

    def tick(self) -> None:
        """One packet on the air: delivered if the module is receiving (rn2483) or always."""
        if self._fds is None:
            return
        if self.garbage:
            self._write(_GARBAGE[self.counters["garbage"] % len(_GARBAGE)])
            self.counters["garbage"] += 1
            return
        if self.mode == "rn2483":
            if not self.armed:
                self.counters["missed"] += 1
                return
            self.armed = False
            self._write(b"radio_rx  " + self.packet().hex().upper().encode() + b"\r\n")
        else:
            self._write(self._encoded(self.packet()))
        self.counters["packets"] += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def resume(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="streetgate[sim:lora-modem]")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.unplug()


class ModemSetup(SimSetup):
    """The contract suite's handle: stop() unplugs the module, start() plugs it back."""

    sim: ModemSimulator
    #: The water meter's valve, sent through the module's transmit command.
    writes: Mapping[str, Any] = {"sensor-2/valve": True}

    async def _off(self) -> None:
        self.sim.unplug()

    def _on(self) -> None:
        self.sim.plug()


@contextlib.asynccontextmanager
async def modem_setup(workdir: Path, *, interval: float = 0.1) -> AsyncIterator[ModemSetup]:
    """An RN2483 on a pty (published as ``workdir/ttyLORA``) and the driver config for it."""
    tables = demo_devices(2, random_keys=True)
    link = workdir / "ttyLORA"
    sim = ModemSimulator(link, parse_devices(tables), interval=interval)
    sim.plug()
    sim.resume()
    config = {"port": str(link), "reply_timeout": "500ms", "reopen_min": "50ms",
              "reopen_max": "500ms", "devices": tables}
    try:
        yield ModemSetup(sim, config)
    finally:
        await sim.close()
