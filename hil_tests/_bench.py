"""The running bench: a private broker, the devices (simulated or real), the gateway daemon as a
child process with the rig's config, and the observer; plus the switches behaviours flip."""

from __future__ import annotations

import contextlib
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway._toml import dumps
from gateway.broker import Mosquitto
from gateway.config import load_config, resolved
from gateway.cose import kid_for
from hil_tests._observe import Observer
from hil_tests._sims import Simulators
from hil_tests.rig import Bus, Device, Rig
from provisioning._files import write_public
from provisioning.keys import load_or_create_signing_key, load_public_key, public_key_pem
from tests.helpers.e2e import gateway_config

__all__ = ["Bench", "Daemon", "RemoteGateway", "board_command", "run_command"]

GATEWAY_ID = "cab-hil"
#: Uplink settings that let a bench see outages and reconnects within seconds.
_UPLINK = {"batch_linger": "100ms", "reconnect_min": "100ms", "reconnect_max": "1s",
           "status_interval": "1s"}


def run_command(command: str, what: str, timeout: float = 60.0) -> None:
    """Run one of the rig file's shell commands; fail the behaviour if it fails."""
    done = subprocess.run(command, shell=True, capture_output=True, text=True,  # noqa: S602 - the rig file's commands are shell commands by design
                          timeout=timeout, check=False)
    if done.returncode != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        raise AssertionError(f"{what} command {command!r} failed with exit code "
                             f"{done.returncode}: {err[-1] if err else 'no output'}")


class Daemon:
    """``streetgate run`` as a child process, its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--log-level", "info", "run", "--config",
                 str(self.config)], stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as f:
                f.seek(offset)
                if b" up: " in f.read():
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited with {self.proc.returncode}: "
                                     f"{self.tail()}")
            time.sleep(0.05)
        raise AssertionError(f"the gateway did not come up within {timeout:g}s: {self.tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code, self.proc = self.proc.returncode, None
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])


class RemoteGateway:
    """The daemon on the board under test, known by its retained status message."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status
        self.starts = 0
        self._gone: str | None = None
        self._boot: str | None = None

    def start(self, timeout: float) -> None:
        """Wait until the board says it is online, from a boot after the last power cut."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self._status()
            boot = doc.get("boot_id")
            if doc.get("state") == "online" and boot and boot != self._gone:
                self._boot, self._gone = str(boot), None
                self.starts += 1
                return
            time.sleep(0.2)
        raise AssertionError(f"the gateway on the board did not say it is online within "
                             f"{timeout:g}s (last status: {self._status().get('state')})")

    def kill(self) -> None:
        self._gone = self._boot  # the power command did it; wait for another boot

    def stop(self) -> int:
        return 0

    @property
    def running(self) -> bool:
        return self._gone is None and self._status().get("state") == "online"

    def tail(self) -> str:
        return str(self._status().get("problems", ""))


class Bench:
    """Everything a behaviour needs, started from a rig."""

    def __init__(self, rig: Rig, workdir: Path) -> None:
        self.rig = rig
        self.workdir = workdir
        self.state = workdir / "state"
        extra = ""
        if rig.remote:  # the board reaches the broker on a fixed port on this computer
            extra = f"listener {rig.broker.port} {rig.broker.listen}\nallow_anonymous true"
        self.broker = Mosquitto(workdir / "broker", persistence=True, extra=extra)
        self.sims: Simulators | None = Simulators(rig, workdir) if rig.simulated else None
        self.daemon: Daemon | RemoteGateway = (
            RemoteGateway(lambda: self.obs.status) if rig.remote
            else Daemon(workdir / "gateway.toml", workdir / "gateway.log"))
        self.drivers: dict[str, Any] = {}
        self.observer: Observer | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.start()
        if isinstance(self.daemon, Daemon):
            raw = self._gateway_raw()
            self.daemon.config.write_text(dumps(raw))
            cfg = load_config(self.daemon.config)
            pub = load_or_create_signing_key(self.state / "keys" / "signing.key").public_key()
        else:
            cfg = load_config(self.rig.gateway_config())
            pub = load_public_key(self.rig.public_key() or Path())
        self.drivers = {d.instance: d for d in cfg.drivers}
        # A remote board's buffer has a past: holes count from the first seq seen, not from 1.
        self.observer = Observer(self.broker.host, self.broker.port, cfg.uplink.topic_prefix,
                                 {kid_for(pub): pub}, origin=None if self.rig.remote else 1)
        self.observer.start()
        self.daemon.start(float(self.rig.gateway.start_timeout))

    def close(self) -> None:
        with contextlib.ExitStack() as stack:
            stack.callback(self.broker.stop)
            if self.sims is not None:
                stack.callback(self.sims.close)
            if self.observer is not None:
                stack.callback(self.observer.stop)
            stack.callback(self.daemon.stop)

    def _gateway_raw(self) -> dict[str, Any]:
        """The gateway config the daemon runs: the rig's, pointed at this bench, taking
        signed commands for the points the rig lets the suite write."""
        if self.sims is not None:
            cfg = gateway_config(self.state, self.broker.port, self.sims.start(),
                                 gateway={"id": GATEWAY_ID}, uplink=_UPLINK)
            raw = resolved(cfg, mask=False)
        else:
            raw = resolved(load_config(self.rig.gateway_config()), mask=False)
            raw["gateway"].update(state_dir=str(self.state), signing_key="keys/signing.key",
                                  seed_file="")
            raw["uplink"].update(host=self.broker.host, port=self.broker.port, username="",
                                 password="", client_id="", tls={"enabled": False},
                                 **_UPLINK)
        writable = [f"{d.bus}/{d.name}/{p}" for d in self.rig.devices for p in d.write]
        if writable:
            pub = self.state / "keys" / "platform-command.pub"
            pub.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_public(pub, public_key_pem(self.platform_key.public_key()).encode())
            raw["commands"] = {"keys": ["keys/platform-command.pub"], "writable": [
                {"point": p, "min_interval": "0s"} for p in writable]}
        return raw

    @property
    def platform_key(self) -> Any:
        """The platform command key this bench signs commands with."""
        return load_or_create_signing_key(self.workdir / "platform-command.key")

    @property
    def obs(self) -> Observer:
        assert self.observer is not None
        return self.observer

    def ensure_up(self) -> None:
        """The daemon runs and the broker listens (a behaviour before may have failed)."""
        if not self.broker.running:
            self.broker.start()
        if not self.daemon.running:
            self.daemon.start(float(self.rig.gateway.start_timeout))

    # -- switches ----------------------------------------------------------------------------
    def network(self, *, up: bool) -> None:
        net = self.rig.network
        if net.method == "broker":
            (self.broker.start if up else self.broker.stop)()
        else:
            run_command((net.on if up else net.off) or "", "network " + ("on" if up else "off"))

    def power_cut(self) -> None:
        power = self.rig.power
        if power.method == "command":  # a relay on the board (gateway.run = "remote")
            run_command(power.off or "", "power off")
            time.sleep(float(power.off_time))
            run_command(power.on or "", "power on")
        self.daemon.kill()

    def unplug(self, bus: Bus, *, plugged: bool) -> None:
        assert bus.unplug is not None
        if bus.unplug.method == "simulator":
            assert self.sims is not None
            (self.sims.replug if plugged else self.sims.unplug)(bus)
        else:
            run_command((bus.unplug.on if plugged else bus.unplug.off) or "",
                        f"{bus.instance} " + ("replug" if plugged else "unplug"))

    def dead(self, bus: Bus, dev: Device, *, dead: bool) -> None:
        switch = dev.dead
        assert switch is not None
        if switch.method == "simulator" or (switch.method == "console" and self.rig.simulated):
            assert self.sims is not None
            self.sims.set_dead(bus, dev, dead=dead)
            return
        line = switch.off if dead else switch.on
        if switch.method == "console":
            default = f"fault modbus {'silent' if dead else 'none'} unit {dev.unit}"
            board_command(self.rig, line or default)
        else:
            run_command(line or "", f"{dev.name} " + ("dead" if dead else "back"))

    # -- the buffer --------------------------------------------------------------------------
    def committed_high_water(self) -> int | None:
        """Highest committed seq in the buffer (the daemon stopped), after an integrity check;
        None when the buffer is not on this machine."""
        db = self.state / "buffer.db"
        if self.rig.remote or not db.exists():
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise AssertionError(f"buffer database damaged after the cut: {check}")
            # Acknowledged chunks are deleted, but the newest stays (empty when acked).
            row = con.execute("SELECT max(hi) FROM chunks").fetchone()
            hwm = con.execute("SELECT value FROM meta WHERE key = 'seq_hwm'").fetchone()
        finally:
            con.close()
        return max(int(row[0] or 0), int(hwm[0]) if hwm else 0)


def board_command(rig: Rig, line: str) -> str:
    """Send one line to the rig board's USB console; return its answer (``ok ...``)."""
    import serial  # noqa: PLC0415 - pyserial, only for real rig boards

    assert rig.board is not None
    deadline = time.monotonic() + float(rig.board.timeout)
    with serial.Serial(rig.board.console, 115200, timeout=0.1) as port:
        port.reset_input_buffer()
        port.write(line.encode() + b"\r\n")
        buf = b""
        while time.monotonic() < deadline:
            buf += port.read(256)
            for raw in buf.splitlines():
                answer = str(raw.decode(errors="replace")).strip()
                if answer.startswith(("ok", "error:")):
                    if not answer.startswith("ok"):
                        raise AssertionError(f"rig board refused {line!r}: {answer}")
                    return answer
    raise AssertionError(f"rig board at {rig.board.console} did not answer {shlex.quote(line)}")
