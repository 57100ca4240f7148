"""Readings the wire cannot carry as they are (a float timestamp, an unknown quality, text
that is not UTF-8, a value larger than the broker takes) travel as MALFORMED readings: they
never stop the daemon, and never block what comes after them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from drivers.api import Quality, Reading
from gateway.broker import Mosquitto
from tests.helpers.e2e import running_gateway

SIM = {"sim": [{"instance": "p", "devices": 2, "interval": "50ms", "seed": 5}]}
BAD = {
    "float-ts": lambda now: Reading("p/dev/x", time.time() * 1000, 1.5, Quality.GOOD, "V"),
    "quality-8": lambda now: Reading("p/dev/x", now, None, 8, "V"),  # type: ignore[arg-type]
    "surrogate": lambda now: Reading("p/dev/x", now, b"\xff".decode("utf-8", "surrogateescape")),
    "huge-value": lambda now: Reading("p/dev/x", now, "z" * 6000),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_reading_the_wire_cannot_carry_travels_as_malformed(tmp_path: Path, kind: str) -> None:
    async def scenario(broker: Mosquitto) -> None:
        async with running_gateway(SIM, broker, tmp_path / "s",
                                   uplink={"batch_linger": "100ms"}) as run:
            await run.collect_until(lambda rs: len(rs) > 20)
            run.gateway.emit([BAD[kind](run.gateway.clock.now_ms())])
            await asyncio.sleep(1.0)
            assert not run.task.done(), "the daemon must keep running"
            result = await run.drain(timeout=20)
        odd = [r for r in result.readings if r.point == "p/dev/x"]
        assert len(odd) == 1
        (reading,) = odd
        if kind in ("float-ts", "huge-value") or reading.quality != Quality.GOOD:
            assert reading.quality == Quality.MALFORMED
            assert reading.value is None
        assert len(result.seqs) == run.gateway.counters["produced"]
        assert sorted(result.seqs) == list(range(1, len(result.seqs) + 1)), "nothing blocked"

    with Mosquitto(tmp_path / "broker", extra="max_packet_size 5000") as broker:
        asyncio.run(scenario(broker))
