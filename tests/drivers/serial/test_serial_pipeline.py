"""The pipeline without I/O: idle resets, query routing, unsolicited frames, a lost port."""

from __future__ import annotations

import logging
from typing import Any

from drivers.api import HealthBoard, Quality
from drivers.serial import SerialDriver
from drivers.serial.pipeline import Pipeline

LOG = logging.getLogger("test.serial.pipeline")


def pipeline(table: dict[str, Any]) -> Pipeline:
    cfg = SerialDriver.parse_config({"port": "/dev/null"} | table, file="t", path="p")
    return Pipeline(cfg, "i", HealthBoard(LOG))


BINARY = {
    "framing": {"mode": "fixed", "length": 3, "idle_reset": "100ms"},
    "devices": [{"name": "d", "decoder": {"type": "binary", "checksum": "sum8",
                                          "fields": [{"name": "v", "type": "u16"}]}}],
}


def test_idle_reset_drops_a_partial_frame_after_silence() -> None:
    p = pipeline(BINARY)
    assert p.feed(b"\x00", 1, now=0.0) == []  # a frame's first byte, then the line idles
    readings = p.feed(b"\x01\x02\x03", 1, now=0.5)
    assert [(r.point, r.value) for r in readings] == [("i/d/v", 0x0102)]
    assert p.health.counters["partial_frames"] == 1


def test_without_idle_reset_the_checksum_slides_to_the_right_boundary() -> None:
    p = pipeline(BINARY | {"framing": {"mode": "fixed", "length": 3}})
    p.feed(b"\x00", 1, now=0.0)
    readings = p.feed(b"\x01\x02\x03", 1, now=0.5)  # 00 01 02 fails its sum: rescanned
    assert [(r.point, r.value) for r in readings] == [("i/d/v", 0x0102)]
    assert p.health.devices["d"].counters["crc_error"] == 1
    assert p.health.counters["rejected_frames"] == 1


QUERY = {
    "devices": [{"name": "c", "decoder": {"type": "keyvalue"},
                 "query": {"command": "READ\r\n", "interval": "1s", "timeout": "100ms"}}],
}


def test_frames_go_to_the_pending_query_and_others_are_unsolicited() -> None:
    p = pipeline(QUERY)
    taken: list[bytes] = []
    assert p.feed(b"C1=1\r\n", 1, 0.0) == []
    assert p.health.counters["unsolicited_frames"] == 1
    p.feed(b"C1=", 1, 0.1)  # a partial late answer, then a new query starts

    def take(frame: bytes) -> bool:
        taken.append(frame)
        return True

    p.expect(take)
    p.feed(b"C1=2\r\n", 1, 0.2)
    p.expect(None)
    assert taken == [b"C1=2"]
    assert p.health.counters["partial_frames"] == 1


def test_answer_readings_and_bad_quality_for_failures() -> None:
    p = pipeline(QUERY)
    dev = p.devices[0]
    good = dev.answer(b"C1=5;C2=x", 7, 0.0)
    assert [(r.point, r.value, r.quality) for r in good] == [
        ("i/c/c1", 5, Quality.GOOD), ("i/c/c2", "x", Quality.GOOD)]
    missing = dev.answer(None, 8, 1.0)
    assert {(r.point, r.quality, r.ts) for r in missing} == {
        ("i/c/c1", Quality.TIMEOUT, 8), ("i/c/c2", Quality.TIMEOUT, 8)}
    garbled = dev.answer(b"#?!", 9, 2.0)
    assert {r.quality for r in garbled} == {Quality.MALFORMED}
    assert dev.health.counters["timeout"] == 1
    assert dev.health.counters["failed_answers"] == 1


def test_lost_port_marks_every_known_point_unavailable() -> None:
    p = pipeline({"devices": [{"name": "gps", "decoder": {"type": "nmea",
                                                           "sentences": ["GGA"]}}]})
    p.feed(b"$GPGGA,123519,48", 1, 0.0)
    lost = p.lost(5)
    assert {r.point for r in lost} == {"i/gps/latitude", "i/gps/longitude", "i/gps/fix_quality",
                                       "i/gps/satellites", "i/gps/hdop", "i/gps/altitude"}
    assert all(r.quality == Quality.UNAVAILABLE and r.value is None for r in lost)
    assert p.health.counters["partial_frames"] == 1
    assert not p.devices[0].health.ok
