"""The small CLI commands a technician uses: key public, buffer stats, drivers; and SIGTERM
with the broker down drains to the buffer and exits 0."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from gateway.broker import Mosquitto, free_port


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def _conf(tmp: Path, port: int) -> Path:
    conf = tmp / "gateway.toml"
    conf.write_text(f"""
[gateway]
id = "cab-cli"
state_dir = "{tmp / 'state'}"
[buffer]
commit_window = "20ms"
[uplink]
port = {port}
reconnect_min = "100ms"
[[drivers.sim]]
instance = "c"
devices = 3
interval = "20ms"
""")
    return conf


def test_key_public_creates_a_0600_key_once(tmp_path: Path) -> None:
    conf = _conf(tmp_path, 1883)
    first = _cli("key", "public", "--config", str(conf))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    key = tmp_path / "state" / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    again = _cli("key", "public", "--config", str(conf))
    assert again.stdout == first.stdout
    key.chmod(0o644)
    refused = _cli("key", "public", "--config", str(conf))
    assert refused.returncode != 0
    assert "chmod" in refused.stderr


def test_sigterm_with_broker_down_keeps_everything_and_exits_0(tmp_path: Path) -> None:
    conf = _conf(tmp_path, free_port())  # nothing listens there
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(conf)],  # noqa: S603
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "connection refused" in err
    stats = _cli("buffer", "stats", "--config", str(conf), "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["depth"] > 100, "readings taken while the broker was down stay in the buffer"
    assert data["dropped"] == 0
    human = _cli("buffer", "stats", "--config", str(conf))
    assert "depth" in human.stdout
    assert "oldest_age_s" in human.stdout


def test_buffered_readings_drain_on_next_start(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        conf = _conf(tmp_path, free_port())
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(conf)],  # noqa: S603
                                stderr=subprocess.DEVNULL)
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        # same state, now with a broker and without the driver
        text = conf.read_text().split("[[drivers.sim]]")[0]
        conf.write_text(text.replace("port = ", f"port = {broker.port}\n# was ", 1))
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(conf)],  # noqa: S603
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        depth = -1
        while time.monotonic() < deadline:
            time.sleep(0.5)
            out = _cli("buffer", "stats", "--config", str(conf), "--json")
            depth = json.loads(out.stdout)["depth"]
            if depth == 0:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert depth == 0


def test_second_daemon_on_the_same_state_dir_refuses_to_start(tmp_path: Path) -> None:
    conf = _conf(tmp_path, free_port())
    first = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(conf)],  # noqa: S603
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        lock = tmp_path / "state" / "streetgate.lock"
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = _cli("run", "-c", str(conf))
        assert second.returncode == 1
        assert f"another streetgate (pid {first.pid}) is running" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
    assert first.returncode == 0
