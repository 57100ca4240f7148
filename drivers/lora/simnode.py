"""A simulated end device's receive side: it checks, decrypts and obeys downlinks.

Like a real ABP device it accepts a downlink only with its own DevAddr, a valid MIC (NwkSKey,
downlink B0) and an FCntDown above the last one it accepted (LoRaWAN 1.0.3 §4.3.1.5, §4.4);
the FRMPayload is decrypted with AppSKey (§4.3.3). A value changes its state, which its
next uplinks report, and a confirmed downlink sets FCtrl.ACK on its next uplink (§4.3.1.2).
"""

from __future__ import annotations

import collections

from drivers.api import Value
from drivers.lora import downlink, lorawan
from drivers.lora.config import DeviceConfig
from drivers.lora.lorawan import LorawanError

__all__ = ["SimNode"]


class SimNode:
    """One simulated device's downlink state."""

    def __init__(self, cfg: DeviceConfig) -> None:
        if not (cfg.dev_addr and cfg.nwk_skey and cfg.app_skey):
            raise ValueError(f"device {cfg.name} has no LoRaWAN session")
        self.cfg = cfg
        self.name = cfg.name
        self.dev_addr = int(cfg.dev_addr, 16)
        self.nwk_skey = bytes.fromhex(cfg.nwk_skey)
        self.app_skey = bytes.fromhex(cfg.app_skey)
        #: The last FCntDown accepted (None: no downlink yet in this session).
        self.fcnt_down: int | None = None
        #: What the device's writable points are set to; reported in its uplinks.
        self.state: dict[str, Value] = {d.name: False if d.type == "bool" else 0
                                        for d in cfg.downlinks}
        self.ack_pending = False
        self.counters: collections.Counter[str] = collections.Counter()

    def take_ack(self) -> bool:
        """Whether the next uplink carries FCtrl.ACK (once per confirmed downlink)."""
        ack, self.ack_pending = self.ack_pending, False
        return ack

    def receive(self, phy: bytes) -> str | None:
        """Handle one downlink on the air; a line saying what happened, None if not ours."""
        try:
            frame = lorawan.parse_data_frame(phy)
        except LorawanError:
            return None
        if frame.uplink or frame.dev_addr != self.dev_addr:
            return None
        fcnt = lorawan.fcnt_ahead(self.fcnt_down, frame.fcnt16)
        if fcnt is None:
            self.counters["fcnt_errors"] += 1
            return (f"{self.name}: refused downlink FCntDown {frame.fcnt16} (16 bit): not "
                    f"above {self.fcnt_down}")
        if not lorawan.verify_mic(frame, self.nwk_skey, fcnt):
            self.counters["mic_errors"] += 1
            return f"{self.name}: refused downlink FCntDown {fcnt}: MIC does not match"
        self.fcnt_down = fcnt
        self.counters["downlinks"] += 1
        if frame.confirmed:
            self.ack_pending = True
        kind = "confirmed" if frame.confirmed else "unconfirmed"
        head = f"{self.name}: {kind} downlink FCntDown {fcnt} FPort {frame.fport}"
        if frame.fport is None or frame.fport == 0:
            return f"{head}: no application payload"
        payload = lorawan.crypt_frm_payload(self.app_skey, frame.frm_payload,
                                            dev_addr=self.dev_addr, fcnt=fcnt, uplink=False)
        return f"{head} payload {payload.hex()}: {self._apply(frame.fport, payload)}"

    def _apply(self, fport: int, payload: bytes) -> str:
        for cfg in self.cfg.downlinks:
            if cfg.fport != fport:
                continue
            try:
                value = downlink.decode_value(cfg, payload)
            except ValueError:
                continue
            old, self.state[cfg.name] = self.state.get(cfg.name), value
            self.counters["applied"] += 1
            return f"{cfg.name} {old!r} -> {value!r}"
        self.counters["unknown_payloads"] += 1
        return "not a command this device knows"
