"""``streetgate hil run``: pytest on hil_tests with a rig, JUnit XML, and the summary table."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.hil import Row, register_cli, render, suite_dir, summarize

HERE = Path(__file__).resolve().parent


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streetgate")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_summary_of_a_junit_report(tmp_path: Path) -> None:
    (tmp_path / "test_demo.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("bus", ["rs485-1"])
        def test_delivery(bus, record_property):
            record_property("summary", "5 points, 2.0 readings/s each")

        def test_broker_outage():
            assert 1 == 2, "a hole in the sequence: 41-43"

        @pytest.mark.skip(reason="rig has no lora forwarder")
        def test_lora_frames():
            pass
    """))
    junit = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "-o", "junit_family=xunit1", "test_demo.py"],
                   cwd=tmp_path, capture_output=True, check=False, timeout=120)
    rows = summarize(junit)
    assert rows == [
        Row("delivery [rs485-1]", "PASS", "5 points, 2.0 readings/s each"),
        Row("broker outage", "FAIL", "a hole in the sequence: 41-43"),
        Row("lora frames", "SKIP", "rig has no lora forwarder"),
    ]
    table = render(rows).splitlines()
    assert table[0].split() == ["behaviour", "result", "why"]
    assert table[2].split()[:3] == ["broker", "outage", "FAIL"]
    assert table[-1] == "1 passed, 1 failed, 1 skipped"


def test_the_suite_is_found_from_the_package() -> None:
    found = suite_dir()
    assert found is not None
    assert (found / "rigs" / "simulators.toml").is_file()


def test_run_on_the_simulator_rig(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "hil.xml"
    code = _run(["hil", "run", "-k", "unplug", "--junit", str(junit)])
    out = capfd.readouterr().out
    assert code == 0, out
    assert junit.is_file()
    line = next(x for x in out.splitlines() if x.startswith("serial unplug and replug [weather]"))
    assert line.split()[5] == "PASS"
    assert "unplugged 1s: UNAVAILABLE after" in line
    assert "1 passed, 0 failed, 0 skipped" in out


def test_a_bad_rig_file_says_what_is_wrong(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    rig = HERE / "cases" / "bad-min-rate" / "rig.toml"
    code = _run(["hil", "run", "--rig", str(rig), "--junit", str(tmp_path / "x.xml")])
    captured = capfd.readouterr()
    assert code != 0
    assert 'rig.toml: devices[1].min_rate: expected a number; got "fast"' in \
        captured.out + captured.err
