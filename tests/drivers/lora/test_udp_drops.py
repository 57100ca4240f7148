"""The forwarder's UDP socket: kernel receive drops in health and status, and ``rcvbuf``.

Real sockets on loopback: the test floods the driver's port while the event loop (the
driver's reader) is busy, so the kernel really drops datagrams from a tiny receive buffer.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from drivers._udp import rmem_max
from drivers.lora import LoraForwarderDriver, gwmp
from drivers.lora.sim import demo_devices, free_udp_port, uplink_for
from gateway.status import build_status, render
from tests.drivers.lora.conftest import RecordingSink, StoreState, context, running, wait_for

FLOOD = 20_000
EUI = "AA555A0000000001"


def effective(asked: int) -> int:
    """SO_RCVBUF as Linux applies it (socket(7)): capped at rmem_max, then doubled."""
    cap = rmem_max()
    assert cap is not None
    return 2 * min(asked, cap)


def kernel_drops(port: int) -> int:
    """The ``drops`` column of the socket bound to 127.0.0.1:port, read here independently."""
    local = f"0100007F:{port:04X}"  # proc(5): address and port in hex, little-endian IPv4
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == local:
            return int(cols[-1])
    raise AssertionError(f"no /proc/net/udp line for 127.0.0.1:{port}")


def driver_for(state: StoreState, **extra: Any) -> tuple[LoraForwarderDriver, int]:
    port = free_udp_port()
    tables = demo_devices(1, random_keys=True)
    cfg = LoraForwarderDriver.parse_config({"port": port, "devices": tables, **extra},
                                           file="test", path="drivers.lora_forwarder[0]")
    return LoraForwarderDriver(cfg, context("lora", state)), port


def test_flood_shows_as_udp_drops_degraded_health_and_status(state: StoreState) -> None:
    async def go() -> None:
        driver, port = driver_for(state, rcvbuf=4096)
        sink = RecordingSink()
        async with running(driver, sink):
            await wait_for(lambda: driver.bound is not None)
            counters = driver.health.counters
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.connect(("127.0.0.1", port))
                # Sent without yielding: the driver cannot read until the burst is over.
                for i in range(FLOOD):
                    tx.send(b"junk %d" % i)
                await wait_for(lambda: counters.get("datagrams", 0)
                               + counters.get("udp_drops", 0) == FLOOD, timeout=10)
                assert counters["udp_drops"] > 0
                assert counters["udp_drops"] == kernel_drops(port)
                snap = driver.health.snapshot()
                assert snap["state"] == "degraded"
                assert "receive buffer full" in snap["degraded"]["udp_drops"]["reason"]
                assert snap["udp"]["drops"] == counters["udp_drops"]
                assert snap["udp"]["rcvbuf"] == effective(4096)

                # Still serving: a real uplink after the flood becomes readings.
                device = driver.config.devices[0]
                rxpk = [gwmp.rxpk_json(gwmp.RxPacket(data=uplink_for(device, 1)))]
                tx.send(gwmp.build_push_data(1, EUI, {"rxpk": rxpk}))
                await wait_for(lambda: sink.values(f"lora/{device.name}/fcnt") == [1])

            doc = build_status(gateway_id="g", version="0", boot_id="b", started=0.0,
                               drivers={"lora": driver.health.snapshot()},
                               driver_kinds={"lora": "lora_forwarder"},
                               uplink={"state": "connected"})
        drops = counters["udp_drops"]
        assert doc["problems"] == ["lora degraded (udp_drops)"]
        view = json.loads(json.dumps(doc))["drivers"]["lora"]
        assert view["degraded"] == ["udp_drops"]
        assert view["health"]["counters"]["udp_drops"] == drops
        text = render(doc)
        assert "lora_forwarder:lora" in text
        assert "DEGRADED" in text
        assert f"udp_drops {drops}" in text
        assert f"rcvbuf {effective(4096)} B (asked 4096)" in text
    asyncio.run(go())


def test_configured_rcvbuf_is_applied(state: StoreState) -> None:
    async def go() -> None:
        driver, _ = driver_for(state, rcvbuf="64KiB")
        async with running(driver, RecordingSink()):
            await wait_for(lambda: driver.bound is not None)
            udp = driver.health.snapshot()["udp"]
            assert udp["rcvbuf_requested"] == 65536
            assert udp["rcvbuf"] == effective(65536)
            assert udp["rmem_max"] == rmem_max()
            sock = driver.udp._sock
            assert sock is not None
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == effective(65536)
    asyncio.run(go())


def test_without_rcvbuf_the_system_default_is_kept(state: StoreState) -> None:
    default = int(Path("/proc/sys/net/core/rmem_default").read_text())

    async def go() -> None:
        driver, _ = driver_for(state)
        async with running(driver, RecordingSink()):
            await wait_for(lambda: driver.bound is not None)
            udp = driver.health.snapshot()["udp"]
            assert udp["rcvbuf_requested"] is None
            assert udp["rcvbuf"] == default
            await wait_for(lambda: driver.health.snapshot()["udp"]["source"] == "proc")
            assert driver.health.snapshot()["state"] == "ok"
            assert "udp_drops" not in driver.health.counters
    asyncio.run(go())
