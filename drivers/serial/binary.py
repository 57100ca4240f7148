"""Binary frames described by a struct layout, a checksum, and a scale per field."""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Sequence
from typing import Literal

from drivers.api import Quality
from drivers.serial._model import ChecksumError, DecodeError, Field, scaled
from drivers.serial.checksums import Checksum

__all__ = ["TYPES", "BinaryDecoder", "BinaryField", "ChecksumSpec", "codec", "layout"]

#: Field type -> (struct code, size in bytes).
TYPES: dict[str, tuple[str, int]] = {
    "u8": ("B", 1), "i8": ("b", 1), "u16": ("H", 2), "i16": ("h", 2),
    "u32": ("I", 4), "i32": ("i", 4), "u64": ("Q", 8), "i64": ("q", 8),
    "f32": ("f", 4), "f64": ("d", 8),
}


def codec(kind: str, byte_order: Literal["big", "little"]) -> struct.Struct:
    """The struct that packs and unpacks one field of ``kind`` (a key of :data:`TYPES`)."""
    return struct.Struct((">" if byte_order == "big" else "<") + TYPES[kind][0])


def layout(fields: Sequence[tuple[int | None, str]]) -> list[tuple[int, int]]:
    """(offset, size) per field: an explicit offset, or right after the previous field."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for at, kind in fields:
        size = TYPES.get(kind, ("", 1))[1]
        start = cursor if at is None else at
        spans.append((start, size))
        cursor = start + size
    return spans


@dataclasses.dataclass(frozen=True, slots=True)
class BinaryField:
    """One field of a binary layout, already placed."""

    name: str
    at: int
    kind: str
    scale: float = 1.0
    offset: float = 0.0
    decimals: int | None = None
    unit: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ChecksumSpec:
    """Where the checksum sits and what it covers: ``frame[start:at]``."""

    algorithm: Checksum
    at: int
    start: int = 0
    byte_order: Literal["big", "little"] | None = None

    def position(self, length: int) -> int:
        return self.at if self.at >= 0 else length + self.at

    def verify(self, frame: bytes) -> None:
        pos = self.position(len(frame))
        end = pos + self.algorithm.size
        if pos < self.start or end > len(frame):
            raise DecodeError(f"frame of {len(frame)} bytes has no room for the "
                              f"{self.algorithm.name} at byte {pos}")
        try:
            self.algorithm.verify(frame[self.start:pos], frame[pos:end], self.byte_order)
        except ValueError as exc:
            raise ChecksumError(str(exc)) from None

    def seal(self, frame: bytes) -> bytes:
        """``frame`` with its checksum computed and written in place (the inverse of verify).

        Raises:
            ValueError: the frame has no room for the checksum at its position.
        """
        pos = self.position(len(frame))
        end = pos + self.algorithm.size
        if pos < self.start or end > len(frame):
            raise ValueError(f"frame of {len(frame)} bytes has no room for the "
                             f"{self.algorithm.name} at byte {pos}")
        value = self.algorithm.compute(frame[self.start:pos])
        stored = value.to_bytes(self.algorithm.size, self.byte_order or self.algorithm.byte_order)
        return frame[:pos] + stored + frame[end:]


class BinaryDecoder:
    """Decodes fixed-layout binary frames (all offsets from the first byte of the frame)."""

    def __init__(self, fields: Sequence[BinaryField], *, byte_order: Literal["big", "little"],
                 checksum: ChecksumSpec | None = None, length: int | None = None) -> None:
        self._fields = [(f, codec(f.kind, byte_order)) for f in fields]
        self._needed = max(f.at + s.size for f, s in self._fields)
        self._checksum = checksum
        self._length = length

    def points(self) -> list[tuple[str, str | None]]:
        return [(f.name, f.unit) for f, _ in self._fields]

    def check(self, frame: bytes) -> None:
        """Length and checksum only (what a framer needs to confirm its sync)."""
        if self._length is not None and len(frame) != self._length:
            raise DecodeError(f"frame is {len(frame)} bytes; expected {self._length}")
        if len(frame) < self._needed:
            raise DecodeError(f"frame is {len(frame)} bytes; the layout needs {self._needed}")
        if self._checksum is not None:
            self._checksum.verify(frame)

    def decode(self, frame: bytes) -> list[Field]:
        self.check(frame)
        out: list[Field] = []
        for f, codec in self._fields:
            (raw,) = codec.unpack_from(frame, f.at)
            if isinstance(raw, float) and not math.isfinite(raw):
                out.append(Field(f.name, None, f.unit, Quality.OUT_OF_RANGE))
                continue
            out.append(Field(f.name, scaled(raw, f.scale, f.offset, f.decimals), f.unit))
        return out
