"""Downlinks, pure: a value as FRMPayload, the frame, the receive window, the ``txpk``.

Class A timing (LoRaWAN 1.0.3 §3.3): a device listens twice after each uplink, in RX1 at
RECEIVE_DELAY1 (1 s) on the uplink's channel and, in EU868, its data rate (RX1DROffset 0,
RP002 §2.3.7), and in RX2 one second later on a fixed channel (EU868: 869.525 MHz, DR0 =
SF12BW125). Both delays count from the end of the uplink, which is when the concentrator's
microsecond counter stamped it (PROTOCOL.TXT §4: ``tmst`` is the "RX finished" event), so a
window is that ``tmst`` plus the delay, sent with ``imme`` false (§6).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import struct
from typing import Any

from drivers.api import Value, WriteError
from drivers.lora import lorawan
from drivers.lora.config import DownlinkConfig
from drivers.lora.gwmp import RxPacket
from drivers.lora.points import scaled

__all__ = ["Window", "build_frame", "decode_value", "encode_value", "rx_window", "txpk"]

_INTS = {"u8": (1, False), "i8": (1, True), "u16": (2, False), "i16": (2, True),
         "u32": (4, False), "i32": (4, True)}
_FLOAT_ITEMS = "efd"
#: LoRaWAN 1.0.3 §3.3.2: RX2 opens RECEIVE_DELAY2 = RECEIVE_DELAY1 + 1 s after the uplink.
_RX2_AFTER_RX1 = 1.0
_TMST_MASK = 0xFFFF_FFFF


def _bad(cfg: DownlinkConfig, value: Value, why: str) -> WriteError:
    return WriteError("bad-value", f"{value!r} does not fit {cfg.name} ({cfg.type}): {why}")


def _integral(cfg: DownlinkConfig, value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(cfg, value, "expected a number")
    raw = value / cfg.scale if cfg.scale != 1 else value
    if not math.isfinite(raw) or abs(raw - round(raw)) > 1e-9 * max(1.0, abs(raw)):
        raise _bad(cfg, value, f"not a multiple of the scale {cfg.scale}")
    return round(raw)


def _struct(cfg: DownlinkConfig, value: Value) -> bytes:
    fmt = cfg.format or ">B"
    item: Any
    if fmt[1] == "?":
        if not isinstance(value, bool):
            raise _bad(cfg, value, "expected true or false")
        item = value
    elif fmt[1] in _FLOAT_ITEMS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(cfg, value, "expected a number")
        item = value / cfg.scale
    else:
        item = _integral(cfg, value)
    try:
        return struct.pack(fmt, item)
    except (struct.error, OverflowError) as exc:
        raise _bad(cfg, value, str(exc)) from None


def encode_value(cfg: DownlinkConfig, value: Value) -> bytes:
    """The FRMPayload that sets ``cfg``'s point to ``value`` (prefix, then the value).

    Raises:
        WriteError: ``bad-value`` when the value has the wrong type or does not fit.
    """
    prefix = bytes.fromhex(cfg.prefix) if cfg.prefix else b""
    if cfg.type == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise _bad(cfg, value, "expected true or false")
        return prefix + bytes([1 if value else 0])
    if cfg.type == "struct":
        return prefix + _struct(cfg, value)
    size, signed = _INTS[cfg.type]
    raw = _integral(cfg, value)
    try:
        return prefix + raw.to_bytes(size, cfg.endian, signed=signed)
    except OverflowError:
        raise _bad(cfg, value, f"raw value {raw} is out of range") from None


def decode_value(cfg: DownlinkConfig, payload: bytes) -> Value:
    """The value ``payload`` sets (the device's side of :func:`encode_value`).

    Raises:
        ValueError: the payload is not one of ``cfg``'s.
    """
    prefix = bytes.fromhex(cfg.prefix) if cfg.prefix else b""
    if not payload.startswith(prefix):
        raise ValueError(f"payload {payload.hex()} does not start with {prefix.hex()}")
    body = payload[len(prefix):]
    if cfg.type == "bool":
        if len(body) != 1:
            raise ValueError(f"bool payload of {len(body)} bytes")
        return bool(body[0])
    if cfg.type == "struct":
        fmt = cfg.format or ">B"
        try:
            (item,) = struct.unpack(fmt, body)
        except struct.error as exc:
            raise ValueError(str(exc)) from None
        if isinstance(item, bool):
            return item
        return item * cfg.scale if isinstance(item, float) else scaled(item, cfg.scale)
    size, signed = _INTS[cfg.type]
    if len(body) != size:
        raise ValueError(f"{cfg.type} payload of {len(body)} bytes")
    return scaled(int.from_bytes(body, cfg.endian, signed=signed), cfg.scale)


def build_frame(*, dev_addr: int, nwk_skey: bytes, app_skey: bytes, fcnt: int, fport: int,
                payload: bytes, confirmed: bool, ack: bool = False) -> bytes:
    """A data-down frame: FRMPayload encrypted, MIC over the downlink B0 (§4.3.3, §4.4).

    ``ack`` sets FCtrl.ACK, answering a confirmed uplink (§4.3.1.2).
    """
    return lorawan.build_data_frame(
        dev_addr=dev_addr, fcnt=fcnt, nwk_skey=nwk_skey, app_skey=app_skey, fport=fport,
        payload=payload, confirmed=confirmed, fctrl=0x20 if ack else 0, uplink=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """Where and when the device listens: RX1 or RX2 after one uplink."""

    name: str
    tmst: int
    freq: float
    datr: str
    codr: str


def rx_window(packet: RxPacket, *, prefer: str, rx1_delay: float, rx2_freq: float,
              rx2_datr: str) -> Window | None:
    """The window to answer ``packet`` in; None without a ``tmst`` (nothing to time from).

    RX1 needs the uplink's LoRa frequency and data rate; without them (or with
    ``prefer="rx2"``) the answer goes in RX2.
    """
    if packet.tmst is None:
        return None
    codr = packet.codr or "4/5"
    lora = isinstance(packet.datr, str) and packet.datr.startswith("SF")
    if prefer == "rx1" and packet.freq is not None and lora:
        tmst = (packet.tmst + round(rx1_delay * 1e6)) & _TMST_MASK
        return Window("RX1", tmst, packet.freq, str(packet.datr), codr)
    tmst = (packet.tmst + round((rx1_delay + _RX2_AFTER_RX1) * 1e6)) & _TMST_MASK
    return Window("RX2", tmst, rx2_freq, rx2_datr, codr)


def txpk(window: Window, phy: bytes, *, power: int, rfch: int) -> dict[str, Any]:
    """The ``txpk`` of a PULL_RESP sending ``phy`` in ``window`` (PROTOCOL.TXT §6).

    ``ipol`` true: devices listen in their receive windows with the IQ polarity inverted,
    so that they do not hear each other's uplinks (PROTOCOL.TXT §6: "ipol").
    """
    return {"imme": False, "tmst": window.tmst, "freq": window.freq, "rfch": rfch,
            "powe": power, "modu": "LORA", "datr": window.datr, "codr": window.codr,
            "ipol": True, "size": len(phy), "data": base64.b64encode(phy).decode()}
