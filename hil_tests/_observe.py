"""What the platform sees: a verifying subscriber on the rig's broker, and the gateway's status.

Every behaviour is judged here, from the outside, as the platform would: signed batches are
verified (signature, order, duplicates, holes in the sequence), readings are kept with the
time they arrived, and the retained status message gives the drivers' health counters.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingest.subscriber import BatchSubscriber
from ingest.verify import Verifier

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from drivers.api import Reading

__all__ = ["Observer", "Seen"]


@dataclass(frozen=True, slots=True)
class Seen:
    """One verified reading and when it arrived (monotonic seconds)."""

    arrived: float
    seq: int
    epoch: int
    reading: Reading


class Observer:
    """Subscribes to ``<prefix>/+/batch`` and ``<prefix>/+/status`` and checks everything."""

    def __init__(self, host: str, port: int, prefix: str,
                 keys: dict[bytes, Ed25519PublicKey], *, origin: int | None = 1) -> None:
        self.verifier = Verifier(keys, origin=origin)
        self.seen: list[Seen] = []
        #: Batches that failed verification (forged, unknown key, malformed).
        self.rejected: list[str] = []
        #: Authentic batches that carried nothing new.
        self.resent = 0
        self.gateway_id = ""
        self.epochs: set[int] = set()
        self._status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.batches = BatchSubscriber(host, port, f"{prefix}/+/batch",
                                       client_id=f"streetgate-hil-{port}")
        self.status_sub = BatchSubscriber(host, port, f"{prefix}/+/status",
                                          on_message=self._on_status)

    def start(self) -> None:
        self.batches.start()
        self.status_sub.start()

    def stop(self) -> None:
        self.status_sub.stop()
        self.batches.stop()

    def _on_status(self, _topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if isinstance(doc, dict):
            with self._lock:
                self._status = doc

    @property
    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def pump(self) -> None:
        """Verify every batch received so far."""
        while True:
            try:
                _topic, payload = self.batches.messages.get_nowait()
            except queue.Empty:
                return
            res = self.verifier.feed(payload)
            if res.status in ("duplicate", "replay"):
                # Nothing new in it: a batch resent after a lost PUBACK or a crash (the same
                # bytes an attacker could replay); the verifier passes nothing on.
                self.resent += 1
                continue
            if res.rejected:
                self.rejected.append(f"{res.status}: {res.error}")
                continue
            now = time.monotonic()
            if res.epoch is not None:
                self.gateway_id = res.gateway_id
                self.epochs.add(res.epoch)
                self.seen.extend(Seen(now, seq, res.epoch, r) for seq, r in res.readings)

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        """Pump until ``cond()``; return the seconds it took; fail naming ``what``."""
        t0 = time.monotonic()
        while True:
            self.pump()
            if cond():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{what}: not seen within {timeout:g}s")
            time.sleep(0.05)

    def since(self, t0: float) -> list[Seen]:
        """Readings that arrived after monotonic time ``t0``."""
        self.pump()
        return [s for s in self.seen if s.arrived >= t0]

    def of(self, point: str, t0: float = 0.0) -> list[Reading]:
        return [s.reading for s in self.since(t0) if s.reading.point == point]

    def missing(self) -> list[tuple[int, int]]:
        """Sequence ranges neither delivered nor reported dropped, over every epoch."""
        self.pump()
        return [r for ep in sorted(self.epochs) for r in self.verifier.missing(self.gateway_id, ep)]

    def highest_seq(self) -> int:
        self.pump()
        return max((s.seq for s in self.seen), default=0)

    def health(self, instance: str, device: str) -> dict[str, int]:
        """A device's health counters from the latest status message."""
        view = self.status.get("drivers", {}).get(instance, {})
        dev = view.get("health", {}).get("devices", {}).get(device, {})
        return dict(dev.get("counters", {}))
