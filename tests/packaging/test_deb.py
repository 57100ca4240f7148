"""The Debian package (debian/, `make deb`).

The unmarked tests read debian/ and take a second or two. The slow ones (`make soak`, or
`pytest -m slow tests/packaging`) build the package (about a minute with a warm pip cache),
inspect it with dpkg-deb and, as root, install it into a throwaway overlay of this machine's
root (tests/packaging/throwaway_root.sh): once in a chroot (install, `streetgate --version`,
purge), once with systemd booted in its own namespaces (`systemctl start streetgate`, purge).
Nothing reaches the real system.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "debian"
THROWAWAY = Path(__file__).with_name("throwaway_root.sh")
UNIT = "lib/systemd/system/streetgate.service"
MAINTAINER_SCRIPTS = ["streetgate.postinst", "streetgate.postrm", "streetgate.prerm"]


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def _control() -> list[dict[str, str]]:
    """debian/control as paragraphs of field: value (continuation lines joined)."""
    paragraphs = []
    for block in (DEBIAN / "control").read_text().strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1].isspace():
                fields[key] += " " + line.strip()
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        paragraphs.append(fields)
    return paragraphs


# -- debian/ as written -------------------------------------------------------------------------
def test_control_fields() -> None:
    source, binary = _control()
    assert source["Source"] == "streetgate"
    assert "dh-virtualenv" in source["Build-Depends"]
    assert "debhelper-compat (= 13)" in source["Build-Depends"]
    assert binary["Package"] == "streetgate"
    assert binary["Architecture"] == "any"  # the venv holds compiled wheels
    depends = binary["Depends"]
    for needed in ("adduser", "${misc:Depends}", "${shlibs:Depends}", "${streetgate:Python}"):
        assert needed in depends


def test_changelog_version_is_the_project_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"streetgate ({_version()})"), first


def test_rules_use_dh_virtualenv_and_the_package_unit_directory() -> None:
    rules = (DEBIAN / "rules").read_text()
    assert "--with python-virtualenv" in rules
    assert "dh_installsystemd" in rules
    assert "/etc/systemd/system" not in rules
    assert "$(PKG)/etc/streetgate/gateway.toml" in rules  # under /etc: a conffile
    # The development Makefile's targets (clean removes .venv, test runs the suite) stay out.
    for step in ("build", "test", "install", "clean"):
        assert f"override_dh_auto_{step}" in rules


def test_packaged_unit_is_the_systemd_unit_with_packaged_paths(tmp_path: Path) -> None:
    shutil.copytree(DEBIAN, tmp_path / "debian")
    shutil.copytree(ROOT / "systemd", tmp_path / "systemd")
    subprocess.run(["make", "-s", "-f", "debian/rules", "debian/streetgate.service"],
                   cwd=tmp_path, check=True, timeout=30)
    packaged = (tmp_path / "debian/streetgate.service").read_text().splitlines()
    original = (ROOT / "systemd/streetgate.service").read_text().splitlines()
    assert len(packaged) == len(original)
    changed = [(a, b) for a, b in zip(original, packaged, strict=True) if a != b]
    assert "ExecStart=/usr/bin/streetgate run --config /etc/streetgate/gateway.toml" in packaged
    for old, new in changed:
        assert old.startswith(("#", "ExecStart=", "Documentation=")), (old, new)
    assert not any("/opt/streetgate" in line for line in packaged)


@pytest.mark.parametrize("script", MAINTAINER_SCRIPTS)
def test_maintainer_script_syntax(script: str) -> None:
    path = DEBIAN / script
    assert path.read_text().startswith("#!/bin/sh\n")
    assert "#DEBHELPER#" in path.read_text()
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)


def test_postinst_makes_the_user_and_a_private_state_directory() -> None:
    postinst = (DEBIAN / "streetgate.postinst").read_text()
    assert "adduser --quiet --system --group" in postinst
    assert re.search(r"install -d -m 0700 -o \"\$USER_NAME\" -g \"\$USER_NAME\" \"\$STATE_DIR\"",
                     postinst)
    assert "STATE_DIR=/var/lib/streetgate" in postinst


def test_purge_keeps_the_state_directory() -> None:
    postrm = (DEBIAN / "streetgate.postrm").read_text()
    code = [line for line in postrm.splitlines() if not line.lstrip().startswith("#")]
    assert not any("/var/lib/streetgate" in line for line in code)
    assert "deluser" in postrm  # the user goes; its state stays (see the comment)
    assert "Keeps /var/lib/streetgate".lower() in postrm.lower()


def _docs(what: str) -> str:
    return subprocess.run([sys.executable, str(DEBIAN / "streetgate-docs.py"), what],
                          check=True, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SOURCE_DATE_EPOCH": "1765195200"}).stdout


def test_man_page_lists_every_command() -> None:
    page = _docs("man")
    assert page.startswith('.TH STREETGATE 1 "2025-12-08"')
    for command in ("run", "check", "status", "key public", "buffer stats", "ingest run",
                    "modbus scan", "provision init"):
        assert f'.SS "streetgate {command}"' in page
    assert ".SH EXIT STATUS" in page
    assert ".SH FILES" in page


def _complete(script: Path, words: list[str]) -> list[str]:
    line = " ".join(words)
    program = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               "_streetgate; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", program], check=True, capture_output=True, text=True,
                         timeout=10).stdout
    return sorted(w for w in out.splitlines() if w)


def test_bash_completion_completes_subcommands_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "streetgate"
    script.write_text(_docs("bash-completion"))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    assert "run" in _complete(script, ["streetgate", "''"])
    assert _complete(script, ["streetgate", "key", "''"]) == ["fingerprint", "public"]
    assert _complete(script, ["streetgate", "--log-level", "debug", "buffer", "''"]) == ["stats"]
    assert "--once" in _complete(script, ["streetgate", "run", "--"])
    assert _complete(script, ["streetgate", "--log-level", "w"]) == ["warning"]


def test_make_deb_installs_its_tools_first() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\ndeb:"):]
    target = target[:target.index("\n\n")]
    assert "bash .ci/ensure-deb-tools" in target
    assert "dpkg-buildpackage" in target


# -- the built package ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deb() -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("make deb builds from a git checkout")
    if os.geteuid() != 0 and shutil.which("dh_virtualenv") is None:
        pytest.skip("dh-virtualenv is not installed and apt-get needs root")
    subprocess.run(["make", "-s", "deb"], cwd=ROOT, check=True, timeout=900,
                   stdout=subprocess.DEVNULL)
    return ROOT / "build/deb" / f"streetgate_{_version()}_{_arch()}.deb"


def _arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_package_contents(deb: Path) -> None:
    listing = {line.split()[5].removeprefix("./").rstrip("/"): line
               for line in _dpkg_deb("-c", str(deb)).splitlines()}
    for path in (UNIT, "etc/streetgate/gateway.toml", "etc/modules-load.d/streetgate.conf",
                 "usr/share/man/man1/streetgate.1.gz",
                 "usr/share/bash-completion/completions/streetgate",
                 "opt/venvs/streetgate/bin/streetgate", "usr/share/doc/streetgate/copyright"):
        assert path in listing, path
    assert listing["usr/bin/streetgate"].endswith("-> /opt/venvs/streetgate/bin/streetgate")
    assert not any(p.startswith("etc/systemd/system") for p in listing)
    # The state directory is made by postinst, so dpkg never removes it.
    assert not any(p.startswith("var/lib/streetgate") for p in listing)
    # The dependencies travel inside: nothing is downloaded at install time.
    for module in ("paho", "pymodbus", "cryptography", "cbor2", "serial", "sqlite_utils",
                   "psycopg", "gateway", "drivers"):
        assert f"opt/venvs/streetgate/lib/python3.11/site-packages/{module}" in listing, module

    info = _dpkg_deb("-I", str(deb))
    assert f"Version: {_version()}" in info
    assert re.search(r"Depends: .*python3 \(>= 3\.11~\), python3 \(<< 3\.12~\)", info)
    assert "adduser" in info
    assert _dpkg_deb("-I", str(deb), "conffiles").split() == [
        "/etc/modules-load.d/streetgate.conf", "/etc/streetgate/gateway.toml"]
    postinst = _dpkg_deb("-I", str(deb), "postinst")
    assert "adduser --quiet --system --group" in postinst
    assert "deb-systemd-helper enable 'streetgate.service'" in postinst
    assert "try-restart 'streetgate.service'" in postinst  # an upgrade restarts a running one


def _throwaway_root_usable() -> str | None:
    """Why the throwaway root cannot be made here, or None."""
    if os.geteuid() != 0:
        return "installing needs root"
    if shutil.which("unshare") is None:
        return "no unshare"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            ("mount -t tmpfs t /mnt && mkdir /mnt/u /mnt/w /mnt/m && mount -t "
                             "overlay o -o lowerdir=/,upperdir=/mnt/u,workdir=/mnt/w /mnt/m")],
                           capture_output=True, check=False, timeout=30)
    if probe.returncode != 0:
        return f"no overlay mounts here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def throwaway() -> None:
    if reason := _throwaway_root_usable():
        pytest.skip(reason)


INSTALL_AND_PURGE = """
set -e
rm -f /usr/sbin/policy-rc.d
dpkg -i /streetgate.deb >/dev/null
streetgate --version
echo "user: $(id -nG streetgate)"
stat -c 'mode: %n %U:%G %a' /var/lib/streetgate /etc/streetgate /etc/streetgate/gateway.toml
streetgate check --offline /etc/streetgate/gateway.toml >/dev/null && echo "check: ok"
man -w streetgate
dpkg --purge streetgate >/dev/null 2>&1
id streetgate 2>/dev/null || echo "purged: no user"
test -e /etc/streetgate || echo "purged: no /etc/streetgate"
test -e /lib/systemd/system/streetgate.service || echo "purged: no unit"
test -e /usr/bin/streetgate || echo "purged: no command"
stat -c 'kept: %n %a' /var/lib/streetgate
"""


@pytest.mark.slow
@pytest.mark.timeout(1000)
@pytest.mark.usefixtures("throwaway")
def test_install_run_and_purge_in_a_throwaway_root(deb: Path) -> None:
    done = subprocess.run([str(THROWAWAY), "chroot", str(deb), INSTALL_AND_PURGE],
                          capture_output=True, text=True, check=False, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"streetgate {_version()}\n" in out
    assert re.search(r"user: streetgate.* dialout", out), out
    assert "mode: /var/lib/streetgate streetgate:streetgate 700" in out
    assert "mode: /etc/streetgate root:streetgate 750" in out
    assert "mode: /etc/streetgate/gateway.toml root:streetgate 640" in out
    assert "check: ok" in out
    assert "/usr/share/man/man1/streetgate.1.gz" in out
    for gone in ("no user", "no /etc/streetgate", "no unit", "no command"):
        assert f"purged: {gone}" in out, out
    assert "kept: /var/lib/streetgate 700" in out


def _descendant(pid: int, name: str) -> int | None:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if Path(f"/proc/{child}/comm").read_text().strip() == name:
            return int(child)
        if found := _descendant(int(child), name):
            return found
    return None


@pytest.fixture
def booted(deb: Path, throwaway: None) -> Iterator[list[str]]:
    """systemd as PID 1 of a throwaway root; yields the nsenter prefix that runs in it."""
    if not Path("/lib/systemd/systemd").exists():
        pytest.skip("systemd is not installed")
    boot = subprocess.Popen([str(THROWAWAY), "boot", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    pid1 = None
    try:
        deadline = time.monotonic() + 30
        while pid1 is None and boot.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            pid1 = _descendant(boot.pid, "systemd")
        if pid1 is None:
            # Namespaces and overlays work here (the throwaway fixture checked): a systemd
            # that does not start is the harness failing, not a missing rig.
            out = boot.stdout.read().decode(errors="replace")[-2000:] if boot.poll() \
                is not None and boot.stdout else ""
            pytest.fail(f"systemd did not start in the throwaway root: {out}")
        enter = ["nsenter", "-t", str(pid1), "-a", "-r", "-w"]
        state = ""
        deadline = time.monotonic() + 90
        while state not in ("running", "degraded") and time.monotonic() < deadline:
            time.sleep(0.5)  # until then systemctl may find no bus to talk to
            state = subprocess.run([*enter, "systemctl", "is-system-running", "--wait"],
                                   capture_output=True, text=True, timeout=90,
                                   check=False).stdout.strip()
        if state not in ("running", "degraded"):
            pytest.fail(f"systemd did not come up in the throwaway root: {state!r}")
        yield enter
    finally:
        if pid1 is not None:
            os.kill(pid1, signal.SIGKILL)
        try:
            boot.wait(timeout=30)
        finally:
            if boot.poll() is None:
                boot.kill()
                boot.wait(timeout=10)
            assert boot.stdout is not None
            boot.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_systemctl_start_after_dpkg_install(booted: list[str]) -> None:
    def run(*args: str, check: bool = True) -> str:
        done = subprocess.run([*booted, *args], capture_output=True, text=True, timeout=120,
                              check=False)
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    run("rm", "-f", "/usr/sbin/policy-rc.d")  # the image's "no services" policy, not Debian's
    run("dpkg", "-i", "/streetgate.deb")
    assert run("systemctl", "is-enabled", "streetgate").strip() == "enabled"
    assert run("systemctl", "is-active", "streetgate", check=False).strip() == "inactive"
    run("systemctl", "start", "streetgate")  # Type=notify: returns once the gateway is READY
    assert run("systemctl", "is-active", "streetgate").strip() == "active"
    assert "streetgate streetgate 600" in run(
        "stat", "-c", "%U %G %a", "/var/lib/streetgate/keys/signing.key")
    run("dpkg", "--purge", "streetgate")
    assert run("systemctl", "is-active", "streetgate", check=False).strip() != "active"
    assert run("pgrep", "-f", "streetgate run", check=False) == ""
    assert "streetgate" not in run("getent", "passwd")
    assert run("stat", "-c", "%a", "/var/lib/streetgate").strip() == "700"
    assert run("sh", "-c", "ls /var/lib/streetgate/keys").strip() == "signing.key"
