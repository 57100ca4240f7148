"""The rig file: which gateway runs, on which buses, with which devices, and how to break it.

A rig file is TOML validated like the gateway config, with the same messages::

    simulators.toml: devices[1].min_rate: expected a number; got "fast"
    bench-pi.toml: buses[0].instance: "rs485-2" is not a driver instance in bench-gw.toml;
        it has rs485-1 (modbus), weather (serial)

``gateway.config = "simulators"`` makes the suite build the gateway config for its own
simulators; any other value is the gateway config to run, relative to the rig file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from drivers.api import ConfigError, ConfigIssue, Duration, load, option

__all__ = ["Board", "BrokerSection", "Bus", "Device", "DeviceDead", "GatewaySection",
           "Network", "Power", "Rig", "Unplug", "load_rig", "parse_rig"]

NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
DriverName = Literal["modbus", "serial", "lora_forwarder", "lora_modem", "sim"]
#: Which drivers can have what: a device to make dead, a port to unplug.
DEAD_DRIVERS = ("modbus",)
UNPLUG_DRIVERS = ("serial", "lora_modem")
#: Simulators the suite can start per driver (gateway.config = "simulators").
SIMULATORS: dict[str, tuple[str, ...]] = {
    "modbus": ("python", "firmware"), "serial": ("python", "firmware"),
    "lora_forwarder": ("python",), "lora_modem": (), "sim": (),
}
SIMULATED_PROFILES: dict[str, tuple[str, ...]] = {
    "modbus": ("energy-meter-3ph", "energy-meter-1ph", "io-module"),
    "serial": ("nmea-weather", "pm-sensor", "ascii-counter"),
    "lora_forwarder": ("cayenne", "struct"),
}


def _commands(method: str, off: str | None, on: str | None) -> list[tuple[str, str]]:
    if method != "command":
        return [(k, f'only for method "command"; got method "{method}"')
                for k, v in (("off", off), ("on", on)) if v is not None]
    return [(k, 'missing required key for method "command"; expected a shell command')
            for k, v in (("off", off), ("on", on)) if not v]


@dataclass(frozen=True, kw_only=True)
class GatewaySection:
    """The gateway under test."""

    config: str = option(doc='"simulators", or the gateway config file to run (relative to '
                         "the rig file)")
    run: Literal["local", "remote"] = option(
        "local", doc="local: the suite runs the daemon on this computer; remote: the daemon "
                     "runs on the board under test as its service")
    public_key: str | None = option(None, doc="remote: the gateway's public key file "
                                    "(streetgate key public), relative to the rig file")
    host: str | None = option(None, doc="remote: the board's address (LoRa frames go there)")
    start_timeout: Duration = option(Duration(30.0), minimum=1, maximum=3600,
                                     doc="longest wait for the daemon to come up (remote: "
                                         "for the board to boot after a power cut)")


@dataclass(frozen=True, kw_only=True)
class BrokerSection:
    """The suite's private broker (mosquitto) that the gateway's uplink talks to."""

    port: int | None = option(None, minimum=1, maximum=65535,
                              doc="remote: a fixed port the board's gateway config points at")
    listen: str = option("127.0.0.1", doc="remote: the address that port listens on; the "
                         "board must reach it, so a real bench sets its LAN address or 0.0.0.0")


@dataclass(frozen=True, kw_only=True)
class Network:
    """How to cut the gateway's uplink."""

    method: Literal["broker", "command"] = option(
        "broker", doc="broker: stop the suite's local broker; command: run off/on")
    off: str | None = option(None, doc="shell command that cuts the network")
    on: str | None = option(None, doc="shell command that restores it")
    outage: Duration = option(Duration(5.0), minimum=0.5, maximum=3600,
                              doc="how long the network stays cut")

    def validate(self) -> list[tuple[str, str]]:
        return _commands(self.method, self.off, self.on)


@dataclass(frozen=True, kw_only=True)
class Power:
    """How to cut the gateway's power, or kill its daemon, under load."""

    method: Literal["sigkill", "command"] = option(
        "sigkill", doc="sigkill: kill -9 the daemon; command: run off/on (a relay)")
    off: str | None = option(None, doc="shell command that cuts the power")
    on: str | None = option(None, doc="shell command that restores it")
    rounds: int = option(5, minimum=1, maximum=1000, doc="how many cuts")
    off_time: Duration = option(Duration(1.0), minimum=0, maximum=600,
                                doc="how long the power stays off (command)")
    budget: Duration = option(Duration(60.0), minimum=1, maximum=86400,
                              doc="the cuts stop early when this is spent")

    def validate(self) -> list[tuple[str, str]]:
        return _commands(self.method, self.off, self.on)


@dataclass(frozen=True, kw_only=True)
class Unplug:
    """How to unplug a serial device and plug it back."""

    method: Literal["simulator", "command"] = option(
        doc="simulator: close the simulator's pty; command: run off/on")
    off: str | None = option(None, doc="shell command that unplugs (e.g. uhubctl ... -a off)")
    on: str | None = option(None, doc="shell command that plugs it back")
    time: Duration = option(Duration(2.0), minimum=0.1, maximum=600,
                            doc="how long it stays unplugged")

    def validate(self) -> list[tuple[str, str]]:
        return _commands(self.method, self.off, self.on)


@dataclass(frozen=True, kw_only=True)
class DeviceDead:
    """How to make a Modbus device stop answering, and bring it back."""

    method: Literal["simulator", "console", "command"] = option(
        doc="simulator; console: the rig board's fault command; command: run off/on")
    off: str | None = option(None, doc="shell command (or console line) that kills it")
    on: str | None = option(None, doc="shell command (or console line) that revives it")
    time: Duration = option(Duration(3.0), minimum=0.1, maximum=600,
                            doc="how long it stays dead")

    def validate(self) -> list[tuple[str, str]]:
        if self.method == "console":
            return []
        return _commands(self.method, self.off, self.on)


@dataclass(frozen=True, kw_only=True)
class Board:
    """The rig board (hil_tests/firmware on a Pico) that plays devices and injects faults."""

    console: str = option(doc="its USB console, e.g. /dev/serial/by-id/usb-MicroPython_...")
    timeout: Duration = option(Duration(2.0), minimum=0.1, maximum=60,
                               doc="longest wait for its answer to a command")


@dataclass(frozen=True, kw_only=True)
class Bus:
    """One driver instance of the gateway config: a line, a port, a packet forwarder."""

    instance: str = option(doc="the driver instance name in the gateway config", pattern=NAME)
    driver: DriverName = option(doc="modbus, serial, lora_forwarder, lora_modem, or sim (the "
                                "gateway's synthetic driver: a rig without field buses)")
    simulator: str = option("python", doc='simulators only: "python" (the project\'s '
                            'simulator) or "firmware" (the rig firmware core over a pty)')
    unplug: Unplug | None = option(None, doc="how to unplug this port's device")


@dataclass(frozen=True, kw_only=True)
class Device:
    """One device on a bus and what it must deliver."""

    name: str = option(doc="the device name in the gateway config", pattern=NAME)
    bus: str = option(doc="the instance of the bus it sits on")
    unit: int | None = option(None, minimum=0, maximum=255, doc="Modbus unit id")
    profile: str | None = option(None, doc="simulators only: what the simulator plays")
    interval: Duration = option(Duration(0.5), minimum=0.05, maximum=3600,
                                doc="simulators only: poll period or frame period")
    points: list[str] = option(factory=list, doc="point names (last part) that must arrive")
    min_rate: float = option(0.0, minimum=0, doc="readings per second each point must reach")
    ranges: dict[str, list[float]] = option(factory=dict,
                                            doc="point = [lowest, highest] good value")
    dead: DeviceDead | None = option(None, doc="how to make it stop answering")
    write: list[str] = option(factory=list, doc="Modbus coil or holding points (last part) the "
                              "suite may write, read back and then restore")

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if not self.points:
            issues.append(("points", "expected at least one point name; got none"))
        for point, bounds in self.ranges.items():
            if point not in self.points:
                issues.append((f"ranges.{point}", f'"{point}" is not in points'))
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                shown = ", ".join(repr(b) for b in bounds)
                issues.append((f"ranges.{point}", ("expected [lowest, highest] with lowest <= "
                                                  f"highest; got [{shown}]")))
        return issues


@dataclass(frozen=True, kw_only=True)
class Rig:
    """A whole rig file."""

    description: str = option("", doc="what this rig is, for the report")
    gateway: GatewaySection = option(doc="the gateway under test")
    broker: BrokerSection = option(factory=BrokerSection, doc="the suite's broker")
    network: Network = option(factory=Network, doc="how to cut the uplink")
    power: Power = option(factory=Power, doc="how to cut the power or kill the daemon")
    board: Board | None = option(None, doc="the rig board's console, if there is one")
    buses: list[Bus] = option(factory=list, doc="driver instances under test")
    devices: list[Device] = option(factory=list, doc="devices and what they must deliver")
    delivery_window: Duration = option(Duration(5.0), minimum=0.5, maximum=3600,
                                       doc="how long delivery rates are measured")
    recover_timeout: Duration = option(Duration(30.0), minimum=1, maximum=3600,
                                       doc="longest wait for a device or the uplink to "
                                           "come back after a fault")
    #: Where the file was read from (set by parse_rig; paths are relative to its folder).
    path: Path = dataclasses.field(default=Path(), init=False, compare=False)

    @property
    def simulated(self) -> bool:
        return self.gateway.config == "simulators"

    def bus(self, instance: str) -> Bus:
        return next(b for b in self.buses if b.instance == instance)

    def on_bus(self, instance: str) -> list[Device]:
        return [d for d in self.devices if d.bus == instance]

    def gateway_config(self) -> Path:
        return self.path.parent / self.gateway.config

    def public_key(self) -> Path | None:
        key = self.gateway.public_key
        return self.path.parent / key if key else None

    @property
    def remote(self) -> bool:
        return self.gateway.run == "remote"

    def validate(self) -> list[tuple[str, str]]:
        issues = self._buses() + self._topology()
        known = {b.instance: b for b in self.buses}
        seen: set[tuple[str, str]] = set()
        for i, dev in enumerate(self.devices):
            key = f"devices[{i}]"
            bus = known.get(dev.bus)
            if bus is None:
                names = ", ".join(known) or "none"
                issues.append((f"{key}.bus", f'expected a bus instance ({names}); got "{dev.bus}"'))
            elif (dev.bus, dev.name) in seen:
                issues.append((f"{key}.name", f'device "{dev.name}" twice on bus "{dev.bus}"'))
            else:
                issues += [(f"{key}.{k}", m) for k, m in self._device(dev, bus)]
            seen.add((dev.bus, dev.name))
        return issues

    def _buses(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if not self.buses:
            issues.append(("buses", "expected at least one bus; got none"))
        seen: set[str] = set()
        for i, bus in enumerate(self.buses):
            key = f"buses[{i}]"
            if bus.instance in seen:
                issues.append((f"{key}.instance", f'"{bus.instance}" is listed twice'))
            seen.add(bus.instance)
            if self.simulated and bus.simulator not in SIMULATORS[bus.driver]:
                choices = ", ".join(SIMULATORS[bus.driver]) or "none: not simulated"
                issues.append((f"{key}.simulator", (f"expected one of {choices} for "
                                                   f'{bus.driver}; got "{bus.simulator}"')))
            if self.simulated:
                issues += [(f"{key}.{k}", m) for k, m in self._simulated_bus(bus)]
            if bus.unplug is not None and bus.driver not in UNPLUG_DRIVERS:
                issues.append((f"{key}.unplug", (f"only for {', '.join(UNPLUG_DRIVERS)} buses; "
                                                f"this one is {bus.driver}")))
            if bus.unplug and bus.unplug.method == "simulator" and not self.simulated:
                issues.append((f"{key}.unplug.method", ('expected "command" on a real rig '
                                                       '(gateway.config is a file); got '
                                                       '"simulator"')))
        return issues

    def _topology(self) -> list[tuple[str, str]]:
        """Where the daemon runs decides how it can be cut."""
        if not self.remote:
            if self.power.method == "command":
                return [("power.method", ('expected "sigkill" with gateway.run = "local": a '
                                         "relay would cut the computer running the suite "
                                         '(set gateway.run = "remote"); got "command"'))]
            return []
        issues = []
        if self.simulated:
            issues.append(("gateway.config", ("expected the gateway config file the board "
                                             'runs, for gateway.run = "remote"; got '
                                             '"simulators"')))
        if not self.gateway.public_key:
            issues.append(("gateway.public_key", ("missing required key for gateway.run = "
                                                 '"remote"; expected the gateway\'s public '
                                                 "key file")))
        if self.broker.port is None:
            issues.append(("broker.port", ('missing required key for gateway.run = "remote";'
                                          " expected the port the board's uplink uses")))
        if self.power.method == "sigkill":
            issues.append(("power.method", ('expected "command" (a relay, or ssh ... kill -9) '
                                           'for gateway.run = "remote"; got "sigkill"')))
        return issues

    def _simulated_bus(self, bus: Bus) -> list[tuple[str, str]]:
        """What the suite's simulators can play: one sensor per serial port, one rig board."""
        count = len(self.on_bus(bus.instance))
        if count == 0:
            return [("instance", f'no device on "{bus.instance}"; a simulated bus needs one')]
        if bus.driver == "serial" and count > 1:
            return [("instance", (f'{count} devices on "{bus.instance}"; a simulated serial '
                                 "port plays one"))]
        if bus.simulator == "firmware":
            same = [b.instance for b in self.buses
                    if b.simulator == "firmware" and b.driver == bus.driver]
            if same[0] != bus.instance:
                return [("simulator", (f'the rig board plays one {bus.driver} bus, already '
                                      f'"{same[0]}"'))]
        return []

    def _device(self, dev: Device, bus: Bus) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if bus.driver == "modbus" and dev.unit is None and (self.simulated or dev.dead):
            issues.append(("unit", "missing required key for a Modbus device; expected 1-247"))
        if self.simulated:
            profiles = SIMULATED_PROFILES.get(bus.driver, ())
            if dev.profile not in profiles:
                got = f'"{dev.profile}"' if dev.profile else "nothing"
                issues.append(("profile", (f"expected one of {', '.join(profiles)} for a "
                                          f"simulated {bus.driver} device; got {got}")))
        elif dev.profile is not None:
            issues.append(("profile", 'only for simulators (gateway.config = "simulators")'))
        if dev.dead is not None:
            issues += self._dead(dev.dead, bus)
        if dev.write and bus.driver != "modbus":
            issues.append(("write", f"only for Modbus devices; this one is on a {bus.driver} bus"))
        return issues

    def _dead(self, dead: DeviceDead, bus: Bus) -> list[tuple[str, str]]:
        if bus.driver not in DEAD_DRIVERS:
            return [("dead", f"only for Modbus devices; this one is on a {bus.driver} bus")]
        if dead.method == "simulator" and not self.simulated:
            return [("dead.method", ('expected "console" or "command" on a real rig; got '
                                    '"simulator"'))]
        if dead.method == "console" and self.board is None and not (
                self.simulated and bus.simulator == "firmware"):
            return [("dead.method", ("console needs the rig board: add [board] console = "
                                    '"/dev/..."'))]
        return []


def parse_rig(data: dict[str, Any], *, file: str, path: Path) -> Rig:
    """Validate a parsed rig table; raise :class:`ConfigError` naming every problem."""
    rig = load(Rig, data, file=file)
    object.__setattr__(rig, "path", path)  # frozen: set once, right after loading
    return rig


def load_rig(path: str | Path) -> Rig:
    """Read and validate a rig file, then check it against its gateway config."""
    p = Path(path)
    name = p.name
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(name, [ConfigIssue("", f"file not found: {p}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, [ConfigIssue("", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    rig = parse_rig(data, file=name, path=p)
    if not rig.simulated:
        from hil_tests._against import check_against_gateway  # noqa: PLC0415 - import cycle

        check_against_gateway(rig)
    return rig
