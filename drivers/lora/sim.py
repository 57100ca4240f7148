"""Simulators: a packet forwarder sending real, encrypted and signed LoRaWAN uplinks over GWMP.

``ForwarderSimulator`` plays a concentrator's packet forwarder: PUSH_DATA with one ``rxpk``
per device and round, PULL_DATA keep-alives and ``stat`` reports, with optional wrong MICs,
replays and malformed datagrams. It answers PULL_RESP with TX_ACK (or an injected error, or
silence) and hands each downlink to the devices (:mod:`drivers.lora.simnode`), which obey
it. The modem simulator lives in :mod:`drivers.lora.simmodem`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import datetime as dt
import hashlib
import itertools
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from drivers.api import Value, load
from drivers.lora import cayenne, gwmp, lorawan, structdec
from drivers.lora.config import DeviceConfig, FieldConfig
from drivers.lora.gwmp import Kind, RxPacket
from drivers.lora.simnode import SimNode

__all__ = ["ForwarderSimulator", "demo_devices", "forwarder_setup", "free_udp_port",
           "garbage_datagrams", "sample_payload", "uplink_for"]

DEFAULT_EUI = "AA555A0000000001"


def _value(field: FieldConfig, n: int, index: int) -> float:
    """A plausible, changing value for a struct field."""
    if field.type == "bool":
        return float((n + index) % 2)
    if field.type in ("f32", "f64"):
        return 20.0 + ((n + index) % 100) / 4
    bits = structdec.SIZES[field.type] * 8 - (1 if field.type.startswith("i") else 0)
    raw = (n * 7 + index * 13) % min(1000, 1 << bits)
    return raw * field.scale + field.add


def sample_payload(dev: DeviceConfig, n: int,
                   state: Mapping[str, Value] | None = None) -> tuple[int, bytes]:
    """The FPort and application payload device ``dev`` sends in its ``n``-th frame.

    A struct field named like a key of ``state`` (a point set by a downlink) reports it.
    """
    if dev.decoder == "struct":
        port = next((f.fport for f in dev.fields if f.fport is not None), 1)
        buf = bytearray()
        for i, f in enumerate(dev.fields):
            if f.fport in (None, port):
                held = (state or {}).get(f.name)
                value = float(held) if isinstance(held, (int, float)) else _value(f, n, i)
                structdec.encode_field(f, value, buf)
        return port, bytes(buf)
    if dev.decoder == "cayenne":
        return 1, cayenne.encode([
            (1, 103, (round(18 + (n % 80) / 10, 1),)),
            (2, 104, (40 + (n % 40) / 2,)),
            (3, 116, (round(3.6 - (n % 30) / 100, 2),)),
            (4, 0, (n % 2,)),
        ])
    return 1, n.to_bytes(4, "big")


def uplink_for(dev: DeviceConfig, fcnt: int, *, confirmed: bool = False,
               state: Mapping[str, Value] | None = None, ack: bool = False) -> bytes:
    """A genuinely encrypted and MIC-signed uplink of ``dev`` with frame counter ``fcnt``.

    ``ack`` sets FCtrl.ACK, acknowledging a confirmed downlink (LoRaWAN 1.0.3 §4.3.1.2).
    """
    if not (dev.dev_addr and dev.nwk_skey and dev.app_skey):
        raise ValueError(f"device {dev.name} has no LoRaWAN session")
    port, payload = sample_payload(dev, fcnt, state)
    return lorawan.build_data_frame(
        dev_addr=int(dev.dev_addr, 16), fcnt=fcnt, nwk_skey=bytes.fromhex(dev.nwk_skey),
        app_skey=bytes.fromhex(dev.app_skey), fport=port, payload=payload,
        confirmed=confirmed, fctrl=0x20 if ack else 0)


def _demo_key(name: str, kind: str) -> str:
    return hashlib.sha256(f"streetgate demo key {name} {kind}".encode()).hexdigest()[:32].upper()


def demo_devices(count: int = 2, *, random_keys: bool = False) -> list[dict[str, Any]]:
    """Device tables: Cayenne LPP sensors and a struct water meter, every second one.

    The water meter has a valve the gateway can open and close (a confirmed downlink on
    FPort 10) and reports its position in bit 1 of byte 6.

    The fixed demo keys are the ones in example.toml, so ``streetgate sim lora-forwarder``
    without a device file talks to a gateway running the example config. Never deploy them.
    """
    out: list[dict[str, Any]] = []
    for i in range(count):
        name = f"sensor-{i + 1}"
        keys = ((secrets.token_hex(16), secrets.token_hex(16)) if random_keys
                else (_demo_key(name, "nwk"), _demo_key(name, "app")))
        dev: dict[str, Any] = {"name": name, "dev_addr": f"26{i + 1:06X}",
                               "nwk_skey": keys[0], "app_skey": keys[1]}
        if i % 2:
            dev["decoder"] = "struct"
            dev["fields"] = [
                {"name": "volume", "offset": 0, "type": "u32", "scale": 0.001, "unit": "m3"},
                {"name": "battery", "offset": 4, "type": "u16", "endian": "little",
                 "scale": 0.001, "unit": "V"},
                {"name": "leak", "offset": 6, "type": "bool", "bit": 0},
                {"name": "valve", "offset": 6, "type": "bool", "bit": 1},
            ]
            dev["downlinks"] = [{"name": "valve", "fport": 10, "type": "bool",
                                 "confirmed": True}]
        out.append(dev)
    return out


def parse_devices(tables: Sequence[dict[str, Any]], *, file: str = "simulator",
                  path: str = "devices") -> list[DeviceConfig]:
    return [load(DeviceConfig, t, file=file, path=f"{path}[{i}]") for i, t in enumerate(tables)]


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def garbage_datagrams(eui: str = DEFAULT_EUI) -> list[bytes]:
    """One datagram of each kind a server must count and drop without failing."""
    push = bytes([2, 0, 1, 0]) + bytes.fromhex(eui)
    return [
        b"\x02",
        bytes([9, 0, 1, 0]) + bytes.fromhex(eui) + b"{}",
        push + b"{not json",
        push + b'{"rxpk":[{"stat":1,"data":"!!not base64!!"}]}',
        bytes([2, 0, 1, 0x7F]) + bytes.fromhex(eui),
        push + b'{"rxpk":{"data":"AAAA"}}',
        push[:8],
        push + b'{"rxpk":[{"stat":-1,"size":4,"data":"3q2+7w=="}]}',
        push + b'{"rxpk":[{"stat":1,"size":4,"data":"3q2+7w=="}]}',
        push + b'["not", "an", "object"]',
        bytes([2, 0, 1, Kind.PUSH_ACK]),
    ]


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, sim: ForwarderSimulator) -> None:
        self.sim = sim

    def datagram_received(self, data: bytes, addr: Any) -> None:  # noqa: ARG002
        names = {Kind.PUSH_ACK: "push_ack", Kind.PULL_ACK: "pull_ack"}
        if len(data) > 4 and data[0] in gwmp.VERSIONS and data[3] == Kind.PULL_RESP:
            self.sim.pull_resp(data)
            return
        ok = len(data) == 4 and data[0] in gwmp.VERSIONS and data[3] in names
        self.sim.counters[names[Kind(data[3])] if ok else "unexpected"] += 1

    def error_received(self, exc: Exception) -> None:  # noqa: ARG002 - counted, not shown
        self.sim.counters["send_errors"] += 1


class ForwarderSimulator:
    """Sends what a packet forwarder would: uplinks, keep-alives and status, with faults."""

    def __init__(self, host: str, port: int, devices: Sequence[DeviceConfig], *,
                 gateway_eui: str = DEFAULT_EUI, interval: float = 1.0, fcnt_start: int = 0,
                 wrong_mic_every: int = 0, replay_every: int = 0, malformed_every: int = 0,
                 stat_every: int = 5, confirmed: bool = False) -> None:
        self.target = (host, port)
        self.devices = [d for d in devices if d.dev_addr and d.nwk_skey and d.app_skey]
        self.eui = gateway_eui
        self.interval = interval
        self.fcnt = dict.fromkeys((d.name for d in self.devices), fcnt_start)
        self.faults = {"wrong_mic": wrong_mic_every, "replay": replay_every,
                       "malformed": malformed_every}
        self.stat_every = stat_every
        self.confirmed = confirmed
        #: Until healed, every datagram is garbage (the contract suite's inject_malformed).
        self.garbage = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.rounds = 0
        self._tokens = itertools.count(1)
        self._last: dict[str, bytes] = {}
        self._junk = itertools.cycle(garbage_datagrams(gateway_eui))
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        #: The devices' receive side: downlinks addressed to them change their state.
        self.nodes = {n.dev_addr: n for n in map(SimNode, self.devices)}
        #: Answer PULL_RESP with this TX_ACK error (TOO_LATE, COLLISION_PACKET, ...), or not
        #: at all while ``tx_silent``.
        self.tx_error: str | None = None
        self.tx_silent = False
        #: Every ``txpk`` received, and the ``tmst`` of each device's last uplink.
        self.txpks: list[Mapping[str, Any]] = []
        self.uplink_tmst: dict[str, int] = {}
        #: Called with one line per downlink and what the device made of it.
        self.report: Callable[[str], None] | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self), remote_addr=self.target)

    def resume(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="streetgate[sim:lora-forwarder]")

    async def pause(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        await self.pause()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _loop(self) -> None:
        while True:
            self.send_round()
            await asyncio.sleep(self.interval)

    def send(self, datagram: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram)
            self.counters["datagrams"] += 1

    def _token(self) -> int:
        return next(self._tokens) & 0xFFFF

    def _every(self, fault: str) -> bool:
        every = self.faults[fault]
        return bool(every) and self.counters["frames"] % every == 0

    def send_round(self) -> None:
        """One uplink per device, a PULL_DATA, and a ``stat`` every ``stat_every`` rounds."""
        self.rounds += 1
        if self.garbage:
            self.send(next(self._junk))
            return
        self.send(gwmp.build_pull_data(self._token(), self.eui))
        for dev in self.devices:
            self.send(self.push(self.frame(dev)))
            if self.faults["malformed"] and self.rounds % self.faults["malformed"] == 0:
                self.send(next(self._junk))
                self.counters["malformed"] += 1
        if self.stat_every and self.rounds % self.stat_every == 0:
            self.send(gwmp.build_push_data(self._token(), self.eui, {"stat": self.stat()}))

    def frame(self, dev: DeviceConfig) -> bytes:
        """The next frame of ``dev``: new, replayed or with a broken MIC as configured."""
        self.counters["frames"] += 1
        if self._every("replay") and dev.name in self._last:
            self.counters["replays"] += 1
            return self._last[dev.name]
        node = self.node(dev)
        phy = uplink_for(dev, self.fcnt[dev.name], confirmed=self.confirmed, state=node.state,
                         ack=node.take_ack())
        self.fcnt[dev.name] = (self.fcnt[dev.name] + 1) & 0xFFFF_FFFF
        if self._every("wrong_mic"):
            self.counters["wrong_mics"] += 1
            return phy[:-1] + bytes([phy[-1] ^ 0x5A])
        self._last[dev.name] = phy
        return phy

    def node(self, dev: DeviceConfig) -> SimNode:
        return self.nodes[int(dev.dev_addr or "0", 16)]

    def push(self, phy: bytes, *, rssi: int = -87, snr: float = 7.5) -> bytes:
        now = dt.datetime.now(dt.UTC)
        tmst = int(now.timestamp() * 1e6) & 0xFFFF_FFFF
        packet = RxPacket(data=phy, freq=868.1, datr="SF7BW125", codr="4/5", rssi=rssi,
                          lsnr=snr, tmst=tmst, time=now.isoformat().replace("+00:00", "Z"),
                          chan=0, rfch=0, modu="LORA")
        if len(phy) >= 5:
            self.uplink_tmst[phy[4:0:-1].hex().upper()] = tmst
        return gwmp.build_push_data(self._token(), self.eui, {"rxpk": [gwmp.rxpk_json(packet)]})

    def pull_resp(self, data: bytes) -> None:
        """Answer a PULL_RESP with TX_ACK and put its frame on the air to the devices."""
        try:
            version, token, txpk = gwmp.parse_pull_resp(data)
            phy = base64.b64decode(str(txpk.get("data", "")), validate=True)
        except (gwmp.GwmpError, binascii.Error, ValueError):
            self.counters["bad_pull_resp"] += 1
            return
        self.counters["pull_resp"] += 1
        self.txpks.append(txpk)
        if self.tx_silent:
            return
        if version >= 2:  # PROTOCOL.TXT v1 has no TX_ACK
            self.send(gwmp.build_tx_ack(token, self.eui, self.tx_error))
        if self.tx_error is not None:
            self._show(f"TX_ACK {self.tx_error}: downlink not sent")
            return
        self.counters["downlinks"] += 1
        lines = [line for node in self.nodes.values() if (line := node.receive(phy))]
        for line in lines or [f"downlink for nobody here: {phy.hex()}"]:
            self._show(f"{txpk.get('datr')} {txpk.get('freq')}MHz tmst {txpk.get('tmst')} "
                       f"{line}")

    def _show(self, line: str) -> None:
        if self.report is not None:
            self.report(line)

    def stat(self) -> dict[str, Any]:
        sent = self.counters["frames"]
        acked = self.counters["push_ack"]
        return {"time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S GMT"),
                "rxnb": sent, "rxok": sent, "rxfw": sent,
                "ackr": round(100.0 * acked / max(1, self.counters["datagrams"]), 1),
                "dwnb": self.counters["pull_resp"], "txnb": self.counters["downlinks"],
                "temp": 31.5}


class SimSetup:
    """The contract suite's handle on a LoRa simulator: garbage on demand, off and on again.

    Subclasses say what "off" and "on" mean (a silent forwarder, an unplugged module).
    """

    def __init__(self, sim: Any, config: Mapping[str, Any]) -> None:
        self.sim = sim
        self.config: Mapping[str, Any] = config

    async def _off(self) -> None:
        raise NotImplementedError

    def _on(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        await self._off()

    async def start(self) -> None:
        self.sim.garbage = False
        self._on()

    async def inject_malformed(self) -> None:
        self.sim.garbage = True

    async def heal(self) -> None:
        self.sim.garbage = False

    async def close(self) -> None:
        await self.sim.close()


class ForwarderSetup(SimSetup):
    """Stop pauses the forwarder's datagrams; start resumes them."""

    sim: ForwarderSimulator
    #: The water meter's valve: a confirmed downlink, done once the meter's ACK uplink arrives.
    writes: Mapping[str, Any] = {"sensor-2/valve": True}

    async def _off(self) -> None:
        await self.sim.pause()

    def _on(self) -> None:
        self.sim.resume()


@contextlib.asynccontextmanager
async def forwarder_setup(workdir: Path, *, interval: float = 0.1) -> AsyncIterator[ForwarderSetup]:  # noqa: ARG001
    """A simulator on a free loopback port and the driver config that listens there."""
    port = free_udp_port()
    tables = demo_devices(2, random_keys=True)
    config = {"host": "127.0.0.1", "port": port, "silence": "5s", "devices": tables}
    sim = ForwarderSimulator("127.0.0.1", port, parse_devices(tables), interval=interval)
    await sim.open()
    sim.resume()
    try:
        yield ForwarderSetup(sim, config)
    finally:
        await sim.close()
