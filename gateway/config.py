"""The gateway's one TOML file: core sections typed here, driver sections by their schemas."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from drivers.api import ByteSize, ConfigError, ConfigIssue, Duration, dump, load, option
from drivers.registry import Registry, load_registry

__all__ = [
    "ActionConfig",
    "BufferConfig",
    "CommandsConfig",
    "Config",
    "ConfigError",
    "DriverInstance",
    "GatewayConfig",
    "ReportRule",
    "TlsConfig",
    "UplinkConfig",
    "WritableConfig",
    "lenient_paths",
    "load_config",
    "resolved",
]

_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    id: str = option(doc="gateway id, used in topics and batches", pattern=_ID)
    state_dir: str = option("/var/lib/streetgate", doc="keys, buffer and state live here")
    signing_key: str = option("keys/signing.key", doc="Ed25519 PKCS#8 PEM, relative to state_dir")
    seed_file: str = option("", doc="first-boot seed (e.g. /boot/firmware/streetgate-seed.toml)")
    status_socket: str = option("status.json", doc="status file for `streetgate status`")
    log_level: Literal["debug", "info", "warning", "error"] = option("info")

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else Path(self.state_dir) / p


@dataclass(frozen=True, kw_only=True)
class BufferConfig:
    path: str = option("buffer.db", doc="SQLite file, relative to state_dir")
    max_size: ByteSize = option(ByteSize(256 * 1024 * 1024), minimum=64 * 1024)
    commit_window: Duration = option(Duration(1.0), minimum=0.001, maximum=60)
    commit_rows: int = option(5000, minimum=1, maximum=1_000_000)
    synchronous: Literal["off", "normal", "full"] = option("normal")
    drop_policy: Literal["oldest", "newest"] = option("oldest")


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    enabled: bool = option(False)
    provisioned: bool = option(False, doc="use the CA, certificate and key from provisioning")
    ca_file: str = option("")
    cert_file: str = option("")
    key_file: str = option("", secret=False)

    def validate(self) -> list[tuple[str, str]]:
        if self.enabled and not self.provisioned and not self.ca_file:
            return [("ca_file",
                     "expected a CA file when tls is enabled and not provisioned; got none")]
        if bool(self.cert_file) != bool(self.key_file):
            return [("key_file", "expected cert_file and key_file together; got only one")]
        return []


@dataclass(frozen=True, kw_only=True)
class UplinkConfig:
    host: str = option("127.0.0.1")
    port: int = option(1883, minimum=1, maximum=65535)
    protocol: Literal["mqtt5", "mqtt311"] = option("mqtt5")
    client_id: str = option("", doc="default: the gateway id")
    topic_prefix: str = option("streetgate", pattern=r"[^#+\s]+")
    username: str = option("")
    password: str = option("", secret=True)
    keepalive: Duration = option(Duration(30.0), minimum=5, maximum=3600)
    max_inflight: int = option(8, minimum=1, maximum=1000)
    batch_max_readings: int = option(5000, minimum=1, maximum=1_000_000)
    batch_linger: Duration = option(Duration(2.0), minimum=0, maximum=3600,
                                    doc="wait this long for a fuller batch")
    max_packet_size: ByteSize = option(ByteSize(256 * 1024), minimum=1024)
    reconnect_min: Duration = option(Duration(1.0), minimum=0.05)
    # Full jitter up to this cap: after an outage the first attempt that finds the broker back
    # comes within ~reconnect_max + reconnect_min / 2, and a fleet's reconnects spread evenly
    # over that time (README, "Delivery guarantees").
    reconnect_max: Duration = option(Duration(4.0), minimum=0.1)
    status_interval: Duration = option(Duration(60.0), minimum=1)
    tls: TlsConfig = option(factory=TlsConfig)


@dataclass(frozen=True, kw_only=True)
class WritableConfig:
    """One point a command may write, and the limits the cabinet enforces on it."""

    point: str = option(doc="the point's full name, as its readings carry it")
    min: float | None = option(None, doc="lowest value accepted (numbers)")
    max: float | None = option(None, doc="highest value accepted (numbers)")
    step: float | None = option(None, doc="values must be min (or 0) plus a multiple of this")
    allowed: list[Any] | None = option(None, doc="the only values accepted (instead of a range)")
    min_interval: Duration = option(Duration(1.0), minimum=0, maximum=86400,
                                    doc="at least this long between two writes of the point")

    def validate(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.allowed is not None and (self.min is not None or self.max is not None):
            out.append(("allowed", "expected either allowed or min/max; got both"))
        if self.min is not None and self.max is not None and self.min > self.max:
            out.append(("max", f"expected max >= min ({self.min}); got {self.max}"))
        if self.step is not None and self.step <= 0:
            out.append(("step", f"expected a step above 0; got {self.step}"))
        if self.allowed is not None and not self.allowed:
            out.append(("allowed", "expected at least one value; got an empty list"))
        return out


@dataclass(frozen=True, kw_only=True)
class ActionConfig:
    """A named action: a command says ``reset-meter-1``, the cabinet knows what that writes."""

    name: str = option(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    point: str = option(doc="a point listed in [[commands.writable]]")
    value: Any = option(doc="the value the action writes")


@dataclass(frozen=True, kw_only=True)
class CommandsConfig:
    """Signed commands from the platform. Nothing is writable unless listed here."""

    keys: list[str] = option(factory=list, doc="platform command public keys (PEM files, "
                             "relative to state_dir); several while a key is rotated")
    writable: list[WritableConfig] = option(factory=list)
    actions: list[ActionConfig] = option(factory=list)
    accept_config: bool = option(False, doc="accept whole config files by command")
    config_rollback: Duration = option(
        Duration(120.0), minimum=5, maximum=3600,
        doc="a config applied by command is rolled back unless the uplink is up within this")
    max_ttl: Duration = option(Duration(7 * 86400.0), minimum=1,
                               doc="commands valid for longer than this are refused")
    clock_skew: Duration = option(Duration(300.0), minimum=0, maximum=86400,
                                  doc="how far the platform's clock may run ahead of ours")
    retry: Duration = option(Duration(2.0), minimum=0.05, maximum=600,
                             doc="first retry of a write whose device is unreachable")
    keep_results: Duration = option(Duration(7 * 86400.0), minimum=60,
                                    doc="results and seen ids are kept this long after expiry")

    def validate(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        names = [w.point for w in self.writable]
        for i, name in enumerate(names):
            if name in names[:i]:
                out.append((f"writable[{i}].point",
                            f'expected each point once; got "{name}" again'))
        seen: set[str] = set()
        for i, a in enumerate(self.actions):
            if a.point not in names:
                out.append((f"actions[{i}].point",
                            f'expected a point listed in writable; got "{a.point}"'))
            if a.name in seen:
                out.append((f"actions[{i}].name",
                            f'expected a unique name; got "{a.name}" twice'))
            seen.add(a.name)
        return out


@dataclass(frozen=True, kw_only=True)
class ReportRule:
    """Report by exception for the points matching ``points`` (gateway/report.py)."""

    points: str = option(doc='point-name pattern, e.g. "bus-1/meter-*/*" (fnmatch; first '
                         "matching rule wins)")
    deadband: float = option(0.0, minimum=0, doc="send when the value moved by more than this")
    deadband_percent: float = option(0.0, minimum=0, maximum=1000,
                                     doc="or by more than this percent of the last sent value")
    min_interval: Duration = option(Duration(0.0), minimum=0, maximum=86400,
                                    doc="never send a point more often than this")
    max_silence: Duration = option(Duration(300.0), minimum=0.05, maximum=7 * 86400,
                                   doc="send anyway after this long (a heartbeat)")

    def validate(self) -> list[tuple[str, str]]:
        if self.min_interval > self.max_silence:
            why = f"expected at most max_silence ({self.max_silence}); got {self.min_interval}"
            return [("min_interval", why)]
        return []


@dataclass(frozen=True, kw_only=True)
class DriverInstance:
    driver: str
    instance: str
    config: Any


@dataclass(frozen=True, kw_only=True)
class Config:
    file: str
    gateway: GatewayConfig
    buffer: BufferConfig
    uplink: UplinkConfig
    drivers: list[DriverInstance]
    commands: CommandsConfig = dataclasses.field(default_factory=CommandsConfig)
    report: list[ReportRule] = dataclasses.field(default_factory=list)

    def client_id(self) -> str:
        return self.uplink.client_id or f"streetgate-{self.gateway.id}"


@dataclass(frozen=True, kw_only=True)
class _Core:
    gateway: GatewayConfig
    buffer: BufferConfig = option(factory=BufferConfig)
    uplink: UplinkConfig = option(factory=UplinkConfig)
    commands: CommandsConfig = option(factory=CommandsConfig)
    report: list[ReportRule] = option(factory=list)
    drivers: dict[str, list[dict[str, Any]]] = option(factory=dict)


def load_config(path: str | Path, registry: Registry | None = None) -> Config:
    """Read, parse and validate ``path``; raise :class:`ConfigError` naming every problem."""
    file = str(path)
    name = Path(file).name
    try:
        raw = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(name, [ConfigIssue("", f"file not found: {file}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, [ConfigIssue("", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    return parse_config(raw, file=name, registry=registry)


def lenient_paths(path: str | Path) -> tuple[GatewayConfig | None, str, str | None]:
    """``(gateway section, buffer path, why the file does not load)`` for tools that only need
    to find the running daemon's files (``status``, ``buffer stats``): a file broken on disk
    must not hide a daemon that runs fine on its previous config. Paths come from the file's
    own ``[gateway]``/``[buffer]`` tables when the whole does not validate."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        why = exc.lines()[0] if exc.lines() else str(exc)
    else:
        return cfg.gateway, cfg.buffer.path, None
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        g: dict[str, Any] = raw["gateway"] if isinstance(raw.get("gateway"), dict) else {}
        b: dict[str, Any] = raw["buffer"] if isinstance(raw.get("buffer"), dict) else {}
        gateway = GatewayConfig(id=str(g.get("id", "?")),
                                state_dir=str(g.get("state_dir", GatewayConfig.state_dir)),
                                status_socket=str(g.get("status_socket", "status.json")))
        return gateway, str(b.get("path", BufferConfig.path)), why
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError, ValueError):
        return None, BufferConfig.path, why


def check_fragment(path: str | Path) -> dict[str, list[dict[str, Any]]] | None:
    """Validate a file holding only ``[[drivers.*]]`` tables (a driver's example.toml).

    Returns the resolved driver tables, or None when the file is a whole gateway config.
    """
    name = Path(path).name
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # load_config reports it properly
    if "gateway" in raw or "drivers" not in raw:
        return None
    issues: list[ConfigIssue] = [ConfigIssue(k, "unknown key in a driver fragment")
                                 for k in raw if k != "drivers"]
    drivers = _load_drivers(raw["drivers"], name, load_registry(), issues)
    if issues:
        raise ConfigError(name, issues)
    out: dict[str, list[dict[str, Any]]] = {}
    for d in drivers:
        out.setdefault(d.driver, []).append({"instance": d.instance, **dump(d.config)})
    return out


def parse_config(raw: dict[str, Any], *, file: str, registry: Registry | None = None) -> Config:
    issues: list[ConfigIssue] = []
    core: _Core | None = None
    try:
        core = load(_Core, raw, file=file)
    except ConfigError as exc:
        issues.extend(exc.issues)
    registry = registry or load_registry()
    drivers = _load_drivers(raw.get("drivers"), file, registry, issues)
    if core is not None and not issues:
        issues += _writable_issues(core.commands, drivers, registry)
    if issues or core is None:
        raise ConfigError(file, issues)
    return Config(file=file, gateway=core.gateway, buffer=core.buffer, uplink=core.uplink,
                  drivers=drivers, commands=core.commands, report=core.report)


def _load_drivers(section: Any, file: str, registry: Registry,
                  issues: list[ConfigIssue]) -> list[DriverInstance]:
    out: list[DriverInstance] = []
    if not isinstance(section, dict):
        return out
    seen: set[str] = set()
    for name, tables in section.items():
        cls = registry.get(name)
        if cls is None:
            known = ", ".join(registry.names)
            why = f" (failed to load: {registry.broken[name]})" if name in registry.broken else ""
            if name in registry.refused:
                why = f" ({registry.refused[name]})"
            issues.append(ConfigIssue(f"drivers.{name}",
                                      f"unknown driver{why}; expected one of {known}"))
            continue
        if not isinstance(tables, list):
            issues.append(ConfigIssue(
                f"drivers.{name}", f"expected a list of tables ([[drivers.{name}]]); got a table"))
            continue
        for i, table in enumerate(tables):
            path = f"drivers.{name}[{i}]"
            inst = _instance_name(table, path, issues)
            if inst is None:
                continue
            if inst in seen:
                issues.append(ConfigIssue(f"{path}.instance",
                                          f'expected a unique name; got "{inst}" twice'))
            seen.add(inst)
            body = {k: v for k, v in table.items() if k != "instance"}
            try:
                cfg = cls.parse_config(body, file=file, path=path)
            except ConfigError as exc:
                issues.extend(exc.issues)
                continue
            out.append(DriverInstance(driver=name, instance=inst, config=cfg))
    return out


def _writable_issues(commands: CommandsConfig, drivers: list[DriverInstance],
                     registry: Registry) -> list[ConfigIssue]:
    """Each ``[[commands.writable]]`` point must be one a configured driver can write."""
    if not commands.writable:
        return []
    from drivers.api import DriverContext  # noqa: PLC0415

    able: set[str] = set()
    for d in drivers:
        cls = registry.get(d.driver)
        if cls is None:
            continue
        try:
            driver = cls(d.config, DriverContext.standalone(d.instance, d.driver))
            able.update(driver.writable_points())
        except Exception:  # noqa: BLE001, S112 - a driver that cannot say is checked at run time
            continue
    out = []
    for i, w in enumerate(commands.writable):
        if w.point not in able:
            hint = ", ".join(sorted(able)[:6]) or "none: no configured driver writes"
            out.append(ConfigIssue(f"commands.writable[{i}].point",
                                   f'no configured driver can write "{w.point}"; writable '
                                   f"points: {hint}"))
    return out


def _instance_name(table: Any, path: str, issues: list[ConfigIssue]) -> str | None:
    if not isinstance(table, dict):
        issues.append(ConfigIssue(path, "expected a table"))
        return None
    inst = table.get("instance")
    if not isinstance(inst, str) or not inst:
        issues.append(ConfigIssue(f"{path}.instance",
                                  "missing required key; expected a string naming this instance"))
        return None
    return inst


def resolved(cfg: Config, *, mask: bool = True) -> dict[str, Any]:
    """The config as TOML-shaped data with defaults filled in and secrets masked."""
    out: dict[str, Any] = {
        "gateway": dump(cfg.gateway, mask=mask),
        "buffer": dump(cfg.buffer, mask=mask),
        "uplink": dump(cfg.uplink, mask=mask),
    }
    if cfg.commands != CommandsConfig():
        out["commands"] = dump(cfg.commands, mask=mask)
    if cfg.report:
        out["report"] = [dump(r, mask=mask) for r in cfg.report]
    drivers: dict[str, list[dict[str, Any]]] = {}
    for d in cfg.drivers:
        table = {"instance": d.instance, **dump(d.config, mask=mask)}
        drivers.setdefault(d.driver, []).append(table)
    if drivers:
        out["drivers"] = drivers
    return out


def replace(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, **changes)
