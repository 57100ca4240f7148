"""Schema of the ``serial`` driver: one port, its framing, and the devices behind it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from drivers.api import Duration, option
from drivers.serial import binary, writes
from drivers.serial.checksums import CHECKSUMS

__all__ = [
    "DecoderConfig",
    "DeviceConfig",
    "FieldConfig",
    "FramingConfig",
    "QueryConfig",
    "SerialConfig",
    "WriteConfig",
    "parse_hex",
]

NAME = r"[A-Za-z0-9_.-]+"
HEX = r"\s*(?:[0-9A-Fa-f]{2}\s*)+"
NMEA_SENTENCES = ("GGA", "RMC", "MWV", "XDR", "MDA")
TEXT_TYPES = ("auto", "int", "float", "str", "bool")
ChecksumName = Literal["none", "crc16_modbus", "crc16_ccitt_false", "crc16_xmodem",
                       "crc16_kermit", "crc8_smbus", "crc8_maxim", "xor8", "sum8", "sum16"]
FieldType = Literal["auto", "int", "float", "str", "bool",
                    "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"]


def parse_hex(text: str | None) -> bytes:
    """``"42 4D"`` -> ``b"BM"``; ``None`` -> ``b""``."""
    return bytes.fromhex(text) if text else b""


@dataclass(frozen=True, kw_only=True)
class FramingConfig:
    """How the byte stream is cut into frames (one framer per port)."""

    mode: Literal["line", "fixed", "delimited", "length"] = option(
        "line", doc="line: terminator; fixed: N bytes; delimited: start/end bytes with "
                    "escaping; length: a length field in the header")
    max_frame: int = option(512, doc="longer frames are counted as oversized and skipped",
                            minimum=1, maximum=65536)
    terminator: str = option("\r\n", doc="line: end of line (TOML escapes: \\r\\n)")
    length: int | None = option(None, doc="fixed: frame size in bytes", minimum=1)
    start: str | None = option(None, doc="fixed/delimited/length: sync bytes in hex",
                               pattern=HEX)
    end: str | None = option(None, doc="delimited: end byte; fixed: trailer checked for sync",
                             pattern=HEX)
    escape: str | None = option(None, doc="delimited: escape byte in hex (7D for HDLC)",
                                pattern=HEX)
    escape_xor: int = option(0x20, doc="delimited: escaped byte = next byte XOR this "
                                       "(RFC 1662 §4.2); 0 = take it literally",
                             minimum=0, maximum=255)
    escape_map: dict[str, str] = option(
        factory=dict, doc='delimited: explicit escapes, e.g. SLIP (RFC 1055) {DC = "C0", '
                          'DD = "DB"}')
    length_at: int = option(0, doc="length: byte offset of the length field", minimum=0)
    length_size: Literal[1, 2] = option(1, doc="length: size of the length field")
    length_byte_order: Literal["big", "little"] = option("big")
    length_adjust: int = option(0, doc="length: frame size = length_at + length_size + "
                                       "value + this")
    idle_reset: Duration | None = option(None, doc="drop a partial frame after this silence",
                                         minimum=0.001)

    @property
    def start_bytes(self) -> bytes:
        return parse_hex(self.start)

    @property
    def end_bytes(self) -> bytes:
        return parse_hex(self.end)

    def fixed_length(self) -> int | None:
        """The length every frame has, when the framing guarantees one."""
        return self.length if self.mode == "fixed" else None

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.mode == "line" and not self.terminator:
            issues.append(("terminator", "expected a non-empty terminator"))
        if self.mode == "fixed":
            if self.length is None:
                issues.append(("length", 'missing required key for mode = "fixed"'))
            elif self.length > self.max_frame:
                issues.append(("length", (f"expected at most max_frame ({self.max_frame}); "
                                         f"got {self.length}")))
        if self.mode == "delimited":
            issues += self._delimited_issues()
        if self.mode == "length" and self.start and self.length_at < len(self.start_bytes):
            issues.append(("length_at", ("expected the length field after the start bytes; "
                                        f"got {self.length_at}")))
        return issues

    def _delimited_issues(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.end is None:
            issues.append(("end", 'missing required key for mode = "delimited"'))
        for key in ("start", "end", "escape"):
            value = getattr(self, key)
            if value is not None and len(parse_hex(value)) != 1:
                issues.append((key, (f'expected one byte in hex for mode = "delimited"; '
                                    f'got "{value}"')))
        for key, value in self.escape_map.items():
            if not re.fullmatch(r"[0-9A-Fa-f]{2}", key) or not re.fullmatch(
                    r"[0-9A-Fa-f]{2}", value):
                issues.append((f"escape_map.{key}", ("expected one hex byte mapped to one "
                                                   f'hex byte; got {key} = "{value}"')))
        if self.escape is not None and self.escape.strip().upper() in (
                (self.start or "").strip().upper(), (self.end or "").strip().upper()):
            issues.append(("escape", "expected a byte different from start and end"))
        if self.escape_map and self.escape is None:
            issues.append(("escape_map", "needs escape (the escape byte)"))
        return issues


@dataclass(frozen=True, kw_only=True)
class FieldConfig:
    """One decoded value: a regex group, a key, or a slice of a binary frame."""

    name: str = option(doc="point name (last part of <instance>/<device>/<point>)",
                       pattern=NAME)
    key: str | None = option(None, doc="regex group or key=value key (default: name)")
    type: FieldType = option("auto", doc="text: auto/int/float/str/bool; binary: u8..f64")
    at: int | None = option(None, doc="binary: byte offset (default: after the previous field)",
                            minimum=0)
    scale: float = option(1.0, doc="value = raw * scale + offset")
    offset: float = option(0.0)
    decimals: int | None = option(None, doc="round scaled values (default: 9 places)",
                                  minimum=0, maximum=12)
    unit: str | None = option(None, doc="SenML unit name: Cel, %RH, Pa, V, ug/m3, count ...")

    @property
    def source(self) -> str:
        return self.key or self.name


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """What a frame means (one decoder per device)."""

    type: Literal["nmea", "regex", "keyvalue", "binary"]
    sentences: list[str] = option(factory=lambda: list(NMEA_SENTENCES),
                                  doc="nmea: sentence formatters to decode")
    require_checksum: bool = option(True, doc="nmea: reject sentences without *hh")
    pattern: str | None = option(None, doc="regex: Python regex with named groups")
    separator: str | None = option(None, doc="keyvalue: pair separator (default: , ; or "
                                             "whitespace)")
    assign: str = option("=", doc="keyvalue: key/value separator")
    byte_order: Literal["big", "little"] = option("big", doc="binary: multi-byte fields")
    checksum: ChecksumName = option("none", doc="binary: algorithm (see checksums.py)")
    checksum_at: int | None = option(None, doc="binary: offset of the checksum; negative "
                                               "counts from the end (default: last bytes)")
    checksum_from: int = option(0, doc="binary: first byte covered", minimum=0)
    checksum_byte_order: Literal["big", "little"] | None = option(
        None, doc="binary: default little for crc16_modbus/kermit, else big")
    length: int | None = option(None, doc="binary: expected frame size", minimum=1)
    fields: list[FieldConfig] = option(factory=list)

    def checksum_spec(self) -> binary.ChecksumSpec | None:
        """Where the checksum sits and what it covers, or None without one."""
        if self.checksum == "none":
            return None
        return binary.ChecksumSpec(CHECKSUMS[self.checksum], self.checksum_position(),
                                   self.checksum_from, self.checksum_byte_order)

    def checksum_position(self) -> int:
        """Checksum offset (negative: from the end); by default the frame's last bytes."""
        if self.checksum_at is not None:
            return self.checksum_at
        return -CHECKSUMS[self.checksum].size if self.checksum != "none" else 0

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        wrong = self._misplaced()
        issues += [(key, f'only used by type = "{kind}"') for key, kind in wrong]
        if self.type == "nmea":
            issues += [(f"sentences[{i}]", (f"expected one of {', '.join(NMEA_SENTENCES)}; "
                                          f'got "{s}"'))
                       for i, s in enumerate(self.sentences) if s not in NMEA_SENTENCES]
        elif self.type == "regex":
            issues += self._regex_issues()
        elif self.type == "binary":
            issues += self._binary_issues()
        if self.type in ("regex", "keyvalue"):
            issues += [(f"fields[{i}].type", (f"expected one of {', '.join(TEXT_TYPES)}; "
                                             f'got "{f.type}"'))
                       for i, f in enumerate(self.fields) if f.type not in TEXT_TYPES]
        names = [f.name for f in self.fields]
        issues += [(f"fields[{i}].name", f'duplicate point "{n}"')
                   for i, n in enumerate(names) if n in names[:i]]
        return issues

    def _misplaced(self) -> list[tuple[str, str]]:
        used = {"pattern": ("regex", self.pattern is not None),
                "separator": ("keyvalue", self.separator is not None),
                "checksum": ("binary", self.checksum != "none"),
                "length": ("binary", self.length is not None)}
        out = [(k, kind) for k, (kind, given) in used.items() if given and self.type != kind]
        if self.type == "nmea" and self.fields:
            out.append(("fields", "regex, keyvalue or binary"))
        return out

    def _regex_issues(self) -> list[tuple[str, str]]:
        if self.pattern is None:
            return [("pattern", 'missing required key for type = "regex"')]
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            return [("pattern", f"invalid regular expression: {exc}")]
        if not compiled.groupindex:
            return [("pattern", "expected at least one named group (?P<name>...)")]
        return [(f"fields[{i}].key" if f.key else f"fields[{i}].name",
                 (f'no group named "{f.source}" in pattern; groups: '
                 f"{', '.join(compiled.groupindex)}"))
                for i, f in enumerate(self.fields) if f.source not in compiled.groupindex]

    def _binary_issues(self) -> list[tuple[str, str]]:
        if not self.fields:
            return [("fields", 'expected at least one field for type = "binary"')]
        issues = [(f"fields[{i}].type", (f"expected one of {', '.join(binary.TYPES)}; "
                                        f'got "{f.type}"'))
                  for i, f in enumerate(self.fields) if f.type not in binary.TYPES]
        if issues or self.length is None:
            return issues
        return self.layout_issues(self.length, "length")

    def layout_issues(self, frame_length: int, source: str) -> list[tuple[str, str]]:
        """Fields and checksum must fit in frames of ``frame_length`` bytes."""
        issues: list[tuple[str, str]] = []
        spans = binary.layout([(f.at, f.type) for f in self.fields])
        for i, (at, size) in enumerate(spans):
            if at + size > frame_length:
                issues.append((f"fields[{i}]", (f"ends at byte {at + size} but frames are "
                                               f"{frame_length} bytes ({source})")))
        if self.checksum != "none":
            size = CHECKSUMS[self.checksum].size
            pos = self.checksum_position()
            pos = pos if pos >= 0 else frame_length + pos
            if pos < self.checksum_from or pos + size > frame_length:
                issues.append(("checksum_at", (f"checksum at byte {pos} does not fit frames "
                                              f"of {frame_length} bytes ({source})")))
        return issues


@dataclass(frozen=True, kw_only=True)
class QueryConfig:
    """Query/response: send a command on a schedule and decode the answer."""

    command: str | None = option(None, doc='text command, TOML escapes: "READ\\r\\n"')
    command_hex: str | None = option(None, doc="binary command in hex", pattern=HEX)
    interval: Duration = option(Duration(5.0), doc="time between queries", minimum=0.01)
    timeout: Duration = option(Duration(1.0), doc="wait this long for the answer",
                               minimum=0.001)

    @property
    def payload(self) -> bytes:
        return self.command.encode("latin-1") if self.command else parse_hex(self.command_hex)

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if (self.command is None) == (self.command_hex is None):
            issues.append(("", "expected exactly one of command, command_hex"))
        elif self.command is not None and not all(ord(c) < 256 for c in self.command):
            issues.append(("command", "expected Latin-1 characters (use command_hex)"))
        if self.timeout >= self.interval:
            issues.append(("timeout", (f"expected less than interval ({self.interval}); "
                                      f"got {self.timeout}")))
        return issues


@dataclass(frozen=True, kw_only=True)
class WriteConfig:
    """A writable point: the command that sets it and the replies that confirm it."""

    point: str = option(doc="point name, as in the device's readings", pattern=NAME)
    type: FieldType = option("int", doc="command: int/float/bool/str; command_hex: u8..f64")
    scale: float = option(1.0, doc="sent = (value - offset) / scale, as readings are scaled")
    offset: float = option(0.0)
    minimum: float | None = option(None, doc="smaller values are refused, nothing is sent")
    maximum: float | None = option(None, doc="larger values are refused, nothing is sent")
    command: str | None = option(None, doc='text template, TOML escapes: "SET DIM '
                                           '{value:d}\\r\\n"')
    command_hex: str | None = option(None, doc="binary: the whole frame in hex; the value and "
                                               "the checksum are filled in", pattern=HEX)
    value_at: int | None = option(None, doc="binary: byte offset of the value", minimum=0)
    reply: str | None = option(None, doc="text: regex the whole OK reply matches; group "
                                         "(?P<value>...) = the value now in effect")
    error: str | None = option(None, doc="text: regex of an error reply; group (?P<code>...) "
                                         "or the first group = the device's error code")
    reply_hex: str | None = option(None, doc="binary: the OK reply starts with these bytes",
                                   pattern=HEX)
    reply_value_at: int | None = option(None, doc="binary: byte offset of the value now in "
                                                  "effect in the reply", minimum=0)
    error_hex: str | None = option(None, doc="binary: an error reply starts with these bytes",
                                   pattern=HEX)
    error_code_at: int | None = option(None, doc="binary: byte offset of the error code (u8)",
                                       minimum=0)
    confirm: Literal["reply", "readback", "ack"] = option(
        "reply", doc="reply: the reply carries the value; readback: read the point again "
                     "(the device's query, or its next streamed frame); ack: trust the reply")
    timeout: Duration = option(Duration(1.0), doc="wait this long for the reply",
                               minimum=0.001)
    tolerance: float = option(0.0, doc="a confirmed value this close to the written one "
                                       "is the same", minimum=0)

    def validate(self) -> list[tuple[str, str]]:
        return writes.write_issues(self)


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One device on the port; its points are ``<instance>/<name>/<point>``."""

    name: str = option(doc="device name", pattern=NAME)
    decoder: DecoderConfig
    query: QueryConfig | None = option(None, doc="absent: the device streams on its own")
    silence_timeout: Duration | None = option(
        None, doc="streaming: no valid frame for this long -> timeout readings", minimum=0.01)
    writes: list[WriteConfig] = option(factory=list, doc="writable points")


@dataclass(frozen=True, kw_only=True)
class SerialConfig:
    """One serial port (``[[drivers.serial]]``)."""

    port: str = option(doc="device path; prefer /dev/serial/by-id/... (stable across replug)")
    baudrate: int = option(9600, minimum=50, maximum=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = option(8)
    parity: Literal["N", "E", "O", "M", "S"] = option("N")
    stopbits: Literal[1, 2] = option(1)
    reopen_min: Duration = option(Duration(0.5), doc="first reopen delay", minimum=0.01)
    reopen_max: Duration = option(Duration(30.0), doc="longest reopen delay", minimum=0.01)
    framing: FramingConfig = option(factory=FramingConfig)
    devices: list[DeviceConfig]

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if not self.devices:
            issues.append(("devices", "expected at least one device"))
        if self.reopen_max < self.reopen_min:
            issues.append(("reopen_max", (f"expected at least reopen_min ({self.reopen_min}); "
                                         f"got {self.reopen_max}")))
        names = [d.name for d in self.devices]
        issues += [(f"devices[{i}].name", f'duplicate device "{n}"')
                   for i, n in enumerate(names) if n in names[:i]]
        streaming = [i for i, d in enumerate(self.devices) if d.query is None]
        if streaming and len(self.devices) > 1:
            issues.append((f"devices[{streaming[0]}].query",
                           ("a streaming device must be alone on its port; give every device "
                           "a query or use one port per streaming device")))
        for i, dev in enumerate(self.devices):
            issues += [(f"devices[{i}].{p}", m) for p, m in self._device_issues(dev)]
        return issues

    def _device_issues(self, dev: DeviceConfig) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        dec, framing = dev.decoder, self.framing
        if dec.type == "nmea" and framing.mode != "line":
            issues.append(("decoder.type", ('nmea needs framing mode = "line"; '
                                           f'got "{framing.mode}"')))
        fixed = framing.fixed_length()
        if dec.type == "binary" and fixed is not None and dec.length not in (None, fixed):
            issues.append(("decoder.length", (f"expected framing.length ({fixed}); "
                                             f"got {dec.length}")))
        elif dec.type == "binary" and fixed is not None:
            issues += [(f"decoder.{p}", m) for p, m in dec.layout_issues(fixed, "framing.length")]
        if dev.query is not None and dev.silence_timeout is not None:
            issues.append(("silence_timeout", "only for streaming devices (query has timeout)"))
        points = [w.point for w in dev.writes]
        issues += [(f"writes[{i}].point", f'duplicate writable point "{p}"')
                   for i, p in enumerate(points) if p in points[:i]]
        for i, w in enumerate(dev.writes):
            issues += [(f"writes[{i}].{p}", m) for p, m in writes.device_issues(w, dec, framing)]
        return issues
