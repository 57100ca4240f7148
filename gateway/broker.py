"""A private mosquitto on a free loopback port (demo, bench, tests), restartable in place."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["BrokerError", "Mosquitto", "free_port"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerError(RuntimeError):
    """mosquitto is missing or would not start."""


class Mosquitto:
    """One broker process; ``extra`` is appended to its config (TLS, ACL, limits)."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra: str = "",
                 listener_extra: str = "", persistence: bool = False) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise BrokerError("mosquitto is not installed: `apt-get install mosquitto` (as root)")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.extra = extra
        self.listener_extra = listener_extra
        self.proc: subprocess.Popen[bytes] | None = None
        #: Keep sessions and queued QoS 1 messages across stop/start (saved on a clean stop).
        self.persistence = persistence

    def write_conf(self) -> None:
        lines = [
            "user root" if os.geteuid() == 0 else "",
            "persistence true" if self.persistence else "persistence false",
            f"persistence_location {self.workdir}/" if self.persistence else "",
            "max_queued_messages 100000",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "per_listener_settings true" if "per_listener_settings" in self.extra else "",
            f"listener {self.port} 127.0.0.1",
            self.listener_extra or "allow_anonymous true",
            self.extra.replace("per_listener_settings true", ""),
        ]
        self.conf.write_text("\n".join(x for x in lines if x) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.write_conf()
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise BrokerError(f"mosquitto exited: {err}{log}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
