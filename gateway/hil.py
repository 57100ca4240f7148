"""``streetgate hil run``: the hardware-in-the-loop suite on a rig, with a technician's summary.

A thin wrapper over pytest: it runs ``hil_tests/`` (in a source checkout) with ``--rig``, has
pytest write JUnit XML, then prints one line per behaviour, PASS, FAIL or SKIP and why::

    behaviour                                          result  why
    delivery [rs485-1/meter-1]                         PASS    5 points, 2.0 readings/s each
    replayed and forged frames are rejected [none]     SKIP    rig has no lora forwarder

The exit status is pytest's: 0 when nothing failed, 1 when something did, 4 for a bad rig file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "cmd_run", "register_cli", "render", "suite_dir", "summarize"]

_ROOT = Path(__file__).resolve().parent.parent
_WIDTH = 52


@dataclass(frozen=True)
class Row:
    """One behaviour's line in the summary."""

    behaviour: str
    result: str
    why: str


def suite_dir() -> Path | None:
    """``hil_tests/`` of the source checkout this package runs from, if there is one."""
    path = _ROOT / "hil_tests"
    return path if (path / "conftest.py").is_file() else None


def register_cli(sub: Any) -> None:
    """Add ``streetgate hil run`` to the ``streetgate`` command's subparsers."""
    p = sub.add_parser("hil", help="hardware-in-the-loop suite on a bench rig")
    hsub = p.add_subparsers(dest="hil_command", metavar="COMMAND")
    hsub.required = True
    run = hsub.add_parser("run", help="run the suite against a rig file and summarise it")
    run.add_argument("--rig", metavar="RIG.toml",
                     help="rig file (default: hil_tests/rigs/simulators.toml, all simulators)")
    run.add_argument("--junit", metavar="FILE", default="hil-report.xml",
                     help="JUnit XML report (default: %(default)s)")
    run.add_argument("-k", metavar="EXPR", dest="keyword",
                     help="only behaviours matching this pytest -k expression")
    run.set_defaults(func=cmd_run)


def _pytest_command(args: argparse.Namespace, suite: Path, junit: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(suite), "-q", f"--junitxml={junit}",
           "-o", "junit_family=xunit1"]
    if args.rig:
        cmd += ["--rig", str(Path(args.rig).resolve())]
    if args.keyword:
        cmd += ["-k", args.keyword]
    return cmd


def _say(text: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def cmd_run(args: argparse.Namespace) -> int:
    suite = suite_dir()
    if suite is None:
        _say("streetgate hil: hil_tests/ not found; run it from a source checkout of "
             "streetgate (git clone, then make deps)", err=True)
        return 2
    junit = Path(args.junit).resolve()
    junit.unlink(missing_ok=True)
    _say(f"streetgate hil: rig {args.rig or suite / 'rigs' / 'simulators.toml'}")
    code = subprocess.call(_pytest_command(args, suite, junit), cwd=_ROOT)  # noqa: S603 - our own interpreter and suite
    if not junit.is_file():
        _say(f"streetgate hil: no report (pytest exited with {code} before running "
             "behaviours)", err=True)
        return code or 2
    _say("\n" + render(summarize(junit)) + f"\n\nJUnit XML: {junit}")
    return code


def _behaviour(name: str) -> str:
    base, bracket, param = name.partition("[")
    text = base.removeprefix("test_").replace("_", " ")
    return f"{text} [{param}" if bracket else text


def _first_line(text: str | None) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    for prefix in ("AssertionError: ", "Failed: "):
        line = line.removeprefix(prefix)
    return line


def summarize(junit: Path) -> list[Row]:
    """One row per test case of a pytest JUnit XML report (xunit1, with properties)."""
    tree = ET.parse(junit)  # noqa: S314 - the report pytest just wrote for us
    return [_row(case) for case in tree.iter("testcase")]


def _row(case: ET.Element) -> Row:
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    failed = case.find("failure")
    if failed is None:
        failed = case.find("error")
    skipped = case.find("skipped")
    if failed is not None:
        result, why = "FAIL", _first_line(failed.get("message") or failed.text)
    elif skipped is not None:
        result, why = "SKIP", _first_line(skipped.get("message") or skipped.text)
    else:
        result, why = "PASS", props.get("summary") or ""
    return Row(_behaviour(case.get("name", "?")), result, why)


def render(rows: list[Row]) -> str:
    """The summary table and a count line."""
    width = min(_WIDTH, max([len("behaviour"), *(len(r.behaviour) for r in rows)]))
    lines = [f"{'behaviour':<{width}}  result  why"]
    lines += [f"{r.behaviour:<{width}}  {r.result:<6}  {r.why}".rstrip() for r in rows]
    counts = {k: sum(r.result == k for r in rows) for k in ("PASS", "FAIL", "SKIP")}
    lines.append(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)
