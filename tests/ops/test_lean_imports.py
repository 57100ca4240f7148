"""``streetgate run`` imports only what the daemon uses: every module stays resident for the
daemon's whole life (the bench's peak_rss_mb)."""

from __future__ import annotations

import subprocess
import sys

#: Imported by the CLI's other commands or by importlib.metadata, never used by the daemon.
NOT_IN_THE_DAEMON = ["gateway.hil", "gateway._cli_tools", "xml.etree.ElementTree",
                     "importlib.metadata", "zipfile", "csv", "provisioning.cli", "ingest",
                     "psycopg"]


def test_run_parses_and_imports_without_the_other_commands() -> None:
    code = ("import sys; from gateway.cli import build_parser; "
            "build_parser(['run']).parse_args(['run', '--config', 'x.toml']); "
            "import gateway.daemon; from drivers.registry import load_registry; "
            "load_registry().get('sim'); "
            f"print([m for m in {NOT_IN_THE_DAEMON!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_global_options_before_run_are_skipped() -> None:
    from gateway.cli import _command  # noqa: PLC0415

    assert _command(["--log-level", "debug", "run", "-c", "x"]) == "run"
    assert _command(["-h"]) is None
    assert _command(["verify", "run"]) == "verify"
