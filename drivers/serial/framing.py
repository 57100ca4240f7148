"""Incremental framers: bytes in, frames out, every dropped byte counted.

A framer is pure (no I/O). ``feed(data) -> list[bytes]`` is the whole API most callers
need; the driver also uses ``push``/``pop`` so it can ``reject()`` a frame whose checksum
fails: fixed-length and length-prefixed framers then rescan from the frame's second byte,
which is how they resynchronize after a false start marker in noise.

``make_framer(cfg)`` builds one from a :class:`drivers.serial.config.FramingConfig` (or
any object with the same attributes); ``wire_frame(cfg, frame)`` is its inverse, for frames
the gateway sends.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Literal

__all__ = [
    "DelimitedFramer",
    "FixedFramer",
    "Framer",
    "FramerStats",
    "LengthFramer",
    "LineFramer",
    "make_framer",
    "wire_frame",
]


@dataclasses.dataclass
class FramerStats:
    """Counters of one framer (they only grow)."""

    frames: int = 0
    #: Bytes outside any frame: noise before a start marker, false starts.
    garbage_bytes: int = 0
    #: Frames longer than ``max_frame`` (skipped whole).
    oversized: int = 0
    #: Frames cut short: a new start inside a frame, an abort, a reset, a lost port.
    partial_dropped: int = 0
    #: Frames handed back with ``reject()`` (their first byte is counted as garbage).
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Framer:
    """Base class: buffer bytes with ``push``, take frames with ``pop``."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.stats = FramerStats()
        self._buf = bytearray()
        self._last: bytes | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes and return every frame now complete."""
        self.push(data)
        out = []
        while (frame := self.pop()) is not None:
            out.append(frame)
        return out

    def push(self, data: bytes) -> None:
        self._buf += data

    def pop(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive."""
        raise NotImplementedError

    def reject(self) -> None:
        """The frame ``pop`` just returned is bad: rescan it from its second byte."""
        frame, self._last = self._last, None
        if frame is None:
            return
        self._buf[:0] = frame[1:]
        self.stats.rejected += 1
        self.stats.garbage_bytes += 1

    def reset(self) -> None:
        """Forget buffered bytes (before a query, after a silence or a lost port)."""
        if self._buf:
            self.stats.partial_dropped += 1
        self._buf.clear()
        self._last = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _emit(self, frame: bytes) -> bytes:
        self.stats.frames += 1
        self._last = frame
        return frame


class LineFramer(Framer):
    """Frames end with a terminator (not included); empty lines are skipped."""

    def __init__(self, terminator: bytes, *, max_frame: int) -> None:
        super().__init__(max_frame)
        self._term = terminator
        self._skipping = False
        self._scan = 0

    def reject(self) -> None:
        """Lines have explicit ends: nothing to rescan."""
        self._last = None

    def reset(self) -> None:
        if self._skipping:
            self._buf.clear()
        super().reset()
        self._skipping = False
        self._scan = 0

    def pop(self) -> bytes | None:
        tail = len(self._term) - 1
        while True:
            idx = self._buf.find(self._term, self._scan)
            if idx < 0:
                if len(self._buf) - tail > self.max_frame:
                    if not self._skipping:
                        self.stats.oversized += 1
                        self._skipping = True
                    del self._buf[:len(self._buf) - tail]
                self._scan = max(0, len(self._buf) - tail)
                self._last = None
                return None
            frame = bytes(self._buf[:idx])
            del self._buf[:idx + len(self._term)]
            self._scan = 0
            if self._skipping:
                self._skipping = False
                continue
            if len(frame) > self.max_frame:
                self.stats.oversized += 1
                continue
            if frame:
                return self._emit(frame)


class _Synced(Framer):
    """Shared by fixed and length framers: hunt for the start marker."""

    def __init__(self, start: bytes, max_frame: int) -> None:
        super().__init__(max_frame)
        self._start = start

    def _sync(self) -> bool:
        """Drop bytes before the start marker; True once the buffer begins with it."""
        if not self._start:
            return True
        idx = self._buf.find(self._start)
        if idx < 0:
            drop = len(self._buf) - (len(self._start) - 1)
            if drop > 0:
                self.stats.garbage_bytes += drop
                del self._buf[:drop]
            return False
        if idx:
            self.stats.garbage_bytes += idx
            del self._buf[:idx]
        return True

    def _slide(self) -> None:
        """A false start: skip one byte and hunt again."""
        self.stats.garbage_bytes += 1
        del self._buf[:1]


class FixedFramer(_Synced):
    """Frames of ``length`` bytes, optionally starting with ``start`` and ending with ``end``."""

    def __init__(self, length: int, *, start: bytes = b"", end: bytes = b"",
                 max_frame: int) -> None:
        super().__init__(start, max_frame)
        self._length = length
        self._end = end

    def pop(self) -> bytes | None:
        while self._sync() and len(self._buf) >= self._length:
            frame = bytes(self._buf[:self._length])
            if self._end and not frame.endswith(self._end):
                self.stats.rejected += 1
                self._slide()
                continue
            del self._buf[:self._length]
            return self._emit(frame)
        self._last = None
        return None


class LengthFramer(_Synced):
    """Frames whose header carries their length.

    Frame size = ``length_at + length_size + value + length_adjust``; the frame returned
    includes the start marker, the header and everything after it.
    """

    def __init__(self, *, start: bytes = b"", length_at: int = 0, length_size: int = 1,
                 byte_order: Literal["big", "little"] = "big", length_adjust: int = 0,
                 max_frame: int) -> None:
        super().__init__(start, max_frame)
        self._at = length_at
        self._need = length_at + length_size
        self._order: Literal["big", "little"] = byte_order
        self._adjust = length_adjust

    def pop(self) -> bytes | None:
        while self._sync() and len(self._buf) >= self._need:
            value = int.from_bytes(self._buf[self._at:self._need], self._order)
            total = self._need + value + self._adjust
            if total > self.max_frame or total < max(self._need, 1):
                self.stats.oversized += int(total > self.max_frame)
                self._slide()
                continue
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            return self._emit(frame)
        self._last = None
        return None


_HUNT, _IN, _ESC, _SKIP = range(4)


class DelimitedFramer(Framer):
    """Frames between delimiter bytes, with byte stuffing.

    With ``start`` different from ``end``, bytes outside start..end are garbage and a start
    inside a frame begins a new one (the cut one is counted). Without ``start`` (or with
    start == end, HDLC flags) every ``end`` closes one frame and opens the next; bytes before
    the first ``end`` are dropped, since we may have joined mid-frame. After ``escape`` the
    next byte is looked up in ``escape_map`` (SLIP, RFC 1055) or XORed with ``escape_xor``
    (HDLC/PPP, RFC 1662 §4.2); escape followed by a delimiter aborts the frame (RFC 1662 §4.3).
    """

    def __init__(self, *, end: int, start: int | None = None, escape: int | None = None,
                 escape_xor: int = 0x20, escape_map: dict[int, int] | None = None,
                 max_frame: int) -> None:
        super().__init__(max_frame)
        self._end = end
        self._start = end if start is None else start
        self._flags = self._start == end
        self._escape = escape
        self._xor = escape_xor
        self._map = escape_map or {}
        self._state = _HUNT
        self._cur = bytearray()
        self._out: deque[bytes] = deque()

    def push(self, data: bytes) -> None:
        for byte in data:
            self._byte(byte)

    def pop(self) -> bytes | None:
        self._last = None
        return self._emit(self._out.popleft()) if self._out else None

    def reject(self) -> None:
        """Delimiters are explicit: nothing to rescan."""
        self._last = None

    def reset(self) -> None:
        if self._state in (_IN, _ESC) and self._cur:
            self.stats.partial_dropped += 1
        self.stats.partial_dropped += len(self._out)
        self._out.clear()
        self._cur.clear()
        self._state = _HUNT

    @property
    def buffered(self) -> int:
        return len(self._cur) + sum(map(len, self._out))

    def _open(self) -> None:
        self._cur.clear()
        self._state = _IN

    def _close(self) -> None:
        if self._cur:
            self._out.append(bytes(self._cur))
        self._cur.clear()
        self._state = _IN if self._flags else _HUNT

    def _cut(self) -> None:
        self.stats.partial_dropped += 1
        self._cur.clear()

    def _byte(self, byte: int) -> None:  # noqa: C901 - one state machine reads best whole
        state = self._state
        if state in (_HUNT, _SKIP):
            if byte == self._end and (self._flags or state == _SKIP):
                self._state = _IN if self._flags else _HUNT
                self._cur.clear()
            elif byte == self._start and not self._flags:
                self._open()
            elif state == _HUNT:
                self.stats.garbage_bytes += 1
        elif byte == self._end:
            if state == _ESC:
                self._cut()
                self._state = _IN if self._flags else _HUNT
            else:
                self._close()
        elif byte == self._start:  # only reached when start != end
            if self._cur or state == _ESC:
                self._cut()
            self._open()
        elif state == _ESC:
            self._append(self._map.get(byte, byte ^ self._xor))
        elif byte == self._escape:
            self._state = _ESC
        else:
            self._append(byte)

    def _append(self, byte: int) -> None:
        if len(self._cur) >= self.max_frame:
            self.stats.oversized += 1
            self._cur.clear()
            self._state = _SKIP
            return
        self._cur.append(byte)
        self._state = _IN


def _one(value: Any) -> int | None:
    data = bytes.fromhex(value) if value else b""
    return data[0] if data else None


def make_framer(cfg: Any) -> Framer:
    """The framer a :class:`~drivers.serial.config.FramingConfig` describes."""
    if cfg.mode == "line":
        return LineFramer(cfg.terminator.encode("latin-1"), max_frame=cfg.max_frame)
    start = bytes.fromhex(cfg.start) if cfg.start else b""
    if cfg.mode == "fixed":
        end = bytes.fromhex(cfg.end) if cfg.end else b""
        return FixedFramer(cfg.length, start=start, end=end, max_frame=cfg.max_frame)
    if cfg.mode == "length":
        return LengthFramer(start=start, length_at=cfg.length_at, length_size=cfg.length_size,
                            byte_order=cfg.length_byte_order, length_adjust=cfg.length_adjust,
                            max_frame=cfg.max_frame)
    end_byte = _one(cfg.end)
    if end_byte is None:
        raise ValueError("delimited framing needs an end byte")
    escape_map = {int(k, 16): int(v, 16) for k, v in cfg.escape_map.items()}
    return DelimitedFramer(end=end_byte, start=_one(cfg.start), escape=_one(cfg.escape),
                           escape_xor=cfg.escape_xor, escape_map=escape_map,
                           max_frame=cfg.max_frame)


def _stuffed(frame: bytes, special: set[int], escape: int | None, xor: int,
             escape_map: dict[int, int]) -> bytes:
    codes = {decoded: code for code, decoded in escape_map.items()}
    out = bytearray()
    for byte in frame:
        if byte not in special:
            out.append(byte)
        elif escape is None:
            raise ValueError(f"byte 0x{byte:02X} is a delimiter and framing has no escape")
        elif byte in codes:
            out += bytes((escape, codes[byte]))
        elif xor and (byte ^ xor) not in special:
            out += bytes((escape, byte ^ xor))
        else:
            raise ValueError(f"byte 0x{byte:02X} cannot be escaped with escape_xor = {xor}")
    return bytes(out)


def wire_frame(cfg: Any, frame: bytes) -> bytes:
    """The bytes that carry ``frame`` under a framing config (what its framer would cut out).

    ``line`` appends the terminator; ``delimited`` adds the delimiters and stuffs bytes
    (RFC 1055, RFC 1662 §4.2); ``fixed`` and ``length`` frames already hold their start
    bytes and header, so they go as they are.

    Raises:
        ValueError: the frame cannot be carried (a terminator or unescapable delimiter in it).
    """
    if cfg.mode == "line":
        term: bytes = cfg.terminator.encode("latin-1")
        if term in frame:
            raise ValueError(f"the frame contains the terminator {term!r}")
        return frame + term
    if cfg.mode != "delimited":
        return frame
    end = _one(cfg.end)
    if end is None:
        raise ValueError("delimited framing needs an end byte")
    start = _one(cfg.start)
    escape = _one(cfg.escape)
    special = {end} | {b for b in (start, escape) if b is not None}
    escape_map = {int(k, 16): int(v, 16) for k, v in cfg.escape_map.items()}
    body = _stuffed(frame, special, escape, cfg.escape_xor, escape_map)
    return bytes((end if start is None else start,)) + body + bytes((end,))
