"""Frame checksums: table-driven CRCs from the CRC catalogue, XOR and arithmetic sums.

Every CRC is named as in Greg Cook's "Catalogue of parametrised CRC algorithms"
(reveng.sourceforge.io/crc-catalogue) and carries its catalogue check value, the CRC of
the ASCII bytes ``"123456789"``:

==================  =====  ======  ======  =====  ======  ======
name                width  poly    init    refl   xorout  check
==================  =====  ======  ======  =====  ======  ======
crc16_modbus        16     0x8005  0xFFFF  yes    0x0000  0x4B37
crc16_ccitt_false   16     0x1021  0xFFFF  no     0x0000  0x29B1  (= CRC-16/IBM-3740)
crc16_xmodem        16     0x1021  0x0000  no     0x0000  0x31C3
crc16_kermit        16     0x1021  0x0000  yes    0x0000  0x2189  (the "true" CCITT)
crc8_smbus          8      0x07    0x00    no     0x00    0xF4
crc8_maxim          8      0x31    0x00    yes    0x00    0xA1    (Dallas/Maxim 1-Wire)
==================  =====  ======  ======  =====  ======  ======

plus ``xor8`` (check 0x31; the NMEA 0183 checksum), ``sum8`` (0xDD) and ``sum16`` (0x01DD,
e.g. Plantower PMS5003). "CCITT" alone is ambiguous in vendor manuals: check the init value.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

__all__ = ["CHECKSUMS", "Checksum", "crc_function"]

ByteOrder = Literal["big", "little"]


def _reflect(value: int, width: int) -> int:
    out = 0
    for _ in range(width):
        out = (out << 1) | (value & 1)
        value >>= 1
    return out


@functools.cache
def _table(width: int, poly: int, reflected: bool) -> tuple[int, ...]:
    mask = (1 << width) - 1
    table = []
    if reflected:
        rpoly = _reflect(poly, width)
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ rpoly if crc & 1 else crc >> 1
            table.append(crc)
    else:
        top = 1 << (width - 1)
        for byte in range(256):
            crc = byte << (width - 8)
            for _ in range(8):
                crc = ((crc << 1) ^ poly if crc & top else crc << 1) & mask
            table.append(crc)
    return tuple(table)


def crc_function(
    width: int, poly: int, init: int, *, reflected: bool, xorout: int = 0
) -> Callable[[bytes], int]:
    """A CRC in the catalogue's parameters (refin == refout, as for every entry used here)."""
    table = _table(width, poly, reflected)
    mask = (1 << width) - 1
    shift = width - 8

    if reflected:
        start = _reflect(init, width)

        def crc(data: bytes) -> int:
            value = start
            for byte in data:
                value = (value >> 8) ^ table[(value ^ byte) & 0xFF]
            return value ^ xorout
    else:

        def crc(data: bytes) -> int:
            value = init
            for byte in data:
                value = ((value << 8) & mask) ^ table[((value >> shift) ^ byte) & 0xFF]
            return value ^ xorout

    return crc


def _xor8(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


@dataclasses.dataclass(frozen=True)
class Checksum:
    """One checksum algorithm: its size on the wire and its usual byte order there."""

    name: str
    size: int
    compute: Callable[[bytes], int]
    #: CRC of b"123456789" (the catalogue's check value).
    check: int
    #: Modbus RTU sends the CRC low byte first (Modbus over Serial Line V1.02 §2.5.1.2).
    byte_order: ByteOrder = "big"

    def verify(self, covered: bytes, stored: bytes, byte_order: ByteOrder | None = None) -> int:
        """Return the computed value; raise ValueError if ``stored`` does not match it."""
        computed = self.compute(covered)
        found = int.from_bytes(stored, byte_order or self.byte_order)
        if computed != found:
            digits = self.size * 2
            raise ValueError(
                f"{self.name} mismatch: computed 0x{computed:0{digits}X}, "
                f"frame says 0x{found:0{digits}X}")
        return computed


CHECKSUMS: dict[str, Checksum] = {
    c.name: c
    for c in (
        Checksum("crc16_modbus", 2, crc_function(16, 0x8005, 0xFFFF, reflected=True), 0x4B37,
                 "little"),
        Checksum("crc16_ccitt_false", 2, crc_function(16, 0x1021, 0xFFFF, reflected=False),
                 0x29B1),
        Checksum("crc16_xmodem", 2, crc_function(16, 0x1021, 0x0000, reflected=False), 0x31C3),
        Checksum("crc16_kermit", 2, crc_function(16, 0x1021, 0x0000, reflected=True), 0x2189,
                 "little"),
        Checksum("crc8_smbus", 1, crc_function(8, 0x07, 0x00, reflected=False), 0xF4),
        Checksum("crc8_maxim", 1, crc_function(8, 0x31, 0x00, reflected=True), 0xA1),
        Checksum("xor8", 1, _xor8, 0x31),
        Checksum("sum8", 1, lambda data: sum(data) & 0xFF, 0xDD),
        Checksum("sum16", 2, lambda data: sum(data) & 0xFFFF, 0x01DD),
    )
}
