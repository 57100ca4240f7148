"""``streetgate bench --report``: what report by exception saves on the wire and on the card.

Two workloads, each run twice by the real daemon (``streetgate run`` as its own process)
against a private broker, once sending every reading and once with ``[[report]]`` rules:

- the demo workload: the ``sim`` driver, 10 devices x 4 points every 100 ms;
- a slowly changing meter: ``streetgate sim modbus`` serving 10 three-phase energy meters
  (voltages, currents, powers on 60 s waves; energy counters), polled every second.

Per reading a driver produced (sent or held back as unchanged): signed payload bytes on the
wire, and bytes the daemon wrote to storage (``/proc/<pid>/io`` ``write_bytes``).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.batch import decode_batch
from gateway.broker import Mosquitto, free_port
from gateway.cose import kid_for, open1

__all__ = ["report_savings"]

_DEMO = """
[[drivers.sim]]
instance = "demo"
devices = 10
interval = "100ms"
seed = 1
"""
_DEMO_RULES = """
[[report]]
points = "demo/*/temperature"
deadband = 0.2
max_silence = "1m"
[[report]]
points = "demo/*/voltage"
deadband = 1.0
max_silence = "1m"
[[report]]
points = "demo/*/door_open"
max_silence = "1m"
"""
_METER_RULES = """
[[report]]
points = "meters/*/energy_*"
max_silence = "5m"
[[report]]
points = "meters/*"
deadband_percent = 0.5
max_silence = "5m"
"""


def _meters(port: int, units: int) -> str:
    devices = "".join(f"""
[[drivers.modbus.devices]]
name = "meter-{u}"
unit = {u}
profile = "energy-meter-3ph"
interval = "1s"
""" for u in range(1, units + 1))
    return f"""
[[drivers.modbus]]
instance = "meters"
bus = {{ kind = "tcp", host = "127.0.0.1", port = {port} }}
{devices}"""


def _run(work: Path, broker: Mosquitto, name: str, drivers: str, rules: str, *,
         seconds: float) -> dict[str, float]:
    from gateway.bench import _Proc, _start  # noqa: PLC0415
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415 - the platform's end
    from provisioning.keys import load_or_create_signing_key  # noqa: PLC0415

    state = work / name
    key = load_or_create_signing_key(state / "keys" / "signing.key").public_key()
    keys = {kid_for(key): key}
    conf = work / f"{name}.toml"
    conf.write_text(f'[gateway]\nid = "cab-{name}"\nstate_dir = "{state}"\nlog_level = '
                    f'"warning"\n[uplink]\nport = {broker.port}\nstatus_interval = "1h"\n'
                    f"{drivers}{rules}")
    sub = BatchSubscriber(broker.host, broker.port, f"streetgate/cab-{name}/batch")
    sub.start()
    daemon: _Proc = _start(conf)
    try:
        time.sleep(2.0)  # start-up writes are not the workload's
        io0 = daemon.written()
        time.sleep(seconds)
        io1 = daemon.written()
    finally:
        daemon.stop()
    time.sleep(0.5)
    wire = sent = held = 0
    while not sub.messages.empty():
        _topic, payload = sub.messages.get()
        wire += len(payload)
        _kid, body = open1(payload, keys)
        batch = decode_batch(body)
        sent += len(batch.readings)
        held += batch.unchanged.count if batch.unchanged is not None else 0
    sub.stop()
    produced = max(1, sent + held)
    # Disk over the measured window, per reading produced in it (the rate is steady).
    rate = produced / (seconds + 2.0)
    return {"readings": produced, "held_back_pct": round(100 * held / produced, 1),
            "wire_bytes_per_reading": round(wire / produced, 2),
            "disk_bytes_per_reading": round((io1 - io0) / max(1.0, rate * seconds), 1)}


def report_savings(seconds: float = 15.0) -> dict[str, Any]:
    import tempfile  # noqa: PLC0415

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streetgate-bench-report-") as tmp:
        work = Path(tmp)
        port = free_port()
        sim = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway", "sim", "modbus", "--tcp", str(port),
             *[a for u in range(1, 11) for a in ("--device", f"{u}:energy-meter-3ph")]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Mosquitto(work / "broker") as broker:
                for name, drivers, rules in (("demo", _DEMO, _DEMO_RULES),
                                             ("meter", _meters(port, 10), _METER_RULES)):
                    every = _run(work, broker, f"{name}-all", drivers, "", seconds=seconds)
                    change = _run(work, broker, f"{name}-rbe", drivers, rules, seconds=seconds)
                    out[name] = {"every_reading": every, "by_exception": change}
        finally:
            sim.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                sim.wait(5)
    return out
