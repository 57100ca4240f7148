"""Schemas of the ``lora_forwarder`` and ``lora_modem`` drivers and their device tables."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from drivers.api import ByteSize, Duration, option
from drivers.serial.config import FramingConfig

__all__ = ["DeviceConfig", "DownlinkConfig", "FieldConfig", "ForwarderConfig", "ModemConfig"]

_HEX = re.compile(r"[0-9A-Fa-f]*")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_POINT = r"[a-z0-9][a-z0-9_]*"

#: Struct items that hold one number or bool (Python struct module format characters).
_STRUCT_ITEMS = "bBhHiIlLqQefd?"

DownlinkType = Literal["bool", "u8", "i8", "u16", "i16", "u32", "i32", "struct"]

FieldType = Literal["u8", "i8", "u16", "i16", "u24", "i24", "u32", "i32", "u64", "i64",
                    "f32", "f64", "bool"]


def _secret(doc: str) -> Any:
    """A secret key field: masked by ``dump`` and left out of ``repr`` so it is never logged."""
    return dataclasses.field(default=None, repr=False, metadata={"doc": doc, "secret": True})


def _hex_issue(key: str, value: str | None, digits: int, *, secret: bool) -> list[tuple[str, str]]:
    if value is None or (len(value) == digits and _HEX.fullmatch(value)):
        return []
    found = f"a value of {len(value)} characters" if secret else f'"{value}"'
    return [(key, f"expected {digits} hex digits; got {found}")]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldConfig:
    """One value at a fixed place in the payload (the declarative struct decoder)."""

    name: str = option(doc="point name (last part)", pattern=_POINT)
    offset: int = option(doc="byte offset in the decrypted payload", minimum=0, maximum=241)
    type: FieldType = option(doc="u8..u64, i8..i64, f32, f64, or bool (one bit)")
    endian: Literal["big", "little"] = option("big", doc="byte order")
    scale: float = option(1.0, doc="value = raw * scale + add")
    add: float = option(0.0, doc="added after scaling")
    decimals: int | None = option(None, doc="rounding (default: from scale and add)",
                                  minimum=0, maximum=12)
    bit: int | None = option(None, doc="bit 0-7 of the byte at offset (type bool)",
                             minimum=0, maximum=7)
    unit: str | None = option(None, doc="unit (SenML name: Cel, %RH, V, m3, ...)")
    fport: int | None = option(None, doc="only in frames on this FPort", minimum=1,
                               maximum=223)

    def validate(self) -> list[tuple[str, str]]:
        if self.type == "bool" and self.bit is None:
            return [("bit", "missing required key for type bool; expected an integer 0-7")]
        if self.type != "bool" and self.bit is not None:
            return [("bit", f"only type bool takes a bit; type is {self.type}")]
        return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class DownlinkConfig:
    """One writable point: how a value becomes the FRMPayload of a downlink."""

    name: str = option(doc="point name (last part); may equal a field the device reports",
                       pattern=_POINT)
    fport: int = option(doc="FPort of the downlink", minimum=1, maximum=223)
    type: DownlinkType = option(doc="bool (one byte 0/1), u8..i32, or struct (format below)")
    endian: Literal["big", "little"] = option("big", doc="byte order of u16..i32")
    format: str | None = option(None, doc='type struct: one Python struct item, e.g. "<h", ">f"')
    scale: float = option(1.0, doc="raw = value / scale (the inverse of a field's scale)")
    prefix: str | None = option(None, doc="hex bytes sent before the value (a command code)")
    confirmed: bool = option(False, doc="confirmed downlink: done when the device ACKs it")

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.type == "struct":
            issues += _struct_issue(self.format)
        elif self.format is not None:
            issues.append(("format", f"only type struct takes a format; type is {self.type}"))
        if self.prefix is not None and (len(self.prefix) % 2 or not _HEX.fullmatch(self.prefix)):
            issues.append(("prefix", f'expected an even number of hex digits; got "{self.prefix}"'))
        if self.scale == 0:
            issues.append(("scale", "expected a number other than 0; got 0"))
        return issues


def _struct_issue(fmt: str | None) -> list[tuple[str, str]]:
    if fmt is None:
        return [("format", 'missing required key for type struct; expected e.g. ">H"')]
    if len(fmt) != 2 or fmt[0] not in "<>!=" or fmt[1] not in _STRUCT_ITEMS:
        return [("format", ('expected a byte order and one struct item ("<h", ">f"); '
                            f'got "{fmt}"'))]
    return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One sensor the gateway serves: its LoRaWAN ABP session and its payload decoder."""

    name: str = option(doc="device name (middle part of the point names)", pattern=_NAME)
    dev_addr: str | None = option(None, doc="DevAddr, 8 hex digits, most significant first")
    nwk_skey: str | None = _secret("NwkSKey, 32 hex digits (MIC)")
    app_skey: str | None = _secret("AppSKey, 32 hex digits (payload encryption)")
    decoder: Literal["cayenne", "struct", "raw", "none"] = option(
        "cayenne", doc="cayenne (LPP), struct (fields below), raw (payload bytes), none")
    fields: list[FieldConfig] = option(doc="struct decoder fields", factory=list)
    fports: list[int] = option(doc="decode only these FPorts (empty: all)", factory=list)
    fcnt_check: Literal["strict", "relaxed"] = option(
        "strict", doc="relaxed also accepts a device whose counter restarted from 0")
    match: str | None = option(None, doc="raw modem payloads: hex prefix naming this device")
    downlinks: list[DownlinkConfig] = option(doc="writable points, sent as downlinks",
                                             factory=list)

    def validate(self) -> list[tuple[str, str]]:
        issues = _hex_issue("dev_addr", self.dev_addr, 8, secret=False)
        issues += _hex_issue("nwk_skey", self.nwk_skey, 32, secret=True)
        issues += _hex_issue("app_skey", self.app_skey, 32, secret=True)
        if self.match is not None and (not self.match or len(self.match) % 2
                                       or not _HEX.fullmatch(self.match)):
            issues.append(("match", f'expected an even number of hex digits; got "{self.match}"'))
        if self.decoder == "struct" and not self.fields:
            issues.append(("fields", "decoder struct needs at least one field"))
        if self.decoder != "struct" and self.fields:
            issues.append(("fields", (f"fields are only read by decoder struct; decoder is "
                                     f"{self.decoder}")))
        names = [f.name for f in self.fields]
        issues += [("fields", f'field name "{n}" is used twice')
                   for n in sorted({n for n in names if names.count(n) > 1})]
        issues += [("fields", f'field name "{n}" is reserved for the radio readings')
                   for n in names if n in ("rssi", "snr", "fcnt", "payload")]
        writable = [d.name for d in self.downlinks]
        issues += [("downlinks", f'downlink name "{n}" is used twice')
                   for n in sorted({n for n in writable if writable.count(n) > 1})]
        issues += [("downlinks", f'downlink name "{n}" is reserved for the radio readings')
                   for n in writable if n in ("rssi", "snr", "fcnt", "payload")]
        return issues

    def session_issues(self) -> list[tuple[str, str]]:
        """A LoRaWAN session needs its DevAddr and both keys."""
        return [(key, "missing required key; expected " + what)
                for key, what in (("dev_addr", "8 hex digits"), ("nwk_skey", "32 hex digits"),
                                  ("app_skey", "32 hex digits"))
                if getattr(self, key) is None]


def _device_issues(devices: list[DeviceConfig], *, session: bool) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = []
    seen_names: set[str] = set()
    seen_addrs: set[str] = set()
    for i, dev in enumerate(devices):
        if session:
            issues += [(f"devices[{i}].{k}", m) for k, m in dev.session_issues()]
        if dev.name in seen_names:
            issues.append((f"devices[{i}].name", f'device name "{dev.name}" is used twice'))
        seen_names.add(dev.name)
        addr = (dev.dev_addr or "").upper()
        if addr and addr in seen_addrs:
            issues.append((f"devices[{i}].dev_addr", f'DevAddr "{dev.dev_addr}" is used twice'))
        seen_addrs.add(addr)
    return issues


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForwarderConfig:
    """A Semtech UDP packet forwarder (GWMP) on a LoRa concentrator board."""

    host: str = option("127.0.0.1", doc="address to listen on (the forwarder's server_address)")
    port: int = option(1700, doc="UDP port (the forwarder's serv_port_up and serv_port_down)",
                       minimum=1, maximum=65535)
    gateways: list[str] = option(doc="accept only these gateway EUIs (empty: any)",
                                 factory=list)
    silence: Duration = option(Duration(120.0), doc="report the forwarder silent after this",
                               minimum=1.0)
    max_fcnt_gap: int = option(16384, doc="frames further ahead are dropped (MAX_FCNT_GAP)",
                               minimum=1, maximum=32768)
    # SO_RCVBUF is a C int; the kernel caps it at net.core.rmem_max anyway (socket(7)).
    rcvbuf: ByteSize | None = option(
        None, doc="UDP receive buffer to ask for (SO_RCVBUF; default: net.core.rmem_default)",
        minimum=4096, maximum=1024**3)
    rx_window: Literal["rx1", "rx2"] = option(
        "rx1", doc="rx1: the uplink's frequency and data rate (RX2 if it lacks them); rx2")
    rx1_delay: Duration = option(Duration(1.0), doc="RECEIVE_DELAY1 of the devices",
                                 minimum=1.0, maximum=15.0)
    rx2_frequency: float = option(869.525, doc="RX2 frequency in MHz (EU868: 869.525)",
                                  minimum=137.0, maximum=1020.0)
    rx2_datarate: str = option("SF12BW125", doc="RX2 data rate (EU868: DR0, SF12BW125)",
                               pattern=r"SF([5-9]|1[0-2])BW(125|250|500)")
    tx_power: int = option(14, doc="downlink power in dBm (the txpk powe)", minimum=0,
                           maximum=30)
    rfch: int = option(0, doc="concentrator RF chain that transmits", minimum=0, maximum=1)
    tx_ack_timeout: Duration = option(Duration(2.0), doc="wait this long for TX_ACK",
                                      minimum=0.05)
    pull_timeout: Duration = option(
        Duration(30.0), doc="downlinks need a PULL_DATA within this long", minimum=1.0)
    devices: list[DeviceConfig] = option(doc="the sensors to serve", factory=list)

    def validate(self) -> list[tuple[str, str]]:
        issues = [(f"gateways[{i}]", f'expected 16 hex digits; got "{eui}"')
                  for i, eui in enumerate(self.gateways)
                  if len(eui) != 16 or not _HEX.fullmatch(eui)]
        return issues + _device_issues(self.devices, session=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModemConfig:
    """A LoRa module on a UART: an RN2483-style AT modem in radio receive, or transparent."""

    port: str = option(doc="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = option(57600, doc="line speed (RN2483: 57600)", minimum=50)
    bytesize: Literal[5, 6, 7, 8] = option(8, doc="data bits")
    parity: Literal["N", "E", "O"] = option("N", doc="parity")
    stopbits: Literal[1, 2] = option(1, doc="stop bits")
    mode: Literal["rn2483", "transparent"] = option(
        "rn2483", doc="rn2483: radio rx / radio_rx <hex> lines; transparent: raw bytes")
    init: list[str] = option(doc="commands sent after opening, before radio rx",
                             factory=lambda: ["mac pause", "radio set wdt 0"])
    query_signal: bool = option(True, doc="ask radio get snr / radio get rssi per packet")
    reply_timeout: Duration = option(Duration(2.0), doc="wait this long for a command reply",
                                     minimum=0.01)
    rearm: Duration = option(Duration(300.0), doc="re-send radio rx this often when quiet",
                             minimum=1.0)
    framing: FramingConfig = option(
        doc="transparent mode: how the byte stream is cut into packets (as the serial driver)",
        factory=FramingConfig)
    encoding: Literal["hex", "base64", "binary"] = option(
        "hex", doc="transparent mode: what each framed packet is written as")
    payload: Literal["lorawan", "raw"] = option(
        "lorawan", doc="lorawan: PHYPayloads checked as uplinks; raw: application payloads")
    reopen_min: Duration = option(Duration(0.5), doc="first retry after unplugging",
                                  minimum=0.01)
    reopen_max: Duration = option(Duration(30.0), doc="longest retry interval", minimum=0.01)
    max_fcnt_gap: int = option(16384, doc="frames further ahead are dropped (MAX_FCNT_GAP)",
                               minimum=1, maximum=32768)
    tx_timeout: Duration = option(Duration(5.0), doc="wait this long for radio_tx_ok",
                                  minimum=0.05)
    devices: list[DeviceConfig] = option(doc="the sensors to serve", factory=list)

    def validate(self) -> list[tuple[str, str]]:
        issues = _device_issues(self.devices, session=self.payload == "lorawan")
        if self.payload == "raw" and len(self.devices) > 1:
            issues += [(f"devices[{i}].match", ("missing required key with more than one raw "
                                               "device; expected hex digits"))
                       for i, d in enumerate(self.devices) if d.match is None]
        if self.reopen_max < self.reopen_min:
            issues.append(("reopen_max", (f"expected at least reopen_min ({self.reopen_min}); "
                                         f"got {self.reopen_max}")))
        return issues
