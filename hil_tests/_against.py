"""A real rig against its gateway config: every bus and device must be there, as the rig says."""

from __future__ import annotations

from typing import Any

from drivers.api import ConfigError, ConfigIssue
from gateway.config import DriverInstance, load_config
from hil_tests.rig import Rig

__all__ = ["check_against_gateway"]


def _device_names(config: Any) -> dict[str, int | None] | None:
    """A driver instance's device names and (Modbus) unit ids; None when it names none."""
    devices = getattr(config, "devices", None)
    if not isinstance(devices, list):
        return None  # e.g. the sim driver: a count of generated devices
    return {d.name: getattr(d, "unit", None) for d in devices}


def _buses(rig: Rig, instances: dict[str, DriverInstance], conf: str) -> list[ConfigIssue]:
    listing = ", ".join(f"{k} ({d.driver})" for k, d in instances.items()) or "none"
    issues: list[ConfigIssue] = []
    for i, bus in enumerate(rig.buses):
        d = instances.get(bus.instance)
        if d is None:
            issues.append(ConfigIssue(f"buses[{i}].instance", (
                f'"{bus.instance}" is not a driver instance in {conf}; it has {listing}')))
        elif d.driver != bus.driver:
            issues.append(ConfigIssue(f"buses[{i}].driver", (
                f'"{bus.instance}" is a {d.driver} instance in {conf}; got {bus.driver}')))
    return issues


def _devices(rig: Rig, instances: dict[str, DriverInstance], conf: str) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for j, dev in enumerate(rig.devices):
        d = instances.get(dev.bus)
        names = _device_names(d.config) if d is not None else None
        if names is None:
            continue
        if dev.name not in names:
            issues.append(ConfigIssue(f"devices[{j}].name", (
                f'no device "{dev.name}" on {dev.bus} in {conf}; it has '
                f"{', '.join(names) or 'none'}")))
        elif dev.unit is not None and names[dev.name] not in (None, dev.unit):
            issues.append(ConfigIssue(f"devices[{j}].unit", (
                f"{dev.name} is unit {names[dev.name]} in {conf}; got {dev.unit}")))
    return issues


def check_against_gateway(rig: Rig) -> None:
    """Raise :class:`ConfigError` for every bus or device the gateway config lacks; the gateway
    config's own errors come as ``streetgate check`` reports them."""
    file, conf = rig.path.name, rig.gateway_config()
    if not conf.is_file():
        raise ConfigError(file, [ConfigIssue("gateway.config", f"file not found: {conf}")])
    key = rig.public_key()
    if key is not None and not key.is_file():
        raise ConfigError(file, [ConfigIssue("gateway.public_key", f"file not found: {key}")])
    instances = {d.instance: d for d in load_config(conf).drivers}
    issues = _buses(rig, instances, conf.name) + _devices(rig, instances, conf.name)
    if issues:
        raise ConfigError(file, issues)
