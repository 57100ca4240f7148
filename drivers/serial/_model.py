"""What decoders return: named fields with units, or an error that says why."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Protocol

from drivers.api import Quality, Value

__all__ = ["ChecksumError", "DecodeError", "Decoder", "Field", "sanitize", "scaled",
           "text_value", "unescape"]

_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|[rnt\\])")
_SIMPLE_ESCAPES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}
_INT = re.compile(r"[+-]?\d+")
_HEX_INT = re.compile(r"[+-]?0[xX][0-9A-Fa-f]+")
_TRUE = {"1", "true", "on", "yes", "y", "t"}
_FALSE = {"0", "false", "off", "no", "n", "f"}


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One decoded value; a bad quality carries ``value=None``."""

    name: str
    value: Value
    unit: str | None = None
    quality: Quality = Quality.GOOD


class DecodeError(Exception):
    """A frame that does not decode; the message says why, for the log and for sniff."""

    quality = Quality.MALFORMED
    counter = "malformed"


class ChecksumError(DecodeError):
    """The frame's checksum or CRC does not match its content."""

    quality = Quality.CRC_ERROR
    counter = "crc_error"


class Decoder(Protocol):
    """Turns one frame into fields; raises :class:`DecodeError`, nothing else."""

    def decode(self, frame: bytes) -> list[Field]: ...

    def points(self) -> list[tuple[str, str | None]]: ...


def sanitize(name: str) -> str:
    """A point-name segment from device text: lower case, ``[a-z0-9_]`` only."""
    return re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_")


def scaled(raw: float, scale: float, offset: float, decimals: int | None) -> Value:
    """``raw * scale + offset``; ints stay ints when nothing scales them."""
    if scale == 1.0 and offset == 0.0 and decimals is None:
        return raw
    value = raw * scale + offset
    return round(value, 9 if decimals is None else decimals)


def text_value(text: str, kind: str) -> Value:
    """Parse a text field as ``auto``, ``int``, ``float``, ``str`` or ``bool``.

    Raises:
        ValueError: the text is not a value of that kind (message says which).
    """
    text = text.strip()
    if kind == "str":
        return text
    if kind == "bool":
        low = text.lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"{text!r} is not a boolean")
    if kind in ("int", "auto") and (_INT.fullmatch(text) or _HEX_INT.fullmatch(text)):
        return int(text, 16) if _HEX_INT.fullmatch(text) else int(text)
    if kind == "int":
        raise ValueError(f"{text!r} is not an integer")
    try:
        value = float(text)
    except ValueError:
        if kind == "auto":
            return text
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def unescape(text: str) -> bytes:
    r"""``READ\r\n`` typed on a command line -> bytes (``\r \n \t \\ \xNN``; Latin-1).

    Raises:
        UnicodeEncodeError: a character outside Latin-1.
    """
    return _ESCAPE.sub(lambda m: _SIMPLE_ESCAPES.get(m.group(1))
                       or bytes.fromhex(m.group(1)[1:].decode()), text.encode("latin-1"))
