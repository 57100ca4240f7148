"""Rig files: the shipped rigs validate, and bad ones give the gateway config's kind of errors.

A regression case is a folder: ``cases/<case>/{rig.toml, expected.err}`` (plus the gateway
config a real rig names). ``CASE`` in expected.err stands for the case folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.api import ConfigError
from hil_tests.rig import load_rig

HERE = Path(__file__).resolve().parent
CASES = sorted(p for p in (HERE / "cases").iterdir() if (p / "expected.err").exists())
RIGS = sorted((HERE.parents[1] / "hil_tests" / "rigs").glob("*.toml"))


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bad_rig_file(case: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_rig(case / "rig.toml")
    got = str(err.value).replace(str(case), "CASE") + "\n"
    assert got == (case / "expected.err").read_text()


def test_every_case_folder_has_an_expectation() -> None:
    assert {p.name for p in (HERE / "cases").iterdir()} == {p.name for p in CASES}


@pytest.mark.parametrize("path", [p for p in RIGS if not p.name.endswith("-gateway.toml")],
                         ids=lambda p: p.name)
def test_shipped_rig_validates(path: Path) -> None:
    rig = load_rig(path)
    assert rig.buses
    assert rig.devices
    assert all(d.points for d in rig.devices)


def test_the_default_rig_exercises_every_behaviour() -> None:
    rig = load_rig(HERE.parents[1] / "hil_tests" / "rigs" / "simulators.toml")
    assert rig.simulated
    assert any(b.unplug for b in rig.buses), "serial unplug would be skipped"
    assert any(d.dead for d in rig.devices), "Modbus dead/back would be skipped"
    assert any(b.driver == "lora_forwarder" for b in rig.buses), "LoRa would be skipped"
    assert {b.simulator for b in rig.buses} == {"python", "firmware"}


def test_a_real_rig_runs_its_config_against_the_bench(tmp_path: Path) -> None:
    """The bench's copy of a real gateway config: same drivers, the suite's broker and state."""
    from gateway._toml import dumps  # noqa: PLC0415
    from gateway.config import load_config  # noqa: PLC0415
    from hil_tests._bench import Bench  # noqa: PLC0415

    rig = load_rig(HERE.parents[1] / "hil_tests" / "rigs" / "bench-pi.toml")
    bench = Bench(rig, tmp_path)
    conf = tmp_path / "gateway.toml"
    conf.write_text(dumps(bench._gateway_raw()))
    ours, theirs = load_config(conf), load_config(rig.gateway_config())
    assert [(d.instance, d.driver, d.config) for d in ours.drivers] == \
        [(d.instance, d.driver, d.config) for d in theirs.drivers]
    assert (ours.uplink.host, ours.uplink.port) == (bench.broker.host, bench.broker.port)
    assert not ours.uplink.tls.enabled
    assert ours.gateway.state_dir == str(tmp_path / "state")
    assert ours.gateway.id == theirs.gateway.id
