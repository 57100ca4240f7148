"""The registry reads entry points as importlib.metadata does, without importing it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pytest

from drivers import registry
from drivers.registry import GROUP, load_registry

if TYPE_CHECKING:
    from pathlib import Path


def _metadata(group: str) -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in entry_points(group=group)]


@pytest.mark.parametrize("group", [GROUP, "console_scripts", "pytest11"])
def test_scan_finds_what_importlib_metadata_finds(group: str) -> None:
    assert registry._scan(group) == _metadata(group)


def _dist(root: Path, name: str, text: str) -> None:
    info = root / name
    info.mkdir(parents=True)
    (info / "entry_points.txt").write_text(text)


def test_first_distribution_of_a_name_wins_as_in_importlib_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = "streetgate.test_registry"
    _dist(tmp_path / "a", "Acme_Probe-1.0.dist-info",
          f"# comment\n[{group}]\nprobe = acme.probe:ProbeDriver\n\n[other]\nx = y:z\n")
    _dist(tmp_path / "b", "acme.probe-2.0.dist-info", f"[{group}]\nprobe = acme.old:Old\n")
    _dist(tmp_path / "b", "zeta-0.1.egg-info", f"[{group}]\n  zeta =  zeta.mod : Zeta [extra]\n")
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    found = registry._scan(group)
    assert found == _metadata(group)
    assert found == [("probe", "acme.probe:ProbeDriver"), ("zeta", "zeta.mod : Zeta [extra]")]


def test_a_zip_on_sys_path_is_left_to_importlib_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("acme-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: acme\n")
        z.writestr("acme-1.0.dist-info/entry_points.txt", f"[{GROUP}]\nacme = acme:AcmeDriver\n")
    monkeypatch.syspath_prepend(str(archive))
    assert registry._scan(GROUP) is None
    assert "acme" in load_registry().names  # found through importlib.metadata


def test_entry_point_loads_module_and_attribute_path() -> None:
    ep = registry._PathEntryPoint("drivers.registry:Registry.get")
    assert ep.load() is registry.Registry.get
    with pytest.raises(ValueError, match="not an entry point"):
        registry._PathEntryPoint("no such thing!").load()


def test_loading_the_registry_does_not_import_importlib_metadata() -> None:
    # It pulls email, zipfile and csv: ~1 MB resident for the daemon's whole life.
    code = ("import sys; from drivers.registry import load_registry; "
            "assert load_registry().get('sim') is not None; "
            "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
