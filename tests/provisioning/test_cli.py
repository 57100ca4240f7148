"""The ``provision`` and ``registrar`` commands, driven through argparse like ``streetgate``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioning import tls_paths
from provisioning.cli import register_cli
from provisioning.identity import StateLayout, load_identity, signing_identity
from provisioning.keyring import lookup
from tests.provisioning.conftest import (
    CLAIM_PASSWORD,
    REGISTRAR_PASSWORD,
    Brokers,
    Fleet,
    make_broker,
    write_seed,
)

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="streetgate")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_every_leaf_has_a_func() -> None:
    parser = argparse.ArgumentParser(prog="streetgate")
    register_cli(parser.add_subparsers(dest="command", required=True))
    for argv in (["provision", "status"], ["provision", "rotate", "--signing"],
                 ["registrar", "revoke", "ab", "--dir", "x"], ["registrar", "run", "--dir", "x"]):
        assert callable(parser.parse_args(argv).func)
    with pytest.raises(SystemExit):
        parser.parse_args(["provision"])


def test_offline_flow_through_cli(tmp_path: Path, fleet: Fleet,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-cli-off", fleet=fleet,
                      brokers=None, method="offline")
    assert run("provision", "init", "--seed", str(seed), "--state", str(state)) == 0
    assert "next: streetgate provision csr" in capsys.readouterr().out
    csr = tmp_path / "gw.csr"
    assert run("provision", "csr", "--state", str(state), "--out", str(csr)) == 0
    crt = tmp_path / "gw.crt"
    assert run("registrar", "sign", "--dir", str(fleet.dir), "--csr", str(csr),
               "--gateway-id", "cab-cli-off", "--out", str(crt)) == 0
    capsys.readouterr()
    assert run("provision", "install-cert", str(crt), "--state", str(state)) == 0
    assert "installed CN=cab-cli-off" in capsys.readouterr().out
    assert run("provision", "status", "--state", str(state)) == 0
    out = capsys.readouterr().out
    assert "state:            enrolled" in out
    assert f"signing key kid:  {signing_identity(state).kid}" in out
    assert run("provision", "status", "--json", "--state", str(state)) == 0
    assert json.loads(capsys.readouterr().out)["gateway_id"] == "cab-cli-off"


def test_install_of_wrong_certificate_fails_with_message(
        tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-cli-bad", fleet=fleet,
                      brokers=None, method="offline")
    run("provision", "init", "--seed", str(seed), "--state", str(state))
    foreign = fleet.client("cab-cli-bad", issuer=fleet.foreign)
    assert run("provision", "install-cert", str(foreign.cert), "--state", str(state)) == 1
    err = capsys.readouterr().err
    assert err.startswith("streetgate: certificate does not match this gateway's TLS key")
    assert tls_paths(state) is None


def test_bad_seed_exit_code_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text('gateway_id = "cab"\n')
    assert run("provision", "init", "--seed", str(seed), "--state", str(tmp_path / "s")) == 2
    err = capsys.readouterr().err
    assert f"{seed}: broker: missing required key" in err
    assert f"{seed}: enrollment: missing required key" in err


def test_status_exit_code_on_exposed_key(tmp_path: Path, fleet: Fleet,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-cli-perm", fleet=fleet,
                      brokers=None, method="offline")
    run("provision", "init", "--seed", str(seed), "--state", str(state))
    StateLayout(state).signing_key.chmod(0o640)
    capsys.readouterr()
    assert run("provision", "status", "--state", str(state)) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: signing key {StateLayout(state).signing_key} has mode 0640" in out


def test_state_dir_from_gateway_config(tmp_path: Path, fleet: Fleet,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "from-config"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "cab-cfg"\nstate_dir = "{state}"\n')
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-cfg", fleet=fleet, brokers=None,
                      method="offline")
    assert run("provision", "init", "--seed", str(seed), "--config", str(config)) == 0
    assert load_identity(state).gateway_id == "cab-cfg"


def test_rotate_signing_through_cli(tmp_path: Path, fleet: Fleet,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-cli-rot", fleet=fleet,
                      brokers=None, method="offline")
    run("provision", "init", "--seed", str(seed), "--state", str(state))
    old = signing_identity(state).kid
    capsys.readouterr()
    assert run("provision", "rotate", "--signing", "--state", str(state)) == 0
    out = capsys.readouterr().out
    assert f"kid {old} -> {signing_identity(state).kid}" in out
    assert "BEGIN PUBLIC KEY" in out
    assert run("provision", "rotate", "--state", str(state)) == 2


def test_init_ca_refuses_to_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "ca"
    assert run("registrar", "init-ca", "--dir", str(directory), "--name", "City CA") == 0
    assert (directory / "crl.pem").exists()
    assert oct((directory / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert run("registrar", "init-ca", "--dir", str(directory)) == 1
    assert "refusing to replace a CA" in capsys.readouterr().err


def _wait_for(pattern: str, log: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and pattern in log.read_text():
            return
        assert proc.poll() is None, log.read_text() if log.exists() else "exited"
        time.sleep(0.05)
    pytest.fail(f"{pattern!r} not in {log}")


def test_registrar_run_and_claim_enrollment_through_cli(
        tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    own: Brokers = make_broker(fleet, tmp_path / "broker")  # no in-process registrar here
    pw = tmp_path / "registrar.pw"
    pw.write_text(REGISTRAR_PASSWORD + "\n")
    log = tmp_path / "registrar.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "provisioning.cli", "registrar", "run", "--dir",
             str(fleet.dir), "--host", "127.0.0.1", "--port", str(own.claim_port),
             "--ca", str(fleet.ca_file), "--username", "registrar", "--password-file", str(pw)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_for("registrar ready", log, proc, 15)
        seed = tmp_path / "boot" / "seed.toml"
        assert run("registrar", "add-claim", "cab-cli-on", "--dir", str(fleet.dir),
                   "--seed-out", str(seed), "--broker", own.mtls, "--enroll-broker", own.claim,
                   "--password", CLAIM_PASSWORD) == 0
        assert oct(seed.stat().st_mode & 0o777) == "0o600"
        state = tmp_path / "state"
        assert run("provision", "init", "--seed", str(seed), "--state", str(state), "--enroll",
                   "--timeout", "10") == 0
        assert "enrolled: certificate CN=cab-cli-on" in capsys.readouterr().out
        assert not seed.exists()
        assert tls_paths(state) is not None
        assert lookup(fleet.dir / "keys", signing_identity(state).kid) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        own.mosquitto.stop()
    assert "claim: issued certificate" in log.read_text()
