"""Codec: known registers decode to known values; encode is its inverse."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.api import Quality
from drivers.modbus import codec
from drivers.modbus.codec import PointSpec


def spec(kind: str, order: str = "ABCD", **extra: Any) -> PointSpec:
    word, byte = codec.ORDERS[order]
    count = extra.pop("count", codec.REGISTERS.get(kind, 1))
    return PointSpec(name="p", table=extra.pop("table", "holding"), address=0, count=count,
                     type=kind, word_order=word, byte_order=byte, **extra)  # type: ignore[arg-type]


# 0x12345678 in each layout (Modbus Application Protocol V1.1b3 §4.2: registers are big-endian).
@pytest.mark.parametrize(("order", "regs"), [
    ("ABCD", [0x1234, 0x5678]), ("CDAB", [0x5678, 0x1234]),
    ("BADC", [0x3412, 0x7856]), ("DCBA", [0x7856, 0x3412]),
])
def test_u32_orders(order: str, regs: list[int]) -> None:
    assert codec.decode(spec("u32", order), regs) == (0x12345678, Quality.GOOD)
    assert codec.encode(spec("u32", order), 0x12345678) == regs


@pytest.mark.parametrize(("kind", "regs", "value"), [
    ("u16", [0xFFFF], 65535),
    ("i16", [0xFFFF], -1),
    ("i32", [0x8000, 0x0000], -(2**31)),
    ("u64", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], 2**64 - 1),
    ("i64", [0x8000, 0, 0, 1], -(2**63) + 1),
    ("f32", [0x4366, 0x199A], 230.1),
    ("f32", [0x3F80, 0x0000], 1.0),
    ("f32", [0x3DCC, 0xCCCD], 0.1),
    ("f64", [0x4059, 0x0CCC, 0xCCCC, 0xCCCD], 100.2),
])
def test_numbers(kind: str, regs: list[int], value: float) -> None:
    got, quality = codec.decode(spec(kind), regs)
    assert quality is Quality.GOOD
    assert (got, type(got)) == (value, type(value))


def test_f32_is_the_shortest_decimal_of_the_same_float32() -> None:
    raw = struct.unpack(">f", struct.pack(">f", 0.1))[0]
    assert raw != 0.1
    assert codec.short_f32(raw) == 0.1
    for x in (1e-38, 3.4028235e38, -2.5e-7, 123456.78):
        exact = struct.unpack(">f", struct.pack(">f", x))[0]
        assert struct.pack(">f", codec.short_f32(exact)) == struct.pack(">f", exact)


@pytest.mark.parametrize(("regs", "quality"), [
    ([0x7FC0, 0x0000], Quality.OUT_OF_RANGE), ([0x7F80, 0x0000], Quality.OUT_OF_RANGE),
    ([0xFF80, 0x0000], Quality.OUT_OF_RANGE),
])
def test_nan_and_infinity_are_out_of_range(regs: list[int], quality: Quality) -> None:
    assert codec.decode(spec("f32"), regs) == (None, quality)


@pytest.mark.parametrize(("kind", "raw", "scale", "offset", "value"), [
    ("u16", [2301], 0.1, 0.0, 230.1),
    ("u16", [2301], 1.0, 0.0, 2301),
    ("i16", [0xFFF6], 0.5, 0.0, -5.0),
    ("u16", [215], 0.1, -40.0, -18.5),
    ("u16", [7], 1.0, 0.5, 7.5),
    ("u32", [0x0012, 0xD687], 0.001, 0.0, 1234.567),
    ("u16", [3], 1000.0, 0.0, 3000.0),
    ("f32", [0x4121, 0x999A], 1000.0, 0.0, 10100.0),
    ("i16", [0xFC18], 0.001, 0.0, -1.0),
])
def test_scale_and_offset(kind: str, raw: list[int], scale: float, offset: float,
                          value: float) -> None:
    got, _ = codec.decode(spec(kind, scale=scale, offset=offset), raw)
    assert (got, type(got)) == (value, type(value))


def test_strings_bits_and_bit_tables() -> None:
    assert codec.decode(spec("string", count=3), [0x4142, 0x4300, 0x0000]) == ("ABC", Quality.GOOD)
    assert codec.decode(spec("string", "BADC", count=2), [0x4241, 0x4420]) == \
        ("AB D", Quality.GOOD)
    assert codec.decode(spec("bit", bit=15), [0x8000]) == (True, Quality.GOOD)
    assert codec.decode(spec("bit", bit=14), [0x8000]) == (False, Quality.GOOD)
    assert codec.decode(spec("bit", table="coil"), [True]) == (True, Quality.GOOD)
    assert codec.encode(spec("bit", bit=3), True) == [8]


_NUMBERS = {"u16": st.integers(0, 2**16 - 1), "i16": st.integers(-(2**15), 2**15 - 1),
            "u32": st.integers(0, 2**32 - 1), "i32": st.integers(-(2**31), 2**31 - 1),
            "u64": st.integers(0, 2**64 - 1), "i64": st.integers(-(2**63), 2**63 - 1),
            "f32": st.floats(width=32, allow_nan=False, allow_infinity=False),
            "f64": st.floats(allow_nan=False, allow_infinity=False)}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_NUMBERS)), st.sampled_from(sorted(codec.ORDERS)), st.data())
def test_encode_decode_round_trip(kind: str, order: str, data: st.DataObject) -> None:
    value = data.draw(_NUMBERS[kind])
    p = spec(kind, order)
    regs = codec.encode(p, value)
    assert len(regs) == codec.REGISTERS[kind]
    assert all(0 <= r <= 0xFFFF for r in regs)
    got, quality = codec.decode(p, list(regs))
    assert quality is Quality.GOOD
    if kind == "f32":
        assert struct.pack(">f", got) == struct.pack(">f", value)
    else:
        assert got == value


def _shortest_by_brute_force(x: float) -> float:
    exact = struct.pack(">f", x)
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == exact:
                return candidate
        except OverflowError:
            continue
    return x


@settings(max_examples=500, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_short_f32_is_shortest(x: float) -> None:
    assert codec.short_f32(x) == _shortest_by_brute_force(x)
