"""Write the rig board's ``rig.json`` from Modbus profiles and a serial profile (host side).

    python hil_tests/firmware/mkconfig.py --unit 1:energy-meter-3ph --unit 7:io-module \\
        --baud 9600 --parity E --serial nmea-weather --serial-baud 4800 -o rig.json

MicroPython has no TOML reader, so the profile's register map is resolved here, with the
driver's own resolver, and shipped as JSON points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from drivers.modbus.config import DeviceConfig
from drivers.modbus.profiles import resolve_points

__all__ = ["board_config", "unit_config"]

_FIELDS = ("name", "table", "address", "count", "type", "bit", "byte_order", "word_order",
           "scale", "offset", "unit")


def unit_config(dev: DeviceConfig, *, raw: list[dict[str, Any]] | None = None,
                values: dict[str, Any] | None = None, unmapped: str = "zero") -> dict[str, Any]:
    """One unit of the board config: the device's resolved points (profile and overrides)."""
    points, issues = resolve_points(dev)
    if issues:
        raise ValueError("; ".join(f"{k}: {m}" for k, m in issues))
    return {"unit": dev.unit, "unmapped": unmapped, "raw": list(raw or []),
            "values": dict(values or {}),
            "points": [{k: getattr(p, k) for k in _FIELDS if getattr(p, k) is not None}
                       for p in points]}


def board_config(units: list[dict[str, Any]], *, baud: int = 9600, parity: str = "E",
                 serial: str | None = None, serial_baud: int = 4800, rate: float = 1.0,
                 seed: int = 1) -> dict[str, Any]:
    config: dict[str, Any] = {"seed": seed}
    if units:
        config["modbus"] = {"baud": baud, "parity": parity, "idle_ms": 50, "units": units}
    if serial:
        config["serial"] = {"profile": serial, "baud": serial_baud, "rate": rate}
    return config


def _unit(text: str) -> tuple[int, str]:
    unit, _, profile = text.partition(":")
    if not unit.isdigit() or not profile:
        raise argparse.ArgumentTypeError(f"expected UNIT:PROFILE such as 1:energy-meter-3ph; "
                                         f"got {text!r}")
    return int(unit), profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write the rig board's rig.json")
    p.add_argument("--unit", action="append", type=_unit, default=[], metavar="UNIT:PROFILE")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="E")
    p.add_argument("--serial", choices=["nmea-weather", "pm-sensor", "ascii-counter"])
    p.add_argument("--serial-baud", type=int, default=4800)
    p.add_argument("--rate", type=float, default=1.0, help="sensor frames per second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=Path("rig.json"))
    args = p.parse_args(argv)
    try:
        units = [unit_config(DeviceConfig(name=f"unit-{u}", unit=u, profile=prof))
                 for u, prof in args.unit]
    except ValueError as exc:
        print(f"mkconfig: {exc}", file=sys.stderr)
        return 2
    config = board_config(units, baud=args.baud, parity=args.parity, serial=args.serial,
                          serial_baud=args.serial_baud, rate=args.rate, seed=args.seed)
    args.output.write_text(json.dumps(config, indent=1) + "\n")
    print(f"wrote {args.output}: {len(units)} Modbus unit(s)"
          + (f", serial {args.serial}" if args.serial else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
