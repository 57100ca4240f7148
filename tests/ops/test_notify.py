"""sd_notify over a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.notify import (
    Liveness,
    Notifier,
    uplink_probe,
    watchdog_interval,
    watchdog_loop,
    worker_probe,
)
from tests.ops.fakes import FakeSystemd, fake_notify_socket

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_systemd() -> Iterator[tuple[FakeSystemd, str]]:
    with fake_notify_socket() as fake:
        yield fake


def test_messages_reach_the_socket(fake_systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = fake_systemd
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("up: 2 drivers")
    assert n.status("uplink connected;\nbuffer 0")
    assert n.watchdog()
    assert n.reloading()
    assert n.stopping()
    n.close()
    got = fake.wait(0.2)
    assert got[0] == {"READY": "1", "STATUS": "up: 2 drivers"}
    assert got[1] == {"STATUS": "uplink connected; buffer 0"}  # one line, always
    assert got[2] == {"WATCHDOG": "1"}
    assert got[3]["RELOADING"] == "1"
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_us - int(got[3]["MONOTONIC_USEC"]) < 5_000_000
    assert got[4] == {"STOPPING": "1"}
    assert n.sent == 5


def test_abstract_socket_name() -> None:
    name = f"sg-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        n.close()
        assert fake.wait(0.2) == [{"READY": "1"}]
    finally:
        fake.close()


def test_no_op_outside_systemd_and_when_nobody_listens(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.watchdog()  # a send error is counted, never raised
    gone.close()
    assert gone.failed == 1


def test_watchdog_interval_is_half_the_timeout_and_only_ours() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_liveness_goes_stale_and_recovers() -> None:
    now = [100.0]
    live = Liveness(clock=lambda: now[0])
    live.expect("store", within=30)
    live.expect("uplink", within=300)
    assert live()
    now[0] += 31
    assert not live()
    assert live.stale() == ["store silent for 31s"]
    live.beat("store")
    assert live()
    live.forget("uplink")
    now[0] += 29
    assert live()


def test_watchdog_loop_pings_only_while_healthy(fake_systemd: tuple[FakeSystemd, str]) -> None:
    async def scenario() -> None:
        fake, path = fake_systemd
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
        healthy = [True]
        task = asyncio.create_task(watchdog_loop(n, lambda: healthy[0],
                                                 why=lambda: ["store silent"]))
        try:
            await asyncio.sleep(0.3)
            healthy[0] = False
            await asyncio.sleep(0.4)
            healthy[0] = True
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            n.close()
        fake.wait(0.1)
        pings = fake.pings()
        statuses = [m["STATUS"] for _, m in fake.messages if "STATUS" in m]
        assert statuses == ["unhealthy: store silent"]  # said once, not every interval
        unhealthy_at = next(t for t, m in fake.messages if "STATUS" in m)
        before = [t for t in pings if t < unhealthy_at]
        after = [t for t in pings if t > unhealthy_at]
        assert len(before) >= 3
        # No ping for the whole unhealthy stretch, pings again afterwards.
        assert after
        assert after[0] - unhealthy_at > 0.3

    asyncio.run(scenario())


def test_watchdog_loop_returns_without_a_watchdog(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with asyncio.timeout(1):
            await watchdog_loop(Notifier({"NOTIFY_SOCKET": str(tmp_path / "x")}), lambda: True)
            await watchdog_loop(Notifier({"WATCHDOG_USEC": "100000"}), lambda: True)

    asyncio.run(scenario())


def test_uplink_probe_tolerates_outages_but_not_a_stuck_connect() -> None:
    async def scenario() -> None:
        live = Liveness()
        live.expect("uplink", within=0.25)
        state = ["disconnected"]
        task = asyncio.create_task(uplink_probe(live, lambda: state[0], connect_grace=0.15,
                                                period=0.02))
        try:
            await asyncio.sleep(0.4)  # broker down, backing off: healthy
            assert live()
            state[0] = "connecting"  # one attempt that never ends
            await asyncio.sleep(0.5)
            assert live.stale()
            state[0] = "connected"
            await asyncio.sleep(0.1)
            assert live()
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_worker_probe_notices_a_hung_worker_thread() -> None:
    async def scenario() -> None:
        live = Liveness()
        live.expect("store", within=0.3)
        pool = ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(worker_probe(
            live, lambda: loop.run_in_executor(pool, lambda: None), period=0.02))
        try:
            await asyncio.sleep(0.2)
            assert live()
            pool.submit(time.sleep, 0.8)  # an fsync that hangs on a dying SD card
            await asyncio.sleep(0.6)
            assert live.stale()
            await asyncio.sleep(0.5)
            assert live()
        finally:
            task.cancel()
            pool.shutdown(wait=True)

    asyncio.run(scenario())


_CHILD = textwrap.dedent("""
    import asyncio, sys, time
    from gateway.notify import Notifier, watchdog_loop

    async def main():
        n = Notifier()
        n.ready()
        asyncio.get_running_loop().create_task(watchdog_loop(n, lambda: True))
        await asyncio.sleep(0.6)
        if sys.argv[1] == "block":
            time.sleep(30)  # a blocking call on the event loop: the loop is stuck
        await asyncio.sleep(30)

    asyncio.run(main())
""")


def _run_under_fake_watchdog(fake: FakeSystemd, path: str, mode: str,
                             timeout: float, watch_for: float) -> tuple[int | None, float | None]:
    """Start a child, kill it with SIGABRT when pings stop for ``timeout`` (as systemd does)."""
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(int(timeout * 1e6)),
           "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, mode], env=env)
    killed_at = None
    try:
        start = time.monotonic()
        while time.monotonic() - start < watch_for:
            time.sleep(0.05)
            pings = fake.pings()
            last = pings[-1] if pings else start
            if time.monotonic() - last > timeout + 0.5:  # generous for a loaded CI machine
                killed_at = time.monotonic()
                child.send_signal(signal.SIGABRT)
                break
        return (child.wait(5) if killed_at else None), (killed_at - last if killed_at else None)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_blocked_event_loop_stops_the_pings_and_gets_killed(
        fake_systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = fake_systemd
    rc, silent_for = _run_under_fake_watchdog(fake, path, "block", timeout=0.4, watch_for=6)
    assert {"READY": "1"} in [m for _, m in fake.messages]
    assert len(fake.pings()) >= 2  # pinged while the loop ran
    assert rc == -signal.SIGABRT, "the stuck process was not killed by the watchdog"
    assert silent_for is not None
    assert silent_for < 0.4 + 1.0


def test_a_running_event_loop_keeps_pinging(fake_systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = fake_systemd
    rc, _ = _run_under_fake_watchdog(fake, path, "run", timeout=0.4, watch_for=2)
    assert rc is None, "a healthy process was killed"
    pings = fake.pings()
    assert len(pings) >= 6
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.4
