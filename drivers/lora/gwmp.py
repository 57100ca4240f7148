"""Semtech's gateway messaging protocol (GWMP, the "UDP packet forwarder" protocol), pure.

Reference: Lora-net/packet_forwarder PROTOCOL.TXT (protocol version 2; version 1 has the
same layout). Every datagram starts with ``version, token (2 bytes), identifier``; the
gateway-to-server types carry the gateway EUI in bytes 4-11 and PUSH_DATA a JSON object
after it (PROTOCOL.TXT §3.2, §5.2, §5.5).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "GwmpError",
    "Kind",
    "Message",
    "RxPacket",
    "ack_for",
    "build_pull_data",
    "build_pull_resp",
    "build_push_data",
    "build_tx_ack",
    "parse",
    "parse_pull_resp",
    "parse_rxpk",
    "parse_stat",
    "tx_ack_error",
]

#: PROTOCOL.TXT revisions: v1 (basic_pkt_fwd) and v2 (lora_pkt_fwd) share the header layout.
VERSIONS = (1, 2)


class Kind(enum.IntEnum):
    """Packet identifiers, PROTOCOL.TXT §3-§5."""

    PUSH_DATA = 0x00
    PUSH_ACK = 0x01
    PULL_DATA = 0x02
    PULL_RESP = 0x03
    PULL_ACK = 0x04
    TX_ACK = 0x05


class GwmpError(ValueError):
    """A datagram that is not valid GWMP; ``counter`` names the health counter to bump."""

    def __init__(self, counter: str, message: str) -> None:
        super().__init__(message)
        self.counter = counter


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One parsed datagram from a gateway."""

    version: int
    token: int
    kind: Kind
    gateway_eui: str
    #: The JSON object of PUSH_DATA / TX_ACK (empty for PULL_DATA).
    payload: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class RxPacket:
    """One received radio packet of an ``rxpk`` array (PROTOCOL.TXT §4)."""

    data: bytes
    freq: float | None = None
    datr: str | int | None = None
    codr: str | None = None
    rssi: float | None = None
    lsnr: float | None = None
    tmst: int | None = None
    time: str | None = None
    chan: int | None = None
    rfch: int | None = None
    crc: int = 1
    modu: str | None = None


def _header(data: bytes) -> tuple[int, int, Kind]:
    if len(data) < 4:
        raise GwmpError("malformed", f"datagram of {len(data)} bytes is shorter than a header")
    version = data[0]
    if version not in VERSIONS:
        raise GwmpError("bad_version", f"protocol version {version} not supported")
    try:
        kind = Kind(data[3])
    except ValueError:
        raise GwmpError("unknown_type", f"unknown identifier 0x{data[3]:02x}") from None
    return version, int.from_bytes(data[1:3], "big"), kind


def _json_object(raw: bytes, *, optional: bool) -> Mapping[str, Any]:
    if optional and not raw.strip(b"\x00 \r\n\t"):
        return {}
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise GwmpError("bad_json", f"JSON payload does not parse: {exc}") from None
    if not isinstance(obj, dict):
        raise GwmpError("bad_json", f"JSON payload is {type(obj).__name__}, not an object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(data: bytes) -> Message:
    """Parse one gateway-to-server datagram (PUSH_DATA, PULL_DATA or TX_ACK).

    Raises:
        GwmpError: with ``counter`` one of malformed, bad_version, unknown_type,
            unexpected_type, bad_json.
    """
    version, token, kind = _header(data)
    if kind not in (Kind.PUSH_DATA, Kind.PULL_DATA, Kind.TX_ACK):
        raise GwmpError("unexpected_type", f"{kind.name} is a server-to-gateway packet")
    if len(data) < 12:
        raise GwmpError("malformed", f"{kind.name} of {len(data)} bytes has no gateway EUI")
    eui = data[4:12].hex().upper()
    payload: Mapping[str, Any] = {}
    if kind is Kind.PUSH_DATA:
        payload = _json_object(data[12:], optional=False)
    elif kind is Kind.TX_ACK:
        payload = _json_object(data[12:], optional=True)
    return Message(version, token, kind, eui, payload)


def ack_for(message: Message) -> bytes | None:
    """The PUSH_ACK / PULL_ACK answering ``message`` (same version and token), if any."""
    answer = {Kind.PUSH_DATA: Kind.PUSH_ACK, Kind.PULL_DATA: Kind.PULL_ACK}.get(message.kind)
    if answer is None:
        return None
    return bytes([message.version]) + message.token.to_bytes(2, "big") + bytes([answer])


def _number(item: Mapping[str, Any], key: str) -> float | None:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        finite = math.isfinite(value)
    except OverflowError:  # a JSON integer too big for a float: not a radio figure
        return None
    if not finite:
        return None
    return value  # an integer (RSSI, 1 dB precision) stays an integer


def _integer(item: Mapping[str, Any], key: str) -> int | None:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _string(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    return value if isinstance(value, str) else None


def _b64(text: str) -> bytes:
    """Base64 with the padding restored when a forwarder left it out (PROTOCOL.TXT §6)."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise GwmpError("bad_base64", f"data is not base64: {text[:40]!r}") from None


def _signal(item: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """RSSI and SNR, top-level or from the best antenna of ``rsig`` (SX1301 v2 forwarders)."""
    rssi, snr = _number(item, "rssi"), _number(item, "lsnr")
    rsig = item.get("rsig")
    if (rssi is None or snr is None) and isinstance(rsig, list):
        chains = [c for c in rsig if isinstance(c, dict)]
        rssis = [v for c in chains if (v := _number(c, "rssic")) is not None]
        snrs = [v for c in chains if (v := _number(c, "lsnr")) is not None]
        rssi = rssi if rssi is not None else (max(rssis) if rssis else None)
        snr = snr if snr is not None else (max(snrs) if snrs else None)
    return rssi, snr


def parse_rxpk(item: Any) -> RxPacket:
    """One element of ``rxpk``.

    Raises:
        GwmpError: ``malformed`` (not an object, no data, size mismatch) or ``bad_base64``.
    """
    if not isinstance(item, dict):
        raise GwmpError("malformed", "rxpk element is not an object")
    text = item.get("data")
    if not isinstance(text, str):
        raise GwmpError("malformed", "rxpk element has no data string")
    data = _b64(text)
    size = _integer(item, "size")
    if size is not None and size != len(data):
        raise GwmpError("malformed", f"rxpk size {size} but data holds {len(data)} bytes")
    datr = item.get("datr")
    rssi, snr = _signal(item)
    crc = _integer(item, "stat")
    return RxPacket(
        data=data,
        freq=_number(item, "freq"),
        datr=datr if isinstance(datr, (str, int)) and not isinstance(datr, bool) else None,
        codr=_string(item, "codr"),
        rssi=rssi,
        lsnr=snr,
        tmst=_integer(item, "tmst"),
        time=_string(item, "time"),
        chan=_integer(item, "chan"),
        rfch=_integer(item, "rfch"),
        crc=1 if crc is None else crc,
        modu=_string(item, "modu"),
    )


#: ``stat`` fields (PROTOCOL.TXT §4) and the JSON types they must have.
_STAT_FIELDS: dict[str, tuple[type, ...]] = {
    "time": (str,), "lati": (int, float), "long": (int, float), "alti": (int, float),
    "rxnb": (int,), "rxok": (int,), "rxfw": (int,), "ackr": (int, float),
    "dwnb": (int,), "txnb": (int,), "temp": (int, float),
}


def parse_stat(item: Any) -> dict[str, Any]:
    """The known fields of a ``stat`` object with the right types; others are left out."""
    if not isinstance(item, dict):
        raise GwmpError("malformed", "stat is not an object")
    out: dict[str, Any] = {}
    for key, types in _STAT_FIELDS.items():
        value = item.get(key)
        if isinstance(value, types) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                continue
            out[key] = value
    return out


def _prefix(kind: Kind, token: int, eui: str, version: int) -> bytes:
    return bytes([version]) + token.to_bytes(2, "big") + bytes([kind]) + bytes.fromhex(eui)


def build_push_data(token: int, eui: str, payload: Mapping[str, Any], version: int = 2) -> bytes:
    """A PUSH_DATA datagram (for simulators and tests)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _prefix(Kind.PUSH_DATA, token, eui, version) + body


def build_pull_data(token: int, eui: str, version: int = 2) -> bytes:
    """A PULL_DATA keep-alive datagram (for simulators and tests)."""
    return _prefix(Kind.PULL_DATA, token, eui, version)


def rxpk_json(packet: RxPacket) -> dict[str, Any]:
    """The ``rxpk`` element describing ``packet`` (inverse of :func:`parse_rxpk`)."""
    item: dict[str, Any] = {
        "stat": packet.crc,
        "size": len(packet.data),
        "data": base64.b64encode(packet.data).decode(),
    }
    for key in ("time", "tmst", "chan", "rfch", "freq", "modu", "datr", "codr", "rssi", "lsnr"):
        value = getattr(packet, key)
        if value is not None:
            item[key] = value
    return item


def build_pull_resp(token: int, txpk: Mapping[str, Any], version: int = 2) -> bytes:
    """A PULL_RESP carrying one ``txpk`` (PROTOCOL.TXT §5.4, §6).

    Version 1 forwarders ignore the token and send no TX_ACK.
    """
    body = json.dumps({"txpk": txpk}, separators=(",", ":")).encode()
    return bytes([version]) + token.to_bytes(2, "big") + bytes([Kind.PULL_RESP]) + body


def parse_pull_resp(data: bytes) -> tuple[int, int, Mapping[str, Any]]:
    """Version, token and ``txpk`` of a PULL_RESP (for simulators and tests).

    Raises:
        GwmpError: not a PULL_RESP, or no ``txpk`` object.
    """
    version, token, kind = _header(data)
    if kind is not Kind.PULL_RESP:
        raise GwmpError("unexpected_type", f"{kind.name} is not a PULL_RESP")
    txpk = _json_object(data[4:], optional=False).get("txpk")
    if not isinstance(txpk, dict):
        raise GwmpError("malformed", "PULL_RESP without a txpk object")
    return version, token, txpk


def build_tx_ack(token: int, eui: str, error: str | None = None) -> bytes:
    """A TX_ACK: no JSON when the downlink was accepted, else ``txpk_ack.error`` (§5.5)."""
    body = b"" if error is None else json.dumps(
        {"txpk_ack": {"error": error}}, separators=(",", ":")).encode()
    return _prefix(Kind.TX_ACK, token, eui, 2) + body


#: TX_ACK ``error`` values meaning the downlink was accepted (PROTOCOL.TXT §6, lora_pkt_fwd).
_TX_OK = (None, "", "NONE")


def tx_ack_error(payload: Mapping[str, Any]) -> str | None:
    """The error a TX_ACK reports, or None when the forwarder accepted the downlink.

    An empty TX_ACK means accepted (§5.5); ``txpk_ack.warn`` (sx1302 forwarders, e.g. a
    power lowered to what the board can do) is not an error.
    """
    ack = payload.get("txpk_ack")
    if ack is None:
        return None
    if not isinstance(ack, dict):
        return "malformed txpk_ack"
    error = ack.get("error")
    if error in _TX_OK:
        return None
    return str(error)
