"""Property tests: random bytes into every decoder and every pipeline never raise.

Decoders may only raise ``DecodeError``; pipelines (framer + decoders, as the driver runs
them) may not raise at all, and every reading they give has a valid point name.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.api import HealthBoard, load
from drivers.serial import SerialDriver
from drivers.serial._model import DecodeError, Decoder
from drivers.serial.checksums import CHECKSUMS
from drivers.serial.config import DecoderConfig, FramingConfig
from drivers.serial.decoders import make_decoder
from drivers.serial.nmea import nmea_checksum
from drivers.serial.pipeline import Pipeline

HERE = Path(__file__).parent
EXAMPLE = HERE.parents[2] / "drivers" / "serial" / "example.toml"
POINT = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/[a-z0-9_.-]+")

DECODERS: dict[str, dict[str, Any]] = {
    "nmea": {"type": "nmea"},
    "nmea-lax": {"type": "nmea", "require_checksum": False},
    "regex": {"type": "regex", "pattern": r"T=(?P<t>-?\d+)(?: S=(?P<s>\w+))?",
              "fields": [{"name": "t", "type": "int", "scale": 0.1}, {"name": "s"}]},
    "regex-auto": {"type": "regex", "pattern": r"(?P<a>\S+)\s+(?P<b>\S*)"},
    "keyvalue": {"type": "keyvalue"},
    "keyvalue-fields": {"type": "keyvalue", "separator": ";",
                        "fields": [{"name": "c1", "key": "C1", "type": "int"},
                                   {"name": "f", "type": "float"}, {"name": "b", "type": "bool"}]},
    **{f"binary-{name}": {"type": "binary", "checksum": name,
                          "fields": [{"name": "a", "type": "u8"}, {"name": "b", "type": "f32"},
                                     {"name": "c", "type": "i16", "scale": 0.5}]}
       for name in CHECKSUMS},
    "binary-f64-little": {"type": "binary", "byte_order": "little", "length": 9,
                          "fields": [{"name": "x", "at": 1, "type": "f64"}]},
}


def build(table: dict[str, Any]) -> Decoder:
    return make_decoder(load(DecoderConfig, table, file="fuzz", path="decoder"), FramingConfig())


BUILT = {name: build(table) for name, table in DECODERS.items()}


def check_decoder(decoder: Decoder, frame: bytes) -> None:
    error: str | None = None
    try:
        fields = decoder.decode(frame)
    except DecodeError as exc:
        fields, error = [], str(exc)
    assert error != "", "a DecodeError must say why"
    for f in fields:
        assert re.fullmatch(r"[a-z0-9_]+", f.name), f.name
        assert (f.value is None) != (f.quality.name == "GOOD")


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=120, deadline=None)
@given(frame=st.binary(max_size=120))
def test_random_bytes_into_decoder(name: str, frame: bytes) -> None:
    check_decoder(BUILT[name], frame)


NMEA_CHARS = st.sampled_from([*"0123456789.,-+NSEWAVRTMKCPHBIDG$*ab ", "GGA", "RMC", "MWV",
                              "XDR", "MDA", "GP", "WI"])


@st.composite
def nmea_like(draw: st.DrawFn) -> bytes:
    """Sentences with a correct checksum, so field parsing is what gets fuzzed."""
    kind = draw(st.sampled_from(["GPGGA", "GPRMC", "WIMWV", "WIXDR", "WIMDA"]))
    body = (kind + "," + "".join(draw(st.lists(NMEA_CHARS, max_size=40)))).replace("*", "")
    body = body.replace("$", "")
    return f"${body}*{nmea_checksum(body.encode()):02X}".encode()


@settings(max_examples=300, deadline=None)
@given(frame=nmea_like())
def test_checksummed_nmea_junk_never_escapes(frame: bytes) -> None:
    check_decoder(BUILT["nmea"], frame)


def pipeline_tables() -> list[tuple[str, dict[str, Any]]]:
    tables = []
    sources = [EXAMPLE, *sorted((HERE / "cases").glob("*/config.toml"))]
    for path in sources:
        if (path.parent / "expected.err").exists():
            continue
        for table in tomllib.loads(path.read_text("utf-8"))["drivers"]["serial"]:
            data = dict(table)
            tables.append((f"{path.parent.name}:{data.pop('instance')}", data))
    return tables


PIPELINES = pipeline_tables()


def run_pipeline(data: dict[str, Any], chunks: list[bytes]) -> None:
    cfg = SerialDriver.parse_config(data, file="fuzz", path="drivers.serial[0]")
    pipeline = Pipeline(cfg, "fuzz", HealthBoard(logging.getLogger("test.serial.fuzz")))
    for i, chunk in enumerate(chunks):
        for reading in pipeline.feed(chunk, 1, float(i)):
            assert POINT.fullmatch(reading.point), reading.point
    assert pipeline.framer.buffered <= max(cfg.framing.max_frame * 2, 64) + 16


@pytest.mark.parametrize(("name", "data"), PIPELINES, ids=[n for n, _ in PIPELINES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_into_pipeline(name: str, data: dict[str, Any],
                                    chunks: list[bytes]) -> None:
    run_pipeline(data, chunks)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=20_000, deadline=None)
@given(frame=st.binary(max_size=300))
def test_random_bytes_into_decoder_long(name: str, frame: bytes) -> None:
    check_decoder(BUILT[name], frame)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(frame=nmea_like())
def test_checksummed_nmea_junk_long(frame: bytes) -> None:
    check_decoder(BUILT["nmea"], frame)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "data"), PIPELINES, ids=[n for n, _ in PIPELINES])
@settings(max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=600), max_size=20))
def test_random_bytes_into_pipeline_long(name: str, data: dict[str, Any],
                                         chunks: list[bytes]) -> None:
    run_pipeline(data, chunks)
