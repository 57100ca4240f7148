"""The ``lora_forwarder`` driver: a GWMP server for a concentrator's UDP packet forwarder.

The forwarder (Semtech lora_pkt_fwd and its descendants) sends PUSH_DATA with received
packets and ``stat`` reports, and PULL_DATA keep-alives; each is acknowledged at once with the
same token (PROTOCOL.TXT §3.1, §5.1: "process packets *after* ack"). Uplinks then go through
:class:`~drivers.lora.sessions.Receiver` one at a time on a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from drivers.api import (
    Backoff,
    DeviceHealth,
    Driver,
    DriverContext,
    SimulatedSetup,
    Sink,
    UdpDrops,
    Value,
)
from drivers.lora import gwmp
from drivers.lora.config import ForwarderConfig
from drivers.lora.gwmp import GwmpError, Kind, Message, RxPacket
from drivers.lora.scheduler import DownlinkScheduler
from drivers.lora.sessions import Outcome, Radio, Receiver

__all__ = ["LoraForwarderDriver", "Observer"]

#: Called for every radio packet with the gateway EUI, the packet and what became of it.
Observer = Callable[[str, RxPacket, Outcome], None]

_QUEUE = 1024


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, driver: LoraForwarderDriver) -> None:
        self.driver = driver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self.transport = typing.cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None:
            self.driver.datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        self.driver.health.count("socket_errors")
        self.driver.log.debug("UDP socket error: %s", exc)


class LoraForwarderDriver(Driver[ForwarderConfig]):
    """LoRaWAN uplinks from a LoRa concentrator's Semtech UDP packet forwarder.

    Example config::

        [[drivers.lora_forwarder]]
        instance = "lora"
        port = 1700
        [[drivers.lora_forwarder.devices]]
        name = "meter-7"
        dev_addr = "26011BDA"
        nwk_skey = "..."
        app_skey = "..."
    """

    name = "lora_forwarder"
    config_schema = ForwarderConfig
    simulator = "drivers.lora.sim"

    def __init__(self, config: ForwarderConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.receiver = Receiver(context.instance, config.devices, state=context.state,
                                 health=context.health, logger=context.logger,
                                 max_fcnt_gap=config.max_fcnt_gap)
        self.observers: list[Observer] = []
        #: Class A downlinks (writes), queued per device until its next uplink.
        self.downlinks = DownlinkScheduler(context.instance, config, self.receiver.devices,
                                           state=context.state, health=context.health,
                                           logger=context.logger)
        self._transport: asyncio.DatagramTransport | None = None
        #: The address actually bound (port 0 in config picks a free one), once running.
        self.bound: tuple[str, int] | None = None
        self._queue: asyncio.Queue[Message] = asyncio.Queue(_QUEUE)
        self._allowed = {eui.upper() for eui in config.gateways}
        self._gateways: dict[str, dict[str, Any]] = {}
        self._heard = time.monotonic()
        self._link = DeviceHealth("packet forwarder", context.logger)
        #: Kernel receive drops of the socket (``udp_drops``) and its SO_RCVBUF.
        self.udp = UdpDrops(context.health, context.logger, rcvbuf=config.rcvbuf)
        self.health.extra["concentrator"] = self._gateways
        self.health.extra["forwarder"] = self._link.snapshot()

    def points(self) -> Iterable[tuple[str, str | None]]:
        for dev in self.config.devices:
            base = f"{self.context.instance}/{dev.name}/"
            yield from ((base + "fcnt", None), (base + "rssi", "dBm"), (base + "snr", "dB"))
            yield from ((base + f.name, f.unit) for f in dev.fields)

    def writable_points(self) -> Iterable[str]:
        return list(self.downlinks.targets)

    async def write(self, point: str, value: Value) -> Value:
        """Send ``value`` to the device in a Class A downlink after its next uplink.

        Returns once the packet forwarder accepted the downlink (TX_ACK) or, for a confirmed
        downlink, once the device acknowledged it; the value returned is the one sent.

        Raises:
            WriteError: ``not-writable``, ``bad-value``, ``unavailable`` (no PULL_DATA
                recently), ``rejected`` (a TX_ACK error such as TOO_LATE), ``timeout`` (no
                TX_ACK, or the next uplink carries no ACK), ``device-error`` (FCntDown).
        """
        return await self.downlinks.write(point, value)

    async def run(self, sink: Sink) -> None:
        transport = await self._bind()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._work(sink), name=f"streetgate[{self.name}:"
                                                        f"{self.context.instance}].uplinks")
                tg.create_task(self._watch(), name=f"streetgate[{self.name}:"
                                                   f"{self.context.instance}].watch")
                # asyncio's transport reads with recvfrom, which drops SO_RXQ_OVFL's
                # ancillary data: the count comes from /proc/net/udp instead.
                tg.create_task(self.udp.watch(), name=f"streetgate[{self.name}:"
                                                      f"{self.context.instance}].udp")
        finally:
            self._transport = None
            transport.close()

    async def _bind(self) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(self.config.host, self.config.port))
            except OSError as exc:
                self._link.failure(f"cannot listen on {self.config.host}:{self.config.port}: "
                                   f"{exc}", "bind_errors")
                self.health.extra["forwarder"] = self._link.snapshot()
                await backoff.sleep()
                continue
            bound = transport.get_extra_info("sockname")[:2]
            self.udp.attach(transport.get_extra_info("socket"), "{}:{}".format(*bound))
            self.bound = bound
            self._transport = transport
            self.log.info("listening for the packet forwarder on %s:%s", *self.bound)
            self._heard = time.monotonic()
            return transport

    def datagram(self, data: bytes, addr: tuple[str | Any, int],
                 transport: asyncio.DatagramTransport) -> None:
        """Acknowledge and queue one datagram; anything malformed is counted and dropped."""
        self.health.count("datagrams")
        try:
            msg = gwmp.parse(data)
        except GwmpError as exc:
            self.health.count(exc.counter)
            self.log.debug("dropped datagram from %s: %s", addr, exc)
            return
        if self._allowed and msg.gateway_eui not in self._allowed:
            self.health.count("foreign_gateway")
            return
        ack = gwmp.ack_for(msg)
        if ack is not None:
            transport.sendto(ack, addr)
        self._note(msg, addr)
        if msg.kind is Kind.PULL_DATA:
            self.downlinks.pull(msg.gateway_eui, addr, msg.version)
        elif msg.kind is Kind.TX_ACK:
            self.downlinks.tx_ack(msg)
        elif msg.kind is Kind.PUSH_DATA:
            try:
                self._queue.put_nowait(msg)
            except asyncio.QueueFull:
                self.health.count("overload")

    def _note(self, msg: Message, addr: tuple[str | Any, int]) -> None:
        self._heard = time.monotonic()
        if not self._link.ok:
            self._link.success()
            self.health.extra["forwarder"] = self._link.snapshot()
        gw = self._gateways.setdefault(msg.gateway_eui, {})
        gw["address"] = f"{addr[0]}:{addr[1]}"
        gw["last_seen"] = time.time()
        key = msg.kind.name.lower()
        gw[key] = gw.get(key, 0) + 1
        self.health.count(key)

    async def _work(self, sink: Sink) -> None:
        while True:
            msg = await self._queue.get()
            await self._push(msg, sink)

    async def _push(self, msg: Message, sink: Sink) -> None:
        stat = msg.payload.get("stat")
        if stat is not None:
            try:
                self._gateways[msg.gateway_eui]["stat"] = gwmp.parse_stat(stat)
            except GwmpError as exc:
                self.health.count(exc.counter)
        rxpk = msg.payload.get("rxpk")
        if rxpk is None:
            return
        if not isinstance(rxpk, list):
            self.health.count("malformed")
            return
        for item in rxpk:
            try:
                packet = gwmp.parse_rxpk(item)
            except GwmpError as exc:
                self.health.count(exc.counter)
                continue
            await self._packet(msg.gateway_eui, packet, sink)

    async def _packet(self, eui: str, packet: RxPacket, sink: Sink) -> None:
        self.health.count("packets")
        if packet.crc != 1:
            # PROTOCOL.TXT §4 stat: -1 CRC failed, 0 no CRC; LoRaWAN uplinks carry a CRC.
            self.health.count("crc_errors")
            outcome = Outcome("crc_errors", f"radio CRC status {packet.crc}")
        else:
            outcome = await self.receiver.lorawan(packet.data, Radio(packet.rssi, packet.lsnr),
                                                  sink.now_ms())
            if outcome.readings:
                sink.emit(outcome.readings)
            if outcome.status == "ok":
                await self.downlinks.uplink(eui, packet, outcome, self._send)
        for observe in self.observers:
            observe(eui, packet, outcome)

    def _send(self, datagram: bytes, address: Any) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram, address)

    async def _watch(self) -> None:
        period = min(5.0, self.config.silence / 4)
        while True:
            await asyncio.sleep(period)
            quiet = time.monotonic() - self._heard
            if quiet > self.config.silence and self._link.ok:
                self._link.failure(f"no datagram from the packet forwarder for {quiet:.0f}s",
                                   "silences")
                self.health.extra["forwarder"] = self._link.snapshot()

    @classmethod
    def register_cli(cls, sim: Any, tools: Any) -> None:
        from drivers.lora import cli  # noqa: PLC0415 - the CLI loads only when asked for

        cli.register_forwarder(sim, tools)

    @classmethod
    @contextlib.asynccontextmanager
    async def simulate(cls, workdir: Path) -> AsyncIterator[SimulatedSetup]:
        from drivers.lora import sim  # noqa: PLC0415 - simulators load only when asked for

        async with sim.forwarder_setup(workdir) as setup:
            yield setup
