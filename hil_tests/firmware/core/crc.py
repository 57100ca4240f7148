"""CRC-16/MODBUS and a tiny deterministic random source.

The CRC is computed here because this is firmware for a microcontroller, where pymodbus does
not run: poly 0x8005 reflected (0xA001), init 0xFFFF, sent low byte first (Modbus over Serial
Line V1.02 §2.5.1.2 and §6.2.2).
"""


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (check value of b"123456789": 0x4B37)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC, low byte first."""
    crc = crc16(body)
    return body + bytes([crc & 0xFF, crc >> 8])


def crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of ``frame`` are the CRC of the rest."""
    if len(frame) < 3:
        return False
    crc = crc16(frame[:-2])
    return frame[-2] == crc & 0xFF and frame[-1] == crc >> 8


class Rng:
    """xorshift32 (Marsaglia 2003): the same numbers on CPython and MicroPython for a seed."""

    def __init__(self, seed: int = 1) -> None:
        self.state = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def next(self) -> int:
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def random(self) -> float:
        """A float in [0, 1)."""
        return self.next() / 4294967296.0

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return self.next() % n if n > 0 else 0

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()
