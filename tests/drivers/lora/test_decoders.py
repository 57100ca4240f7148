"""Cayenne LPP (every type) and the declarative struct decoder."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.api import Quality, load
from drivers.lora import cayenne, structdec
from drivers.lora.config import FieldConfig
from drivers.lora.points import Point


def values(payload: bytes) -> dict[str, object]:
    decoded = cayenne.decode(payload)
    assert decoded.error is None
    return {p.name: p.value for p in decoded.points}


def test_cayenne_documentation_examples() -> None:
    # Cayenne LPP documentation (myDevicesIoT/CayenneLPP README, "Examples").
    assert values(bytes.fromhex("03670110056700FF")) == {"temperature_3": 27.2,
                                                         "temperature_5": 25.5}
    assert values(bytes.fromhex("0167FFD7")) == {"temperature_1": -4.1}
    assert values(bytes.fromhex("067104D2FB2E0000")) == {
        "accelerometer_6_x": 1.234, "accelerometer_6_y": -1.234, "accelerometer_6_z": 0.0}
    assert values(bytes.fromhex("018806765FF2960A0003E8")) == {
        "gps_1_lat": 42.3519, "gps_1_lon": -87.9094, "gps_1_alt": 10.0}


# Every type: (type id, raw value bytes, expected points {suffix: (value, unit)}).
EVERY_TYPE = [
    (0, "01", {"digital_in_7": (1, None)}),
    (1, "00", {"digital_out_7": (0, None)}),
    (2, "FF38", {"analog_in_7": (-2.0, None)}),
    (3, "04D2", {"analog_out_7": (12.34, None)}),
    (100, "000F4240", {"generic_7": (1_000_000, None)}),
    (101, "FFFF", {"illuminance_7": (65535, "lx")}),
    (102, "01", {"presence_7": (1, None)}),
    (103, "FF9C", {"temperature_7": (-10.0, "Cel")}),
    (104, "91", {"humidity_7": (72.5, "%RH")}),
    (113, "03E8FC180000", {"accelerometer_7_x": (1.0, "G"), "accelerometer_7_y": (-1.0, "G"),
                           "accelerometer_7_z": (0.0, "G")}),
    (115, "2794", {"barometer_7": (1013.2, "hPa")}),
    (116, "0E10", {"voltage_7": (36.0, "V")}),
    (117, "01F4", {"current_7": (0.5, "A")}),
    (118, "000186A0", {"frequency_7": (100_000, "Hz")}),
    (120, "64", {"percentage_7": (100, "%")}),
    (121, "FFF6", {"altitude_7": (-10, "m")}),
    (125, "0190", {"concentration_7": (400, "ppm")}),
    (128, "0BB8", {"power_7": (3000, "W")}),
    (130, "00003039", {"distance_7": (12.345, "m")}),
    (131, "0001E240", {"energy_7": (123.456, "kWh")}),
    (132, "0168", {"direction_7": (360, "deg")}),
    (133, "5F5E1000", {"unixtime_7": (1_600_000_000, "s")}),
    (134, "0064FF9C2710", {"gyrometer_7_x": (1.0, "deg/s"), "gyrometer_7_y": (-1.0, "deg/s"),
                           "gyrometer_7_z": (100.0, "deg/s")}),
    (135, "FF8000", {"colour_7_r": (255, None), "colour_7_g": (128, None),
                     "colour_7_b": (0, None)}),
    (136, "07D6CA00E0FFFFFF38", {"gps_7_lat": (51.3738, "lat"), "gps_7_lon": (5.7599, "lon"),
                                 "gps_7_alt": (-2.0, "m")}),
    (142, "01", {"switch_7": (1, None)}),
]


def test_every_type_is_covered() -> None:
    assert sorted(t for t, _, _ in EVERY_TYPE) == sorted(cayenne.TYPES)


@pytest.mark.parametrize(("type_id", "raw", "expected"), EVERY_TYPE)
def test_every_cayenne_type(type_id: int, raw: str,
                            expected: dict[str, tuple[float, str | None]]) -> None:
    payload = bytes([7, type_id]) + bytes.fromhex(raw)
    assert len(payload) == 2 + cayenne.TYPES[type_id].size
    decoded = cayenne.decode(payload)
    assert decoded.error is None
    assert {p.name: (p.value, p.unit) for p in decoded.points} == expected
    # encode() is the inverse (the simulators rely on it)
    again = cayenne.encode([(7, type_id, tuple(float(v) for v, _ in expected.values()))])
    assert again == payload


def test_integers_stay_integers() -> None:
    points = cayenne.decode(bytes.fromhex("0765FFFF"))
    assert isinstance(points.points[0].value, int)


@pytest.mark.parametrize(("payload", "error", "kept"), [
    ("0167", "truncated", 0),
    ("016700FF02", "dangling", 1),
    ("016700FF0299AA", "unknown LPP type 153", 1),
    ("0188010203", "truncated", 0),
])
def test_cayenne_errors_keep_what_decoded(payload: str, error: str, kept: int) -> None:
    decoded = cayenne.decode(bytes.fromhex(payload))
    assert decoded.error is not None
    assert error in decoded.error
    assert len(decoded.points) == kept


def test_cayenne_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        cayenne.encode([(1, 104, (200.0,))])
    with pytest.raises(ValueError, match="takes 3 values"):
        cayenne.encode([(1, 113, (1.0,))])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_random_cayenne_never_crashes(payload: bytes) -> None:
    decoded = cayenne.decode(payload)
    assert all(isinstance(p, Point) for p in decoded.points)


def field(**kw: object) -> FieldConfig:
    return load(FieldConfig, kw, file="test", path="field")


def decode(fields: list[FieldConfig], payload: bytes, fport: int | None = 1) -> dict[str, Point]:
    return {p.name: p for p in structdec.decode(fields, fport, payload).points}


def test_struct_types_endianness_scale() -> None:
    payload = (b"\x12\x34" + b"\x34\x12" + b"\xFF\xFE" + b"\x00\x01\x86\xA0"
               + struct.pack(">f", 21.5) + struct.pack("<d", -3.25) + b"\x81" + b"\xFF\xFF\xFE")
    fields = [
        field(name="be", offset=0, type="u16"),
        field(name="le", offset=2, type="u16", endian="little"),
        field(name="neg", offset=4, type="i16", scale=0.1),
        field(name="big", offset=6, type="u32", scale=0.001, unit="m3"),
        field(name="f", offset=10, type="f32"),
        field(name="d", offset=14, type="f64", endian="little"),
        field(name="flag0", offset=22, type="bool", bit=0),
        field(name="flag1", offset=22, type="bool", bit=1),
        field(name="flag7", offset=22, type="bool", bit=7),
        field(name="i24", offset=23, type="i24"),
        field(name="biased", offset=0, type="u8", scale=0.5, add=-40),
        field(name="rounded", offset=6, type="u32", scale=0.001, decimals=1),
    ]
    got = decode(fields, payload)
    assert {k: p.value for k, p in got.items()} == {
        "be": 0x1234, "le": 0x1234, "neg": -0.2, "big": 100.0, "f": 21.5, "d": -3.25,
        "flag0": True, "flag1": False, "flag7": True, "i24": -2, "biased": -31.0,
        "rounded": 100.0}
    assert isinstance(got["be"].value, int)
    assert got["big"].unit == "m3"
    assert all(p.quality is Quality.GOOD for p in got.values())


def test_struct_short_payload_and_fport_filter() -> None:
    fields = [field(name="a", offset=0, type="u8"), field(name="b", offset=1, type="u32"),
              field(name="c", offset=0, type="u8", fport=2)]
    result = structdec.decode(fields, 1, b"\x05\x00")
    assert {p.name: (p.value, p.quality) for p in result.points} == {
        "a": (5, Quality.GOOD), "b": (None, Quality.MALFORMED)}
    assert result.error is not None
    assert "b" in result.error
    assert [p.name for p in structdec.decode(fields, 2, b"\x05").points] == ["a", "b", "c"]


def test_struct_non_finite_float_is_out_of_range() -> None:
    got = decode([field(name="t", offset=0, type="f32")], struct.pack(">f", math.nan))
    assert got["t"].quality is Quality.OUT_OF_RANGE
    assert got["t"].value is None


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(sorted(structdec.SIZES)), offset=st.integers(0, 8),
       endian=st.sampled_from(["big", "little"]), raw=st.integers(0, 999))
def test_struct_encode_decode_roundtrip(kind: str, offset: int, endian: str, raw: int) -> None:
    f = field(name="v", offset=offset, type=kind, endian=endian,
              **({"bit": raw % 8} if kind == "bool" else {"scale": 0.5}))
    value = float(raw % 2) if kind == "bool" else raw * 0.5
    if kind in ("u8", "i8"):
        value = (raw % 100) * 0.5
    buf = bytearray()
    structdec.encode_field(f, value, buf)
    (point,) = structdec.decode([f], 1, bytes(buf)).points
    assert point.value == (bool(value) if kind == "bool" else value)
