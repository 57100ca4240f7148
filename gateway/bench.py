"""``streetgate bench``: the whole pipeline against a real local broker, measured."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from buffer.store import Store
from drivers.api import DriverContext, Reading
from drivers.sim import SimDriver
from drivers.sim.config import SimConfig
from gateway.broker import Mosquitto
from gateway.config import parse_config
from gateway.daemon import Gateway

__all__ = ["run_bench"]

_MAX_PENDING = 50_000


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _disk_written() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _config(state: Path, port: int) -> Any:
    return parse_config({
        "gateway": {"id": "cab-bench", "state_dir": str(state)},
        "buffer": {"commit_window": "50ms", "commit_rows": 20000, "max_size": "2GiB"},
        "uplink": {"port": port, "batch_max_readings": 20000, "batch_linger": "0ms",
                   "max_inflight": 16, "max_packet_size": "1MiB", "status_interval": "1h"},
    }, file="bench.toml")


def _sim(points: int) -> SimDriver:
    per_device = 4
    cfg = SimConfig(devices=max(1, points // per_device), interval=1.0, mode="flood", seed=1)  # type: ignore[arg-type]
    return SimDriver(cfg, DriverContext.standalone("bench", "sim"))


async def _e2e(state: Path, broker: Mosquitto, readings: int, points: int) -> dict[str, Any]:
    gw = Gateway(_config(state, broker.port))
    task = asyncio.create_task(gw.run())
    await gw.ready.wait()
    while not (gw.uplink and gw.uplink.connected):  # noqa: ASYNC110 - one-off wait at start
        await asyncio.sleep(0.01)
    sim = _sim(points)
    disk0, cpu0, t0 = _disk_written(), _cpu(), time.perf_counter()
    ts0, tick, sent = time.time_ns() // 1_000_000, 0, 0
    while sent < readings:
        assert gw.store is not None  # noqa: S101
        if gw.store.pending() > _MAX_PENDING:
            await asyncio.sleep(0.001)
            continue
        batch: list[Reading] = sim._tick(tick, ts0 + tick * 1000)  # noqa: SLF001
        batch = batch[: readings - sent]
        gw.emit(batch)
        sent += len(batch)
        tick += 1
        if tick % 8 == 0:
            await asyncio.sleep(0)
    await gw.wait_drained(timeout=600)
    elapsed = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    disk1 = _disk_written()
    assert gw.uplink is not None  # noqa: S101
    wire = gw.uplink.counters["bytes"]
    delivered = gw.counters["delivered"]
    gw.stop()
    await task
    return {
        "e2e_readings_per_s": round(delivered / elapsed),
        "wire_bytes_per_reading": round(wire / max(1, delivered), 2),
        "disk_bytes_per_reading": (round((disk1 - disk0) / max(1, delivered), 1)
                                   if disk0 is not None and disk1 is not None else None),
        "cpu_s_per_100k": round(cpu / max(1, delivered) * 100_000, 3),
        "e2e_delivered": delivered,
    }


async def _drain(state: Path, broker: Mosquitto, readings: int, points: int) -> dict[str, Any]:
    cfg = _config(state, broker.port)
    path = cfg.gateway.path(cfg.buffer.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(path, max_bytes=int(cfg.buffer.max_size))
    sim = _sim(points)
    ts0, tick, filled = time.time_ns() // 1_000_000, 0, 0
    while filled < readings:
        batch = sim._tick(tick, ts0 + tick * 1000)[: readings - filled]  # noqa: SLF001
        store.append(batch)
        filled += len(batch)
        tick += 1
        if store.pending() >= _MAX_PENDING:
            store.commit()
    store.commit()
    store.close()
    await asyncio.to_thread(broker.stop)
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    await gw.ready.wait()
    t0 = time.perf_counter()
    await asyncio.to_thread(broker.start)
    await gw.wait_drained(timeout=600)
    elapsed = time.perf_counter() - t0
    delivered = gw.counters["delivered"]
    gw.stop()
    await task
    return {"drain_readings_per_s": round(delivered / elapsed), "drain_delivered": delivered}


def run_bench(*, readings: int = 1_000_000, points: int = 100,
              modbus: bool = False) -> dict[str, Any]:
    """Run the benchmarks; every figure comes from this run."""
    with tempfile.TemporaryDirectory(prefix="streetgate-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:
            e2e = asyncio.run(_e2e(work / "e2e", broker, readings, points))
            drain = asyncio.run(_drain(work / "drain", broker, readings, points))
    result: dict[str, Any] = {
        "e2e_readings_per_s": e2e["e2e_readings_per_s"],
        "drain_readings_per_s": drain["drain_readings_per_s"],
        "wire_bytes_per_reading": e2e["wire_bytes_per_reading"],
        "disk_bytes_per_reading": e2e["disk_bytes_per_reading"],
        "cpu_s_per_100k": e2e["cpu_s_per_100k"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "readings": readings,
        "points": points,
        "lost": (readings - e2e["e2e_delivered"]) + (readings - drain["drain_delivered"]),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
    }
    if modbus:
        from drivers.modbus.bench import bench_modbus  # noqa: PLC0415

        result["modbus"] = bench_modbus(5.0)
    return result
