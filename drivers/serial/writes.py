"""Write templates: a value in, the bytes to send; a reply frame in, what it says. No I/O.

A text template is a Python format string with one field, ``value``
(``"SET DIM {value:d}\\r\\n"``), sent as it is. A binary template is a whole frame in hex;
the value is packed at ``value_at``, the device's checksum is computed in place
(:meth:`drivers.serial.binary.ChecksumSpec.seal`) and the frame is carried as the port's
framing says (:func:`drivers.serial.framing.wire_frame`). The value sent is
``(value - offset) / scale``, the inverse of how readings are scaled.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import struct
from typing import TYPE_CHECKING

from drivers.api import Value
from drivers.serial import binary
from drivers.serial._model import DecodeError, scaled, text_value
from drivers.serial.framing import wire_frame

if TYPE_CHECKING:
    from drivers.serial.config import DecoderConfig, FramingConfig, WriteConfig

__all__ = ["TEXT_KINDS", "BadValueError", "Confirmed", "Refused", "WriteTemplate",
           "device_issues", "write_issues"]

TEXT_KINDS = ("int", "float", "bool", "str")
_FLOAT_KINDS = ("float", "f32", "f64")
_SAMPLES: dict[str, Value] = {"int": 1, "float": 1.5, "bool": 1, "str": "x"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadValueError(ValueError):
    """The value does not fit the template (type, range, steps): nothing may be sent."""


@dataclasses.dataclass(frozen=True, slots=True)
class Confirmed:
    """The device accepted the write; ``value`` is what it says is now in effect."""

    value: Value = None
    #: False when the reply carries no value (an acknowledgement only).
    has_value: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """The device answered with its error reply."""

    code: int | None
    text: str


def _fields(command: str) -> list[tuple[str | None, str, str | None]]:
    """(field name, format spec, conversion) of each replacement field."""
    return [(name, spec or "", conv) for _lit, name, spec, conv in string.Formatter().parse(
        command) if name is not None]


class WriteTemplate:
    """One writable point of one device, built from a validated :class:`WriteConfig`."""

    def __init__(self, cfg: WriteConfig, decoder: DecoderConfig,
                 framing: FramingConfig) -> None:
        self.cfg = cfg
        self.point = cfg.point
        self.kind = cfg.type
        self._framing = framing
        self._checksum = decoder.checksum_spec() if cfg.command_hex else None
        self._codec = (binary.codec(cfg.type, decoder.byte_order)
                       if cfg.type in binary.TYPES else None)
        self._template = bytes.fromhex(cfg.command_hex) if cfg.command_hex else b""
        self._spec = _fields(cfg.command)[0][1] if cfg.command else ""
        self._reply = re.compile(cfg.reply) if cfg.reply else None
        self._error = re.compile(cfg.error) if cfg.error else None
        self._reply_hex = bytes.fromhex(cfg.reply_hex) if cfg.reply_hex else None
        self._error_hex = bytes.fromhex(cfg.error_hex) if cfg.error_hex else None

    @property
    def carries_value(self) -> bool:
        """Whether the OK reply says which value is now in effect."""
        if self._reply is not None:
            return "value" in self._reply.groupindex
        return self.cfg.reply_value_at is not None

    def encode(self, value: Value) -> tuple[bytes, Value]:
        """The bytes to send and the value they set (after scaling and formatting).

        Raises:
            BadValueError: the value does not fit; the message says why.
        """
        if self._codec is not None:
            return self._encode_binary(value)
        raw = self._raw(value)
        field = format(raw, self._spec)
        if _CONTROL.search(field):
            raise BadValueError(f"{value!r} would send control characters ({field!r})")
        try:
            data = (self.cfg.command or "").format(value=raw).encode("latin-1")
        except UnicodeEncodeError:
            raise BadValueError(f"{value!r} is not Latin-1 text") from None
        if self.kind == "float":
            return data, self._scaled(float(field))
        return data, (bool(raw) if self.kind == "bool" else self._scaled(raw))

    def match(self, frame: bytes) -> Confirmed | Refused | None:
        """What a frame says about the write: accepted, refused, or None (not its reply)."""
        if self._codec is not None:
            return self._match_binary(frame)
        text = frame.decode("latin-1")
        if self._error is not None and (m := self._error.fullmatch(text)):
            return Refused(self._code(m), text)
        if self._reply is None or not (m := self._reply.fullmatch(text)):
            return None
        if "value" not in self._reply.groupindex or m.group("value") is None:
            return Confirmed()
        return Confirmed(self.parse(m.group("value")), has_value=True)

    def parse(self, text: str) -> Value:
        """A value in the device's words, scaled; text that is not one stays text."""
        try:
            raw = text_value(text, self.kind)
        except ValueError:
            return text.strip()
        return raw if self.kind in ("bool", "str") else self._scaled(raw)

    def same(self, confirmed: Value, written: Value) -> bool:
        """Whether the value the device reports is the one written (within ``tolerance``)."""
        numbers = (int, float)
        if isinstance(confirmed, numbers) and isinstance(written, numbers) and not (
                isinstance(confirmed, bool) or isinstance(written, bool)):
            return math.isclose(confirmed, written, rel_tol=1e-9,
                                abs_tol=max(self.cfg.tolerance, 1e-9))
        return confirmed == written

    def _scaled(self, raw: Value) -> Value:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return scaled(raw, self.cfg.scale, self.cfg.offset, None)
        return raw

    def _raw(self, value: Value) -> int | float | str:
        if self.kind == "str":
            if not isinstance(value, str):
                raise BadValueError(f"expected text; got {value!r}")
            return value
        if self.kind == "bool":
            if value in (0, 1) and isinstance(value, (bool, int)):
                return int(value)
            raise BadValueError(f"expected true or false; got {value!r}")
        return self._number(value)

    def _number(self, value: Value) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValueError(f"expected a number; got {value!r}")
        if not math.isfinite(value):
            raise BadValueError(f"{value!r} is not a finite number")
        cfg = self.cfg
        lo, hi = cfg.minimum, cfg.maximum
        if lo is not None and value < lo:
            raise BadValueError(f"{value!r} is below the minimum {lo:g}")
        if hi is not None and value > hi:
            raise BadValueError(f"{value!r} is above the maximum {hi:g}")
        raw = value if (cfg.scale, cfg.offset) == (1.0, 0.0) else (value - cfg.offset) / cfg.scale
        if self.kind in _FLOAT_KINDS:
            return float(raw)
        if isinstance(raw, int):
            return raw
        nearest = round(raw)
        if abs(raw - nearest) > 1e-6 * max(1.0, abs(raw)):
            raise BadValueError(f"{value!r} is not a whole number of steps of {cfg.scale:g}")
        return int(nearest)

    def _encode_binary(self, value: Value) -> tuple[bytes, Value]:
        assert self._codec is not None  # noqa: S101 - only called for binary templates
        raw = self._raw(value)
        at = self.cfg.value_at or 0
        try:
            packed = self._codec.pack(raw)
        except (struct.error, OverflowError):
            raise BadValueError(f"{value!r} does not fit {self.kind} "
                                f"({_kind_range(self.kind)})") from None
        frame = self._template[:at] + packed + self._template[at + len(packed):]
        if self._checksum is not None:
            frame = self._checksum.seal(frame)
        try:
            wire = wire_frame(self._framing, frame)
        except ValueError as exc:
            raise BadValueError(f"{value!r} cannot be framed: {exc}") from None
        return wire, self._scaled(self._codec.unpack(packed)[0])

    def _match_binary(self, frame: bytes) -> Confirmed | Refused | None:
        assert self._codec is not None  # noqa: S101 - only called for binary templates
        if self._checksum is not None:
            try:
                self._checksum.verify(frame)
            except DecodeError:
                return None
        if self._error_hex is not None and frame.startswith(self._error_hex):
            at = self.cfg.error_code_at
            code = frame[at] if at is not None and at < len(frame) else None
            return Refused(code, frame.hex(" ").upper())
        if self._reply_hex is None or not frame.startswith(self._reply_hex):
            return None
        at = self.cfg.reply_value_at
        if at is None:
            return Confirmed()
        if len(frame) < at + self._codec.size:
            return None
        return Confirmed(self._scaled(self._codec.unpack_from(frame, at)[0]), has_value=True)

    def _code(self, m: re.Match[str]) -> int | None:
        if "code" in m.re.groupindex:
            text = m.group("code")
        elif m.re.groups:
            text = m.group(1)
        else:
            return None
        try:
            code = text_value(text or "", "int")
        except ValueError:
            return None
        return code if isinstance(code, int) else None


def _kind_range(kind: str) -> str:
    if kind in _FLOAT_KINDS:
        return "a finite number in range"
    bits = binary.TYPES[kind][1] * 8
    if kind.startswith("i"):
        return f"{-(1 << (bits - 1))}..{(1 << (bits - 1)) - 1}"
    return f"0..{(1 << bits) - 1}"


def _regex_issues(key: str, pattern: str | None) -> list[tuple[str, str]]:
    if pattern is None:
        return []
    try:
        re.compile(pattern)
    except re.error as exc:
        return [(key, f"invalid regular expression: {exc}")]
    return []


def _command_issues(cfg: WriteConfig) -> list[tuple[str, str]]:
    command = cfg.command or ""
    issues: list[tuple[str, str]] = []
    if cfg.type not in TEXT_KINDS:
        return [("type", (f'expected one of {", ".join(TEXT_KINDS)} for command; '
                         f'got "{cfg.type}"'))]
    try:
        fields = _fields(command)
    except ValueError as exc:
        return [("command", f"invalid template: {exc}")]
    if not fields or any(name != "value" or conv for name, _spec, conv in fields):
        return [("command", ("expected replacement fields {value} or {value:SPEC} only "
                            "(write braces as {{ and }})"))]
    try:
        command.format(value=_SAMPLES[cfg.type]).encode("latin-1")
    except (ValueError, TypeError) as exc:
        issues.append(("command", f"cannot format a {cfg.type} value: {exc}"))
    issues += [(k, "only used with command_hex") for k in (
        "value_at", "reply_hex", "reply_value_at", "error_hex", "error_code_at")
        if getattr(cfg, k) is not None]
    if cfg.reply is None:
        issues.append(("reply", "missing required key for command"))
    issues += _regex_issues("reply", cfg.reply) + _regex_issues("error", cfg.error)
    return issues


def _hex_issues(cfg: WriteConfig) -> list[tuple[str, str]]:
    if cfg.type not in binary.TYPES:
        return [("type", (f'expected one of {", ".join(binary.TYPES)} for command_hex; '
                         f'got "{cfg.type}"'))]
    issues = [(k, "only used with command") for k in ("reply", "error")
              if getattr(cfg, k) is not None]
    size = binary.TYPES[cfg.type][1]
    length = len(bytes.fromhex(cfg.command_hex or ""))
    if cfg.value_at is None:
        issues.append(("value_at", "missing required key for command_hex"))
    elif cfg.value_at + size > length:
        issues.append(("value_at", (f"a {cfg.type} at byte {cfg.value_at} ends after the "
                                   f"{length}-byte command_hex")))
    if cfg.reply_hex is None:
        issues.append(("reply_hex", "missing required key for command_hex"))
    return issues


def _carries(cfg: WriteConfig) -> bool:
    if cfg.command_hex:
        return cfg.reply_value_at is not None
    return "value" in re.compile(cfg.reply or "").groupindex


def write_issues(cfg: WriteConfig) -> list[tuple[str, str]]:
    """Problems of one write table on its own, as ``(key, message)``."""
    if (cfg.command is None) == (cfg.command_hex is None):
        return [("", "expected exactly one of command, command_hex")]
    issues = _command_issues(cfg) if cfg.command is not None else _hex_issues(cfg)
    if cfg.scale == 0:
        issues.append(("scale", "expected a non-zero number"))
    if cfg.minimum is not None and cfg.maximum is not None and cfg.minimum > cfg.maximum:
        issues.append(("maximum", (f"expected at least minimum ({cfg.minimum:g}); "
                                  f"got {cfg.maximum:g}")))
    if cfg.confirm == "reply" and not issues and not _carries(cfg):
        what = "a group (?P<value>...) in reply" if cfg.command else "reply_value_at"
        issues.append(("confirm", (f'"reply" needs {what}; or set confirm = "readback" or '
                                  '"ack"')))
    return sorted(issues)


def device_issues(cfg: WriteConfig, decoder: DecoderConfig,
                  framing: FramingConfig) -> list[tuple[str, str]]:
    """Problems of a write table against its device's decoder and its port's framing."""
    issues: list[tuple[str, str]] = []
    if cfg.command_hex and cfg.type in binary.TYPES:
        spec = decoder.checksum_spec()
        frame = bytes.fromhex(cfg.command_hex)
        try:
            if spec is not None:
                frame = spec.seal(frame)
            wire_frame(framing, frame)
        except ValueError as exc:
            issues.append(("command_hex", f"{exc} (decoder checksum, port framing)"))
    names = [f.name for f in decoder.fields]
    if cfg.confirm == "readback" and names and cfg.point not in names:
        issues.append(("point", (f'confirm = "readback" needs a decoder field named '
                                f'"{cfg.point}"; fields: {", ".join(names)}')))
    return issues
