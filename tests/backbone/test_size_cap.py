"""The buffer hits its cap during an outage: oldest dropped, the gap arrives upstream."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.broker import Mosquitto
from tests.helpers.e2e import running_gateway


def test_cap_during_outage_drops_oldest_and_reports_gap(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()

    async def scenario() -> None:
        drivers = {"sim": [{"instance": "cap", "devices": 10, "interval": "10ms", "seed": 3}]}
        async with running_gateway(drivers, broker, tmp_path / "state",
                                   buffer={"max_size": "96KiB", "commit_window": "20ms"}) as run:
            await run.collect_until(lambda rs: len(rs) > 50, timeout=10)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(6.0)
            stats = await run.gateway.buffer_stats()
            assert stats.dropped > 0, "the cap should have been hit"
            assert stats.file_bytes < 400 * 1024
            await asyncio.to_thread(broker.start)
            result = await run.drain(timeout=30)
            gw = run.gateway
            assert not run.task.done(), "the daemon kept running"
        produced = gw.counters["produced"]
        dropped = sum(g.count for g in result.gaps)
        assert dropped > 0, "the gap record must travel upstream"
        assert len(result.seqs) + dropped == produced
        assert len(set(result.seqs)) == len(result.seqs)
        # the dropped readings are the oldest of the outage: every gap lies below what survived
        first_kept_after = min(s for s in result.seqs if s > max(g.last_seq for g in result.gaps))
        assert all(g.last_seq < first_kept_after for g in result.gaps)
        covered = {s for g in result.gaps for s in range(g.first_seq, g.last_seq + 1)}
        assert not covered & set(result.seqs)

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
