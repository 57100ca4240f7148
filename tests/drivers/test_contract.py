"""Every registered driver keeps the contract: package files, schema, example, README,
simulator, and behaviour against that simulator (STYLE §2, §11)."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import pytest

from drivers.registry import load_registry
from drivers.testing import check_contract, check_package

REGISTRY = load_registry()
NAMES = REGISTRY.names


def test_every_registered_driver_loads() -> None:
    drivers = REGISTRY.drivers
    assert REGISTRY.broken == {}
    assert set(drivers) == set(NAMES)
    assert {"sim", "modbus", "serial", "lora_forwarder", "lora_modem"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_driver_package(name: str) -> None:
    cls = REGISTRY.get(name)
    assert cls is not None
    package = cls.__module__.rsplit(".", 1)[0] if cls.__module__.count(".") > 1 else cls.__module__
    folder = Path(importlib.import_module(package).__file__ or "").parent
    assert name.startswith(folder.name), f"driver {name} lives in package {folder.name}"
    check_package(cls, folder)


@pytest.mark.parametrize("name", NAMES)
def test_driver_contract(name: str, tmp_path: Path) -> None:
    cls = REGISTRY.get(name)
    assert cls is not None
    asyncio.run(check_contract(cls, tmp_path))


def test_drivers_command_lists_them_all() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    proc = subprocess.run([sys.executable, "-m", "gateway", "drivers"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert listed == set(NAMES)
