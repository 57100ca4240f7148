"""``streetgate sim serial`` and ``streetgate serial sniff`` over real pty pairs."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.serial import SerialDriver
from drivers.serial.nmea import sentence
from drivers.serial.sim import load_script

ROOT = Path(__file__).resolve().parents[3]
# The streetgate command's shape, built the way the gateway CLI builds it.
CLI = ("import argparse, sys\n"
       "from drivers.serial import SerialDriver\n"
       "p = argparse.ArgumentParser(prog='streetgate')\n"
       "sub = p.add_subparsers()\n"
       "SerialDriver.register_cli(sub.add_parser('sim').add_subparsers(), sub)\n"
       "a = p.parse_args(sys.argv[1:])\n"
       "sys.exit(a.func(a))\n")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="streetgate")
    sub = p.add_subparsers()
    SerialDriver.register_cli(sub.add_parser("sim").add_subparsers(), sub)
    return p.parse_args(argv)


class SimProcess:
    """``streetgate sim serial ...`` in a subprocess; its output collected line by line."""

    def __init__(self, *args: str) -> None:
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "sim", "serial", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        with self._new:
            for _ in range(1000):
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                if not self._new.wait(timeout / 10) and self.proc.poll() is not None:
                    break
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}")

    def stop(self) -> int:
        self.proc.terminate()
        rc = self.proc.wait(10)
        self._thread.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc


@pytest.fixture
def sim_process() -> Iterator[type[SimProcess]]:
    started: list[SimProcess] = []

    class Tracked(SimProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for s in started:
        if s.proc.poll() is None:
            s.stop()


@contextlib.contextmanager
def talking(dev: Any, data: bytes, period: float = 0.05) -> Iterator[None]:
    """The device repeats ``data``: the port flushes its input when opened, as a UART does."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            dev.write(data)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def sniff(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = parse(["serial", "sniff", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_sim_prints_its_path_and_config_and_sniff_decodes(sim_process, capsys, tmp_path) -> None:
    link = tmp_path / "ttyWX"
    sim = sim_process("--profile", "nmea-weather", "--rate", "20", "--link", str(link),
                      "--print-config")
    m = sim.wait_for(r"serial simulator nmea-weather on (\S+) -> (/dev/pts/\d+)")
    assert m.group(1) == str(link)
    assert os.path.realpath(link) == m.group(2)
    sim.wait_for(rf'^port = "{re.escape(str(link))}"$')
    rc, out = sniff(capsys, "--port", str(link), "--baud", "4800", "--decoder", "nmea",
                    "--count", "8", "--duration", "10")
    assert rc == 0
    assert re.search(r"#\d+ \d+ B  '\$WIMWV,", out)
    assert re.search(r"    wind_speed_relative = [\d.]+ m/s", out)
    assert "-- " in out.splitlines()[-1]
    assert sim.stop() == 0
    assert not link.exists()  # unplugged on exit


def test_sniff_query_counter_from_profile(sim_process, capsys, tmp_path) -> None:
    link = tmp_path / "ttyCNT"
    sim_process("--profile", "ascii-counter", "--link", str(link)).wait_for("serial simulator")
    rc, out = sniff(capsys, "--profile", "ascii-counter", "--port", str(link),
                    "--query", r"READ\r\n", "--interval", "100ms", "--timeout", "80ms",
                    "--count", "3", "--duration", "10")
    assert rc == 0
    assert "> b'READ\\r\\n'" in out
    assert re.search(r"entries = \d+ count", out)


def test_sniff_shows_why_frames_fail(capsys, raw_pty) -> None:
    dev = raw_pty()
    bad = sentence("WIMWV,045.0,R,5.2,M,A").replace(b"5.2", b"5.3")
    burst = b"noise" * 30 + b"\r\n" + bad + b"$GPGGA,1*ZZ\r\n" + sentence("WIMWV,1.0,T,2.0,M,A")
    with talking(dev, burst, period=0.3):
        rc, out = sniff(capsys, "--port", str(dev.link), "--decoder", "nmea", "--max-frame",
                        "82", "--count", "3", "--duration", "5")
    assert rc == 0
    assert "(oversized: +1)" in out
    assert "FAILED (crc_error): checksum mismatch: computed" in out
    assert "FAILED (malformed): checksum field b'ZZ' is not two hex digits" in out
    assert "wind_angle_true = 1.0 deg" in out
    assert "1 decoded, 2 failed" in out


def test_sniff_binary_frames_in_hex_with_fixed_framing(capsys, raw_pty) -> None:
    dev = raw_pty()
    with talking(dev, b"\x00\xaa\x01\x02\x03"):
        rc, out = sniff(capsys, "--port", str(dev.link), "--framing", "fixed", "--length", "4",
                        "--start", "AA", "--count", "2", "--duration", "5")
    assert rc == 0
    assert "4 B  aa 01 02 03" in out
    assert "(garbage bytes: +1)" in out


def test_sniff_record_then_replay_with_the_simulator(sim_process, capsys, tmp_path,
                                                     raw_pty) -> None:
    dev = raw_pty()
    record = tmp_path / "capture.script"
    with talking(dev, sentence("WIMWV,10.0,R,2.0,M,A") + sentence("WIMWV,20.0,R,3.0,M,A")):
        rc, _ = sniff(capsys, "--port", str(dev.link), "--decoder", "nmea", "--count", "2",
                      "--duration", "5", "--record", str(record))
    assert rc == 0
    steps = load_script(record.read_text())
    assert b"".join(s.data for s in steps).count(b"$WIMWV") == 2
    link = tmp_path / "ttyREPLAY"
    sim_process("--script", str(record), "--link", str(link), "--rate", "20").wait_for(
        "serial simulator")
    rc, out = sniff(capsys, "--port", str(link), "--decoder", "nmea", "--count", "4",
                    "--duration", "10")
    assert rc == 0
    assert "wind_angle_relative = 20.0 deg" in out


def test_sim_dropout_unplugs_and_replugs(sim_process, tmp_path) -> None:
    sim = sim_process("--dropout", "300ms/200ms", "--link", str(tmp_path / "ttyD"))
    sim.wait_for("unplugged for 0.2s")
    m = sim.wait_for(r"replugged: \S+ -> (/dev/pts/\d+)")
    assert m.group(1).startswith("/dev/pts/")


def test_nothing_received_gives_a_wiring_hint(capsys, raw_pty) -> None:
    dev = raw_pty()
    rc, out = sniff(capsys, "--port", str(dev.link), "--duration", "0.3")
    assert rc == 1
    assert "hint: nothing received" in out


def test_wrong_baud_looks_like_garbage_and_says_so(capsys, raw_pty) -> None:
    dev = raw_pty()
    with talking(dev, bytes(range(0x80, 0xC0))):
        rc, out = sniff(capsys, "--port", str(dev.link), "--framing", "fixed", "--length", "8",
                        "--start", "7E", "--duration", "0.5")
    assert rc == 1
    assert "hint: bytes but no frames: check baud rate" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "/dev/x", "--framing", "fixed"],
     'command line: framing.length: missing required key for mode = "fixed"'),
    (["--port", "/dev/x", "--decoder", "regex", "--pattern", "(?P<a"],
     "command line: decoder.pattern: invalid regular expression"),
    (["--baud", "9600"], "give --port"),
    (["--config", "missing.toml"], "missing.toml"),
])
def test_sniff_usage_errors(capsys, argv: list[str], message: str) -> None:
    rc, out = sniff(capsys, *argv)
    assert rc == 2
    assert message in out


def test_sniff_takes_settings_from_a_gateway_config(capsys, tmp_path, raw_pty) -> None:
    dev = raw_pty()
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(f"""
[[drivers.serial]]
instance = "other"
port = "/dev/null"
devices = [{{ name = "x", decoder = {{ type = "keyvalue" }} }}]

[[drivers.serial]]
instance = "probe"
port = "{dev.link}"
framing = {{ mode = "line", terminator = "\\n" }}

[[drivers.serial.devices]]
name = "th"

[drivers.serial.devices.decoder]
type = "regex"
pattern = 'T=(?P<t>[\\d.]+)'
fields = [{{ name = "t", type = "float", unit = "Cel" }}]
""")
    with talking(dev, b"T=21.5\n"):
        rc, out = sniff(capsys, "--config", str(gateway), "--instance", "probe", "--count",
                        "1", "--duration", "5")
    assert rc == 0
    assert "t = 21.5 Cel" in out


def test_sim_rejects_a_bad_script(capsys, tmp_path) -> None:
    script = tmp_path / "bad.script"
    script.write_text("line $GPGGA\nsend 00\n")
    args = parse(["sim", "serial", "--script", str(script)])
    assert args.func(args) == 2
    assert "script line 2: unknown step 'send'" in capsys.readouterr().out


def test_sim_prints_each_write_and_reports_the_new_state(sim_process, tmp_path) -> None:
    import serial  # noqa: PLC0415 - pyserial, as the driver opens the port

    link = tmp_path / "ttyDIM"
    sim = sim_process("--profile", "ascii-dimmer", "--link", str(link))
    sim.wait_for("serial simulator ascii-dimmer")
    with serial.Serial(str(link), timeout=3) as port:
        port.write(b"SET DIM 40\r\n")
        assert port.readline() == b"OK DIM 40\r\n"
        sim.wait_for(r"^write b'SET DIM 40': level 100 -> 40$")
        port.write(b"SET DIM 5\r\n")
        assert port.readline() == b"ERR 3\r\n"
        sim.wait_for(r"^write b'SET DIM 5': refused, below the minimum level \(error 3\)$")
        port.write(b"READ\r\n")
        assert port.readline().startswith(b"LEVEL=40;RELAY=1;TEMP=")
    assert sim.stop() == 0
