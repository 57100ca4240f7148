"""Class A downlinks through the packet forwarder: queued per device, sent after its uplink.

A write waits in its device's queue until the device's next accepted uplink, which opens
its receive windows. Then its FCntDown is taken and stored, the frame is built and sent as a
PULL_RESP to the address of the gateway's last PULL_DATA (PROTOCOL.TXT §5.2, §5.4), and the
write waits for the TX_ACK with the same token (§5.5) and, for a confirmed downlink, for
the device's next uplink with FCtrl.ACK (LoRaWAN 1.0.3 §4.3.1.2). Every wait is the
writer's: cancelling it takes its downlink out of the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from drivers.api import HealthBoard, StateStore, Value, WriteError
from drivers.lora import downlink, gwmp
from drivers.lora.config import DownlinkConfig, ForwarderConfig
from drivers.lora.gwmp import Message, RxPacket
from drivers.lora.sessions import Device, Outcome

__all__ = ["DownCounter", "DownlinkScheduler"]

#: EU863-870 carries at most 51 bytes of FRMPayload at DR0-DR2 (LoRaWAN Regional
#: Parameters, EU863-870 maximum payload size), the data rates of RX2 and of a far device.
MAX_PAYLOAD = 51


def downlink_for(targets: Mapping[str, tuple[Any, DownlinkConfig]], point: str,
                 value: Value) -> tuple[Any, DownlinkConfig, bytes]:
    """``(device, downlink config, FRMPayload)`` for a write of ``value`` to ``point``.

    Raises:
        WriteError: ``not-writable`` (no downlink for the point) or ``bad-value`` (the value
            does not encode, or its payload is longer than every EU868 data rate carries).
    """
    target = targets.get(point)
    if target is None:
        raise WriteError("not-writable", f"{point} has no downlink configured")
    dev, cfg = target
    payload = downlink.encode_value(cfg, value)
    if len(payload) > MAX_PAYLOAD:
        raise WriteError("bad-value", f"{len(payload)} bytes of payload; at most "
                                      f"{MAX_PAYLOAD} fit every EU868 data rate")
    return dev, cfg, payload
_FCNT_MAX = 0xFFFF_FFFF

#: Sends one datagram to an address (the driver's UDP transport).
Send = Callable[[bytes, Any], None]


class DownCounter:
    """FCntDown per session: the next one is stored durably before its frame is built."""

    def __init__(self, state: StateStore, health: HealthBoard, logger: logging.Logger) -> None:
        self.state = state
        self.health = health
        self.log = logger
        self._last: dict[str, int | None] = {}

    def last(self, dev: Device) -> int | None:
        if dev.down_key not in self._last:
            raw = self.state.get(dev.down_key)
            if raw is not None and len(raw) != 4:
                # Unknown: starting again at 0 could repeat a counter the device has seen.
                raise WriteError("device-error", f"FCntDown state of {dev.name} is corrupt; "
                                                 "give the device new session keys")
            self._last[dev.down_key] = None if raw is None else int.from_bytes(raw, "big")
        return self._last[dev.down_key]

    async def take(self, dev: Device) -> int:
        """The FCntDown for the next frame, already persisted (a restart never reuses it).

        Raises:
            WriteError: ``device-error`` when the session's counter is used up or corrupt,
                ``unavailable`` when the state store cannot be written.
        """
        last = self.last(dev)
        fcnt = 0 if last is None else last + 1
        if fcnt > _FCNT_MAX:
            raise WriteError("device-error", f"FCntDown of {dev.name} is used up; "
                                             "give the device new session keys")
        try:
            # In a worker thread: the daemon's state store fsyncs each write (SD cards are slow).
            await asyncio.to_thread(self.state.set, dev.down_key, fcnt.to_bytes(4, "big"))
        except Exception as exc:  # any store failure means: do not send
            self.health.count("state_errors")
            raise WriteError("unavailable", f"cannot persist FCntDown of {dev.name}: "
                                            f"{exc}") from exc
        self._last[dev.down_key] = fcnt
        return fcnt


@dataclasses.dataclass(eq=False)
class _Job:
    """One write on its way: queued, sent, acknowledged by the forwarder, by the device."""

    device: Device
    cfg: DownlinkConfig
    value: Value
    payload: bytes
    sent: asyncio.Future[None]
    tx_ack: asyncio.Future[None]
    acked: asyncio.Future[None]
    fcnt: int | None = None
    window: downlink.Window | None = None
    gone: bool = False


@dataclasses.dataclass(slots=True)
class _Pull:
    address: Any
    version: int
    at: float


class DownlinkScheduler:
    """The downlinks of one ``lora_forwarder`` instance."""

    def __init__(self, instance: str, config: ForwarderConfig, devices: Iterable[Device], *,
                 state: StateStore, health: HealthBoard, logger: logging.Logger) -> None:
        self.config = config
        self.health = health
        self.log = logger
        self.counter = DownCounter(state, health, logger)
        self.targets = {f"{instance}/{dev.name}/{d.name}": (dev, d)
                        for dev in devices if dev.dev_addr is not None
                        for d in dev.cfg.downlinks}
        self._queues: dict[str, deque[_Job]] = {}
        self._tokens: dict[int, _Job] = {}
        self._unacked: dict[str, _Job] = {}
        self._pulls: dict[str, _Pull] = {}
        self._token = secrets.randbelow(0x10000)

    # -- what the forwarder tells us ---------------------------------------------------------
    def pull(self, eui: str, address: Any, version: int) -> None:
        """A PULL_DATA: the forwarder's downstream address (PROTOCOL.TXT §5.2)."""
        self._pulls[eui] = _Pull(address, version, time.monotonic())

    def _fresh(self, eui: str | None = None) -> _Pull | None:
        pulls = [p for e, p in self._pulls.items() if eui in (None, e)]
        now = time.monotonic()
        fresh = [p for p in pulls if now - p.at <= self.config.pull_timeout]
        return max(fresh, key=lambda p: p.at) if fresh else None

    def tx_ack(self, msg: Message) -> None:
        """A TX_ACK: the forwarder took the PULL_RESP with this token, or says why not."""
        job = self._tokens.pop(msg.token, None)
        if job is None or job.tx_ack.done():
            self.health.count("tx_ack_unknown")
            return
        error = gwmp.tx_ack_error(msg.payload)
        if error is None:
            self.health.count("tx_ok")
            job.tx_ack.set_result(None)
            return
        self.health.count("tx_rejected")
        self._unacked.pop(job.device.name, None)
        job.tx_ack.set_exception(WriteError(
            "rejected", f"the packet forwarder refused the downlink: {error}"))

    # -- writes ----------------------------------------------------------------------------
    async def write(self, point: str, value: Value) -> Value:
        """Queue a downlink for ``point`` and follow it until it is done (see the module)."""
        dev, cfg, payload = downlink_for(self.targets, point, value)
        if self._fresh() is None:
            raise WriteError("unavailable", "no PULL_DATA from the packet forwarder within "
                                            f"{self.config.pull_timeout}: it cannot send")
        loop = asyncio.get_running_loop()
        job = _Job(dev, cfg, value, payload, loop.create_future(), loop.create_future(),
                   loop.create_future())
        self._queues.setdefault(dev.name, deque()).append(job)
        self.health.device(dev.name).count("downlinks_queued")
        try:
            return await self._follow(job)
        finally:
            self._forget(job)

    async def _follow(self, job: _Job) -> Value:
        await job.sent
        try:
            async with asyncio.timeout(self.config.tx_ack_timeout):
                await job.tx_ack
        except TimeoutError:
            self.health.count("tx_ack_timeouts")
            raise WriteError("timeout", f"no TX_ACK from the packet forwarder within "
                                        f"{self.config.tx_ack_timeout}") from None
        if job.cfg.confirmed:
            await job.acked
            self.health.device(job.device.name).count("downlinks_acked")
        return job.value

    def _forget(self, job: _Job) -> None:
        job.gone = True
        queue = self._queues.get(job.device.name)
        if queue is not None and job in queue:
            queue.remove(job)
            self.health.device(job.device.name).count("downlinks_withdrawn")
        self._tokens = {t: j for t, j in self._tokens.items() if j is not job}
        if self._unacked.get(job.device.name) is job:
            del self._unacked[job.device.name]
        for fut in (job.sent, job.tx_ack, job.acked):
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a failure the writer no longer waits for is no bug

    def queued(self, device: str) -> int:
        """Downlinks waiting for ``device``'s next uplink."""
        return len(self._queues.get(device, ()))

    # -- uplinks ---------------------------------------------------------------------------
    async def uplink(self, eui: str, packet: RxPacket, outcome: Outcome, send: Send) -> None:
        """An accepted uplink: settle a confirmed downlink, then send the next queued one."""
        frame, name = outcome.frame, outcome.device
        if frame is None or name is None:
            return
        waiting = self._unacked.pop(name, None)
        if waiting is not None and not waiting.acked.done():
            if frame.ack:
                waiting.acked.set_result(None)
            else:
                waiting.acked.set_exception(WriteError(
                    "timeout", f"uplink FCnt {outcome.fcnt} carries no ACK: {name} did not "
                               f"receive the confirmed downlink FCntDown {waiting.fcnt}"))
        queue = self._queues.get(name)
        if queue:
            await self._send(queue.popleft(), eui, packet, frame.confirmed, send)

    async def _send(self, job: _Job, eui: str, packet: RxPacket, ack: bool,
                    send: Send) -> None:
        cfg = self.config
        pull = self._fresh(eui)
        if pull is None:
            job.sent.set_exception(WriteError(
                "unavailable", f"no recent PULL_DATA from gateway {eui}, which heard the "
                               "device: it cannot send"))
            return
        window = downlink.rx_window(packet, prefer=cfg.rx_window, rx1_delay=cfg.rx1_delay,
                                    rx2_freq=cfg.rx2_frequency, rx2_datr=cfg.rx2_datarate)
        if window is None:
            self.health.count("tx_no_tmst")
            self._queues[job.device.name].appendleft(job)  # wait for a timed uplink
            return
        try:
            fcnt = await self.counter.take(job.device)
        except WriteError as exc:
            if not job.gone:
                job.sent.set_exception(exc)
            return
        if job.gone:
            return  # cancelled while the counter was stored: that FCntDown stays unused
        dev = job.device
        assert dev.dev_addr is not None  # noqa: S101 - only session devices are targets
        phy = downlink.build_frame(dev_addr=dev.dev_addr, nwk_skey=dev.nwk_skey,
                                   app_skey=dev.app_skey, fcnt=fcnt, fport=job.cfg.fport,
                                   payload=job.payload, confirmed=job.cfg.confirmed, ack=ack)
        self._token = (self._token + 1) & 0xFFFF
        job.fcnt, job.window = fcnt, window
        self._tokens[self._token] = job
        if job.cfg.confirmed:
            self._unacked[dev.name] = job
        send(gwmp.build_pull_resp(self._token, downlink.txpk(window, phy, power=cfg.tx_power,
                                                             rfch=cfg.rfch), pull.version),
             pull.address)
        self.health.count("tx_sent")
        self.log.debug("downlink to %s: FCntDown %d FPort %d in %s at tmst %d", dev.name, fcnt,
                       job.cfg.fport, window.name, window.tmst)
        if pull.version == 1:
            job.tx_ack.set_result(None)  # PROTOCOL.TXT v1 has no TX_ACK
        job.sent.set_result(None)
