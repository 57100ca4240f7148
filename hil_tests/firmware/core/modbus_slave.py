"""Modbus RTU slave: frames in, answers out, with switchable faults.

Frames are cut by request length per function code (Modbus Application Protocol V1.1b3 §6)
and by silence: bytes older than ``idle_ms`` without a complete frame are dropped, the t3.5
rule of Modbus over Serial Line V1.02 §2.5.1.1 with a margin for USB adapters. A request with
a bad CRC is ignored, as the standard says (§2.5.1.2); the parser then slides one byte on, so
noise before a request does not hide it. Answers come back as
``(due_ms, frame)`` so the caller can send a slow answer later without blocking.
"""

from .crc import Rng, crc_ok, with_crc
from .regmap import ILLEGAL_ADDRESS, RegisterMap

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: function code -> table it reads or writes (Modbus Application Protocol V1.1b3 §6).
READS = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
WRITES = {5: "coil", 6: "holding", 15: "coil", 16: "holding"}
#: Most items one read may ask for (§6.1-6.4).
MAX_ITEMS = {1: 2000, 2: 2000, 3: 125, 4: 125}
ILLEGAL_FUNCTION = 1
ILLEGAL_VALUE = 3
FAULTS = ("none", "silent", "exception", "badcrc", "short", "slow", "noise")


class Fault:
    """What a unit does wrong: kind, its argument (code, ms or rate) and how often."""

    def __init__(self, kind: str = "none", arg: float = 0.0, rate: float = 1.0) -> None:
        if kind not in FAULTS:
            raise ValueError("unknown fault " + kind + "; expected one of " + ", ".join(FAULTS))
        self.kind = kind
        self.arg = arg
        self.rate = rate

    def describe(self) -> str:
        text = self.kind
        if self.kind in ("exception", "slow", "noise"):
            text += " " + _num(self.arg)
        if self.rate < 1.0:
            text += " rate " + _num(self.rate)
        return text


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def request_length(buf: "bytes | bytearray") -> int:
    """Bytes the request at the start of ``buf`` takes; 0 when not known yet."""
    if len(buf) < 2:
        return 0
    fc = buf[1]
    if fc in READS or fc in (5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else 0
    return 0


def _bits_payload(items: "list[int]") -> bytes:
    """Bits packed eight per byte, first bit in the lowest bit (§6.1)."""
    out = bytearray((len(items) + 7) // 8)
    for i, bit in enumerate(items):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


class ModbusSlave:
    """The units a rig board plays on one RS-485 line."""

    def __init__(self, units: "list[RegisterMap]", *, rng: "Rng | None" = None,
                 idle_ms: int = 50) -> None:
        self.units = {u.unit: u for u in units}
        self.faults: dict[int, Fault] = {}
        self.rng = rng or Rng(1)
        self.idle_ms = idle_ms
        self.buf = bytearray()
        self.last_rx = 0
        self.stats = {"requests": 0, "answers": 0, "crc_errors": 0, "not_mine": 0,
                      "dropped_bytes": 0, "faults": 0}

    def set_fault(self, fault: Fault, unit: "int | None" = None) -> None:
        """Give one unit (or every unit, for None) a fault; kind "none" heals."""
        for u in self.units if unit is None else [unit]:
            if u not in self.units:
                raise ValueError("no unit " + str(u) + " on this board")
            if fault.kind == "none":
                self.faults.pop(u, None)
            else:
                self.faults[u] = fault

    def feed(self, data: bytes, now_ms: int, t: float) -> "list[tuple[int, bytes]]":
        """Take received bytes; return the answers as (due time in ms, frame)."""
        out: list[tuple[int, bytes]] = []
        if self.buf and now_ms - self.last_rx > self.idle_ms:
            out.extend(self._idle_frame(now_ms, t))
        self.last_rx = now_ms
        self.buf.extend(data)
        while len(self.buf) >= 2:
            need = request_length(self.buf)
            if need == 0 and not (self.buf[1] in READS or self.buf[1] in WRITES):
                if len(self.buf) >= 4 and crc_ok(bytes(self.buf)):
                    # A function we do not serve, whole in one piece: exception 1 (§7).
                    frame, self.buf = bytes(self.buf), bytearray()
                    out.extend(self.handle(frame, now_ms, t))
                    return out
                self.stats["dropped_bytes"] += 1
                self.buf = self.buf[1:]
                continue
            if need == 0 or len(self.buf) < need:
                return out
            frame = bytes(self.buf[:need])
            if not crc_ok(frame):
                self.stats["crc_errors"] += 1
                self.stats["dropped_bytes"] += 1
                self.buf = self.buf[1:]
                continue
            self.buf = self.buf[need:]
            out.extend(self.handle(frame, now_ms, t))
        return out

    def tick(self, now_ms: int, t: float) -> "list[tuple[int, bytes]]":
        """Call when nothing arrived: a silence may have completed a frame."""
        if self.buf and now_ms - self.last_rx > self.idle_ms:
            return self._idle_frame(now_ms, t)
        return []

    def _idle_frame(self, now_ms: int, t: float) -> "list[tuple[int, bytes]]":
        """A silence ended what is in the buffer: answer it if it is a whole frame."""
        frame = bytes(self.buf)
        self.buf = bytearray()
        if crc_ok(frame) and len(frame) >= 4:
            return self.handle(frame, now_ms, t)
        self.stats["dropped_bytes"] += len(frame)
        return []

    def handle(self, frame: bytes, now_ms: int, t: float) -> "list[tuple[int, bytes]]":
        """Answer one CRC-checked request frame (unit, PDU, CRC)."""
        unit = frame[0]
        if unit != 0 and unit not in self.units:
            self.stats["not_mine"] += 1
            return []
        self.stats["requests"] += 1
        targets = list(self.units.values()) if unit == 0 else [self.units[unit]]
        pdu = b""
        for regmap in targets:
            pdu = self.execute(regmap, frame[1:-2], t)
        if unit == 0:
            return []  # broadcast: executed, never answered (Modbus over Serial Line §2.1)
        fault = self.faults.get(unit)
        if fault is not None and self.rng.random() >= fault.rate:
            fault = None
        return self._answer(unit, pdu, fault, now_ms)

    def _answer(self, unit: int, pdu: bytes, fault: "Fault | None",
                now_ms: int) -> "list[tuple[int, bytes]]":
        due = now_ms
        if fault is not None:
            self.stats["faults"] += 1
            if fault.kind == "silent":
                return []
            if fault.kind == "exception":
                pdu = bytes([pdu[0] | 0x80, int(fault.arg)])
            if fault.kind == "slow":
                due = now_ms + int(fault.arg)
        frame = with_crc(bytes([unit]) + pdu)
        if fault is not None:
            frame = self._damage(frame, fault)
        self.stats["answers"] += 1
        return [(due, frame)]

    def _damage(self, frame: bytes, fault: Fault) -> bytes:
        if fault.kind == "badcrc":
            return frame[:-1] + bytes([frame[-1] ^ 0xFF])
        if fault.kind == "short":
            return frame[:-3]
        if fault.kind == "noise" and self.rng.random() < fault.arg:
            i = self.rng.below(len(frame))
            return frame[:i] + bytes([frame[i] ^ (1 << self.rng.below(8))]) + frame[i + 1:]
        return frame

    def execute(self, regmap: RegisterMap, pdu: bytes, t: float) -> bytes:
        """The answer PDU to a request PDU (an exception PDU when refused)."""
        fc = pdu[0]
        if fc in READS and len(pdu) == 5:
            return self._read(regmap, fc, pdu, t)
        if fc in WRITES:
            return self._write(regmap, fc, pdu)
        return bytes([fc | 0x80, ILLEGAL_FUNCTION])

    def _read(self, regmap: RegisterMap, fc: int, pdu: bytes, t: float) -> bytes:
        address = pdu[1] << 8 | pdu[2]
        count = pdu[3] << 8 | pdu[4]
        if not 1 <= count <= MAX_ITEMS[fc]:
            return bytes([fc | 0x80, ILLEGAL_VALUE])
        if address + count > 65536:
            return bytes([fc | 0x80, ILLEGAL_ADDRESS])
        items = regmap.read(READS[fc], address, count, t)
        if isinstance(items, int):
            return bytes([fc | 0x80, items])
        if fc in (1, 2):
            payload = _bits_payload(items)
        else:
            payload = b"".join(bytes([(r >> 8) & 0xFF, r & 0xFF]) for r in items)
        return bytes([fc, len(payload)]) + payload

    def _write(self, regmap: RegisterMap, fc: int, pdu: bytes) -> bytes:
        """FC 5, 6, 15, 16 (§6.5, 6.6, 6.11, 6.12): store, answer the echo (or its head)."""
        address = pdu[1] << 8 | pdu[2] if len(pdu) >= 5 else 0
        if fc == 5 and len(pdu) == 5:
            value = pdu[3] << 8 | pdu[4]
            if value not in (0x0000, 0xFF00):
                return bytes([fc | 0x80, ILLEGAL_VALUE])
            if regmap.refuses("coil", address, 1):
                return bytes([fc | 0x80, ILLEGAL_ADDRESS])
            regmap.write("coil", address, [1 if value else 0])
            return pdu
        if fc == 6 and len(pdu) == 5:
            if regmap.refuses("holding", address, 1):
                return bytes([fc | 0x80, ILLEGAL_ADDRESS])
            regmap.write("holding", address, [pdu[3] << 8 | pdu[4]])
            return pdu
        count = pdu[3] << 8 | pdu[4] if len(pdu) >= 6 else 0
        data = pdu[6:]
        size = (count + 7) // 8 if fc == 15 else 2 * count
        if fc in (15, 16) and count and len(pdu) == 6 + pdu[5] and len(data) == size:
            if fc == 15:
                items = [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
            else:
                items = [data[2 * i] << 8 | data[2 * i + 1] for i in range(count)]
            if regmap.refuses(WRITES[fc], address, count):
                return bytes([fc | 0x80, ILLEGAL_ADDRESS])
            regmap.write(WRITES[fc], address, items)
            return pdu[:5]
        return bytes([fc | 0x80, ILLEGAL_VALUE])


def unit_from_config(spec: "dict[str, Any]") -> RegisterMap:
    """A unit from its board config entry: points, values, raw writes, unmapped policy."""
    regmap = RegisterMap(int(spec["unit"]), spec.get("points", []), values=spec.get("values"),
                         unmapped=str(spec.get("unmapped", "zero")))
    for raw in spec.get("raw", []):
        regmap.write(str(raw["table"]), int(raw["address"]), [int(x) for x in raw["items"]])
    return regmap
