"""The registry reads entry points as importlib.metadata does, without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from drivers import registry
from drivers.registry import GROUP, load_registry


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


# -- reserved names ---------------------------------------------------------------------------
def test_builtin_names_are_the_ones_pyproject_registers() -> None:
    import tomllib  # noqa: PLC0415

    root = Path(registry.__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][GROUP] == registry.BUILTIN


@pytest.mark.parametrize("plugin_first", [True, False])
def test_a_plugin_cannot_take_a_builtin_name(plugin_first: bool) -> None:
    builtin = ("modbus", registry._PathEntryPoint("drivers.modbus:ModbusDriver"))
    plugin = ("modbus", registry._PathEntryPoint("streetgate_modbus:ModbusDriver"))
    pairs = [plugin, builtin] if plugin_first else [builtin, plugin]
    eps, refused = registry.resolve_names(pairs)
    assert eps["modbus"].value == "drivers.modbus:ModbusDriver"
    assert list(refused) == ["modbus"]
    assert "streetgate_modbus:ModbusDriver" in refused["modbus"]
    assert "built-in driver" in refused["modbus"]


def test_plugins_sharing_a_name_are_both_refused() -> None:
    pairs = [("probe", registry._PathEntryPoint("acme.probe:ProbeDriver")),
             ("probe", registry._PathEntryPoint("zeta.probe:ProbeDriver")),
             ("probe", registry._PathEntryPoint("acme.probe : ProbeDriver")),  # the same again
             ("other", registry._PathEntryPoint("acme.other:OtherDriver"))]
    eps, refused = registry.resolve_names(pairs)
    assert sorted(eps) == ["other"]
    assert list(refused) == ["probe"]
    assert "acme.probe:ProbeDriver and zeta.probe:ProbeDriver" in refused["probe"]


PLUGIN = '''
from dataclasses import dataclass
from drivers.api import Driver


@dataclass(frozen=True, kw_only=True)
class Config:
    port: str = ""


class TemplateDriver(Driver[Config]):
    """A plugin generated under a name that is taken."""

    name = "{name}"
    config_schema = Config

    async def run(self, sink):
        pass
'''


def _plugins(root: Path) -> dict[str, str]:
    """Three installed plugins: one named like a built-in, two sharing a name."""
    for dist, module, name in (("streetgate_modbus-0.1", "sg_modbus", "modbus"),
                               ("acme_probe-1.0", "acme_probe", "probe"),
                               ("zeta_probe-2.0", "zeta_probe", "probe")):
        _dist(root, f"{dist}.dist-info", f"[{GROUP}]\n{name} = {module}:TemplateDriver\n")
        (root / f"{module}.py").write_text(PLUGIN.replace("{name}", name))
    return {**os.environ, "PYTHONPATH": str(root)}


def _gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_drivers_lists_refused_plugins_by_name(tmp_path: Path) -> None:
    env = _plugins(tmp_path)
    out = _gateway(env, "drivers")
    assert out.returncode == 1, out
    modbus = [line for line in out.stdout.splitlines() if line.startswith("modbus ")]
    assert "drivers.modbus.driver.ModbusDriver" in modbus[0]  # the built-in stays
    refused = [line for line in out.stdout.splitlines() if "REFUSED" in line]
    assert len(refused) == 2, out.stdout
    assert any("sg_modbus:TemplateDriver" in line and "built-in" in line for line in refused)
    assert any("acme_probe:TemplateDriver and zeta_probe:TemplateDriver" in line
               for line in refused)
    doc = json.loads(_gateway(env, "drivers", "--json").stdout)
    assert doc["ok"] is False
    states = {(d["name"], d["state"]) for d in doc["drivers"]}
    assert {("modbus", "ok"), ("modbus", "refused"), ("probe", "refused")} <= states


def test_check_and_run_keep_the_builtin_and_name_the_refused_plugin(tmp_path: Path) -> None:
    env = _plugins(tmp_path / "plugins")
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "cab-1"\nstate_dir = "{tmp_path / "state"}"\n\n'
                    '[[drivers.modbus]]\ninstance = "rs485-1"\n[drivers.modbus.bus]\n'
                    f'kind = "rtu"\nport = "{tmp_path / "no-tty"}"\n'
                    '[[drivers.modbus.devices]]\nname = "m"\nunit = 1\n'
                    'profile = "energy-meter-3ph"\n')
    check = _gateway(env, "check", str(conf))
    assert check.returncode == 1, check  # valid, but a plugin was refused
    assert "OK (1 driver instance(s))" in check.stdout
    assert "driver plugin modbus = sg_modbus:TemplateDriver refused" in check.stderr
    once = _gateway(env, "run", "--once", "--timeout", "3s", "-c", str(conf))
    assert "driver plugin modbus = sg_modbus:TemplateDriver refused" in once.stderr
    assert "rs485-1/m/voltage_l1" in once.stdout  # the built-in Modbus driver ran
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "identity.toml").write_text(
        'gateway_id = "cab-2"\nbroker = "127.0.0.1:8883"\n')
    run = _gateway(env, "run", "-c", str(conf))  # refuses to start: the id differs
    assert run.returncode == 1, run
    assert "driver plugin modbus = sg_modbus:TemplateDriver refused" in run.stderr


def test_a_config_naming_a_shared_plugin_name_says_why(tmp_path: Path) -> None:
    env = _plugins(tmp_path / "plugins")
    conf = tmp_path / "gateway.toml"
    conf.write_text('[gateway]\nid = "cab-1"\n\n[[drivers.probe]]\ninstance = "p"\n')
    out = _gateway(env, "check", str(conf))
    assert out.returncode == 2, out
    assert ("gateway.toml: drivers.probe: unknown driver (driver plugins "
            "acme_probe:TemplateDriver and zeta_probe:TemplateDriver refused") in out.stderr
