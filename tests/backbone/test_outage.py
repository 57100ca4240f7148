"""Broker outages: readings pile up in the buffer and all arrive, once, after reconnect."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.broker import Mosquitto
from tests.helpers.e2e import running_gateway


def test_broker_outage_of_ten_seconds_loses_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()

    async def scenario() -> None:
        drivers = {"sim": [{"instance": "s", "devices": 5, "interval": "50ms", "seed": 7}]}
        async with running_gateway(drivers, broker, tmp_path / "state") as run:
            await run.collect_until(lambda rs: len(rs) >= 100, timeout=10)
            await asyncio.to_thread(broker.stop)
            t_cut = time.monotonic()
            await asyncio.sleep(10.5)
            before = len(run.result.readings)
            assert run.gateway.uplink is not None
            assert not run.gateway.uplink.connected
            stats = await run.gateway.buffer_stats()
            assert stats.depth > 500, "readings should pile up in the buffer during the outage"
            await asyncio.to_thread(broker.start)
            await asyncio.sleep(1.0)
            result = await run.drain(timeout=30)
            assert time.monotonic() - t_cut > 10
        produced = run.gateway.counters["produced"]
        seqs = result.seqs
        assert len(result.readings) > before
        assert len(seqs) == len(set(seqs)), "a reading was delivered twice after dedup"
        assert len(seqs) == produced
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs))), "a hole in seqs"
        by_point: dict[str, list[tuple[int, int]]] = {}
        for r in result.readings:
            if r.point.endswith("/energy"):
                by_point.setdefault(r.point, []).append((r.ts, int(r.value)))  # type: ignore[arg-type]
        assert len(by_point) == 5
        for series in by_point.values():
            series.sort()
            values = [v for _, v in series]
            assert values == sorted(values), "counter went backwards: readings reordered or lost"
        assert run.gateway.uplink.counters["connects"] >= 2

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_after_a_long_outage_the_buffer_flows_within_seconds_of_the_broker_return(
        tmp_path: Path) -> None:
    """With the default reconnect settings the gateway finds the broker back within its
    backoff cap (4 s, plus half of reconnect_min): the readings buffered during a 15 s outage
    start arriving a few seconds after the broker returns, not a minute later."""
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()

    async def scenario() -> None:
        drivers = {"sim": [{"instance": "s", "devices": 2, "interval": "100ms", "seed": 7}]}
        defaults = {"reconnect_min": "1s", "reconnect_max": "4s"}
        async with running_gateway(drivers, broker, tmp_path / "state",
                                   uplink=defaults) as run:
            await run.collect_until(lambda rs: len(rs) >= 20, timeout=10)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(15.0)
            gw = run.gateway
            delivered = gw.counters["delivered"]
            await asyncio.to_thread(broker.start)
            back = time.monotonic()
            # The broker's PUBACK is the measure (the test's own subscriber reconnects with
            # paho's backoff, which is not the gateway's).
            while gw.counters["delivered"] == delivered and time.monotonic() - back < 20:
                await asyncio.sleep(0.05)
            waited = time.monotonic() - back
            # Cap 4 s + 0.5 s, the connect, one batch: 6.5 s is the bound with room to spare.
            assert waited < 6.5, f"first buffered reading {waited:.1f}s after the broker returned"

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
