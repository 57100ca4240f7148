"""`streetgate new-driver` writes a driver package that passes the contract as generated."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.testing import check_contract, check_package
from gateway.newdriver import generate


def test_generated_driver_passes_the_contract(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "new-driver", "air_probe",
                           "--dir", str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "streetgate-air-probe"
    assert (root / "pyproject.toml").read_text().count('air_probe = "streetgate_air_probe:') == 1
    sys.path.insert(0, str(root))
    try:
        mod = importlib.import_module("streetgate_air_probe")
        cls = mod.AirProbeDriver
        check_package(cls, root / "streetgate_air_probe")
        asyncio.run(check_contract(cls, tmp_path))
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("streetgate_air_probe")]:
            del sys.modules[name]
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "E,F,W,B",
                           str(root)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout


def test_bad_names_and_existing_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected lowercase"):
        generate("Bad-Name", tmp_path)
    generate("ok_name", tmp_path)
    with pytest.raises(FileExistsError):
        generate("ok_name", tmp_path)
