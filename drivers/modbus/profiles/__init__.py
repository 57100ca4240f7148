"""Device profiles (register maps as TOML, shipped here) and point resolution.

A device's points are its profile's points and ranges, then the device's own ranges, then
its ``points`` entries: an entry whose name matches a point already there (from the profile
or a range) overrides the fields it sets (``enabled = false`` drops it); any other entry adds
a point. A range may not make a point whose name is already taken. Defaults fill the rest,
in this order: point, device (``byte_order``/``word_order``), profile, built-in (holding,
u16, big, big, 1, 0).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from drivers.api import ConfigError, load, option
from drivers.modbus.codec import BIT_TABLES, REGISTERS, PointSpec
from drivers.modbus.config import DeviceConfig, Order, PointConfig, RangeConfig
from drivers.modbus.ranges import expand

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
    ranges: list[RangeConfig] = option(factory=list, doc="blocks of consecutive points of "
                                       "one type")


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
    if p.address is None:
        return "address", "missing required key; expected an integer"
    if bits and kind != "bit":
        return "type", f"expected bit for table {table}; got {kind}"
    if kind == "bit" and not bits and p.bit is None:
        return "bit", "missing required key for type bit; expected 0-15"
    if p.bit is not None and (bits or kind != "bit"):
        return "bit", "only for type bit in a holding or input register"
    return _size_problem(p, table, kind, need)


def _size_problem(p: PointConfig, table: str, kind: str, need: int | None,
                  ) -> tuple[str, str] | None:
    if need is None:
        return "count", "missing required key for type string; expected registers"
    if p.count is not None and p.count != need:
        return "count", (f"type {kind} takes {need} register{'s' * (need > 1)}; "
                         f"got count {p.count}")
    last = (p.address or 0) + need - 1
    if last > 65535:
        return "address", f"{table} {p.address}..{last} ends past 65535"
    if p.scale == 0:
        return "scale", "expected a non-zero number; got 0.0"
    return None


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
            this = f'point "{p.name}"' if "ranges[" in key else "this one"
            issues.append((key, (f'overlaps point "{q.name}" ({q.table} {q.address}..'
                                 f"{q.end - 1}, {q.type}) with a different type or range; "
                                 f"{this} is {p.table} {p.address}..{p.end - 1}, {p.type}")))
    return issues


def _from_ranges(ranges: list[RangeConfig], where: str,
                 merged: dict[str, tuple[str, PointConfig]]) -> list[tuple[str, str]]:
    """Add the ranges' points to ``merged``; a name already there is an issue."""
    issues: list[tuple[str, str]] = []
    for k, rng in enumerate(ranges):
        key = f"{where}ranges[{k}]"
        for p in expand(rng):
            if p.name in merged:
                issues.append(_issue(key, "name", f'makes point "{p.name}", a name '
                                                  f"{_owner(merged[p.name][0])} has already"))
                break
            merged[p.name] = (key, p)
    return issues


def _owner(key: str) -> str:
    if key.startswith("profile."):
        name, _, where = key.removeprefix("profile.").partition(" ")
        return f"{where} of profile {name}"
    return key


def resolve_points(dev: DeviceConfig) -> tuple[list[PointSpec], list[tuple[str, str]]]:
    """The device's resolved points, and the issues (relative key, message) found.

    Kept on the (frozen) device config: the config's validation and the driver both ask.
    """
    cached = dev.__dict__.get("_resolved")
    if cached is None:
        cached = _resolve(dev)
        object.__setattr__(dev, "_resolved", cached)
    return list(cached[0]), list(cached[1])


def _resolve(dev: DeviceConfig) -> tuple[list[PointSpec], list[tuple[str, str]]]:
    profile, issues = _profile_points(dev)
    merged: dict[str, tuple[str, PointConfig]] = {}
    if profile is not None:
        for j, p in enumerate(profile.points):
            merged[p.name] = (f"profile.{dev.profile} points[{j}]", p)
        issues += _from_ranges(profile.ranges, f"profile.{dev.profile} ", merged)
    issues += _from_ranges(dev.ranges, "", merged)
    for i, p in enumerate(dev.points):
        if p.name in merged:
            merged[p.name] = (f"points[{i}]", _merge(merged[p.name][1], p))
        else:
            merged[p.name] = (f"points[{i}]", p)
    order = (dev.byte_order or (profile.byte_order if profile else "big"),
             dev.word_order or (profile.word_order if profile else "big"))
    specs = _specs(dev, merged, order, issues)
    if not specs and not issues:
        issues.append(("points", "expected at least one point (profile or points); got none"))
    return [s for _k, s in specs], issues


def _specs(dev: DeviceConfig, merged: dict[str, tuple[str, PointConfig]],
           order: tuple[Order, Order], issues: list[tuple[str, str]],
           ) -> list[tuple[str, PointSpec]]:
    """The enabled points resolved; their problems appended to ``issues``, one per key."""
    specs: list[tuple[str, PointSpec]] = []
    reported: set[str] = set()
    for key, p in merged.values():
        if not p.enabled:
            continue
        spec, sub, message = _spec(p, order)
        if spec is None:
            problem = _issue(key, sub, message)
        elif spec.count > min(dev.max_block, MAX_READ[spec.table]):
            problem = _issue(key, "count", f"{spec.count} registers exceed max_block "
                                           f"{dev.max_block}")
        else:
            specs.append((key, spec))
            continue
        if key not in reported:  # a range's points share their key: one issue each
            issues.append(problem)
            reported.add(key)
    for key, message in _overlaps(specs):
        if "ranges[" not in key or key not in reported:
            issues.append(_issue(key, "", message))
            reported.add(key)
    return specs


def _issue(key: str, sub: str, message: str) -> tuple[str, str]:
    full = f"{key}.{sub}" if sub else key
    if key.startswith("profile."):
        # A profile point has no key in the gateway file: report it under "profile".
        return "profile", f"{full.removeprefix('profile.')}: {message}"
    return full, message

