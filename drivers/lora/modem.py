"""The ``lora_modem`` driver: a LoRa module on a UART (RN2483-style AT modem or transparent).

RN2483 radio receive (Microchip RN2483 command reference, DS40001784, §2.5 radio commands):
after ``mac pause`` the host sends ``radio rx 0`` (continuous receive; answer ``ok``, or
``busy`` if already receiving); each packet then arrives as ``radio_rx  <hex>`` and the
radio must be re-armed; ``radio get snr`` / ``radio get rssi`` give the last packet's signal.
A reset or a replug prints the version banner, after which the module is set up again.
Transparent modules write every received packet as it is, cut by the serial framing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from drivers.api import Driver, DriverContext, SimulatedSetup, Sink, Value, WriteError
from drivers.lora import downlink
from drivers.lora.config import DownlinkConfig, ModemConfig
from drivers.lora.scheduler import DownCounter, downlink_for
from drivers.lora.sessions import Device, Radio, Receiver
from drivers.serial.framing import Framer, LineFramer, make_framer
from drivers.serial.port import PortUnavailableError, SerialLink

__all__ = ["LoraModemDriver"]

_MAX_LINE = 1100  # "radio_rx  " + 2 x 255 hex digits, with room for noise
_RESET = "\x00reset"  # queued when the port goes down: the module must be set up again
_TX = "\x00tx"  # queued by write(): the session loop has a packet to send
#: Replies to ``radio tx`` (DS40001784, radio tx) and what a write makes of them; ``no_free_ch``
#: is the LoRaWAN-mode duty-cycle refusal some firmwares also give in radio mode.
_TX_REFUSALS = {"busy": ("rejected", "the module is busy"),
                "no_free_ch": ("rejected", "duty cycle: no free channel, try later"),
                "invalid_param": ("device-error", "the module refused the packet: invalid_param")}
_BANNERS = ("RN2483", "RN2903")


class _ModuleRestartedError(Exception):
    """The module printed its banner: it reset and must be set up again."""


class LoraModemDriver(Driver[ModemConfig]):
    """Packets from a LoRa module on a serial port, verified and decoded like the forwarder's.

    Example config::

        [[drivers.lora_modem]]
        instance = "lora-uart"
        port = "/dev/ttyUSB0"
        [[drivers.lora_modem.devices]]
        name = "soil-3"
        dev_addr = "26011BDB"
        nwk_skey = "..."
        app_skey = "..."
    """

    name = "lora_modem"
    config_schema = ModemConfig
    simulator = "drivers.lora.simmodem"

    def __init__(self, config: ModemConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.receiver = Receiver(context.instance, config.devices, state=context.state,
                                 health=context.health, logger=context.logger,
                                 max_fcnt_gap=config.max_fcnt_gap)
        self.port_health = self.health.device(f"modem {config.port}")
        self._lines: asyncio.Queue[str] = asyncio.Queue(256)
        self._pending: collections.deque[str] = collections.deque()
        self._up = asyncio.Event()
        self._framer: Framer = (LineFramer(b"\n", max_frame=_MAX_LINE)
                                if config.mode == "rn2483" else make_framer(config.framing))
        self._link: SerialLink | None = None
        self._sink: Sink | None = None
        self._tx: collections.deque[tuple[bytes, asyncio.Future[None]]] = collections.deque()
        self._down = DownCounter(context.state, context.health, context.logger)
        self._targets: dict[str, tuple[Device, DownlinkConfig]] = {
            f"{context.instance}/{dev.name}/{d.name}": (dev, d)
            for dev in self.receiver.devices for d in dev.cfg.downlinks}

    def points(self) -> Iterable[tuple[str, str | None]]:
        lorawan = self.config.payload == "lorawan"
        for dev in self.config.devices:
            base = f"{self.context.instance}/{dev.name}/"
            if lorawan:
                yield base + "fcnt", None
            if self.config.mode == "rn2483" and self.config.query_signal:
                yield from ((base + "rssi", "dBm"), (base + "snr", "dB"))
            yield from ((base + f.name, f.unit) for f in dev.fields)

    def writable_points(self) -> Iterable[str]:
        return list(self._targets)

    async def write(self, point: str, value: Value) -> Value:
        """Send ``value`` at once with ``radio tx``; done when the module says ``radio_tx_ok``.

        A transparent module is given the packet as it writes received ones (hex or base64
        and CR LF, or binary); the write is done once the bytes are on the serial line.

        With ``payload = "lorawan"`` the packet is a downlink frame (FCntDown stored first);
        with ``raw`` it is the device's ``match`` prefix and the value's payload. The module
        does not wait for a receive window: the device must be listening.

        Raises:
            WriteError: ``not-writable``, ``bad-value``, ``unavailable`` (port closed),
                ``rejected`` (busy, duty cycle), ``device-error`` (``invalid_param``,
                ``radio_err``), ``timeout`` (no reply or no ``radio_tx_ok``).
        """
        dev, cfg, payload = downlink_for(self._targets, point, value)
        if not self._up.is_set():
            raise WriteError("unavailable", f"the module on {self.config.port} is not there")
        packet = await self._packet_for(dev, cfg, payload)
        if self.config.mode == "transparent":
            await self._write_transparent(packet)
            return value
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tx.append((packet, fut))
        self._put(_TX)
        try:
            async with asyncio.timeout(2 * self.config.reply_timeout + self.config.tx_timeout):
                await fut
        except TimeoutError:
            raise WriteError("timeout", "the module did not send in time") from None
        finally:
            with contextlib.suppress(ValueError):
                self._tx.remove((packet, fut))
        return value

    async def _write_transparent(self, packet: bytes) -> None:
        """A transparent module sends what it is given, written as it writes what it hears."""
        enc = self.config.encoding
        data = (packet if enc == "binary" else base64.b64encode(packet) + b"\r\n"
                if enc == "base64" else packet.hex().upper().encode() + b"\r\n")
        if self._link is None:
            raise WriteError("unavailable", f"the module on {self.config.port} is not there")
        try:
            await self._link.write(data)
        except PortUnavailableError as exc:
            raise WriteError("unavailable", str(exc)) from None
        self.health.count("tx_written")

    async def _packet_for(self, dev: Device, cfg: DownlinkConfig, payload: bytes) -> bytes:
        if self.config.payload == "raw":
            return dev.match + payload
        assert dev.dev_addr is not None  # noqa: S101 - lorawan devices are checked at load
        fcnt = await self._down.take(dev)
        return downlink.build_frame(dev_addr=dev.dev_addr, nwk_skey=dev.nwk_skey,
                                    app_skey=dev.app_skey, fcnt=fcnt, fport=cfg.fport,
                                    payload=payload, confirmed=False)

    async def run(self, sink: Sink) -> None:
        self._sink = sink
        cfg = self.config
        link = SerialLink(cfg.port, baudrate=cfg.baudrate, bytesize=cfg.bytesize,
                          parity=cfg.parity, stopbits=cfg.stopbits, logger=self.log,
                          health=self.port_health, reopen_min=cfg.reopen_min,
                          reopen_max=cfg.reopen_max, on_state=self._state)
        self._link = link
        tag = f"streetgate[{self.name}:{self.context.instance}]"
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(link), name=f"{tag}.read")
                if cfg.mode == "rn2483":
                    tg.create_task(self._session(link), name=f"{tag}.session")
        finally:
            link.close()

    def _state(self, up: bool) -> None:
        self._framer.reset()
        if up:
            self._up.set()
        else:
            self._up.clear()
            self._put(_RESET)

    def _put(self, line: str) -> None:
        if self._lines.full():
            self._lines.get_nowait()
            self.health.count("lines_dropped")
        self._lines.put_nowait(line)

    async def _read(self, link: SerialLink) -> None:
        async with contextlib.aclosing(link.chunks()) as stream:
            async for data in stream:
                for frame in self._framer.feed(data):
                    if self.config.mode == "rn2483":
                        self._put(frame.rstrip(b"\r").decode("latin-1").strip())
                    else:
                        await self._transparent(frame)
                self.health.extra["framing"] = self._framer.stats.as_dict()

    async def _transparent(self, frame: bytes) -> None:
        enc = self.config.encoding
        try:
            text = frame.decode("ascii").strip() if enc != "binary" else ""
            packet = (frame if enc == "binary" else bytes.fromhex(text) if enc == "hex"
                      else base64.b64decode(text, validate=True))
        except (UnicodeDecodeError, ValueError, binascii.Error):
            self.health.count("malformed_packets")
            self.log.debug("packet is not %s: %r", enc, frame[:40])
            return
        if packet:
            await self._packet(packet, Radio())

    async def _packet(self, packet: bytes, radio: Radio) -> None:
        assert self._sink is not None  # noqa: S101 - set by run() before any packet
        self.health.count("packets")
        ts = self._sink.now_ms()
        if self.config.payload == "lorawan":
            outcome = await self.receiver.lorawan(packet, radio, ts)
        else:
            outcome = self.receiver.raw(packet, radio, ts)
        if outcome.readings:
            self._sink.emit(outcome.readings)

    # -- RN2483 session ----------------------------------------------------------------------
    async def _session(self, link: SerialLink) -> None:
        while True:
            await self._up.wait()
            self._pending.clear()
            while not self._lines.empty():
                self._lines.get_nowait()
            if self._tx:
                self._put(_TX)  # a write queued while the module was being set up
            try:
                await self._serve(link)
            except _ModuleRestartedError as exc:
                self.log.info("LoRa module restarted (%s); setting it up again", exc)
                self.health.count("module_resets")
            except PortUnavailableError as exc:
                self.log.debug("modem session ended: %s", exc)
                await asyncio.sleep(self.config.reopen_min)

    async def _serve(self, link: SerialLink) -> None:
        """Set the module up and receive until it resets or the port goes away."""
        for cmd in self.config.init:
            reply = await self._command(link, cmd)
            self.log.debug("modem %r -> %r", cmd, reply)
        while True:
            reply = await self._command(link, "radio rx 0")
            if reply not in ("ok", "busy"):
                self.port_health.failure(f"radio rx 0 answered {reply!r}", "rx_refused")
                await asyncio.sleep(self.config.reply_timeout)
                return
            if not self.port_health.ok:
                self.port_health.success()  # receiving again after a refusal
            line = self._pending.popleft() if self._pending else await self._next(
                self.config.rearm)
            if line is None:
                continue  # quiet for a long time: re-arm (a receiving module says busy)
            await self._line(link, line)

    async def _next(self, timeout: float) -> str | None:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
        # that arrives as a line does, and the driver would not stop (CPython gh-86296).
        try:
            async with asyncio.timeout(timeout):
                line = await self._lines.get()
        except TimeoutError:
            return None
        if line == _RESET:
            raise PortUnavailableError("port lost")
        if line.startswith(_BANNERS):
            raise _ModuleRestartedError(line[:40])
        return line

    async def _command(self, link: SerialLink, cmd: str) -> str | None:
        """Send ``cmd``; its reply line, or None after ``reply_timeout``."""
        await link.write(cmd.encode("ascii") + b"\r\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.reply_timeout
        while (left := deadline - loop.time()) > 0:
            line = await self._next(left)
            if line is None:
                break
            if "radio_rx" in line or line in ("radio_err", _TX):
                self._pending.append(line)  # a packet (or a write) that raced the command
                continue
            if line:
                return line
        self.health.count("reply_timeouts")
        return None

    async def _line(self, link: SerialLink, line: str) -> None:
        """Handle one unsolicited line."""
        if line == _TX:
            await self._transmit(link)
            return
        at = line.find("radio_rx")
        if at >= 0:
            await self._radio_rx(link, line[at + len("radio_rx"):])
        elif line == "radio_err":
            self.health.count("radio_errors")  # receive window over (watchdog) or bad CRC
        else:
            self.health.count("unexpected_lines")
            self.log.debug("unexpected line from the modem: %r", line[:80])

    async def _radio_rx(self, link: SerialLink, rest: str) -> None:
        try:
            packet = bytes.fromhex(rest.strip())
        except ValueError:
            packet = b""
        if not packet:
            self.health.count("malformed_lines")
            self.log.debug("radio_rx line without hex data: %r", rest[:80])
            return
        radio = Radio()
        if self.config.query_signal:
            snr = _integer(await self._command(link, "radio get snr"))
            rssi = _integer(await self._command(link, "radio get rssi"))
            radio = Radio(rssi, snr)
        await self._packet(packet, radio)

    # -- transmit ----------------------------------------------------------------------------
    async def _transmit(self, link: SerialLink) -> None:
        """Send the queued packets; the session loop then arms receive again."""
        while self._tx:
            packet, fut = self._tx.popleft()
            if fut.done():
                continue  # the writer gave up
            try:
                await self._radio_tx(link, packet)
            except WriteError as exc:
                self.health.count("tx_failed")
                if not fut.done():
                    fut.set_exception(exc)
            except (PortUnavailableError, _ModuleRestartedError) as exc:
                if not fut.done():
                    fut.set_exception(WriteError("unavailable", f"module lost: {exc}"))
                raise
            else:
                self.health.count("tx_ok")
                if not fut.done():
                    fut.set_result(None)

    async def _radio_tx(self, link: SerialLink, packet: bytes) -> None:
        # Continuous receive must stop first, or radio tx answers busy (DS40001784, radio rxstop).
        await self._command(link, "radio rxstop")
        reply = await self._command(link, "radio tx " + packet.hex().upper())
        if reply is None:
            raise WriteError("timeout", "no reply to radio tx")
        if reply != "ok":
            reason, detail = _TX_REFUSALS.get(reply, ("device-error", f"radio tx: {reply!r}"))
            raise WriteError(reason, detail)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.tx_timeout
        while (left := deadline - loop.time()) > 0:
            line = await self._next(left)
            if line == "radio_tx_ok":
                return
            if line == "radio_err":
                raise WriteError("device-error", "radio_err: the transmission was cut short")
            if line is not None and line:
                self._pending.append(line)
        raise WriteError("timeout", f"no radio_tx_ok within {self.config.tx_timeout}")

    @classmethod
    def register_cli(cls, sim: object, tools: object) -> None:  # noqa: ARG003
        from drivers.lora import cli  # noqa: PLC0415 - the CLI loads only when asked for

        cli.register_modem(sim)

    @classmethod
    @contextlib.asynccontextmanager
    async def simulate(cls, workdir: Path) -> AsyncIterator[SimulatedSetup]:
        from drivers.lora import simmodem  # noqa: PLC0415 - simulators load only when asked

        async with simmodem.modem_setup(workdir) as setup:
            yield setup


def _integer(reply: str | None) -> int | None:
    """A signed integer reply (``radio get snr`` gives -128..127); None if it is not one."""
    if reply is None:
        return None
    try:
        return int(reply)
    except ValueError:
        return None
