"""Block decoding gives exactly what ``codec.decode`` gives, point by point, for every type,
order, scale and offset, and for blocks with gaps, aliases and overlaps."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.api import Quality
from drivers.modbus import codec
from drivers.modbus.codec import PointSpec
from drivers.modbus.decoders import BlockDecoder, swapped

TYPES = ["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", "bit"]
SCALES = [1.0, 0.1, 0.01, 2.5, 1000.0, -0.5, 1e-05]
OFFSETS = [0.0, 1.5, -40.0, 0.25]


def same(a: Any, b: Any) -> bool:
    """Equal value and type; NaN equals NaN; 0.0 and -0.0 differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a)
                                                     == math.copysign(1, b))
    return bool(a == b)


def check(table: str, start: int, points: list[PointSpec], items: list[Any]) -> None:
    decoder = BlockDecoder(table, start, points)
    data = items if table in codec.BIT_TABLES else struct.pack(f">{len(items)}H", *items)
    values, qualities = decoder.decode(data)
    for i, p in enumerate(points):
        want = codec.decode(p, items[p.address - start:p.end - start])
        got = (values[i], qualities[i] if qualities else Quality.GOOD)
        assert same(got[0], want[0]), (p, items, got, want)
        assert got[1] is want[1], (p, items, got, want)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[int, list[PointSpec], list[int]]:
    start = address = draw(st.integers(0, 3))
    points = []
    for k in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(TYPES))
        count = draw(st.integers(1, 3)) if kind == "string" else codec.REGISTERS[kind]
        points.append(PointSpec(
            name=f"p{k}", table="holding", address=address, count=count, type=kind,
            bit=draw(st.integers(0, 15)) if kind == "bit" else None,
            byte_order=draw(st.sampled_from(["big", "little"])),
            word_order=draw(st.sampled_from(["big", "little"])),
            scale=draw(st.sampled_from(SCALES)), offset=draw(st.sampled_from(OFFSETS))))
        # Mostly one after the other, some gaps, some sharing registers.
        address += draw(st.sampled_from([count, count, count + 1, count + 5, 0]))
    end = max(p.end for p in points)
    special = st.sampled_from([0, 0xFFFF, 0x7F80, 0x7FC0, 0xFF80, 0x8000, 0x3F80])
    regs = draw(st.lists(st.one_of(st.integers(0, 0xFFFF), special),
                         min_size=end - start, max_size=end - start))
    return start, points, regs


@settings(max_examples=600, deadline=None)
@given(blocks())
def test_block_matches_codec(block: tuple[int, list[PointSpec], list[int]]) -> None:
    start, points, regs = block
    check("holding", start, points, regs)


@pytest.mark.parametrize("kind", ["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"])
@pytest.mark.parametrize("order", list(codec.ORDERS))
@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (0.1, 0.0), (0.01, -40.0),
                                               (1000.0, 0.5)])
def test_every_type_order_and_scale(kind: str, order: str, scale: float, offset: float) -> None:
    word, byte = codec.ORDERS[order]
    width = codec.REGISTERS[kind]
    points = [PointSpec(name=f"p{k}", table="input", address=k * width, count=width, type=kind,
                        byte_order=byte, word_order=word, scale=scale, offset=offset)
              for k in range(6)]
    regs = [0x1234, 0x5678, 0x9ABC, 0xDEF0, 0xFFFF, 0x0000, 0x7F80, 0x0000, 0x4148, 0xF5C3,
            0x8000, 0x0001, 0x3F9D, 0xF3B6, 0x0102, 0x0304, 0xC2C8, 0x0000, 0x7FC0, 0x0000,
            0x4049, 0x0FDB, 0x0000, 0x0001]
    check("input", 0, points, regs[:6 * width])


def test_aliases_gaps_and_out_of_range() -> None:
    f32 = {"type": "f32", "count": 2}
    points = [PointSpec(name="a", table="holding", address=0, **f32),  # type: ignore[arg-type]
              PointSpec(name="a_again", table="holding", address=0, **f32),  # type: ignore[arg-type]
              PointSpec(name="scaled", table="holding", address=0, scale=2.0, **f32),  # type: ignore[arg-type]
              PointSpec(name="nan", table="holding", address=4, **f32),  # type: ignore[arg-type]
              PointSpec(name="low", table="holding", address=9, count=1, type="u16")]
    regs = [0x4148, 0xF5C3, 7, 7, 0x7FC0, 0, 5, 5, 5, 42]
    check("holding", 0, points, regs)
    _values, qualities = BlockDecoder("holding", 0, points).decode(
        struct.pack(">10H", *regs))
    assert qualities == [Quality.GOOD] * 3 + [Quality.OUT_OF_RANGE, Quality.GOOD]


def test_bit_tables() -> None:
    points = [PointSpec(name=f"c{a}", table="coil", address=a, count=1, type="bit")
              for a in (3, 4, 9)]
    bits = [False, True, False, True, False, False, False, False, False, True, False, False]
    values, qualities = BlockDecoder("coil", 2, points).decode(bits)
    assert (list(values), qualities) == ([True, False, False], None)
    check("coil", 2, points, bits)


def test_swapped_exchanges_the_bytes_of_each_register() -> None:
    assert swapped(bytes([1, 2, 3, 4])) == bytes([2, 1, 4, 3])
