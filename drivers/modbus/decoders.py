"""A read block's items -> its points' values, a whole block at a time. Pure, no I/O.

:func:`codec.decode` is the definition, one point at a time; a :class:`BlockDecoder` gives the
same values for every point of a block with a few C-level calls. It is built once per block
of a plan: the numeric points of one layout become one ``struct.Struct`` over the block's
bytes (pad bytes over the registers in between), so one ``unpack_from`` decodes them all.

The layouts come from two choices (``codec`` has the four names): the block's bytes as sent
(each register big-endian) or with the two bytes of every register swapped, then read
most-significant first (``>``) or least-significant first (``<``)::

    ABCD  as sent, >     CDAB  swapped, <     BADC  swapped, >     DCBA  as sent, <

so the bytes are swapped when byte order and word order differ, and read ``>`` when the word
order is big. A one-register type has no word order: it is read as ABCD or BADC.

After the unpack only what needs it is touched: a float is checked for NaN and infinity
(OUT_OF_RANGE), a float32 becomes its shortest decimal, and scale and offset apply; integers
without scale or offset are used as unpacked. Strings and bits use ``codec.decode``.
"""

from __future__ import annotations

import math
import struct
from array import array
from typing import TYPE_CHECKING

from drivers.api import Quality, Value
from drivers.modbus import codec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from drivers.modbus.codec import PointSpec

__all__ = ["BlockDecoder", "swapped"]

_CODES = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q",
          "f32": "f", "f64": "d"}
_GOOD = Quality.GOOD
_BAD = (None, Quality.OUT_OF_RANGE)

def swapped(data: bytes) -> bytes:
    """``data`` with the two bytes of every register exchanged."""
    regs = array("H")
    regs.frombytes(data)
    regs.byteswap()
    return regs.tobytes()


def _scaled_int(spec: PointSpec) -> Callable[[float], tuple[Value, Quality]]:
    # An integer's shortest repr has no decimals, so codec's rounding places are fixed.
    scale, offset = spec.scale, spec.offset
    places = max(codec.places(scale), codec.places(offset))
    return lambda raw: (round(raw * scale + offset, places), _GOOD)


def _floating(spec: PointSpec) -> Callable[[float], tuple[Value, Quality]]:
    short = spec.type == "f32"
    plain = spec.scale == 1 and spec.offset == 0

    def finish(raw: float) -> tuple[Value, Quality]:
        if not math.isfinite(raw):
            return _BAD
        if short:
            raw = codec.short_f32(raw)
        return (raw, _GOOD) if plain else (codec.scaled(raw, spec), _GOOD)

    return finish


def _finish(spec: PointSpec) -> Callable[[float], tuple[Value, Quality]] | None:
    if spec.type in ("f32", "f64"):
        return _floating(spec)
    if spec.scale == 1 and spec.offset == 0:
        return None
    return _scaled_int(spec)


def _layout(spec: PointSpec) -> tuple[bool, str]:
    """(bytes swapped, struct byte order) for a numeric point."""
    word = spec.word_order if codec.REGISTERS[spec.type] > 1 else "big"
    return spec.byte_order != word, ">" if word == "big" else "<"


class _Part:
    """One ``struct`` over the block's bytes (as sent or swapped) and the points it yields."""

    def __init__(self, swap: bool, endian: str) -> None:
        self.swap = swap
        self.endian = endian
        self.fmt = ""
        self.end = 0  # registers from the block's start
        self.slots: list[list[int]] = []  # per item: indexes of the points it is
        self.finish: list[Callable[[float], tuple[Value, Quality]] | None] = []
        self.struct = struct.Struct("")

    def add(self, offset: int, spec: PointSpec, index: int) -> None:
        self.fmt += f"{2 * (offset - self.end)}x" if offset > self.end else ""
        self.fmt += _CODES[spec.type]
        self.end = offset + spec.count
        self.slots.append([index])
        self.finish.append(_finish(spec))

    def seal(self) -> None:
        self.struct = struct.Struct(self.endian + self.fmt)


class BlockDecoder:
    """Decodes one block's items into its points' values, in ``points`` order."""

    def __init__(self, table: str, start: int, points: Sequence[PointSpec]) -> None:
        self.points = tuple(points)
        self._bits = table in codec.BIT_TABLES
        self._offsets = [p.address - start for p in self.points]
        self._parts: list[_Part] = []
        self._others: list[int] = []  # strings and register bits: codec.decode
        if not self._bits:
            self._build()
        #: One struct of plain points in order: its tuple is the values as they are.
        self._direct = (len(self._parts) == 1 and not self._others
                        and self._parts[0].slots == [[i] for i in range(len(self.points))]
                        and not any(self._parts[0].finish))

    def _build(self) -> None:
        shared: dict[tuple[object, ...], _Part] = {}
        open_parts: dict[tuple[bool, str], _Part] = {}
        for i in sorted(range(len(self.points)), key=lambda i: self._offsets[i]):
            spec, offset = self.points[i], self._offsets[i]
            if spec.type in ("string", "bit"):
                self._others.append(i)
                continue
            layout = _layout(spec)
            # Aliases (same registers, type, layout, scale, offset) share one item.
            key = (*layout, offset, spec.type, spec.scale, spec.offset)
            if key in shared:
                shared[key].slots[-1].append(i)
                continue
            part = open_parts.get(layout)
            if part is None or offset < part.end:  # overlaps what the struct has: a new one
                part = open_parts[layout] = _Part(*layout)
                self._parts.append(part)
            part.add(offset, spec, i)
            shared[key] = part
        for part in self._parts:
            part.seal()

    def decode(self, data: bytes | Sequence[bool]) -> tuple[Sequence[Value],
                                                          Sequence[Quality] | None]:
        """The values of the block's points and, when any is not GOOD, their qualities.

        ``data`` is the block's registers as received (``2 * count`` bytes, each register
        big-endian) or, for a coil or discrete block, its bits.
        """
        if self._bits:
            return [bool(data[o]) for o in self._offsets], None
        raw = bytes(data)
        if self._direct:
            part = self._parts[0]
            return part.struct.unpack_from(swapped(raw) if part.swap else raw), None
        return self._decode_parts(raw)

    def _decode_parts(self, raw: bytes) -> tuple[list[Value], list[Quality] | None]:
        values: list[Value] = [None] * len(self.points)
        qualities: list[Quality] | None = None
        flipped: bytes | None = None
        for part in self._parts:
            if part.swap and flipped is None:
                flipped = swapped(raw)
            items = part.struct.unpack_from(flipped if part.swap and flipped else raw)
            for item, slots, finish in zip(items, part.slots, part.finish, strict=True):
                value, quality = (item, _GOOD) if finish is None else finish(item)
                if quality is not _GOOD:
                    qualities = qualities or [_GOOD] * len(self.points)
                for i in slots:
                    values[i] = value
                    if quality is not _GOOD:
                        qualities[i] = quality  # type: ignore[index]
        for i in self._others:
            spec, offset = self.points[i], self._offsets[i]
            regs = list(struct.unpack_from(f">{spec.count}H", raw, 2 * offset))
            values[i], quality = codec.decode(spec, regs)
            if quality is not _GOOD:
                qualities = qualities or [_GOOD] * len(self.points)
                qualities[i] = quality
        return values, qualities

