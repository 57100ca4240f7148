"""Signing-key lifecycle on a running daemon: after ``provision rotate --signing`` a SIGHUP
makes it sign with the new key, says so once, and ``streetgate status`` shows the new kid."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from gateway.cose import open1
from provisioning import verifier_keys
from provisioning.identity import signing_identity
from provisioning.rotate import rekey_online
from tests.provisioning.conftest import Brokers, Fleet
from tests.provisioning.test_daemon_mtls import Platform, _enrolled

if TYPE_CHECKING:
    from pathlib import Path

    from provisioning._registrar_mqtt import RegistrarService


def _config(path: Path, state: Path, gateway_id: str, port: int) -> Path:
    path.write_text(f"""
[gateway]
id = "{gateway_id}"
state_dir = "{state}"
[buffer]
commit_window = "20ms"
[uplink]
port = {port}
batch_linger = "50ms"
[uplink.tls]
enabled = true
provisioned = true
[[drivers.sim]]
instance = "s1"
devices = 1
interval = "50ms"
""")
    return path


def _wait_for_kid(platform: Platform, fleet: Fleet, kid: str, seconds: float = 15.0) -> None:
    """Read batches until one signed with ``kid`` arrives (every one must verify)."""
    deadline = time.monotonic() + seconds
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            payload = platform.messages.get(timeout=0.2)
        except queue.Empty:
            continue
        got, _body = open1(payload, verifier_keys(fleet.dir / "keys"))
        seen.append(got.hex())
        if got.hex() == kid:
            return
    raise AssertionError(f"no batch signed with kid {kid} within {seconds}s; saw {set(seen)}")


def _status_text(conf: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(conf)],
                         capture_output=True, text=True, timeout=30, check=False)
    return out.stdout


def test_sighup_after_signing_rotation_signs_with_the_new_key(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    gateway_id = "cab-hup"
    state = _enrolled(tmp_path, fleet, brokers, gateway_id)
    conf = _config(tmp_path / "gateway.toml", state, gateway_id, brokers.mosquitto.port)
    old = signing_identity(state).kid
    platform = Platform(fleet, brokers, f"streetgate/{gateway_id}/batch")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(conf)], stderr=err)
    try:
        _wait_for_kid(platform, fleet, old)
        rotation = rekey_online(state, signing=True, tls=False, timeout=10)  # registered first
        assert rotation.signing is not None
        new = rotation.signing.new_kid
        os.kill(proc.pid, signal.SIGHUP)
        _wait_for_kid(platform, fleet, new)
        os.kill(proc.pid, signal.SIGHUP)  # the key did not change again: nothing to say
        deadline = time.monotonic() + 10
        while f"signing  kid {new}" not in _status_text(conf) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"signing  kid {new}" in _status_text(conf)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            platform.close()
    assert proc.returncode == 0
    text = log.read_text()
    assert text.count(f"signing with kid {new} (was {old})") == 1, text


def test_sighup_with_an_unreadable_key_keeps_signing_with_the_old_one(
        tmp_path: Path, fleet: Fleet, brokers: Brokers, registrar: RegistrarService) -> None:
    gateway_id = "cab-hup-perm"
    state = _enrolled(tmp_path, fleet, brokers, gateway_id)
    conf = _config(tmp_path / "gateway.toml", state, gateway_id, brokers.mosquitto.port)
    old = signing_identity(state).kid
    platform = Platform(fleet, brokers, f"streetgate/{gateway_id}/batch")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(conf)], stderr=err)
    try:
        _wait_for_kid(platform, fleet, old)
        rekey_online(state, signing=True, tls=False, timeout=10)
        key = state / "keys" / "signing.key"
        key.chmod(0o644)  # copied back with the wrong mode: refused, not used
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "signing key not reloaded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        while not platform.messages.empty():
            platform.messages.get()
        _wait_for_kid(platform, fleet, old)  # still the old key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            platform.close()
    text = log.read_text()
    assert f"signing key not reloaded, still signing with kid {old}" in text
    assert "has mode 0644" in text
