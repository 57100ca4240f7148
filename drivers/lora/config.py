"""Schemas of the ``lora_forwarder`` and ``lora_modem`` drivers and their device tables."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from drivers.api import ByteSize, Duration, option
from drivers.serial.config import FramingConfig

__all__ = ["DeviceConfig", "FieldConfig", "ForwarderConfig", "ModemConfig"]

_HEX = re.compile(r"[0-9A-Fa-f]*")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_POINT = r"[a-z0-9][a-z0-9_]*"

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
