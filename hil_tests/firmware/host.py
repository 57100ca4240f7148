"""Run the rig board's core on this computer, over pty pairs, for tests and benches.

    python hil_tests/firmware/host.py --config rig.json [--modbus-link P] [--serial-link P]

Prints ``modbus <path>`` and ``serial <path>`` (the device paths to give the gateway), then
the board's banner; reads console commands on stdin and answers on stdout, exactly like the
Pico's USB console. Two commands exist only here: ``unplug serial`` and ``plug serial``
(close the sensor's pty and open a new one behind the same link, like pulling a USB cable).
EOF stdin ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import select
import sys
import time
import tty
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: find the repo

from hil_tests.firmware.core.board import Board


class Pty:
    """A pty pair whose slave path (or a symlink to it) plays the device's serial port."""

    def __init__(self, link: Path | None) -> None:
        self.link = link
        self.master = -1
        self.slave = -1
        self.path = ""
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # a UART carries bytes: no echo, no line editing
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.path)
            tmp.replace(self.link)

    def unplug(self) -> None:
        if self.master < 0:
            return
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1

    @property
    def name(self) -> str:
        return str(self.link) if self.link is not None else self.path

    def read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:  # EIO: nobody holds the slave side open right now
            return b""

    def write(self, data: bytes) -> None:
        # Nobody reading and the tty buffer full: a UART drops bytes too.
        with contextlib.suppress(OSError):
            os.write(self.master, data)


class Host:
    """The main loop: the same steps as main.py, with ptys instead of UARTs."""

    def __init__(self, config: dict[str, Any], modbus_link: Path | None,
                 serial_link: Path | None) -> None:
        self.board = Board(config)
        self.t0 = time.monotonic()
        self.pending: list[tuple[int, int, bytes]] = []
        self.order = 0
        self.typed = b""
        self.modbus = Pty(modbus_link) if self.board.modbus is not None else None
        self.serial = Pty(serial_link) if self.board.sensor is not None else None

    def now(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def queue(self, answers: list[tuple[int, bytes]]) -> None:
        for due, frame in answers:
            self.order += 1
            heapq.heappush(self.pending, (due, self.order, frame))

    def console(self, line: str) -> str:
        words = line.split()
        if words in (["unplug", "serial"], ["plug", "serial"]) and self.serial is not None:
            if words[0] == "unplug":
                self.serial.unplug()
            elif self.serial.master < 0:
                self.serial.plug()
            return f"ok {words[0]} serial {self.serial.name}"
        return self.board.console.handle(line)

    def step(self, readable: list[int]) -> None:
        now = self.now()
        slave = self.board.modbus
        if self.modbus is not None and slave is not None:
            data = self.modbus.read() if self.modbus.master in readable else b""
            self.queue(slave.feed(data, now, now / 1000) if data else slave.tick(now, now / 1000))
            while self.pending and self.pending[0][0] <= now:
                self.modbus.write(heapq.heappop(self.pending)[2])
        sensor = self.board.sensor
        if self.serial is not None and sensor is not None and self.serial.master >= 0:
            data = self.serial.read() if self.serial.master in readable else b""
            for frame in (sensor.feed(data) if data else []) + sensor.due(now):
                self.serial.write(frame)

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        while True:
            fds = [stdin] + [p.master for p in (self.modbus, self.serial)
                             if p is not None and p.master >= 0]
            wait = 0.005
            if self.pending:
                wait = min(wait, max(0.0, (self.pending[0][0] - self.now()) / 1000))
            readable, _, _ = select.select(fds, [], [], wait)
            if stdin in readable:
                data = os.read(stdin, 4096)
                if not data:
                    return
                self.typed += data
                while b"\n" in self.typed:
                    line, _, self.typed = self.typed.partition(b"\n")
                    answer = self.console(line.decode(errors="replace"))
                    if answer:
                        print(answer, flush=True)
            self.step(readable)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="the board's rig.json")
    p.add_argument("--modbus-link", type=Path, help="symlink to create for the Modbus pty")
    p.add_argument("--serial-link", type=Path, help="symlink to create for the sensor pty")
    args = p.parse_args(argv)
    host = Host(json.loads(args.config.read_text()), args.modbus_link, args.serial_link)
    if host.modbus is not None:
        print(f"modbus {host.modbus.name}", flush=True)
    if host.serial is not None:
        print(f"serial {host.serial.name}", flush=True)
    print(host.board.banner(), flush=True)
    try:
        host.run()
    except KeyboardInterrupt:
        pass
    finally:
        for pty in (host.modbus, host.serial):
            if pty is not None:
                pty.unplug()
    return 0


if __name__ == "__main__":
    sys.exit(main())
