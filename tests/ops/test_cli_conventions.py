"""What scripts, monitoring and journald rely on: help, exit codes, JSON, priorities, pipes.

Every test runs ``python -m gateway`` as a subprocess, as systemd or a shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.api import Reading
from gateway.status import write_status_file


def _gateway(*args: str, env: dict[str, str] | None = None,
             stderr: Any = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, env=env, timeout=60, check=False)


def _under_journal(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """Run with stderr as the journal stream (``$JOURNAL_STREAM`` names its device:inode)."""
    log = tmp_path / "journal.txt"
    with log.open("w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = _gateway(*args, env=env, stderr=f)
    return proc.returncode, log.read_text().splitlines()


def _config(tmp_path: Path, extra: str = "") -> Path:
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "cab-1"\nstate_dir = "{tmp_path / "state"}"\n{extra}')
    return conf


def _state(tmp_path: Path, *, key_mode: int = 0o600, provisioned_as: str = "cab-1") -> None:
    keys = tmp_path / "state" / "keys"
    keys.mkdir(parents=True, mode=0o700)
    (tmp_path / "state").chmod(0o700)
    key = keys / "signing.key"
    key.write_text("not used: the check stops first\n")
    key.chmod(key_mode)
    (tmp_path / "state" / "identity.toml").write_text(
        f'gateway_id = "{provisioned_as}"\nbroker = "127.0.0.1:8883"\n')


# -- help ---------------------------------------------------------------------------------------
def test_help_lists_every_field_tool() -> None:
    out = _gateway("--help")
    assert out.returncode == 0, out.stderr
    commands = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ")}
    assert {"modbus", "serial", "lora", "sim", "provision", "registrar"} <= commands
    assert {"run", "check", "status", "drivers"} <= commands
    assert "exit status: 0 ok; 1 problems found" in " ".join(out.stdout.split())


# -- journald priorities -----------------------------------------------------------------------
def test_config_error_carries_the_error_priority_under_systemd(tmp_path: Path) -> None:
    conf = _config(tmp_path, "[uplink]\nport = 0\nbrokr = 1\n")
    code, lines = _under_journal(tmp_path, "run", "--config", str(conf))
    assert code == 2
    assert len(lines) >= 2
    assert all(line.startswith("<3>gateway.toml: uplink.") for line in lines), lines


def test_refusals_to_start_carry_the_error_priority(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    _state(tmp_path, key_mode=0o644)
    code, lines = _under_journal(tmp_path, "run", "--config", str(conf))
    assert code == 1
    assert lines[0].startswith("<3>streetgate: cannot start: signing key"), lines
    assert "has mode 0644" in lines[0]
    assert all(line.startswith("<") for line in lines)


def test_gateway_id_mismatch_carries_the_error_priority(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    _state(tmp_path, provisioned_as="cab-9")
    code, lines = _under_journal(tmp_path, "run", "--config", str(conf))
    assert code == 1
    assert lines == [("<3>streetgate: cannot start: gateway.id is 'cab-1' but this gateway was "
                      "provisioned as 'cab-9'; the broker would refuse its topics")]


def test_run_names_a_missing_tls_file_instead_of_a_network_error(tmp_path: Path) -> None:
    ca = tmp_path / "no-such-ca.crt"
    conf = _config(tmp_path, f'[uplink.tls]\nenabled = true\nca_file = "{ca}"\n')
    _state(tmp_path)
    code, lines = _under_journal(tmp_path, "run", "--config", str(conf))
    assert code == 1
    assert lines == [f"<3>streetgate: cannot start: uplink.tls.ca_file: no such file: {ca}"]


def test_usage_errors_carry_the_error_priority(tmp_path: Path) -> None:
    code, lines = _under_journal(tmp_path, "run", "--no-such-option")
    assert code == 2
    assert lines[-1] == "<3>streetgate: error: unrecognized arguments: --no-such-option"
    assert all(line.startswith("<3>") for line in lines)


def test_no_priority_prefix_on_a_console(tmp_path: Path) -> None:
    conf = _config(tmp_path, "[uplink]\nbrokr = 1\n")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    out = _gateway("run", "--config", str(conf), env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("gateway.toml: uplink.brokr: unknown key")


# -- check does what run checks first -------------------------------------------------------
def test_check_finds_what_run_would_refuse(tmp_path: Path) -> None:
    conf = _config(tmp_path, "[uplink.tls]\nenabled = true\n"
                             f'ca_file = "{tmp_path / "ca.crt"}"\n')
    _state(tmp_path, key_mode=0o640, provisioned_as="cab-9")
    out = _gateway("check", str(conf))
    assert out.returncode == 1, out
    assert "but run would not start: 3 problem(s)" in out.stdout
    problems = out.stderr.splitlines()
    assert problems[0].startswith("gateway.toml: signing key ")
    assert "has mode 0640" in problems[0]
    assert problems[1] == f"gateway.toml: uplink.tls.ca_file: no such file: {tmp_path}/ca.crt"
    assert "provisioned as 'cab-9'" in problems[2]
    doc = json.loads(_gateway("check", "--json", str(conf)).stdout)
    assert doc["ok"] is False
    assert len(doc["problems"]) == 3
    assert doc["config"]["gateway"]["id"] == "cab-1"
    offline = _gateway("check", "--offline", str(conf))
    assert offline.returncode == 0, offline
    assert offline.stdout.startswith(f"# {conf}: OK")


def test_check_passes_a_gateway_ready_to_run(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    _state(tmp_path)
    out = _gateway("check", str(conf))
    assert out.returncode == 0, out
    assert out.stderr == ""


# -- exit codes and JSON ----------------------------------------------------------------------
def test_config_errors_exit_2_with_json_on_request(tmp_path: Path) -> None:
    conf = _config(tmp_path, "[uplink]\nbrokr = 1\n")
    assert _gateway("check", str(conf)).returncode == 2
    out = _gateway("check", "--json", str(conf))
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    assert doc["errors"][0]["path"] == "uplink.brokr"


def test_drivers_json_lists_the_builtins() -> None:
    out = _gateway("drivers", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    builtins = {d["name"] for d in doc["drivers"] if d["builtin"]}
    assert builtins == {"sim", "modbus", "serial", "lora_forwarder", "lora_modem"}


@pytest.mark.parametrize(("doc", "code"), [
    ({"state": "offline", "gateway": "cab-1", "clean": True}, 1),
    ({"state": "online", "gateway": "cab-1", "health": "degraded", "problems": ["uplink x"]}, 1),
    ({"state": "online", "gateway": "cab-1", "health": "ok", "problems": []}, 0),
])
def test_status_exits_1_unless_healthy(tmp_path: Path, doc: dict[str, object],
                                       code: int) -> None:
    path = tmp_path / "status.json"
    write_status_file(path, {**doc, "generated_at": time.time()})
    assert _gateway("status", "--file", str(path), "--json").returncode == code


def test_log_level_is_accepted_after_the_command(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    out = _gateway("check", str(conf), "--offline", "--log-level", "debug")
    assert out.returncode == 0, out.stderr
    assert _gateway("drivers", "--log-level=warning").returncode == 0


def test_no_traceback_when_the_reader_goes_away(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    for args in (["drivers"], ["check", "--offline", str(conf)]):
        proc = subprocess.Popen([sys.executable, "-m", "gateway", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.close()  # like `| head -0`: gone before the first line is written
        _, err = proc.communicate(timeout=60)
        assert b"BrokenPipeError" not in err, err.decode()
        assert b"Traceback" not in err
        assert proc.returncode == 141


def test_a_broken_config_on_disk_does_not_hide_the_running_daemon(tmp_path: Path) -> None:
    """The daemon runs its previous config; status and buffer stats still find its files
    through the broken file's own [gateway] table, say the file is broken, and the text
    status names the rejected reload."""
    from buffer.store import Store  # noqa: PLC0415
    from gateway.status import build_status  # noqa: PLC0415

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    conf = _config(tmp_path, "[uplink]\nbrokr = 1\n")  # an unknown key: does not load
    with Store(state / "buffer.db") as store:
        store.append([Reading("a/b/c", 1_000, 1.0)])
        store.commit()
    doc = build_status(gateway_id="cab-1", version="x", boot_id="b", started=time.time(),
                       drivers={}, reload_error="gateway.toml: uplink.brokr: unknown key")
    write_status_file(state / "status.json", {**doc, "generated_at": time.time()})
    out = _gateway("status", "-c", str(conf))
    assert "uplink.brokr" in out.stderr and "previous config" in out.stderr
    assert "last reload REJECTED, running the previous config: gateway.toml: uplink.brokr" \
        in out.stdout
    stats = _gateway("buffer", "stats", "-c", str(conf), "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["depth"] == 1
