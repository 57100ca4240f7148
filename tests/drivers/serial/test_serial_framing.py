"""Framers: each mode, resynchronization, oversized and partial frames, counters."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.framing import (
    DelimitedFramer,
    FixedFramer,
    Framer,
    LengthFramer,
    LineFramer,
    make_framer,
)


def cfg(**kw: Any) -> SimpleNamespace:
    base = {"mode": "line", "max_frame": 64, "terminator": "\r\n", "length": None,
            "start": None, "end": None, "escape": None, "escape_xor": 0x20, "escape_map": {},
            "length_at": 0, "length_size": 1, "length_byte_order": "big", "length_adjust": 0}
    return SimpleNamespace(**(base | kw))


def feed_bytewise(framer: Framer, data: bytes) -> list[bytes]:
    return [f for i in range(len(data)) for f in framer.feed(data[i:i + 1])]


# --- line -------------------------------------------------------------------------------

def test_line_frames_across_chunks_and_skips_blank_lines() -> None:
    f = LineFramer(b"\r\n", max_frame=16)
    assert f.feed(b"abc\r") == []
    assert f.feed(b"\ndef\r\n\r\nghi") == [b"abc", b"def"]
    assert f.feed(b"\r\n") == [b"ghi"]
    assert f.stats.frames == 3
    assert f.buffered == 0


def test_line_oversized_is_counted_once_and_resyncs_at_next_terminator() -> None:
    f = LineFramer(b"\n", max_frame=8)
    frames = f.feed(b"x" * 30) + f.feed(b"y" * 30) + f.feed(b"tail\nok\n")
    assert frames == [b"ok"]
    assert f.stats.oversized == 1
    assert f.buffered == 0


def test_line_oversized_seen_only_at_terminator() -> None:
    f = LineFramer(b"\r\n", max_frame=4)
    assert f.feed(b"12345\r\n1234\r\n") == [b"1234"]
    assert f.stats.oversized == 1


def test_line_reset_counts_partial() -> None:
    f = LineFramer(b"\n", max_frame=8)
    f.feed(b"half")
    f.reset()
    assert f.feed(b"line\n") == [b"line"]
    assert f.stats.partial_dropped == 1


# --- fixed ------------------------------------------------------------------------------

def test_fixed_without_sync_chunks_the_stream() -> None:
    f = FixedFramer(3, max_frame=3)
    assert f.feed(b"abcdefg") == [b"abc", b"def"]
    assert f.feed(b"hi") == [b"ghi"]


def test_fixed_with_start_skips_garbage_and_counts_it() -> None:
    f = FixedFramer(4, start=b"\xaa", max_frame=8)
    assert f.feed(b"\x01\x02\xaa123\x09\xaa45") == [b"\xaa123"]
    assert f.stats.garbage_bytes == 3
    assert f.feed(b"6") == [b"\xaa456"]


def test_fixed_start_split_across_chunks() -> None:
    f = FixedFramer(4, start=b"BM", max_frame=8)
    assert f.feed(b"xxB") == []
    assert f.feed(b"M12") == [b"BM12"]
    assert f.stats.garbage_bytes == 2


def test_fixed_end_byte_rejects_false_start() -> None:
    # SDS011-style: AA ... AB; a stray AA in the noise must not eat the real frame.
    f = FixedFramer(4, start=b"\xaa", end=b"\xab", max_frame=4)
    assert f.feed(b"\xaa\x00\xaa\x11\x22\xab") == [b"\xaa\x11\x22\xab"]
    assert f.stats.rejected == 1


def test_fixed_reject_rescans_from_second_byte() -> None:
    f = FixedFramer(4, start=b"\xaa", max_frame=4)
    f.push(b"\xaa\x00\xaa\x01\x02\x03")
    assert f.pop() == b"\xaa\x00\xaa\x01"
    f.reject()  # the checksum said no: that start byte was noise
    assert f.pop() == b"\xaa\x01\x02\x03"
    assert f.stats.rejected == 1
    assert f.stats.garbage_bytes == 2


# --- length -----------------------------------------------------------------------------

def pms(payload: bytes) -> bytes:
    return b"BM" + len(payload).to_bytes(2, "big") + payload


def test_length_prefixed_frames_include_header() -> None:
    f = LengthFramer(start=b"BM", length_at=2, length_size=2, max_frame=64)
    frames = f.feed(b"\x00" + pms(b"abc") + pms(b"") + pms(b"0123456789"))
    assert frames == [pms(b"abc"), pms(b""), pms(b"0123456789")]
    assert f.stats.garbage_bytes == 1


def test_length_adjust_and_little_endian() -> None:
    # [len lo][len hi][payload][crc16]: length counts the payload only.
    f = LengthFramer(length_at=0, length_size=2, byte_order="little", length_adjust=2,
                     max_frame=64)
    assert f.feed(b"\x03\x00abcXY\x01\x00zCC") == [b"\x03\x00abcXY", b"\x01\x00zCC"]


def test_length_oversized_declared_length_slides_to_next_start() -> None:
    f = LengthFramer(start=b"BM", length_at=2, length_size=2, max_frame=16)
    assert f.feed(b"BM\xff\xff" + pms(b"ok")) == [pms(b"ok")]
    assert f.stats.oversized == 1


def test_length_reject_finds_frame_inside_false_one() -> None:
    f = LengthFramer(start=b"BM", length_at=2, length_size=2, max_frame=64)
    truncated = pms(b"0123456789")[:7]
    f.push(truncated + pms(b"abcdefghij") + pms(b"z"))
    first = f.pop()
    assert first is not None
    assert first.startswith(truncated)
    f.reject()
    assert f.pop() == pms(b"abcdefghij")
    assert f.pop() == pms(b"z")


# --- delimited --------------------------------------------------------------------------

def test_delimited_start_end_with_xor_escape() -> None:
    f = DelimitedFramer(start=0x02, end=0x03, escape=0x10, escape_xor=0x20, max_frame=16)
    assert f.feed(b"zz\x02a\x10\x22b\x03junk\x02c\x03") == [b"a\x02b", b"c"]
    assert f.stats.garbage_bytes == 6


def test_delimited_start_inside_frame_restarts_and_counts_partial() -> None:
    f = DelimitedFramer(start=0x02, end=0x03, max_frame=16)
    assert f.feed(b"\x02cut\x02whole\x03") == [b"whole"]
    assert f.stats.partial_dropped == 1


def test_delimited_hdlc_flags_drop_the_first_partial() -> None:
    f = DelimitedFramer(start=0x7E, end=0x7E, escape=0x7D, max_frame=16)
    assert f.feed(b"tail\x7ea\x7d\x5eb\x7e\x7ec\x7e") == [b"a\x7eb", b"c"]
    assert f.stats.garbage_bytes == 4


def test_delimited_escape_then_flag_aborts() -> None:
    f = DelimitedFramer(start=0x7E, end=0x7E, escape=0x7D, max_frame=16)
    assert f.feed(b"\x7eab\x7d\x7ecd\x7e") == [b"cd"]
    assert f.stats.partial_dropped == 1


def test_delimited_slip_escape_map() -> None:
    # RFC 1055: END C0, ESC DB, ESC_END DC, ESC_ESC DD.
    f = make_framer(cfg(mode="delimited", end="C0", escape="DB",
                        escape_map={"DC": "C0", "DD": "DB"}))
    assert f.feed(b"\xc0a\xdb\xdcb\xdb\xddc\xc0\xc0d\xc0") == [b"a\xc0b\xdbc", b"d"]


def test_delimited_oversized_skips_to_next_delimiter() -> None:
    f = DelimitedFramer(start=0x02, end=0x03, max_frame=4)
    assert f.feed(b"\x02toolong\x03\x02ok\x03") == [b"ok"]
    assert f.stats.oversized == 1


def test_delimited_reset_drops_partial() -> None:
    f = DelimitedFramer(start=0x02, end=0x03, max_frame=8)
    f.feed(b"\x02part")
    f.reset()
    assert f.feed(b"ial\x03\x02new\x03") == [b"new"]
    assert f.stats.partial_dropped == 1


# --- factory ----------------------------------------------------------------------------

def test_make_framer_builds_every_mode() -> None:
    assert isinstance(make_framer(cfg()), LineFramer)
    assert isinstance(make_framer(cfg(mode="fixed", length=4, start="AA")), FixedFramer)
    assert isinstance(make_framer(cfg(mode="length", start="42 4D")), LengthFramer)
    assert isinstance(make_framer(cfg(mode="delimited", end="7E")), DelimitedFramer)
    with pytest.raises(ValueError, match="end byte"):
        make_framer(cfg(mode="delimited"))


# --- properties -------------------------------------------------------------------------

FRAMER_CONFIGS = [
    cfg(),
    cfg(terminator="\n", max_frame=20),
    cfg(mode="fixed", length=8, max_frame=8),
    cfg(mode="fixed", length=6, start="AA", end="AB", max_frame=8),
    cfg(mode="length", start="42 4D", length_at=2, length_size=2, max_frame=40),
    cfg(mode="length", length_size=1, length_adjust=1, max_frame=30),
    cfg(mode="delimited", start="02", end="03", escape="10", max_frame=24),
    cfg(mode="delimited", start="7E", end="7E", escape="7D", max_frame=24),
    cfg(mode="delimited", end="C0", escape="DB", escape_map={"DC": "C0", "DD": "DB"}),
]


@pytest.mark.parametrize("config", FRAMER_CONFIGS, ids=lambda c: c.mode)
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_any_chunking_same_frames(config: SimpleNamespace, data: bytes,
                                               cuts: list[int]) -> None:
    whole = make_framer(config)
    expected = whole.feed(data)
    assert all(0 < len(f) <= config.max_frame for f in expected)
    chunked = make_framer(config)
    got: list[bytes] = []
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(edges):
        got += chunked.feed(data[a:b])
    assert got == expected
    assert chunked.stats == whole.stats


def escape(payload: bytes, specials: set[int], esc: int) -> bytes:
    return b"".join(bytes([esc, b ^ 0x20]) if b in specials else bytes([b]) for b in payload)


@settings(max_examples=150, deadline=None)
@given(payloads=st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=6),
       noise=st.binary(max_size=30))
def test_delimited_roundtrip_with_noise_in_between(payloads: list[bytes], noise: bytes) -> None:
    f = DelimitedFramer(start=0x02, end=0x03, escape=0x10, max_frame=24)
    clean_noise = bytes(b for b in noise if b != 0x02)
    stream = b"".join(clean_noise + b"\x02" + escape(p, {2, 3, 0x10}, 0x10) + b"\x03"
                      for p in payloads)
    assert feed_bytewise(f, stream) == payloads


@settings(max_examples=150, deadline=None)
@given(payloads=st.lists(st.binary(min_size=0, max_size=30), min_size=1, max_size=6),
       noise=st.binary(max_size=40))
def test_length_frames_recovered_after_noise_with_checksum_reject(
        payloads: list[bytes], noise: bytes) -> None:
    # A driver rejects frames that fail their check; the framer then finds every real one.
    f = LengthFramer(start=b"BM", length_at=2, length_size=2, max_frame=40)
    frames = [pms(p) for p in payloads]
    f.push(noise + b"".join(frames))
    got = []
    while (frame := f.pop()) is not None:
        if frame in frames:
            got.append(frame)
        else:
            f.reject()
    assert got[-len(frames):] == frames
