"""The rig firmware's core, piece by piece, checked against the gateway's own code: the CRC
against the serial driver's catalogue CRC, register encoding against the Modbus codec, NMEA
sentences against the NMEA decoder's checksum, and the console's command language."""

from __future__ import annotations

import random

import pytest

from drivers.modbus import codec
from drivers.modbus.codec import PointSpec
from drivers.serial.checksums import CHECKSUMS
from drivers.serial.nmea import sentence as driver_sentence
from hil_tests.firmware.core.board import Board
from hil_tests.firmware.core.crc import Rng, crc16, crc_ok, with_crc
from hil_tests.firmware.core.regmap import Point, encode
from hil_tests.firmware.core.serial_sensor import SerialSensor, sentence

ORDERS = [("big", "big"), ("little", "big"), ("big", "little"), ("little", "little")]
VALUES = {"u16": 48879, "i16": -123, "u32": 305419896, "i32": -2, "u64": 72623859790382856,
          "i64": -5, "f32": 230.1, "f64": -1234.5678}


def test_crc_matches_the_catalogue_crc() -> None:
    catalogue = CHECKSUMS["crc16_modbus"]
    assert crc16(b"123456789") == catalogue.check == 0x4B37
    rng = random.Random(4)
    for n in range(0, 300, 7):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert crc16(data) == catalogue.compute(data)
        assert crc_ok(with_crc(data)) == (n >= 1)


def test_rng_is_deterministic_and_in_range() -> None:
    a, b = Rng(9), Rng(9)
    xs = [a.random() for _ in range(1000)]
    assert xs == [b.random() for _ in range(1000)]
    assert all(0 <= x < 1 for x in xs)
    assert len(set(xs)) == 1000
    assert {Rng(1).below(6) for _ in range(1)} <= set(range(6))


def _spec(kind: str, word: str, byte: str, **kw: object) -> PointSpec:
    count = kw.pop("count", codec.REGISTERS.get(kind, 1))
    return PointSpec(name="p", table="holding", address=0, count=count,  # type: ignore[arg-type]
                     type=kind, word_order=word, byte_order=byte, **kw)  # type: ignore[arg-type]


def _point(spec: PointSpec) -> Point:
    return Point({k: getattr(spec, k) for k in ("name", "table", "address", "count", "type",
                                                  "bit", "byte_order", "word_order", "scale",
                                                  "offset", "unit")})


@pytest.mark.parametrize(("word", "byte"), ORDERS)
@pytest.mark.parametrize("kind", sorted(VALUES))
def test_registers_are_what_the_driver_codec_encodes(kind: str, word: str, byte: str) -> None:
    spec = _spec(kind, word, byte)
    regs = encode(_point(spec), VALUES[kind])
    assert regs == codec.encode(spec, VALUES[kind])
    assert codec.decode(spec, regs)[0] == VALUES[kind]


@pytest.mark.parametrize(("kind", "value", "kw"), [
    ("u16", 230.1, {"scale": 0.1}),
    ("i16", -18.5, {"scale": 0.1, "offset": -40.0}),
    ("u32", 1234.567, {"scale": 0.001}),
    ("string", "AB-1", {"count": 3}),
    ("string", "xy", {"count": 2, "byte_order": "little"}),
    ("bit", True, {"bit": 3}),
    ("u16", 70000, {}),
    ("i16", -70000, {}),
])
def test_scaled_strings_bits_and_clamps_match_the_codec(kind: str, value: object,
                                                        kw: dict[str, object]) -> None:
    byte = str(kw.pop("byte_order", "big"))
    spec = _spec(kind, "big", byte, **kw)
    assert encode(_point(spec), value) == codec.encode(spec, value)  # type: ignore[arg-type]


def _slave_board(**unit: object) -> Board:
    points = [{"name": "a", "address": 0}, {"name": "b", "address": 1, "type": "i16"},
              {"name": "r", "table": "coil", "address": 0}]
    return Board({"modbus": {"idle_ms": 50, "units": [{"unit": 3, "points": points,
                                                       "values": {"a": 7, "b": -1},
                                                       **unit}]}})


def test_requests_split_across_reads_and_noise_before_them() -> None:
    slave = _slave_board().modbus
    assert slave is not None
    request = with_crc(bytes([3, 3, 0, 0, 0, 2]))
    assert slave.feed(b"\x00\xff" + request[:3], 0, 0.0) == []
    answers = slave.feed(request[3:], 1, 0.0)
    assert answers == [(1, with_crc(bytes([3, 3, 4, 0, 7, 0xFF, 0xFF])))]
    assert slave.stats["dropped_bytes"] == 2


def test_a_silence_drops_a_partial_frame() -> None:
    slave = _slave_board().modbus
    assert slave is not None
    request = with_crc(bytes([3, 3, 0, 0, 0, 1]))
    slave.feed(request[:5], 0, 0.0)
    assert slave.tick(100, 0.0) == []
    assert slave.feed(request, 200, 0.0)[0][1] == with_crc(bytes([3, 3, 2, 0, 7]))
    assert slave.stats["dropped_bytes"] == 5


@pytest.mark.parametrize(("body", "answer"), [
    (bytes([3, 0x2B, 0x0E, 1, 0]), bytes([3, 0xAB, 1])),  # unknown function: exception 1
    (bytes([3, 3, 0, 0, 0, 0]), bytes([3, 0x83, 3])),  # count 0: exception 3
    (bytes([3, 3, 0xFF, 0xFF, 0, 2]), bytes([3, 0x83, 2])),  # past 65535: exception 2
    (bytes([3, 5, 0, 0, 0x12, 0x34]), bytes([3, 0x85, 3])),  # coil value not FF00/0000
    (bytes([3, 5, 0, 0, 0xFF, 0]), bytes([3, 5, 0, 0, 0xFF, 0])),  # echo
    (bytes([3, 1, 0, 0, 0, 1]), bytes([3, 1, 1, 1])),  # the coil written raw reads 1
])
def test_answers_and_exceptions(body: bytes, answer: bytes) -> None:
    board = _slave_board()
    slave = board.modbus
    assert slave is not None
    slave.units[3].write("coil", 0, [1])
    assert slave.feed(with_crc(body), 0, 0.0) == [(0, with_crc(answer))]


def test_broadcast_writes_without_answering() -> None:
    slave = _slave_board().modbus
    assert slave is not None
    assert slave.feed(with_crc(bytes([0, 6, 0, 9, 0, 42])), 0, 0.0) == []
    assert slave.units[3].read("holding", 9, 1, 0.0) == [42]


def test_unmapped_registers_answer_exception_2_when_strict() -> None:
    slave = _slave_board(unmapped="exception").modbus
    assert slave is not None
    assert slave.feed(with_crc(bytes([3, 3, 0, 0, 0, 3])), 0, 0.0)[0][1] == \
        with_crc(bytes([3, 0x83, 2]))


@pytest.mark.parametrize(("body", "answer", "holding_1"), [
    (bytes([3, 6, 0, 1, 0x12, 0x34]), bytes([3, 6, 0, 1, 0x12, 0x34]), 0x1234),  # echo
    (bytes([3, 6, 0, 2, 0, 1]), bytes([3, 0x86, 2]), 0xFFFF),  # holding 2 is not mapped
    (bytes([3, 16, 0, 0, 0, 2, 4, 0, 5, 0, 6]), bytes([3, 16, 0, 0, 0, 2]), 6),
    (bytes([3, 16, 0, 1, 0, 2, 4, 0, 5, 0, 6]), bytes([3, 0x90, 2]), 0xFFFF),  # 1 mapped, 2 not
    (bytes([3, 15, 0, 1, 0, 1, 1, 1]), bytes([3, 0x8F, 2]), 0xFFFF),  # coil 1 is not mapped
])
def test_a_strict_unit_refuses_writes_outside_its_map(body: bytes, answer: bytes,
                                                      holding_1: int) -> None:
    slave = _slave_board(unmapped="exception").modbus
    assert slave is not None
    assert slave.feed(with_crc(body), 0, 0.0) == [(0, with_crc(answer))]
    assert slave.units[3].read("holding", 1, 1, 0.0) == [holding_1]  # b = -1 unless written


@pytest.mark.parametrize(("line", "answer"), [
    ("ping", "ok pong"),
    ("fault modbus silent", "ok fault modbus silent on every unit"),
    ("FAULT Modbus exception 2 unit 3", "ok fault modbus exception 2 on unit 3"),
    ("fault modbus slow 500 rate 0.25", "ok fault modbus slow 500 rate 0.25 on every unit"),
    ("fault modbus badcrc unit 3", "ok fault modbus badcrc on unit 3"),
    ("fault modbus noise 0.1", "ok fault modbus noise 0.1 on every unit"),
    ("fault modbus none", "ok fault modbus none on every unit"),
    ("fault serial noise 0.1", "ok fault serial noise 0.1"),
    ("fault serial silent", "ok fault serial silent"),
    ("rate serial 5", "ok rate serial 5"),
    ("write holding 10 1 2 unit 3", "ok write holding 10 x2"),
    ("", ""),
    ("fault modbus exception", "error: fault modbus exception takes an exception code 1-255"),
    ("fault modbus exception 0", "error: expected an exception code 1-255; got 0"),
    ("fault modbus slow soon", "error: expected a delay in ms; got 'soon'"),
    ("fault modbus silent unit 9", "error: no unit 9 on this board"),
    ("fault modbus silent rate 2", "error: expected a rate 0..1; got 2.0"),
    ("fault modbus wobble", ("error: unknown fault wobble; expected one of none, silent, "
                            "exception, badcrc, short, slow, noise")),
    ("fault serial noise", "error: fault serial noise takes a rate 0..1"),
    ("fault serial noise 3", "error: noise rate must be 0..1"),
    ("reboot", "error: unknown command 'reboot'; try help"),
])
def test_console_commands(line: str, answer: str) -> None:
    board = Board({"modbus": {"units": [{"unit": 3, "points": []}]},
                   "serial": {"profile": "nmea-weather"}})
    assert board.console.handle(line) == answer


def test_console_status_and_missing_roles() -> None:
    board = Board({"serial": {"profile": "pm-sensor"}})
    assert board.console.handle("fault modbus silent") == \
        "error: this board plays no Modbus device"
    assert board.console.handle("status").startswith("ok serial profile=pm-sensor fault=none")
    assert board.banner() == "streetgate rig board ready: serial pm-sensor"


def test_nmea_sentences_are_the_drivers_sentences() -> None:
    body = "WIMWV,201.3,R,4.1,M,A"
    assert sentence(body) == driver_sentence(body)
    sensor = SerialSensor("nmea-weather", rate=2.0)
    frames = sensor.due(0)
    assert [f[:6] for f in frames] == [b"$WIMWV", b"$WIMWV", b"$WIMDA", b"$WIXDR"]
    assert all(f == driver_sentence(f[1:-5].decode()) for f in frames)
    assert sensor.due(100) == []
    assert len(sensor.due(500)) == 4


def test_pm_frames_carry_their_sum16() -> None:
    frame = SerialSensor("pm-sensor").due(0)[0]
    assert (len(frame), frame[:4]) == (32, b"BM\x00\x1c")
    CHECKSUMS["sum16"].verify(frame[:-2], frame[-2:])


def test_counter_answers_queries_even_split() -> None:
    sensor = SerialSensor("ascii-counter")
    assert sensor.feed(b"RE") == []
    (answer,) = sensor.feed(b"AD\r\n")
    assert answer.startswith(b"C1=")
    assert answer.endswith(b"\r\n")
    assert sensor.feed(b"nonsense\n") == [b"ERR\r\n"]
    assert sensor.due(0) == []
