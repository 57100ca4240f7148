"""From radio packet to trusted readings: device lookup, MIC, frame counter, decrypt, decode.

Shared by the forwarder and the modem drivers and by ``streetgate lora listen``. The last
accepted 32-bit FCnt of every session is written to the driver's state store before the
frame's readings are handed out, so a restart never reopens a replay window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Iterable

from drivers.api import HealthBoard, Quality, Reading, StateStore
from drivers.lora import cayenne, lorawan, structdec
from drivers.lora.config import DeviceConfig
from drivers.lora.lorawan import DataFrame, LorawanError
from drivers.lora.points import Decoded, Point

__all__ = ["Device", "Outcome", "Radio", "Receiver"]

#: FPort 224 is reserved for the LoRaWAN MAC layer test protocol (LoRaWAN 1.0.3 §4.3.2).
_TEST_PORT = 224


@dataclasses.dataclass(frozen=True, slots=True)
class Radio:
    """Signal metadata of one received packet (absent when the radio does not say)."""

    rssi: float | None = None
    snr: float | None = None


class Device:
    """A configured device with its session keys as bytes (never shown by ``repr``)."""

    def __init__(self, cfg: DeviceConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.dev_addr = int(cfg.dev_addr, 16) if cfg.dev_addr else None
        self.nwk_skey = bytes.fromhex(cfg.nwk_skey) if cfg.nwk_skey else b""
        self.app_skey = bytes.fromhex(cfg.app_skey) if cfg.app_skey else b""
        self.match = bytes.fromhex(cfg.match) if cfg.match else b""
        tag = hashlib.sha256(b"streetgate/lora/fcnt/" + self.nwk_skey).hexdigest()[:8]
        #: State key: a new DevAddr or NwkSKey is a new session with its own counter.
        self.state_key = f"lora/fcnt_up/{self.dev_addr or 0:08X}/{tag}"
        #: The session's last FCntDown, kept like FCntUp (LoRaWAN 1.0.3 §4.3.1.5).
        self.down_key = f"lora/fcnt_down/{self.dev_addr or 0:08X}/{tag}"

    def __repr__(self) -> str:
        return f"Device({self.name!r}, dev_addr={self.cfg.dev_addr!r})"

    def decode(self, fport: int | None, payload: bytes) -> Decoded:
        kind = self.cfg.decoder
        if kind == "cayenne":
            return cayenne.decode(payload)
        if kind == "struct":
            return structdec.decode(self.cfg.fields, fport, payload)
        if kind == "raw":
            return Decoded([Point("payload", payload)])
        return Decoded([])


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one packet: ``status`` is "ok" or the counter it was counted under."""

    status: str
    detail: str = ""
    device: str | None = None
    frame: DataFrame | None = None
    fcnt: int | None = None
    payload: bytes | None = None
    decoded: Decoded | None = None
    readings: list[Reading] = dataclasses.field(default_factory=list)


class Receiver:
    """Turns packets into readings for one driver instance's devices."""

    def __init__(self, instance: str, devices: Iterable[DeviceConfig], *, state: StateStore,
                 health: HealthBoard, logger: logging.Logger,
                 max_fcnt_gap: int = lorawan.MAX_FCNT_GAP) -> None:
        self.instance = instance
        self.devices = [Device(d) for d in devices]
        self.by_addr = {d.dev_addr: d for d in self.devices
                        if d.dev_addr is not None and d.nwk_skey and d.app_skey}
        self.state = state
        self.health = health
        self.log = logger
        self.max_fcnt_gap = max_fcnt_gap
        self._last: dict[str, int | None] = {}

    # -- frame counters -------------------------------------------------------------------

    def last_fcnt(self, dev: Device) -> int | None:
        if dev.state_key not in self._last:
            raw = self.state.get(dev.state_key)
            if raw is not None and len(raw) != 4:
                self.health.count("state_errors")
                self.log.warning("frame counter state of %s is corrupt; ignoring it", dev.name)
                raw = None
            self._last[dev.state_key] = None if raw is None else int.from_bytes(raw, "big")
        return self._last[dev.state_key]

    async def _store_fcnt(self, dev: Device, fcnt: int) -> None:
        self._last[dev.state_key] = fcnt
        try:
            # In a worker thread: the daemon's state store fsyncs each write (SD cards are slow).
            await asyncio.to_thread(self.state.set, dev.state_key, fcnt.to_bytes(4, "big"))
        except Exception as exc:  # noqa: BLE001 - a state failure is counted, the reading kept
            self.health.count("state_errors")
            self.log.warning("cannot persist frame counter of %s: %s", dev.name, exc)

    def _check_fcnt(self, dev: Device, frame: DataFrame) -> tuple[int | None, str]:
        """The accepted 32-bit FCnt, or None and the counter that says why not."""
        last = self.last_fcnt(dev)
        ahead = lorawan.fcnt_ahead(last, frame.fcnt16, self.max_fcnt_gap)
        if ahead is not None and lorawan.verify_mic(frame, dev.nwk_skey, ahead):
            return ahead, "ok"
        if last is None:
            return None, "mic_errors"
        behind = lorawan.fcnt_behind(last, frame.fcnt16)
        if behind is not None and lorawan.verify_mic(frame, dev.nwk_skey, behind):
            if behind == last:
                return None, "duplicates"
            if dev.cfg.fcnt_check == "relaxed" and behind <= self.max_fcnt_gap:
                self.health.device(dev.name).count("fcnt_resets")
                return behind, "ok"
            return None, "replays"
        far = last + ((frame.fcnt16 - last) & 0xFFFF)
        if far != ahead and far <= 0xFFFF_FFFF and lorawan.verify_mic(frame, dev.nwk_skey, far):
            return None, "fcnt_gaps"
        return None, "mic_errors"

    # -- packets -----------------------------------------------------------------------------

    async def lorawan(self, phy: bytes, radio: Radio, ts: int) -> Outcome:
        """Verify, count and decode one LoRaWAN PHYPayload (one call at a time)."""
        try:
            frame = lorawan.parse_data_frame(phy)
        except LorawanError as exc:
            self.health.count(exc.counter)
            return Outcome(exc.counter, str(exc))
        if not frame.uplink:
            self.health.count("downlinks")
            return Outcome("downlinks", "a downlink frame", frame=frame)
        dev = self.by_addr.get(frame.dev_addr)
        if dev is None:
            self.health.count("unknown_devaddr")
            self.log.debug("frame from unknown DevAddr %s", frame.dev_addr_hex)
            return Outcome("unknown_devaddr", f"DevAddr {frame.dev_addr_hex} is not configured",
                           frame=frame)
        fcnt, status = self._check_fcnt(dev, frame)
        if fcnt is None:
            detail = f"FCnt {frame.fcnt16} (16 bit) after {self.last_fcnt(dev)}: {status}"
            self.health.device(dev.name).failure(detail, status)
            return Outcome(status, detail, dev.name, frame)
        await self._store_fcnt(dev, fcnt)
        return self._accepted(dev, frame, fcnt, radio, ts)

    def _accepted(self, dev: Device, frame: DataFrame, fcnt: int, radio: Radio,
                  ts: int) -> Outcome:
        port = frame.fport
        payload = b""
        decoded = Decoded([])
        if port is not None and frame.frm_payload:
            key = dev.nwk_skey if port == 0 else dev.app_skey
            payload = lorawan.crypt_frm_payload(key, frame.frm_payload, dev_addr=frame.dev_addr,
                                                fcnt=fcnt)
        health = self.health.device(dev.name)
        if port is None or port in (0, _TEST_PORT):
            health.count("mac_frames" if port == 0 else "empty_frames")
        elif dev.cfg.fports and port not in dev.cfg.fports:
            health.count("ignored_fport")
        else:
            decoded = dev.decode(port, payload)
        readings = self._readings(dev, ts, fcnt, radio, decoded)
        if decoded.error:
            health.failure(f"payload on FPort {port}: {decoded.error}", "decode_errors")
        else:
            health.success()
        return Outcome("ok", "", dev.name, frame, fcnt, payload, decoded, readings)

    def raw(self, payload: bytes, radio: Radio, ts: int) -> Outcome:
        """Decode one application payload from a point-to-point module (no LoRaWAN)."""
        dev = self._match(payload)
        if dev is None:
            self.health.count("unknown_device")
            return Outcome("unknown_device", f"no device matches {payload[:4].hex()!r}")
        body = payload[len(dev.match):]
        decoded = dev.decode(None, body)
        health = self.health.device(dev.name)
        if decoded.error:
            health.failure(f"payload: {decoded.error}", "decode_errors")
        else:
            health.success()
        return Outcome("ok", "", dev.name, None, None, body, decoded,
                       self._readings(dev, ts, None, radio, decoded))

    def _match(self, payload: bytes) -> Device | None:
        hits = [d for d in self.devices if d.match and payload.startswith(d.match)]
        if hits:
            return max(hits, key=lambda d: len(d.match))
        bare = [d for d in self.devices if not d.match]
        return bare[0] if len(bare) == 1 else None

    def _readings(self, dev: Device, ts: int, fcnt: int | None, radio: Radio,
                  decoded: Decoded) -> list[Reading]:
        base = f"{self.instance}/{dev.name}/"
        out: list[Reading] = []
        if fcnt is not None:
            out.append(Reading(base + "fcnt", ts, fcnt))
        if radio.rssi is not None:
            out.append(Reading(base + "rssi", ts, radio.rssi, unit="dBm"))
        if radio.snr is not None:
            out.append(Reading(base + "snr", ts, radio.snr, unit="dB"))
        out += [Reading(base + p.name, ts, p.value, p.quality, p.unit) for p in decoded.points]
        if decoded.error:
            out.append(Reading(base + "payload", ts, None, Quality.MALFORMED))
        return out
