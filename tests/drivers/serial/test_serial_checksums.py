"""Checksums against the CRC catalogue's check values and known frames."""

from __future__ import annotations

import pytest

from drivers.serial.checksums import CHECKSUMS, crc_function

CHECK = b"123456789"


@pytest.mark.parametrize(("name", "expected"), [
    ("crc16_modbus", 0x4B37),       # CRC-16/MODBUS
    ("crc16_ccitt_false", 0x29B1),  # CRC-16/IBM-3740, alias CCITT-FALSE
    ("crc16_xmodem", 0x31C3),       # CRC-16/XMODEM
    ("crc16_kermit", 0x2189),       # CRC-16/KERMIT
    ("crc8_smbus", 0xF4),           # CRC-8/SMBUS
    ("crc8_maxim", 0xA1),           # CRC-8/MAXIM-DOW
    ("xor8", 0x31),
    ("sum8", 0xDD),
    ("sum16", 0x01DD),
])
def test_catalogue_check_values(name: str, expected: int) -> None:
    algo = CHECKSUMS[name]
    assert algo.compute(CHECK) == expected
    assert algo.check == expected


def test_every_algorithm_is_tested_here() -> None:
    assert set(CHECKSUMS) == {"crc16_modbus", "crc16_ccitt_false", "crc16_xmodem",
                              "crc16_kermit", "crc8_smbus", "crc8_maxim", "xor8", "sum8",
                              "sum16"}


def test_modbus_rtu_request_crc_is_low_byte_first() -> None:
    # Read 10 holding registers from unit 1: the CRC on the wire is C5 CD.
    pdu = bytes.fromhex("01030000000A")
    algo = CHECKSUMS["crc16_modbus"]
    assert algo.compute(pdu).to_bytes(2, algo.byte_order) == bytes.fromhex("C5CD")
    assert algo.verify(pdu, bytes.fromhex("C5CD")) == 0xCDC5


def test_verify_reports_both_values() -> None:
    with pytest.raises(ValueError, match=r"sum16 mismatch: computed 0x01DD, frame says 0x01DC"):
        CHECKSUMS["sum16"].verify(CHECK, b"\x01\xdc")


def test_empty_input_gives_the_init_value_after_xorout() -> None:
    assert CHECKSUMS["crc16_modbus"].compute(b"") == 0xFFFF
    assert CHECKSUMS["crc16_xmodem"].compute(b"") == 0


def test_crc_function_matches_bitwise_reference() -> None:
    def bitwise_ccitt(data: bytes) -> int:
        crc = 0xFFFF
        for byte in data:
            crc ^= byte << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        return crc

    fn = crc_function(16, 0x1021, 0xFFFF, reflected=False)
    for data in (b"", b"\x00", b"\xff" * 7, bytes(range(256))):
        assert fn(data) == bitwise_ccitt(data)
