"""``streetgate bench``: the real daemon, as its own process, against a real local broker.

The daemon runs ``streetgate run`` with the ``sim`` driver in flood mode; this process only
starts things, verifies every batch it receives (on the other core) and reads the daemon's
own counters from /proc: CPU time, peak RSS (VmHWM) and bytes written to storage.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2

from buffer.store import Store
from drivers.api import DriverContext
from drivers.sim import SimDriver
from drivers.sim.config import SimConfig
from gateway.broker import Mosquitto
from gateway.cose import kid_for, open1
from provisioning.keys import load_or_create_signing_key

if TYPE_CHECKING:
    from ingest.subscriber import BatchSubscriber

__all__ = ["run_bench"]

_PER_DEVICE = 4  # the sim driver's default points per device


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]

    def _read(self, name: str) -> str:
        return (Path("/proc") / str(self.proc.pid) / name).read_text()

    def cpu_s(self) -> float:
        fields = self._read("stat").rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mb(self) -> float:
        for line in self._read("status").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def written(self) -> int:
        return _written(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _config(path: Path, state: Path, port: int, driver: str) -> Path:
    path.write_text(f"""
[gateway]
id = "cab-bench"
state_dir = "{state}"
log_level = "warning"
[buffer]
commit_window = "50ms"
commit_rows = 5000
max_size = "1GiB"
[uplink]
port = {port}
batch_max_readings = 5000
batch_linger = "0ms"
max_inflight = 8
max_packet_size = "1MiB"
status_interval = "1h"
{driver}""")
    return path


def _start(conf: Path) -> _Proc:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "gateway", "run", "--config", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _Proc(proc)


def _keys(state: Path) -> dict[bytes, Any]:
    key = load_or_create_signing_key(state / "keys" / "signing.key")
    return {kid_for(key.public_key()): key.public_key()}


def _collect(sub: BatchSubscriber, keys: dict[bytes, Any], want: int,
             timeout: float) -> tuple[int, int, float]:
    """Check every signature until ``want`` readings arrived.

    Returns (readings, wire bytes, readings per second). The rate is the sustained one: the
    readings after the first batch over the time from the first batch's arrival to the last's,
    so neither the interpreter's start nor the uplink's reconnect backoff is counted as
    throughput.

    Readings are counted from each batch's seq range (the bench drops nothing, so the range
    is exact): a full decode here would measure this process instead of the daemon. The
    decoder and the verifier have their own tests; the demo decodes everything.
    """
    got = wire = first = 0
    seen: set[int] = set()
    t_first = t_last = 0.0
    deadline = time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        try:
            _topic, payload = sub.messages.get(timeout=0.5)
        except queue.Empty:
            continue
        wire += len(payload)
        _kid, body = open1(payload, keys)
        header = cbor2.loads(body)
        if 4 in header and header[4] not in seen:
            seen.add(header[4])
            n = header[5] - header[4] + 1
            got += n
            t_last = time.perf_counter()
            if not first:
                first, t_first = n, t_last
    rate = (got - first) / (t_last - t_first) if t_last > t_first else 0.0
    return got, wire, rate


def _e2e(work: Path, broker: Mosquitto, readings: int, points: int) -> dict[str, Any]:
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415

    state = work / "e2e"
    keys = _keys(state)
    driver = (f'[[drivers.sim]]\ninstance = "bench"\ndevices = {max(1, points // _PER_DEVICE)}\n'
              f'mode = "flood"\nmax_readings = {readings}\nseed = 1\n')
    conf = _config(work / "e2e.toml", state, broker.port, driver)
    sub = BatchSubscriber(broker.host, broker.port, "streetgate/+/batch")
    sub.start()
    daemon = _start(conf)
    try:
        got, wire, rate = _collect(sub, keys, readings, timeout=600)
        cpu, rss, disk = daemon.cpu_s(), daemon.peak_rss_mb(), daemon.written()
    finally:
        daemon.stop()
        sub.stop()
    return {"readings_per_s": round(rate), "wire": round(wire / max(1, got), 2),
            "cpu": round(cpu / max(1, got) * 100_000, 3), "rss": round(rss, 1),
            "disk": round(disk / max(1, got), 1), "got": got}


def _fill(path: Path, readings: int, points: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sim = SimDriver(SimConfig(devices=max(1, points // _PER_DEVICE), mode="flood", seed=2),
                    DriverContext.standalone("bench", "sim"))
    store = Store(path, max_bytes=1 << 30)
    ts0, tick, filled = time.time_ns() // 1_000_000, 0, 0
    while filled < readings:
        batch = sim._tick(tick, ts0 + tick * 1000)[: readings - filled]  # noqa: SLF001
        store.append(batch)
        filled += len(batch)
        tick += 1
        if store.pending() >= 50_000:
            store.commit()
    store.close()


def _drain(work: Path, broker: Mosquitto, readings: int, points: int) -> dict[str, Any]:
    from ingest.subscriber import BatchSubscriber  # noqa: PLC0415

    state = work / "drain"
    keys = _keys(state)
    _fill(state / "buffer.db", readings, points)
    conf = _config(work / "drain.toml", state, broker.port, "")
    broker.stop()
    daemon = _start(conf)
    try:
        time.sleep(1.0)  # the daemon is up and finds its broker gone
        broker.start()
        sub = BatchSubscriber(broker.host, broker.port, "streetgate/+/batch")
        sub.start()
        got, _wire, rate = _collect(sub, keys, readings, timeout=600)
        rss = daemon.peak_rss_mb()
        sub.stop()
    finally:
        daemon.stop()
    return {"readings_per_s": round(rate), "rss": round(rss, 1), "got": got}


def _steady_config(path: Path, state: Path, port: int) -> Path:
    """Default buffer and uplink settings; 25 devices x 4 points once a second: 100/s."""
    path.write_text(f"""
[gateway]
id = "cab-steady"
state_dir = "{state}"
log_level = "warning"
[uplink]
port = {port}
status_interval = "1h"
[[drivers.sim]]
instance = "steady"
devices = 25
interval = "1s"
seed = 3
""")
    return path


def _steady(work: Path, broker: Mosquitto, seconds: float) -> dict[str, Any]:
    """The daemon at default settings and 100 readings/s: fsyncs per second, disk bytes per
    reading. fsyncs are counted by strace (``-e fsync,fdatasync``) when it is installed."""
    state = work / "steady"
    conf = _steady_config(work / "steady.toml", state, broker.port)
    trace = work / "steady.strace"
    strace = shutil.which("strace")
    cmd = [sys.executable, "-m", "gateway", "run", "--config", str(conf)]
    if strace:
        # seccomp-bpf: only the traced calls stop the daemon, so it runs at its own pace.
        cmd = [strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=fsync,fdatasync", "-o",
               str(trace), *cmd]
    # As under systemd: the status file in a RuntimeDirectory on tmpfs, not on the card.
    runtime = Path(tempfile.mkdtemp(prefix="streetgate-run-", dir=_tmpfs()))
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # noqa: S603 - our own interpreter, strace from PATH
    pid = proc.pid
    try:
        time.sleep(5.0)  # start-up writes (migrations, first checkpoint) are not steady state
        pid = _child_pid(proc.pid) if strace else proc.pid
        io0 = _written(pid)
        lines0 = _count_lines(trace)
        time.sleep(seconds)
        io1 = _written(pid)
        lines1 = _count_lines(trace)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the daemon itself: strace ends with it
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(runtime, ignore_errors=True)
    produced = 100 * seconds
    return {"fsyncs_per_s": round((lines1 - lines0) / seconds, 2) if strace else None,
            "disk": round((io1 - io0) / produced, 1)}


def _tmpfs() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 - tmpfs on purpose


def _child_pid(pid: int) -> int:
    """The daemon's pid under strace (strace's only child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    return pid


def _written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if b"fsync" in line or b"fdatasync" in line)
    except FileNotFoundError:
        return 0


def run_bench(*, readings: int = 1_000_000, points: int = 100,
              modbus: bool = False, steady_s: float = 30.0) -> dict[str, Any]:
    """Run the benchmarks; every figure comes from this run."""
    with tempfile.TemporaryDirectory(prefix="streetgate-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:
            e2e = _e2e(work, broker, readings, points)
            drain = _drain(work, broker, readings, points)
            steady = _steady(work, broker, steady_s)
    result: dict[str, Any] = {
        "e2e_readings_per_s": e2e["readings_per_s"],
        "drain_readings_per_s": drain["readings_per_s"],
        "wire_bytes_per_reading": e2e["wire"],
        "disk_bytes_per_reading": e2e["disk"],
        "cpu_s_per_100k": e2e["cpu"],
        "peak_rss_mb": max(e2e["rss"], drain["rss"]),
        "steady_fsyncs_per_s": steady["fsyncs_per_s"],
        "steady_disk_bytes_per_reading": steady["disk"],
        "readings": readings,
        "points": points,
        "lost": (readings - e2e["got"]) + (readings - drain["got"]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, Python "
                   f"{platform.python_version()}, {platform.platform(terse=True)}",
    }
    if modbus:
        from drivers.modbus.bench import bench_modbus  # noqa: PLC0415

        result["modbus"] = bench_modbus(5.0)
    return result
