"""Rig board firmware for a Raspberry Pi Pico (RP2040) running MicroPython.

Plays a Modbus RTU slave on an RS-485 transceiver and a streaming serial sensor on a second
UART, from ``rig.json``; fault injection comes as lines on the USB console (see
``core/console.py``). Wiring (docs/HIL.md): UART0 TX GP0 -> transceiver DI, RX GP1 <- RO,
GP2 -> DE and /RE tied together (high while sending); UART1 TX GP4 / RX GP5 for the sensor.
"""

import json
import select
import sys
import time

from core.board import Board
from machine import UART, Pin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MODBUS_UART, MODBUS_TX, MODBUS_RX, MODBUS_DE = 0, 0, 1, 2
SERIAL_UART, SERIAL_TX, SERIAL_RX = 1, 4, 5
#: MicroPython's UART parity argument: None, 0 (even) or 1 (odd).
PARITY = {"N": None, "E": 0, "O": 1}


class Clock:
    """Milliseconds since boot that never wrap (ticks_ms wraps after about 6 days)."""

    def __init__(self) -> None:
        self.last = time.ticks_ms()
        self.ms = 0

    def now(self) -> int:
        tick = time.ticks_ms()
        self.ms += time.ticks_diff(tick, self.last)
        self.last = tick
        return self.ms


def open_uart(index: int, tx: int, rx: int, cfg: "dict[str, Any]", default_baud: int) -> UART:
    parity = PARITY.get(str(cfg.get("parity", "N")).upper())
    return UART(index, baudrate=int(cfg.get("baud", default_baud)), bits=8, parity=parity,
                stop=int(cfg.get("stop_bits", 1)), tx=Pin(tx), rx=Pin(rx))


class Rig:
    """The main loop's state: the board, its UARTs, answers waiting for their time."""

    def __init__(self, config: "dict[str, Any]") -> None:
        self.board = Board(config)
        self.clock = Clock()
        self.pending: list[tuple[int, bytes]] = []
        self.line = ""
        self.modbus_uart: UART | None = None
        self.serial_uart: UART | None = None
        self.de = Pin(MODBUS_DE, Pin.OUT, value=0)
        if self.board.modbus is not None:
            self.modbus_uart = open_uart(MODBUS_UART, MODBUS_TX, MODBUS_RX,
                                         config["modbus"], 9600)
        if self.board.sensor is not None:
            self.serial_uart = open_uart(SERIAL_UART, SERIAL_TX, SERIAL_RX,
                                         config["serial"], 4800)
        self.console = select.poll()
        self.console.register(sys.stdin, select.POLLIN)

    def send_rs485(self, frame: bytes) -> None:
        """Drive the line only while sending (half duplex): DE high, write, drain, DE low."""
        if self.modbus_uart is None:
            return
        self.de.value(1)
        self.modbus_uart.write(frame)
        self.modbus_uart.flush()
        self.de.value(0)

    def step_modbus(self, now: int) -> None:
        slave, uart = self.board.modbus, self.modbus_uart
        if slave is None or uart is None:
            return
        data = uart.read() if uart.any() else None
        if data:
            self.pending.extend(slave.feed(data, now, now / 1000))
        else:
            self.pending.extend(slave.tick(now, now / 1000))
        due = [p for p in self.pending if p[0] <= now]
        if due:
            self.pending = [p for p in self.pending if p[0] > now]
            for _t, frame in sorted(due):
                self.send_rs485(frame)

    def step_serial(self, now: int) -> None:
        sensor, uart = self.board.sensor, self.serial_uart
        if sensor is None or uart is None:
            return
        data = uart.read() if uart.any() else None
        out = sensor.feed(data) if data else []
        for frame in out + sensor.due(now):
            uart.write(frame)

    def step_console(self) -> None:
        while self.console.poll(0):
            ch = sys.stdin.read(1)
            if ch in ("\r", "\n"):
                answer = self.board.console.handle(self.line)
                self.line = ""
                if answer:
                    print(answer)
            elif ch:
                self.line += ch

    def run(self) -> None:
        print(self.board.banner())
        while True:
            now = self.clock.now()
            self.step_modbus(now)
            self.step_serial(now)
            self.step_console()


def main() -> None:
    with open("rig.json") as f:  # noqa: PTH123 - MicroPython has no pathlib
        config = json.load(f)
    Rig(config).run()


main()
