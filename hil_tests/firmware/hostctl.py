"""Start and talk to hil_tests/firmware/host.py: the rig board's core on this computer (CPython)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["FIRMWARE", "FirmwareHost"]

FIRMWARE = Path(__file__).resolve().parent


class FirmwareHost:
    """One host.py process: the board's ptys, and its console on stdin/stdout."""

    def __init__(self, config: dict[str, Any], workdir: Path, *,
                 serial_link: Path | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "rig.json"
        conf.write_text(json.dumps(config))
        cmd = [sys.executable, str(FIRMWARE / "host.py"), "--config", str(conf)]
        if serial_link is not None:
            cmd += ["--serial-link", str(serial_link)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""
        self.paths: dict[str, str] = {}
        self.banner = ""
        while not self.banner:
            line = self.readline()
            role, _, path = line.partition(" ")
            if role in ("modbus", "serial"):
                self.paths[role] = path
            else:
                self.banner = line

    def readline(self, timeout: float = 5.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"firmware host exited: {self._buf!r} {err}")
            if left <= 0:
                raise AssertionError(f"firmware host did not answer within {timeout:g}s; "
                                     f"it said {self._buf!r}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                self._buf += self.proc.stdout.read() or b""
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def command(self, line: str) -> str:
        """Type one console command; return the board's answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.readline()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> FirmwareHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
