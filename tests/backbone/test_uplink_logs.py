"""A broker that stays away, or a link that flaps, warns once (STYLE §8)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.broker import Mosquitto, free_port
from gateway.daemon import Gateway
from tests.helpers.e2e import gateway_config

SIM = {"sim": [{"instance": "w", "devices": 1, "interval": "100ms"}]}


def test_refused_connections_warn_once_and_recovery_is_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    broker = Mosquitto(tmp_path / "broker", port=port)

    async def scenario() -> None:
        gw = Gateway(gateway_config(tmp_path / "s", port, SIM,
                                    uplink={"reconnect_min": "50ms", "reconnect_max": "100ms"}))
        task = asyncio.create_task(gw.run())
        await asyncio.sleep(2.0)
        assert gw.uplink is not None
        assert gw.uplink.counters["failures"] >= 5
        await asyncio.to_thread(broker.start)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if gw.uplink.connected:
                break
        gw.stop()
        await task

    caplog.set_level(logging.DEBUG, logger="streetgate.uplink")
    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
    records = [r for r in caplog.records if r.name == "streetgate.uplink"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "connection refused" in warnings[0].getMessage()
    recovered = [r for r in records if r.levelno == logging.INFO and "after:" in r.getMessage()]
    assert len(recovered) == 1
