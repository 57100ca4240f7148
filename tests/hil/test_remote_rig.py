"""A rig whose gateway runs elsewhere (``gateway.run = "remote"``), its power cut by commands.

Here the "board" is a daemon this test starts in the background with its own config; the
rig's power commands kill it (-9) and start it again, as a relay and a reboot would. The suite
knows it only through the broker: its signed batches and its retained status.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from gateway.broker import free_port
from provisioning.keys import load_or_create_signing_key, public_key_pem

SUITE = Path(__file__).resolve().parents[2] / "hil_tests"


def _board_config(tmp: Path, port: int) -> Path:
    conf = tmp / "board.toml"
    conf.write_text(textwrap.dedent(f"""
        [gateway]
        id = "cab-remote"
        state_dir = "{tmp / 'board-state'}"
        [buffer]
        commit_window = "50ms"
        [uplink]
        port = {port}
        batch_linger = "100ms"
        reconnect_min = "100ms"
        reconnect_max = "500ms"
        status_interval = "1s"
        [[drivers.sim]]
        instance = "synthetic"
        devices = 2
        interval = "100ms"
    """))
    return conf


def _rig(tmp: Path, port: int, on: str, off: str) -> Path:
    rig = tmp / "rig.toml"
    rig.write_text(textwrap.dedent(f"""
        delivery_window = "1s"
        recover_timeout = "20s"
        [gateway]
        config = "board.toml"
        run = "remote"
        public_key = "board.pem"
        start_timeout = "20s"
        [broker]
        port = {port}
        listen = "127.0.0.1"
        [network]
        outage = "1s"
        [power]
        method = "command"
        off = {off!r}
        on = {on!r}
        off_time = "200ms"
        rounds = 2
        budget = "20s"
        [[buses]]
        instance = "synthetic"
        driver = "sim"
        [[devices]]
        name = "dev-000"
        bus = "synthetic"
        points = ["energy", "voltage"]
        min_rate = 5.0
    """))
    return rig


def _stop_board(pid: int) -> None:
    """SIGTERM the board's daemon (not our child: the shell started it) and wait it out."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def test_delivery_outage_and_relay_on_a_remote_gateway(tmp_path: Path) -> None:
    port = free_port()
    conf = _board_config(tmp_path, port)
    key = load_or_create_signing_key(tmp_path / "board-state" / "keys" / "signing.key")
    (tmp_path / "board.pem").write_text(public_key_pem(key.public_key()))
    pidfile, log = tmp_path / "board.pid", tmp_path / "board.log"
    on = (f"{shlex.quote(sys.executable)} -m gateway run --config {shlex.quote(str(conf))} "
          f">>{shlex.quote(str(log))} 2>&1 & echo $! > {shlex.quote(str(pidfile))}")
    off = f"kill -9 $(cat {shlex.quote(str(pidfile))})"
    rig = _rig(tmp_path, port, on, off)
    junit = tmp_path / "report.xml"
    subprocess.run(on, shell=True, check=True, cwd=SUITE.parent, timeout=30)  # noqa: S602 - the rig's own command
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", str(SUITE), "-q", "--rig", str(rig),
             "-k", "delivery or verifies or outage or power", f"--junitxml={junit}",
             "-o", "junit_family=xunit1"],
            cwd=SUITE.parent, capture_output=True, text=True, timeout=240, check=False)
    finally:
        _stop_board(int(pidfile.read_text().split()[0]))
    assert done.returncode == 0, done.stdout[-3000:]
    cases = {c.get("name"): c for c in ET.parse(junit).iter("testcase")}  # noqa: S314 - our report
    assert set(cases) == {"test_delivery[synthetic/dev-000]", "test_every_batch_verifies",
                          "test_broker_outage_and_recovery", "test_power_cut_under_load"}
    power = {p.get("name"): p.get("value")
             for p in cases["test_power_cut_under_load"].iter("property")}
    assert str(power["summary"]).startswith("2 x power cut by command under load")
