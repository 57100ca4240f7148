"""The real daemon as a systemd service: sd_notify, the status file, an unsynchronized clock."""

from __future__ import annotations

import asyncio
import itertools
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FLOOR_MS, K_CLOCK
from gateway.notify import worker_probe
from gateway.status import read_status, render
from tests.helpers.e2e import Run, running_gateway
from tests.helpers.mosquitto import Mosquitto
from tests.ops.fakes import fake_notify_socket

HOUR_MS = 3_600_000
SIM = {"sim": [{"instance": "s1", "devices": 1, "interval": "20ms"}]}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Batches:
    """Feeds every received message to the verifier, keeping readings and clock spans."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.readings: dict[int, tuple[int, int]] = {}  # seq -> (ts, received_ms)
        self.spans: list[list[Any]] = []

    def pump(self) -> None:
        while True:
            try:
                _topic, payload = self.run.sub.messages.get_nowait()
            except queue.Empty:
                return
            res = self.run.verifier.feed(payload)
            self.spans.extend(res.extra.get(K_CLOCK, []))
            for seq, r in res.readings:
                self.readings[seq] = (r.ts, _now_ms())

    async def until(self, cond: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "timed out"
            self.pump()
            await asyncio.sleep(0.05)


def test_daemon_under_an_unsynchronized_clock(tmp_path: Path, mosquitto: Mosquitto,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clock = tmp_path / "fake-clock"
    clock.write_text(f"unsynced:{-2 * HOUR_MS}")  # two hours behind, as after a power cut
    status = tmp_path / "run" / "status.json"
    monkeypatch.setenv("STREETGATE_FAKE_CLOCK", str(clock))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    started_ms = _now_ms()

    async def scenario(path: str) -> tuple[Batches, dict[str, Any], str]:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        async with running_gateway(SIM, mosquitto, tmp_path / "state",
                                   gateway={"status_socket": str(status)}) as run:
            got = Batches(run)
            await got.until(lambda: len(got.readings) >= 20)
            unsynced_doc = read_status(status)
            text = render(unsynced_doc)
            clock.write_text("synced")
            await got.until(lambda: any(isinstance(s[2], int) for s in got.spans))
            mark = max(got.readings)
            await got.until(lambda: max(got.readings) > mark + 20)
        return got, unsynced_doc, text

    with fake_notify_socket() as (fake, path):
        got, doc, text = asyncio.run(scenario(path))
        messages = fake.wait(0.1)

    # sd_notify: READY, watchdog pings while running, a one-line STATUS, STOPPING at the end.
    assert {"READY": "1"} in messages
    assert len(fake.pings()) >= 2
    assert any("clock NOT synchronized" in m.get("STATUS", "") for m in messages)
    assert {"STOPPING": "1"} in messages
    # The status file and its rendering while the clock was not synchronized.
    assert doc["gateway"] == "cab-test"
    assert doc["clock"]["synced"] is False
    assert doc["drivers"]["s1"]["ok"]
    assert "clock    NOT SYNCHRONIZED" in text
    assert read_status(status)["state"] == "offline"

    # Readings stamped unsynced are marked, then corrected; none is stamped 1970 or ahead.
    [offset] = {s[2] for s in got.spans if isinstance(s[2], int)}
    assert abs(offset - 2 * HOUR_MS) < 1000
    lo, hi, _ = next(s for s in got.spans if s[2] == offset)
    for seq, (ts, received) in got.readings.items():
        assert FLOOR_MS <= ts <= received
        true_ts = ts + offset if lo <= seq <= hi else ts
        assert started_ms - 1000 <= true_ts <= received, (seq, ts, lo, hi)
    assert any(seq > hi for seq in got.readings)  # stamped after the sync: not marked


def test_watchdog_stops_pinging_when_the_store_worker_hangs(
        tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")

    async def scenario(path: str) -> float:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        async with running_gateway(SIM, mosquitto, tmp_path / "state") as run:
            gw = run.gateway
            # The shipped probe asks every 10 s and allows 120 s; a quicker one for the test.
            gw.liveness.expect("store-fast", 0.5)
            probe = asyncio.create_task(worker_probe(
                gw.liveness, lambda: gw._io_call(lambda: None), name="store-fast", period=0.05))
            await asyncio.sleep(0.5)
            hung_at = time.monotonic()
            gw._io.submit(time.sleep, 1.5)  # the SD card stops answering an fsync
            await asyncio.sleep(2.5)
            probe.cancel()
        return hung_at

    with fake_notify_socket() as (fake, path):
        hung_at = asyncio.run(scenario(path))
        fake.wait(0.1)
    pings = fake.pings()
    assert any(t < hung_at for t in pings)
    statuses = [m["STATUS"] for _t, m in fake.messages if "STATUS" in m]
    assert any(s.startswith("unhealthy: store-fast silent for") for s in statuses), statuses
    # Silent for longer than the 0.2 s timeout (systemd would have restarted the gateway),
    # then pinging again once the worker answered.
    gaps = [b - a for a, b in itertools.pairwise(pings) if a >= hung_at - 0.2]
    assert max(gaps) > 0.5
    assert pings[-1] > hung_at + 1.5
