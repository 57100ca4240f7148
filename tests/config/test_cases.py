"""Golden config cases: each folder holds gateway.toml and the exact expected errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.registry import load_registry
from gateway.config import ConfigError, load_config

CASES = sorted(p for p in (Path(__file__).parent / "cases").iterdir() if p.is_dir())


def _expected(case: Path) -> str:
    known = ", ".join(load_registry().names)
    return (case / "expected.err").read_text().replace("DRIVERS", known)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_config_case(case: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(case / "gateway.toml")
    assert str(err.value) + "\n" == _expected(case)


def test_check_cli_reports_errors_and_exit_code(tmp_path: Path) -> None:
    case = tmp_path / "gateway.toml"
    shutil.copy(Path(__file__).parent / "cases" / "wrong_types" / "gateway.toml", case)
    proc = subprocess.run([sys.executable, "-m", "gateway", "check", str(case)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert 'uplink.port: expected an integer; got "1883"' in proc.stderr


def test_example_config_checks_and_masks_secrets(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "gateway" / "example.toml"
    text = example.read_text().replace('# password = ""', 'password = "hunter2"')
    conf = tmp_path / "gateway.toml"
    conf.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "gateway", "check", str(conf)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout
    assert 'password = "********"' in proc.stdout
    assert 'id = "cab-0042"' in proc.stdout
    assert 'commit_window = "1s"' in proc.stdout
    # the printed config is itself a valid config that resolves to the same thing
    again = tmp_path / "resolved.toml"
    again.write_text(proc.stdout.replace('"********"', '"hunter2"'))
    assert load_config(again) == load_config(conf).__class__(
        **{**load_config(conf).__dict__, "file": "resolved.toml"})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("example", sorted((Path(__file__).parents[2] / "drivers").glob(
    "*/example.toml")), ids=lambda p: p.parent.name)
def test_every_driver_example_passes_streetgate_check(example: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "check", str(example)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "driver sections OK" in proc.stdout
