"""Regex, key=value and binary decoders built from config, and value conversion."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from drivers.api import Quality, load
from drivers.serial._model import ChecksumError, DecodeError, scaled, text_value
from drivers.serial.checksums import CHECKSUMS
from drivers.serial.config import DecoderConfig, FramingConfig
from drivers.serial.decoders import make_decoder

LINE = FramingConfig()


def decoder(framing: FramingConfig = LINE, **table: Any) -> Any:
    return make_decoder(load(DecoderConfig, table, file="t", path="decoder"), framing)


def named(fields: list[Any]) -> dict[str, Any]:
    return {f.name: (f.value, f.quality, f.unit) for f in fields}


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("42", "auto", 42), ("-7", "int", -7), ("0x1F", "int", 31), ("3.5", "auto", 3.5),
    ("1e3", "float", 1000.0), ("RUN", "auto", "RUN"), (" 5 ", "str", "5"),
    ("on", "bool", True), ("0", "bool", False), ("12", "float", 12.0),
])
def test_text_values(text: str, kind: str, expected: object) -> None:
    value = text_value(text, kind)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("text", "kind"), [("4.2", "int"), ("x", "float"), ("inf", "auto"),
                                            ("nan", "float"), ("maybe", "bool")])
def test_text_value_errors(text: str, kind: str) -> None:
    with pytest.raises(ValueError, match="not"):
        text_value(text, kind)


def test_scaling_keeps_integers_unless_scaled() -> None:
    assert scaled(123, 1.0, 0.0, None) == 123
    assert isinstance(scaled(123, 1.0, 0.0, None), int)
    assert scaled(123, 0.1, 0.0, None) == 12.3
    assert scaled(500, 0.01, -40.0, 1) == -35.0


def test_regex_without_fields_types_every_group() -> None:
    d = decoder(type="regex", pattern=r"ID=(?P<Id>\w+) V=(?P<volts>[\d.]+)")
    assert named(d.decode(b"junk ID=A7 V=12.5\r")) == {
        "id": ("A7", Quality.GOOD, None), "volts": (12.5, Quality.GOOD, None)}
    assert d.points() == [("id", None), ("volts", None)]


def test_regex_field_not_parsable_is_malformed_reading() -> None:
    d = decoder(type="regex", pattern=r"V=(?P<v>\S+)",
                fields=[{"name": "v", "type": "int", "unit": "V"}])
    assert named(d.decode(b"V=12.x")) == {"v": (None, Quality.MALFORMED, "V")}


def test_regex_no_match_is_an_error() -> None:
    with pytest.raises(DecodeError, match="no match"):
        decoder(type="regex", pattern=r"V=(?P<v>\d+)").decode(b"hello")


def test_keyvalue_fields_pick_keys_and_flag_missing_ones() -> None:
    d = decoder(type="keyvalue", separator=";", fields=[
        {"name": "entries", "key": "C1", "type": "int", "unit": "count"},
        {"name": "exits", "key": "C2", "type": "int", "unit": "count"}])
    assert named(d.decode(b"C1=123;C3=9")) == {
        "entries": (123, Quality.GOOD, "count"), "exits": (None, Quality.MALFORMED, "count")}
    assert d.points() == [("entries", "count"), ("exits", "count")]


def test_keyvalue_custom_assign() -> None:
    d = decoder(type="keyvalue", assign=":")
    assert named(d.decode(b"temp: 21.5, rh: 40")) == {
        "temp": (21.5, Quality.GOOD, None), "rh": (40, Quality.GOOD, None)}


def binary(**kw: Any) -> Any:
    base = {"type": "binary", "fields": [{"name": "a", "type": "u16"}]}
    return decoder(**(base | kw))


def test_binary_every_type_and_byte_order() -> None:
    types = ["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"]
    values = [200, -100, 60000, -30000, 4_000_000_000, -2_000_000_000, 2**63, -(2**62),
              1.5, -2.25]
    frame = struct.pack("<BbHhIiQqfd", *values)
    d = binary(byte_order="little", fields=[{"name": t, "type": t} for t in types])
    assert [f.value for f in d.decode(frame)] == values


def test_binary_nan_is_out_of_range() -> None:
    d = binary(fields=[{"name": "x", "type": "f32", "unit": "W"}])
    assert named(d.decode(struct.pack(">f", float("nan")))) == {
        "x": (None, Quality.OUT_OF_RANGE, "W")}


def test_binary_short_or_wrong_length_frames() -> None:
    with pytest.raises(DecodeError, match="layout needs 2"):
        binary().decode(b"\x01")
    with pytest.raises(DecodeError, match="expected 4"):
        binary(length=4).decode(b"\x01\x02\x03")


def test_binary_fixed_framing_length_is_enforced() -> None:
    fixed = FramingConfig(mode="fixed", length=3)
    with pytest.raises(DecodeError, match="expected 3"):
        binary(framing=fixed).decode(b"\x00\x01")


@pytest.mark.parametrize("name", sorted(CHECKSUMS))
def test_binary_checksum_each_algorithm(name: str) -> None:
    algo = CHECKSUMS[name]
    payload = b"\x01\x02"
    frame = payload + algo.compute(payload).to_bytes(algo.size, algo.byte_order)
    d = binary(checksum=name)
    assert d.decode(frame)[0].value == 0x0102
    bad = bytes([frame[0] ^ 0x10]) + frame[1:]
    with pytest.raises(ChecksumError, match=f"{name} mismatch"):
        d.decode(bad)


def test_binary_checksum_byte_order_override_and_position() -> None:
    payload = b"\xaa\x05\x00"
    crc = CHECKSUMS["crc16_modbus"].compute(payload[1:])
    frame = payload + crc.to_bytes(2, "big") + b"\x55"
    d = binary(checksum="crc16_modbus", checksum_byte_order="big", checksum_at=-3,
               checksum_from=1, fields=[{"name": "v", "at": 1, "type": "u16"}])
    assert d.decode(frame)[0].value == 0x0500


def test_binary_checksum_outside_frame_is_malformed() -> None:
    d = binary(checksum="sum8", checksum_at=10)
    with pytest.raises(DecodeError, match="no room"):
        d.decode(b"\x00\x01\x02")
