"""The systemd unit (its confinement score, its settings) and the installer, staged."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "streetgate.service"
INSTALL = ROOT / "systemd" / "install.sh"


def _settings(text: str) -> dict[str, list[str]]:
    """``key -> [values]`` of the [Service] and [Unit] sections (repeated keys kept)."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_exposure_is_at_most_2() -> None:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0"})
    match = re.search(r"Overall exposure level for streetgate\.service: (\d+\.\d+)", proc.stdout)
    assert match, f"no exposure line (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert float(match.group(1)) <= 2.0, proc.stdout


def test_unit_settings() -> None:
    s = _settings(UNIT.read_text())
    single = {k: v[-1] for k, v in s.items()}
    assert single["Type"] == "notify"
    assert single["NotifyAccess"] == "main"
    assert single["WatchdogSec"] == "30s"
    assert single["Restart"] == "on-failure"
    assert single["User"] == single["Group"] == "streetgate"
    assert single["SupplementaryGroups"] == "dialout"
    assert single["StateDirectory"] == "streetgate"
    assert single["StateDirectoryMode"] == "0700"
    assert single["ConfigurationDirectory"] == "streetgate"
    assert single["RuntimeDirectory"] == "streetgate"
    assert single["UMask"] == "0077"
    assert single["ExecStart"] == ("/opt/streetgate/.venv/bin/streetgate run "
                                   "--config /etc/streetgate/gateway.toml")
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert single["CapabilityBoundingSet"] == ""
    assert single["DevicePolicy"] == "closed"
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-ttyS rw"} <= set(
        s["DeviceAllow"])
    assert single["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges", "MemoryDenyWriteExecute",
                "LockPersonality", "RestrictRealtime", "RestrictNamespaces", "ProtectClock",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectHostname"):
        assert single[key] == "yes", key
    assert single["ProtectSystem"] == "strict"
    # The daemon must find its status file where `streetgate status` looks first.
    from gateway.status import RUNTIME_DIR  # noqa: PLC0415

    assert Path("/run") / single["RuntimeDirectory"] == RUNTIME_DIR


def _staged(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), "--destdir", str(tmp_path), "--no-venv", *args],
                          capture_output=True, text=True, check=False, timeout=60)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_stages_files_with_their_modes(tmp_path: Path) -> None:
    proc = _staged(tmp_path)
    assert proc.returncode == 0, proc.stderr
    unit = tmp_path / "etc/systemd/system/streetgate.service"
    conf = tmp_path / "etc/streetgate/gateway.toml"
    assert unit.read_text() == UNIT.read_text()
    assert _mode(unit) == 0o644
    assert conf.read_text() == (ROOT / "gateway/example.toml").read_text()
    assert _mode(conf) == 0o640  # may hold the broker password
    assert _mode(conf.parent) == 0o750
    assert _mode(tmp_path / "var/lib/streetgate") == 0o700
    assert (tmp_path / "etc/modules-load.d/streetgate.conf").read_text().split("\n")[1:3] == [
        "usbserial", "cdc_acm"]
    assert (tmp_path / "opt/streetgate/systemd/README.md").exists()
    assert "not creating user" in proc.stdout


def test_install_again_keeps_the_config_and_follows_the_prefix(tmp_path: Path) -> None:
    assert _staged(tmp_path).returncode == 0
    conf = tmp_path / "etc/streetgate/gateway.toml"
    conf.write_text('[gateway]\nid = "cab-9"\n')
    proc = _staged(tmp_path, "--prefix", "/srv/sg")
    assert proc.returncode == 0, proc.stderr
    assert conf.read_text() == '[gateway]\nid = "cab-9"\n'
    assert "keeping the existing" in proc.stdout
    unit = (tmp_path / "etc/systemd/system/streetgate.service").read_text()
    start = "ExecStart=/srv/sg/.venv/bin/streetgate run --config /etc/streetgate/gateway.toml"
    assert start in unit
    assert "/opt/streetgate" not in unit


def test_install_refuses_bad_arguments(tmp_path: Path) -> None:
    assert _staged(tmp_path, "--prefix", "relative").returncode == 2
    assert _staged(tmp_path, "--bogus").returncode == 2
    if os.geteuid() != 0:
        proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True,
                              check=False, env={**os.environ, "DESTDIR": ""})
        assert proc.returncode == 1
        assert "run as root" in proc.stderr


_MDWE_CHILD = textwrap.dedent("""
    import asyncio, ctypes, os, sys, tempfile
    from pathlib import Path

    # prctl(2) PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1: the kernel's own form of
    # systemd's MemoryDenyWriteExecute= (no mapping may become writable and executable).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        print("no-mdwe", os.strerror(ctypes.get_errno()))
        sys.exit(0)
    from gateway.broker import Mosquitto
    from tests.helpers.e2e import deliver

    async def main(work):
        with Mosquitto(work / "broker") as broker:
            result = await deliver({"sim": [{"instance": "s1", "devices": 1,
                                             "interval": "20ms"}]},
                                   broker, work / "state", until=lambda rs: len(rs) >= 20)
        print("ok", len(result.readings))

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))
""")


def test_the_gateway_runs_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes: CPython, ctypes, cryptography, SQLite, paho all cope."""
    proc = subprocess.run([sys.executable, "-c", _MDWE_CHILD], capture_output=True, text=True,
                          check=False, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("no-mdwe"):
        pytest.skip(f"kernel lacks PR_SET_MDWE (Linux >= 6.3): {proc.stdout.strip()}")
    assert proc.stdout.startswith("ok "), proc.stdout
