"""Text decoders (regex with named groups, key=value lines) and the decoder factory."""

from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.api import Quality, Value
from drivers.serial._model import DecodeError, Decoder, Field, sanitize, scaled, text_value
from drivers.serial.binary import BinaryDecoder, BinaryField, layout
from drivers.serial.config import DecoderConfig, FieldConfig, FramingConfig
from drivers.serial.nmea import NmeaDecoder

__all__ = ["KeyValueDecoder", "RegexDecoder", "make_decoder"]


def _field(cfg: FieldConfig, text: str | None) -> Field:
    """A configured text field: typed, scaled, or MALFORMED with no value."""
    if text is None:
        return Field(cfg.name, None, cfg.unit, Quality.MALFORMED)
    try:
        value: Value = text_value(text, cfg.type)
    except ValueError:
        return Field(cfg.name, None, cfg.unit, Quality.MALFORMED)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = scaled(value, cfg.scale, cfg.offset, cfg.decimals)
    return Field(cfg.name, value, cfg.unit)


def _auto(name: str, text: str) -> Field:
    try:
        return Field(name, text_value(text, "auto"))
    except ValueError:  # "nan", "inf": numbers that are not values
        return Field(name, None, None, Quality.OUT_OF_RANGE)


class RegexDecoder:
    """Searches each frame (Latin-1 text) with a pattern; named groups become points."""

    def __init__(self, pattern: str, fields: Sequence[FieldConfig]) -> None:
        self._re = re.compile(pattern)
        self._fields = list(fields)

    def points(self) -> list[tuple[str, str | None]]:
        if self._fields:
            return [(f.name, f.unit) for f in self._fields]
        return [(sanitize(g), None) for g in self._re.groupindex]

    def decode(self, frame: bytes) -> list[Field]:
        m = self._re.search(frame.decode("latin-1"))
        if m is None:
            raise DecodeError(f"no match for pattern {self._re.pattern!r}")
        if self._fields:  # an optional group that did not take part gives no reading
            return [_field(f, m.group(f.source)) for f in self._fields
                    if m.group(f.source) is not None]
        return [_auto(sanitize(k), v) for k, v in m.groupdict().items() if v is not None]


class KeyValueDecoder:
    """``C1=123;C2=456`` lines; with fields, unlisted keys are ignored and a missing key
    gives a MALFORMED reading; without fields every key is a point, typed by its text."""

    def __init__(self, fields: Sequence[FieldConfig], *, separator: str | None,
                 assign: str) -> None:
        self._fields = list(fields)
        self._separator = separator
        self._assign = assign
        a = re.escape(assign)  # default: pairs split by comma, semicolon or whitespace
        self._pair = re.compile(rf"([^\s,;{a}]+)\s*{a}\s*([^\s,;]*)")

    def points(self) -> list[tuple[str, str | None]]:
        return [(f.name, f.unit) for f in self._fields]

    def pairs(self, frame: bytes) -> dict[str, str]:
        """Key -> value text; pairs with an empty value are left out."""
        text = frame.decode("latin-1")
        if self._separator is None:
            found = self._pair.findall(text)
        else:
            found = [(k.strip(), v.strip()) for k, sep, v in
                     (t.partition(self._assign) for t in text.split(self._separator)) if sep]
        out = {k: v for k, v in found if k and v}
        if not out:
            raise DecodeError(f"no key{self._assign}value pairs")
        return out

    def decode(self, frame: bytes) -> list[Field]:
        pairs = self.pairs(frame)
        if self._fields:
            return [_field(f, pairs.get(f.source)) for f in self._fields]
        return [_auto(name, v) for k, v in pairs.items() if (name := sanitize(k))]


def _binary(cfg: DecoderConfig, framing: FramingConfig) -> BinaryDecoder:
    spans = layout([(f.at, f.type) for f in cfg.fields])
    fields = [BinaryField(f.name, at, f.type, f.scale, f.offset, f.decimals, f.unit)
              for f, (at, _size) in zip(cfg.fields, spans, strict=True)]
    return BinaryDecoder(fields, byte_order=cfg.byte_order, checksum=cfg.checksum_spec(),
                         length=cfg.length or framing.fixed_length())


def make_decoder(cfg: DecoderConfig, framing: FramingConfig) -> Decoder:
    """The decoder a validated config describes."""
    if cfg.type == "nmea":
        return NmeaDecoder(cfg.sentences, require_checksum=cfg.require_checksum)
    if cfg.type == "regex":
        return RegexDecoder(cfg.pattern or "", cfg.fields)
    if cfg.type == "keyvalue":
        return KeyValueDecoder(cfg.fields, separator=cfg.separator, assign=cfg.assign)
    return _binary(cfg, framing)
