"""Run the real daemon in-process against a real broker and a verifying subscriber.

Driver tests use :func:`deliver`: give it the ``[[drivers.<name>]]`` tables (as dicts) and a
predicate over the verified readings; it returns once the predicate holds or times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.api import Reading
from gateway.broker import Mosquitto
from gateway.config import parse_config
from gateway.cose import kid_for
from gateway.daemon import Gateway
from ingest.subscriber import BatchSubscriber
from ingest.verify import Verifier
from provisioning.keys import load_or_create_signing_key

__all__ = ["E2EResult", "Run", "deliver", "gateway_config", "running_gateway"]


@dataclass
class E2EResult:
    readings: list[Reading] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    duplicates: int = 0
    gaps: list[Any] = field(default_factory=list)
    unchanged: list[Any] = field(default_factory=list)
    heartbeats: dict[str, int] = field(default_factory=dict)
    gateway: Gateway | None = None
    health: dict[str, Any] = field(default_factory=dict)

    def points(self) -> set[str]:
        return {r.point for r in self.readings}


def gateway_config(state_dir: Path, port: int, drivers: dict[str, list[dict[str, Any]]],
                   **sections: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {
        "gateway": {"id": "cab-test", "state_dir": str(state_dir)},
        "buffer": {"commit_window": "50ms"},
        "uplink": {"port": port, "batch_linger": "100ms", "reconnect_min": "100ms",
                   "reconnect_max": "1s"},
        "drivers": drivers,
    }
    for name, values in sections.items():
        if isinstance(values, list):  # an array of tables ([[report]])
            raw[name] = values
        else:
            raw.setdefault(name, {}).update(values)
    return parse_config(raw, file="test.toml")


class Run:
    """A running gateway plus its verifying subscriber."""

    def __init__(self, gw: Gateway, verifier: Verifier, sub: BatchSubscriber,
                 task: asyncio.Task[int]) -> None:
        self.gateway = gw
        self.verifier = verifier
        self.sub = sub
        self.task = task
        self.result = E2EResult(gateway=gw)

    def pump(self) -> int:
        """Verify every message received so far; returns how many."""
        n = 0
        while True:
            try:
                _topic, payload = self.sub.messages.get_nowait()
            except queue.Empty:
                return n
            n += 1
            res = self.verifier.feed(payload)
            self.result.statuses.append(res.status)
            self.result.duplicates += res.duplicates
            self.result.gaps.extend(res.gaps)
            if res.unchanged is not None:
                self.result.unchanged.append(res.unchanged)
            self.result.heartbeats.update(res.heartbeats)
            for seq, reading in res.readings:
                self.result.seqs.append(seq)
                self.result.readings.append(reading)

    async def collect_until(self, until: Callable[[list[Reading]], bool],
                            timeout: float = 20.0) -> E2EResult:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if until(self.result.readings):
                self.result.health = self.gateway.status()["drivers"]
                return self.result
            if time.monotonic() > deadline:
                msg = f"timed out after {timeout}s with {len(self.result.readings)} readings"
                raise TimeoutError(msg)
            if self.task.done():
                self.task.result()
                raise RuntimeError("gateway stopped early")
            await asyncio.sleep(0.02)

    async def drain(self, timeout: float = 30.0) -> E2EResult:
        """Stop the drivers, wait until every produced reading is verified."""
        await self.gateway.stop_drivers()
        await self.gateway.wait_drained(timeout)
        produced = self.gateway.counters["produced"]

        def done(rs: list[Reading]) -> bool:
            return len(rs) + sum(g.count for g in self.result.gaps) >= produced

        return await self.collect_until(done, timeout)


@contextlib.asynccontextmanager
async def running_gateway(
    drivers: dict[str, list[dict[str, Any]]],
    broker: Mosquitto,
    state_dir: Path,
    **sections: dict[str, Any],
) -> AsyncIterator[Run]:
    cfg = gateway_config(state_dir, broker.port, drivers, **sections)
    key = load_or_create_signing_key(cfg.gateway.path(cfg.gateway.signing_key))
    verifier = Verifier({kid_for(key.public_key()): key.public_key()})
    sub = BatchSubscriber(broker.host, broker.port, f"{cfg.uplink.topic_prefix}/+/batch",
                          client_id=f"verifier-{broker.port}")
    sub.start()
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    try:
        await gw.ready.wait()
        yield Run(gw, verifier, sub, task)
    finally:
        gw.stop()
        await task
        sub.stop()


async def deliver(
    drivers: dict[str, list[dict[str, Any]]],
    broker: Mosquitto,
    state_dir: Path,
    *,
    until: Callable[[list[Reading]], bool],
    timeout: float = 20.0,
    **sections: dict[str, Any],
) -> E2EResult:
    """Run the gateway until ``until(verified readings)`` is true; raise on timeout."""
    async with running_gateway(drivers, broker, state_dir, **sections) as run:
        return await run.collect_until(until, timeout)
