"""``streetgate demo``: simulated devices → gateway → private broker → verifying subscriber
(and with ``ingest=True`` an ingest worker storing into SQLite in the demo's directory)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.broker import Mosquitto
from gateway.config import Config, parse_config
from gateway.cose import kid_for
from gateway.daemon import Gateway
from provisioning._files import write_public
from provisioning.keys import load_or_create_signing_key, public_key_pem

if TYPE_CHECKING:
    # The demo plays the platform side too; that code lives in the ingest package.
    from ingest.subscriber import BatchSubscriber
    from ingest.verify import Verifier

__all__ = ["DemoSummary", "demo_config", "run_demo"]

GATEWAY_ID = "cab-demo"
LAMP = "lamps/dev-000/light"


@dataclass
class DemoSummary:
    produced: int = 0
    delivered: int = 0
    verified: int = 0
    duplicates: int = 0
    lost: int = 0
    batches: int = 0
    rejected: int = 0
    wire_bytes: int = 0
    outage_s: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    #: The ingest's completeness report for the demo gateway (``ingest=True`` only).
    ingest: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        bpr = self.wire_bytes / self.verified if self.verified else None
        return {"produced": self.produced, "delivered": self.delivered,
                "verified": self.verified, "duplicates": self.duplicates, "lost": self.lost,
                "batches": self.batches, "rejected": self.rejected,
                "wire_bytes_per_reading": round(bpr, 2) if bpr else None,
                "outage_s": self.outage_s, "seconds": self.seconds,
                "commands": self.commands,
                **({"ingest": self.ingest} if self.ingest is not None else {})}


def demo_config(state_dir: Path, port: int, *, devices: int = 10,
                interval: str = "100ms") -> Config:
    raw = {
        "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir)},
        "buffer": {"commit_window": "100ms"},
        "uplink": {"host": "127.0.0.1", "port": port, "batch_linger": "1s",
                   "reconnect_min": "200ms", "reconnect_max": "2s", "status_interval": "5s"},
        "drivers": {"sim": [
            {"instance": "demo", "devices": devices, "interval": interval},
            {"instance": "lamps", "devices": 1, "counters": 0, "sines": 0, "walks": 0,
             "switches": 0, "lights": 1, "interval": "500ms"}]},
        "commands": {"keys": ["keys/platform-command.pub"],
                     "writable": [{"point": LAMP, "min": 0, "max": 100, "step": 1,
                                   "min_interval": "0s"}]},
    }
    return parse_config(raw, file="demo.toml")


class _Receiver:
    """Feeds every received message to the verifier; prints what it verified."""

    def __init__(self, verifier: Verifier, out: TextIO | None, save: Path | None) -> None:
        self.verifier = verifier
        self.out = out
        self.save = save
        self.summary = DemoSummary()
        self.count = 0

    def handle(self, payload: bytes) -> None:
        self.count += 1
        if self.save is not None:
            (self.save / f"{self.count:06d}.cose").write_bytes(payload)
        res = self.verifier.feed(payload)
        s = self.summary
        s.wire_bytes += len(payload)
        s.duplicates += res.duplicates
        if not res.authentic:
            s.rejected += 1
            self._print(f"batch #{self.count}: REJECTED ({res.status}: {res.error})")
            return
        if res.status != "ok":
            # A resend after a lost PUBACK, or a QoS 1 redelivery: authentic, nothing new.
            self._print(f"batch #{self.count}: {res.status}, "
                        f"{res.duplicates} duplicate reading(s) dropped")
            return
        s.batches += 1
        s.verified += len(res.readings)
        self._show(res)

    def _show(self, res: Any) -> None:
        if self.out is None or not res.readings:
            return
        seqs = [seq for seq, _ in res.readings]
        latest: dict[str, Any] = {}
        for _seq, r in res.readings:
            latest[r.point] = r
        self._print(f"batch {res.batch_seq}: verified {len(res.readings)} readings "
                    f"(seq {min(seqs)}-{max(seqs)}), {res.duplicates} duplicate(s) dropped")
        for r in list(latest.values())[:3]:
            unit = f" {r.unit}" if r.unit else ""
            self._print(f"    {r.point} = {r.value!r}{unit}")

    def _print(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)


async def run_demo(seconds: float = 20.0, *, outage: float | None = None,
                   save_dir: Path | None = None, out: TextIO | None = sys.stdout,
                   ingest: bool = False) -> DemoSummary:
    """Run the whole path for ``seconds``, cut the broker for ``outage`` seconds midway;
    ``ingest``: also store every batch with an ingest worker (SQLite in the demo's directory)
    and put its completeness report in the summary."""
    if outage is None:
        outage = 3.0 if seconds >= 12 else 0.0
    with tempfile.TemporaryDirectory(prefix="streetgate-demo-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker", persistence=True)
        broker.start()
        try:
            return await _run(work, broker, seconds=seconds, outage=outage,
                              save_dir=save_dir, out=out, ingest=ingest)
        finally:
            broker.stop()


async def _run(work: Path, broker: Mosquitto, *, seconds: float, outage: float,
               save_dir: Path | None, out: TextIO | None, ingest: bool) -> DemoSummary:
    cfg = demo_config(work / "state", broker.port)
    key = load_or_create_signing_key(cfg.gateway.path(cfg.gateway.signing_key))
    platform = load_or_create_signing_key(work / "platform-command.key")
    write_public(cfg.gateway.path("keys/platform-command.pub"),
                 public_key_pem(platform.public_key()).encode())
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the run
        (save_dir / "public.pem").write_text(public_key_pem(key.public_key()))
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415
    from ingest.verify import Verifier  # noqa: PLC0415

    receiver = _Receiver(Verifier({kid_for(key.public_key()): key.public_key()}), out, save_dir)
    sub = BatchSubscriber(broker.host, broker.port, f"{cfg.uplink.topic_prefix}/+/batch",
                          client_id="streetgate-demo-verifier")
    sub.start()
    store = await asyncio.to_thread(_DemoIngest, work, broker, key.public_key()) if ingest \
        else None
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run(), name="streetgate.demo.gateway")
    started = time.monotonic()
    pump = asyncio.create_task(_pump(sub, receiver), name="streetgate.demo.pump")
    try:
        await _timeline(broker, seconds, outage, receiver)
        await _commands(broker, platform, key.public_key(), receiver, work)
        await gw.stop_drivers()
        await gw.wait_drained(timeout=60.0)
        produced = gw.counters["produced"]
        deadline = time.monotonic() + 15.0
        while receiver.summary.verified < produced and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        s = receiver.summary
        s.produced = produced
        s.delivered = gw.counters["delivered"]
        s.lost = max(0, produced - s.verified)
        s.outage_s = outage
        if store is not None:
            s.ingest = await asyncio.to_thread(store.report, produced, 15.0)
        s.seconds = round(time.monotonic() - started, 1)
    finally:
        gw.stop()
        await task
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        sub.stop()
        if store is not None:
            await asyncio.to_thread(store.close)
    return receiver.summary


class _DemoIngest:
    """``streetgate ingest run`` in-process: a worker thread storing into SQLite."""

    def __init__(self, work: Path, broker: Mosquitto, public_key: Any) -> None:
        from ingest._db import open_database  # noqa: PLC0415
        from ingest.service import IngestWorker, WorkerOptions  # noqa: PLC0415

        self.db = open_database(f"sqlite:///{work / 'ingest.db'}")
        # A named session: the broker keeps what arrives during the outage for it.
        self.worker = IngestWorker(self.db, WorkerOptions(
            host=broker.host, port=broker.port, client_id="streetgate-demo-ingest"))
        self.worker.store.add_key(public_key, GATEWAY_ID)
        self.worker.start()
        self.thread = threading.Thread(target=self.worker.run, name="streetgate.demo.ingest",
                                       daemon=True)
        self.thread.start()

    def report(self, produced: int, timeout: float) -> dict[str, Any]:
        """The completeness report, once every reading produced is stored (or ``timeout``)."""
        from ingest.query import completeness  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        report = completeness(self.db, GATEWAY_ID)
        while sum(e["received"] for e in report["epochs"]) < produced \
                and time.monotonic() < deadline:
            time.sleep(0.1)
            report = completeness(self.db, GATEWAY_ID)
        return report

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(10)
        self.worker.close()
        self.db.close()


async def _timeline(broker: Mosquitto, seconds: float, outage: float, rx: _Receiver) -> None:
    if outage <= 0:
        await asyncio.sleep(seconds)
        return
    before = max(0.0, (seconds - outage) / 2)
    await asyncio.sleep(before)
    rx._print(f"--- cutting the network: broker stopped for {outage:.0f}s ---")  # noqa: SLF001
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(outage)
    await asyncio.to_thread(broker.start)
    rx._print("--- broker back: draining the buffer ---")  # noqa: SLF001
    await asyncio.sleep(max(0.0, seconds - outage - before))


async def _commands(broker: Mosquitto, platform: Any, gateway_key: Any, rx: _Receiver,
                    work: Path) -> None:
    """Switch a street light on and off by signed command; then try a forged one."""
    from gateway.command import Command  # noqa: PLC0415
    from gateway.command_cli import send_command  # noqa: PLC0415

    forger = load_or_create_signing_key(work / "forged.key")
    keys = {kid_for(gateway_key): gateway_key}
    for what, value, signer in (("switch the light on", 100, platform),
                                ("switch the light off", 0, platform),
                                ("a forged command (signed by an unknown key)", 100, forger)):
        now = time.time_ns() // 1_000_000
        cmd = Command(GATEWAY_ID, uuid.uuid4().hex, now, now + 30_000, point=LAMP, value=value)
        rx._print(f"--- command: {what}: {LAMP} = {value} ---")  # noqa: SLF001
        _m, final, _seen = await asyncio.to_thread(
            send_command, cmd, signer, host=broker.host, port=broker.port, wait=15.0,
            gateway_keys=keys)
        if final is None:
            line = "no result within 15 s"
        else:
            why = f" ({final.reason}: {final.detail})" if final.reason else ""
            back = f", the light reads back {final.value!r}" if final.status == "done" else ""
            line = f"{final.status}{why}{back}"
        rx.summary.commands.append(f"{LAMP} = {value}: {line}")
        rx._print(f"    result, signed by the gateway: {line}")  # noqa: SLF001


async def _pump(sub: BatchSubscriber, rx: _Receiver) -> None:
    while True:
        try:
            _topic, payload = sub.messages.get_nowait()
        except queue.Empty:
            await asyncio.sleep(0.02)
            continue
        rx.handle(payload)
