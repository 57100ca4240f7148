"""Schema of the ``modbus`` driver: one bus, its devices, their points.

Annotations here are evaluated when the classes are made (no ``from __future__ import
annotations``): the config loader reads each table's type hints, and evaluating string
annotations for every table of a large config was most of ``streetgate check``'s time.
"""

from dataclasses import dataclass
from typing import Literal

from drivers.api import Duration, option

__all__ = [
    "BusConfig",
    "DeviceConfig",
    "ModbusConfig",
    "Order",
    "PointConfig",
    "PointType",
    "RangeConfig",
    "Table",
    "Workarounds",
]

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", "bit"]
Order = Literal["big", "little"]

NAME = r"[A-Za-z0-9_.-]+"
RTU_BAUD = 9600


@dataclass(frozen=True, kw_only=True)
class PointConfig:
    """One point; every field but ``name`` may come from the device's profile."""

    name: str = option(doc="point name, the last part of <instance>/<device>/<point>",
                       pattern=NAME)
    table: Table | None = option(None, doc="holding, input, coil or discrete (default holding)")
    address: int | None = option(None, doc="0-based protocol address", minimum=0,
                                 maximum=65535)
    type: PointType | None = option(None, doc="u16 (default), i16, … string, bit")
    count: int | None = option(None, doc="registers; required for string", minimum=1,
                               maximum=125)
    bit: int | None = option(None, doc="bit 0-15 of the register, for type bit", minimum=0,
                             maximum=15)
    byte_order: Order | None = option(None, doc="byte order inside a register (default big)")
    word_order: Order | None = option(None, doc="register order of wide values (default big)")
    scale: float | None = option(None, doc="value = raw * scale + offset (default 1)")
    offset: float | None = option(None, doc="added after scaling (default 0)")
    unit: str | None = option(None, doc="SenML unit name: V, A, W, Wh, Hz, Cel, %RH")
    interval: Duration | None = option(None, doc="poll period of this point (default: the "
                                       "device's)", minimum=0.01)
    enabled: bool = option(True, doc="false drops a point inherited from the profile")


@dataclass(frozen=True, kw_only=True)
class RangeConfig:
    """Consecutive points of one type: ``count`` points from ``start``, each right after the
    one before (a u32 or f32 every 2 registers, a u64 or f64 every 4)."""

    name: str = option(doc='point names, with {i} for the number of each point ("reg_{i}") '
                       "or {address} for its address")
    table: Table | None = option(None, doc="holding, input, coil or discrete (default holding)")
    start: int = option(doc="0-based protocol address of the first point", minimum=0,
                        maximum=65535)
    count: int = option(doc="how many points", minimum=1, maximum=65536)
    first: int = option(0, doc="the {i} of the first point", minimum=0)
    type: PointType | None = option(None, doc="u16 (default), i16, u32, i32, u64, i64, f32, "
                                    "f64; bit for coils and discrete inputs")
    byte_order: Order | None = option(None, doc="byte order inside a register (default big)")
    word_order: Order | None = option(None, doc="register order of wide values (default big)")
    scale: float | None = option(None, doc="value = raw * scale + offset (default 1)")
    offset: float | None = option(None, doc="added after scaling (default 0)")
    unit: str | None = option(None, doc="SenML unit name of every point")
    interval: Duration | None = option(None, doc="poll period of these points (default: the "
                                       "device's)", minimum=0.01)

    def validate(self) -> list[tuple[str, str]]:
        from drivers.modbus.ranges import range_issues  # noqa: PLC0415 - import cycle

        return range_issues(self)


@dataclass(frozen=True, kw_only=True)
class Workarounds:
    """A device's departures from the Modbus specification."""

    write_multiple: bool = option(False, doc="write with FC 16 / FC 15 only, also a single "
                                  "register or coil (for devices without FC 6 / FC 5)")


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One Modbus unit on the bus."""

    name: str = option(doc="device name, the middle part of point names", pattern=NAME)
    unit: int = option(doc="unit id (slave address): 1-247 on RTU, 0-255 on TCP",
                       minimum=0, maximum=255)
    profile: str | None = option(None, doc="shipped profile name or path to a profile file")
    interval: Duration = option(Duration(5.0), doc="poll period", minimum=0.01)
    timeout: Duration = option(Duration(0.5), doc="answer timeout per request",
                               minimum=0.001, maximum=60)
    retries: int = option(1, doc="extra attempts after a timeout, CRC or framing error",
                          minimum=0, maximum=10)
    byte_order: Order | None = option(None, doc="default for this device's points")
    word_order: Order | None = option(None, doc="default for this device's points")
    max_block: int = option(125, doc="most registers per request (bits: 16 times as many)",
                            minimum=1, maximum=125)
    max_gap: int = option(8, doc="unused registers a request may read over to save a "
                          "request (bits: 16 times as many)", minimum=0, maximum=124)
    dead_after: int = option(3, doc="failed polls in a row before the device is backed off",
                             minimum=1, maximum=1000)
    backoff_max: Duration = option(Duration(60.0), doc="longest wait between polls of a "
                                   "dead device", minimum=0.01)
    points: list[PointConfig] = option(factory=list, doc="points added to or overriding "
                                       "the profile's (also points made by ranges)")
    ranges: list[RangeConfig] = option(factory=list, doc="blocks of consecutive points of "
                                       "one type, added to the profile's")
    workarounds: Workarounds = option(factory=Workarounds, doc="device quirks")

    def validate(self) -> list[tuple[str, str]]:
        from drivers.modbus.profiles import resolve_points  # noqa: PLC0415 - import cycle

        return resolve_points(self)[1]


@dataclass(frozen=True, kw_only=True)
class BusConfig:
    """The line (RTU) or the socket (TCP) the devices share.

    Settings of the other kind are left unset (None), so the resolved config (``streetgate
    check``) shows only what applies: a TCP bus has no baud rate, an RTU line no pipelining.
    """

    kind: Literal["rtu", "tcp"] = option(doc="rtu (RS-485 serial line) or tcp")
    port: str | int | None = option(None, doc="rtu: device path; tcp: port (default 502)")
    host: str | None = option(None, doc="tcp: host name or address")
    baud: int | None = option(None, doc="rtu: bits per second (default 9600)", minimum=300,
                              maximum=4_000_000)
    parity: Literal["N", "E", "O"] | None = option(None, doc="rtu: N, E (default) or O")
    stop_bits: Literal[1, 2] | None = option(None, doc="rtu: 1 (default) or 2")
    inter_frame_delay: Duration | None = option(
        None, doc="rtu: silence between frames (default 3.5 characters, at least 1.75ms)",
        maximum=1.0)
    max_in_flight: int | None = option(None, doc="tcp: 1 (default) serializes requests; more "
                                       "pipelines them", minimum=1, maximum=64)
    connect_timeout: Duration = option(Duration(2.0), doc="opening the port or connection",
                                       minimum=0.01)
    reconnect_max: Duration = option(Duration(30.0), doc="longest wait between attempts to "
                                     "reopen a missing port", minimum=0.01)

    def __post_init__(self) -> None:
        defaults: dict[str, object] = (
            {"baud": RTU_BAUD, "parity": "E", "stop_bits": 1} if self.kind == "rtu"
            else {"max_in_flight": 1, "port": 502})
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)  # frozen: defaults of the bus's kind
        if self.kind == "rtu" and self.max_in_flight == 1:
            object.__setattr__(self, "max_in_flight", None)  # always 1 on a line

    @property
    def in_flight(self) -> int:
        """Transactions at once: ``max_in_flight`` on TCP, one on a line."""
        return self.max_in_flight or 1

    @property
    def line(self) -> tuple[int, str, int]:
        """(baud, parity, stop bits) of an RTU line."""
        return self.baud or RTU_BAUD, self.parity or "E", self.stop_bits or 1

    def validate(self) -> list[tuple[str, str]]:
        if self.kind == "rtu":
            return self._validate_rtu()
        return self._validate_tcp()

    def _validate_rtu(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if not isinstance(self.port, str):
            issues.append(("port", ('expected a device path such as "/dev/ttyUSB0" for '
                                    f"kind rtu; got {_shown(self.port)}")))
        if self.host is not None:
            issues.append(("host", "only for kind tcp"))
        if self.max_in_flight is not None:
            issues.append(("max_in_flight", ("expected 1 for kind rtu: RS-485 is half duplex "
                                             "(one transaction at a time); got "
                                             f"{self.max_in_flight}")))
        return issues

    def _validate_tcp(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if self.host is None:
            issues.append(("host", "missing required key for kind tcp; expected a string"))
        if self.port is not None and (isinstance(self.port, str)
                                      or not 1 <= self.port <= 65535):
            issues.append(("port", "expected a TCP port 1-65535 for kind tcp; got "
                                   + _shown(self.port)))
        issues += [(key, "only for kind rtu") for key in ("baud", "parity", "stop_bits",
                                                          "inter_frame_delay")
                   if getattr(self, key) is not None]
        return issues

    @property
    def tcp_port(self) -> int:
        return self.port if isinstance(self.port, int) else 502

    def silence(self) -> float:
        """Inter-frame silence t3.5 (Modbus over Serial Line V1.02 §2.5.1.1)."""
        if self.inter_frame_delay is not None:
            return float(self.inter_frame_delay)
        baud = self.line[0]
        if baud > 19200:
            return 0.00175
        return 3.5 * 11 / baud

    def char_time(self) -> float:
        """Seconds per character: 11 bits (start, 8 data, parity or 2nd stop, stop)."""
        return 11 / self.line[0] if self.kind == "rtu" else 0.0

    def describe(self) -> str:
        if self.kind == "tcp":
            return f"tcp://{self.host}:{self.tcp_port}"
        baud, parity, stop_bits = self.line
        return f"{self.port} {baud} 8{parity}{stop_bits}"


@dataclass(frozen=True, kw_only=True)
class ModbusConfig:
    """One bus (an RS-485 line or a TCP endpoint) and the devices on it."""

    bus: BusConfig = option(doc="the line or socket")
    devices: list[DeviceConfig] = option(factory=list, doc="the units polled on this bus")

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if not self.devices:
            issues.append(("devices", "expected at least one device; got none"))
        names: dict[str, int] = {}
        units: dict[int, int] = {}
        for i, dev in enumerate(self.devices):
            if dev.name in names:
                issues.append((f"devices[{i}].name", (f'duplicate device name "{dev.name}" '
                                                      f"(also devices[{names[dev.name]}])")))
            names.setdefault(dev.name, i)
            if dev.unit in units:
                issues.append((f"devices[{i}].unit", (f"duplicate unit id {dev.unit} on one "
                                                      f"bus (also devices[{units[dev.unit]}])")))
            units.setdefault(dev.unit, i)
            if self.bus.kind == "rtu" and not 1 <= dev.unit <= 247:
                issues.append((f"devices[{i}].unit", ("expected 1-247 on an RTU line "
                                                      f"(Modbus over Serial Line §2.2); got "
                                                      f"{dev.unit}")))
        return issues


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    return f'"{value}"' if isinstance(value, str) else repr(value)
