"""Device profiles (register maps as TOML, shipped here) and point resolution.

A device's points are its profile's points, then the device's own ``points`` entries: an
entry whose name matches a profile point overrides the fields it sets (``enabled = false``
drops it); any other entry adds a point. Defaults fill the rest, in this order: point,
device (``byte_order``/``word_order``), profile, built-in (holding, u16, big, big, 1, 0).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from drivers.api import ConfigError, load, option
from drivers.modbus.codec import BIT_TABLES, REGISTERS, PointSpec
from drivers.modbus.config import DeviceConfig, Order, PointConfig

__all__ = ["ProfileConfig", "available", "load_profile", "resolve_points"]

HERE = Path(__file__).parent
#: Modbus Application Protocol V1.1b3 §6.1-6.4: most items one read request may ask for.
MAX_READ = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """A device model's register map."""

    description: str = option("", doc="what device this describes")
    byte_order: Order = option("big", doc="default for every point")
    word_order: Order = option("big", doc="default for every point")
    points: list[PointConfig] = option(factory=list, doc="the register map")


def available() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in HERE.glob("*.toml"))


@functools.cache
def load_profile(name: str) -> ProfileConfig:
    """A shipped profile by name, or a profile file by path (ending in ``.toml``).

    Raises:
        KeyError: no such shipped profile.
        ConfigError: the profile file is invalid.
        OSError: the profile file cannot be read.
    """
    path = Path(name) if name.endswith(".toml") else HERE / f"{name}.toml"
    if not name.endswith(".toml") and name not in available():
        raise KeyError(name)
    with path.open("rb") as f:
        data = tomllib.load(f)
    return load(ProfileConfig, data, file=f"profile {path.name}")


def _merge(base: PointConfig, over: PointConfig) -> PointConfig:
    changes = {f.name: getattr(over, f.name) for f in dataclasses.fields(over)
               if getattr(over, f.name) is not None}
    return dataclasses.replace(base, **changes)


def _profile_points(dev: DeviceConfig) -> tuple[ProfileConfig | None, list[tuple[str, str]]]:
    if dev.profile is None:
        return None, []
    try:
        return load_profile(dev.profile), []
    except KeyError:
        return None, [("profile", (f"expected one of {', '.join(available())} or a path "
                                   f'ending in .toml; got "{dev.profile}"'))]
    except ConfigError as exc:
        return None, [("profile", "; ".join(exc.lines()))]
    except OSError as exc:
        return None, [("profile", f"cannot read {dev.profile!r}: {exc.strerror}")]


def _problem(p: PointConfig, table: str, kind: str) -> tuple[str, str] | None:
    """The first thing wrong with a merged point, as (relative key, message)."""
    bits = table in BIT_TABLES
    need = p.count if kind == "string" else REGISTERS[kind]
    last = (p.address or 0) + (need or 1) - 1
    checks = [
        (p.address is None, "address", "missing required key; expected an integer"),
        (bits and kind != "bit", "type", f"expected bit for table {table}; got {kind}"),
        (kind == "bit" and not bits and p.bit is None, "bit",
         "missing required key for type bit; expected 0-15"),
        (p.bit is not None and (bits or kind != "bit"), "bit",
         "only for type bit in a holding or input register"),
        (need is None, "count", "missing required key for type string; expected registers"),
        (p.count is not None and p.count != need, "count",
         f"type {kind} takes {need} register{'s' * ((need or 0) > 1)}; got count {p.count}"),
        (last > 65535, "address", f"{table} {p.address}..{last} ends past 65535"),
        (p.scale == 0, "scale", "expected a non-zero number; got 0.0"),
    ]
    return next(((key, message) for failed, key, message in checks if failed), None)


def _spec(p: PointConfig, order: tuple[Order, Order]) -> tuple[PointSpec | None, str, str]:
    """A resolved point, or (None, relative key, message)."""
    table = p.table or "holding"
    kind = p.type or ("bit" if table in BIT_TABLES else "u16")
    problem = _problem(p, table, kind)
    if problem is not None or p.address is None:
        key, message = problem or ("address", "missing")
        return None, key, message
    return PointSpec(
        name=p.name, table=table, address=p.address,
        count=(p.count or 1) if kind == "string" else REGISTERS[kind], type=kind, bit=p.bit,
        byte_order=p.byte_order or order[0], word_order=p.word_order or order[1],
        scale=1.0 if p.scale is None else p.scale,
        offset=0.0 if p.offset is None else p.offset, unit=p.unit,
        interval=None if p.interval is None else float(p.interval)), "", ""


def _overlaps(specs: list[tuple[str, PointSpec]]) -> list[tuple[str, str]]:
    """Points sharing registers must be aliases (same range and type) or bits of one word."""
    issues: list[tuple[str, str]] = []
    ordered = sorted(specs, key=lambda s: (s[1].table, s[1].address, s[1].end))
    for i, (key, p) in enumerate(ordered):
        for _okey, q in ordered[i + 1:]:
            if q.table != p.table or q.address >= p.end:
                break
            if (q.address, q.count, q.type) == (p.address, p.count, p.type):
                continue
            issues.append((key, (f'overlaps point "{q.name}" ({q.table} {q.address}..'
                                 f"{q.end - 1}, {q.type}) with a different type or range; "
                                 f"this one is {p.table} {p.address}..{p.end - 1}, {p.type}")))
    return issues


def resolve_points(dev: DeviceConfig) -> tuple[list[PointSpec], list[tuple[str, str]]]:
    """The device's resolved points, and the issues (relative key, message) found."""
    profile, issues = _profile_points(dev)
    merged: dict[str, tuple[str, PointConfig]] = {}
    if profile is not None:
        for j, p in enumerate(profile.points):
            merged[p.name] = (f"profile.{dev.profile} points[{j}]", p)
    for i, p in enumerate(dev.points):
        if p.name in merged:
            merged[p.name] = (f"points[{i}]", _merge(merged[p.name][1], p))
        else:
            merged[p.name] = (f"points[{i}]", p)
    order = (dev.byte_order or (profile.byte_order if profile else "big"),
             dev.word_order or (profile.word_order if profile else "big"))
    specs: list[tuple[str, PointSpec]] = []
    for key, p in merged.values():
        if not p.enabled:
            continue
        spec, sub, message = _spec(p, order)
        if spec is None:
            issues.append(_issue(key, sub, message))
        elif spec.count > min(dev.max_block, MAX_READ[spec.table]):
            issues.append(_issue(key, "count", f"{spec.count} registers exceed max_block "
                                               f"{dev.max_block}"))
        else:
            specs.append((key, spec))
    issues += [_issue(k, "", m) for k, m in _overlaps(specs)]
    if not specs and not issues:
        issues.append(("points", "expected at least one point (profile or points); got none"))
    return [s for _k, s in specs], issues


def _issue(key: str, sub: str, message: str) -> tuple[str, str]:
    full = f"{key}.{sub}" if sub else key
    if key.startswith("profile."):
        # A profile point has no key in the gateway file: report it under "profile".
        return "profile", f"{full.removeprefix('profile.')}: {message}"
    return full, message

