"""The start-up half of the fleet bench: ``streetgate check`` and ``streetgate run`` on a
config of ``devices`` x ``registers`` holding registers, declared as ranges (or, with
``ranges=False``, one point table per register as before ranges existed).

The daemon runs as its own process against a private mosquitto and the fleet simulator:
``startup_s`` is the time from starting ``streetgate run`` to the first signed batch at the
broker; then, over ``seconds``, the daemon's CPU (user + system, from /proc) per reading
delivered, the whole gateway's cost per reading (driver, buffer, batches, MQTT).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_startup", "fleet_toml"]


def fleet_toml(port: int, devices: int, registers: int, interval: float, *,
               ranges: bool = True) -> str:
    """The ``[[drivers.modbus]]`` part of a config polling the fleet simulator."""
    if ranges:
        points = (f'[[drivers.modbus.devices.ranges]]\nname = "reg_{{i}}"\nstart = 0\n'
                  f"count = {registers}\n")
    else:
        points = "".join(f'[[drivers.modbus.devices.points]]\nname = "reg_{i}"\naddress = {i}\n'
                         for i in range(registers))
    devs = "".join(f'\n[[drivers.modbus.devices]]\nname = "dev-{u}"\nunit = {u}\n'
                   f'interval = "{round(interval * 1000)}ms"\ntimeout = "1s"\n{points}'
                   for u in range(1, devices + 1))
    return (f'[[drivers.modbus]]\ninstance = "fleet"\n'
            f'bus = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}\n{devs}')


def _cpu_s(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _readings(payload: bytes, keys: dict[bytes, Any]) -> int:
    import cbor2  # noqa: PLC0415

    from gateway.cose import open1  # noqa: PLC0415

    _kid, body = open1(payload, keys)
    header = cbor2.loads(body)
    return int(header[5] - header[4] + 1) if 4 in header else 0


def _daemon(work: Path, port: int, devices: int, registers: int, *, interval: float,
            seconds: float, ranges: bool) -> dict[str, float]:
    """Check the whole config, then run it: wall time of check, start-up, CPU per reading."""
    from gateway.broker import Mosquitto  # noqa: PLC0415 - the bench's end, not the driver's
    from gateway.cose import kid_for  # noqa: PLC0415
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415
    from provisioning.keys import load_or_create_signing_key  # noqa: PLC0415

    state = work / "state"
    public = load_or_create_signing_key(state / "keys" / "signing.key").public_key()
    keys = {kid_for(public): public}
    with Mosquitto(work / "broker") as broker:
        conf = work / "gateway.toml"
        conf.write_text(f'[gateway]\nid = "cab-fleet"\nstate_dir = "{state}"\n'
                        f'log_level = "warning"\n[uplink]\nport = {broker.port}\n'
                        f'status_interval = "1h"\n\n'
                        + fleet_toml(port, devices, registers, interval, ranges=ranges))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gateway", "check", str(conf)],  # noqa: S603
                       check=True, stdout=subprocess.DEVNULL)
        check = time.perf_counter() - t0
        sub = BatchSubscriber(broker.host, broker.port, "streetgate/cab-fleet/batch")
        sub.start()
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run",  # noqa: S603
                                 "--config", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _topic, payload = sub.messages.get(timeout=30)
            startup = time.perf_counter() - start
            got = _readings(payload, keys)
            time.sleep(1.0)
            while not sub.messages.empty():
                got += _readings(sub.messages.get()[1], keys)
            cpu0, got0, t0 = _cpu_s(proc.pid), got, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                with contextlib.suppress(Exception):
                    got += _readings(sub.messages.get(timeout=0.2)[1], keys)
            cpu, elapsed = _cpu_s(proc.pid) - cpu0, time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
            sub.stop()
    delivered = got - got0
    return {"config_kb": round(conf.stat().st_size / 1000, 1), "check_s": round(check, 2),
            "startup_s": round(startup, 2),
            "daemon_cpu_us_per_reading": round(1e6 * cpu / max(delivered, 1), 2),
            "daemon_cpu_pct": round(100 * cpu / elapsed, 1),
            "daemon_readings_per_s": round(delivered / elapsed)}


def bench_startup(devices: int = 50, registers: int = 100, interval: float = 0.1,
                  seconds: float = 5.0, *, ranges: bool = True) -> dict[str, float]:
    """``check`` wall time, start-up and CPU of the real daemon; see module doc."""
    root = Path(__file__).resolve().parents[2]
    code = f"from drivers.modbus._bench_fleet import serve; serve({devices})"
    sim = subprocess.Popen([sys.executable, "-c", code], cwd=root, text=True,  # noqa: S603
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert sim.stdout is not None  # noqa: S101 - set by PIPE above
        port = int(sim.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="streetgate-bench-fleet-") as tmp:
            return _daemon(Path(tmp), port, devices, registers, interval=interval,
                           seconds=seconds, ranges=ranges)
    finally:
        sim.communicate(input="", timeout=10)
