"""Replay a script of inputs through the board's core and print every output as JSON lines.

    micropython hil_tests/firmware/replay.py script.json
    python hil_tests/firmware/replay.py script.json

Runs unchanged under MicroPython and CPython, so a test can require both to give the same
bytes. The script is ``{"config": {...}, "steps": [...]}``; a step is one of
``{"console": LINE}``, ``{"modbus": HEX, "ms": N, "t": SECONDS}``, ``{"tick": MS}`` (the
serial sensor's frames due then) or ``{"serial": HEX}`` (a query line to the sensor).
"""

import json
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0] if "/" in __file__ else ".")

from core.board import Board

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _hex(data: bytes) -> str:
    return "".join(f"{b:02x}" for b in data)


def _bytes(text: str) -> bytes:
    return bytes(int(text[i:i + 2], 16) for i in range(0, len(text), 2))


def step(board: Board, s: "dict[str, Any]") -> "Any":
    """The output of one step, JSON-ready."""
    if "console" in s:
        return board.console.handle(s["console"])
    if "modbus" in s and board.modbus is not None:
        answers = board.modbus.feed(_bytes(s["modbus"]), int(s["ms"]), float(s["t"]))
        return [[due, _hex(frame)] for due, frame in answers]
    if "tick" in s and board.sensor is not None:
        return [_hex(f) for f in board.sensor.due(int(s["tick"]))]
    if "serial" in s and board.sensor is not None:
        return [_hex(f) for f in board.sensor.feed(_bytes(s["serial"]))]
    return None


def main() -> None:
    with open(sys.argv[1]) as f:  # noqa: PTH123 - MicroPython has no pathlib
        script = json.load(f)
    board = Board(script["config"])
    print(json.dumps(board.banner()))
    for s in script["steps"]:
        print(json.dumps(step(board, s)))


main()
