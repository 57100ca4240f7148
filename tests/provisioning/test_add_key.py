"""Offline enrollment registers the gateway's signing key: ``registrar add-key`` and
``registrar sign --signing-key``, in the registry online enrollment writes."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest

from gateway.daemon import Gateway
from ingest.verify import Verifier
from provisioning import verifier_keys
from provisioning.identity import StateLayout, signing_identity
from provisioning.keyring import lookup
from provisioning.keys import load_or_create_signing_key, public_key_pem
from tests.helpers.e2e import gateway_config
from tests.provisioning.conftest import Brokers, Fleet, write_seed
from tests.provisioning.test_cli import run
from tests.provisioning.test_daemon_mtls import SIM, Platform, _run_until

if TYPE_CHECKING:
    from pathlib import Path


def _offline(tmp_path: Path, fleet: Fleet, brokers: Brokers | None,
             gateway_id: str) -> tuple[Path, Path, Path]:
    """A gateway initialised for offline enrollment: its state, CSR and signing public key."""
    state = tmp_path / "state"
    seed = write_seed(tmp_path / "seed.toml", gateway_id=gateway_id, fleet=fleet,
                      brokers=brokers, method="offline")
    assert run("provision", "init", "--seed", str(seed), "--state", str(state)) == 0
    csr = tmp_path / "gw.csr"
    assert run("provision", "csr", "--state", str(state), "--out", str(csr)) == 0
    pub = tmp_path / "signing.pub.pem"
    pub.write_text(public_key_pem(load_or_create_signing_key(StateLayout(state).signing_key)))
    return state, csr, pub


def _sign_and_install(fleet: Fleet, state: Path, csr: Path, gateway_id: str,
                      *extra: str) -> None:
    crt = state.parent / "gw.crt"
    assert run("registrar", "sign", "--dir", str(fleet.dir), "--csr", str(csr),
               "--gateway-id", gateway_id, "--out", str(crt), *extra) == 0
    assert run("provision", "install-cert", str(crt), "--state", str(state)) == 0


def test_add_key_after_offline_enrollment_makes_batches_verify(
        tmp_path: Path, fleet: Fleet, brokers: Brokers,
        capsys: pytest.CaptureFixture[str]) -> None:
    gateway_id = "cab-addkey"
    state, csr, pub = _offline(tmp_path, fleet, brokers, gateway_id)
    _sign_and_install(fleet, state, csr, gateway_id)
    kid = signing_identity(state).kid
    keys = fleet.dir / "keys"
    assert lookup(keys, kid) is None  # csr -> sign -> install-cert alone registers nothing
    capsys.readouterr()
    assert run("registrar", "add-key", "--dir", str(fleet.dir), "--gateway-id", gateway_id,
               str(pub)) == 0
    assert f"signing key {kid} registered to {gateway_id}" in capsys.readouterr().out
    known = lookup(keys, kid)
    assert known is not None
    assert known.gateway_id == gateway_id
    assert run("registrar", "add-key", "--dir", str(fleet.dir), "--gateway-id", gateway_id,
               str(pub)) == 0
    assert "was already registered" in capsys.readouterr().out

    # The daemon over mutual TLS; the platform verifies with the registrar's key directory.
    tls: dict[str, Any] = {"tls": {"enabled": True, "provisioned": True}}
    cfg = gateway_config(state, brokers.mosquitto.port, SIM, gateway={"id": gateway_id},
                         uplink=tls)
    platform = Platform(fleet, brokers, f"streetgate/{gateway_id}/batch")
    try:
        verifier = Verifier(verifier_keys(keys))
        got = asyncio.run(_run_until(Gateway(cfg), platform, verifier, want=10, seconds=20))
    finally:
        platform.close()
    assert got >= 10


def test_add_key_refuses_a_key_of_another_gateway(
        tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    _state, _csr, pub = _offline(tmp_path, fleet, None, "cab-addkey-a")
    assert run("registrar", "add-key", "--dir", str(fleet.dir), "--gateway-id", "cab-addkey-a",
               str(pub)) == 0
    capsys.readouterr()
    assert run("registrar", "add-key", "--dir", str(fleet.dir), "--gateway-id", "cab-addkey-b",
               str(pub)) == 1
    assert "is already registered to gateway 'cab-addkey-a', not 'cab-addkey-b'" in \
        capsys.readouterr().err


def test_add_key_refuses_what_is_not_a_public_key(
        tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    state, _csr, _pub = _offline(tmp_path, fleet, None, "cab-addkey-priv")
    capsys.readouterr()
    assert run("registrar", "add-key", "--dir", str(fleet.dir), "--gateway-id",
               "cab-addkey-priv", str(StateLayout(state).signing_key)) == 1
    assert "not a PEM public key" in capsys.readouterr().err


def test_sign_with_signing_key_registers_it_in_one_step(
        tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    gateway_id = "cab-sign-key"
    state, csr, pub = _offline(tmp_path, fleet, None, gateway_id)
    capsys.readouterr()
    _sign_and_install(fleet, state, csr, gateway_id, "--signing-key", str(pub))
    kid = signing_identity(state).kid
    assert f"signing key {kid} registered" in capsys.readouterr().out
    known = lookup(fleet.dir / "keys", kid)
    assert known is not None
    assert known.gateway_id == gateway_id
    claims = json.loads((fleet.dir / "claims.json").read_text())["claims"]
    assert claims[gateway_id]["kid"] == kid


def test_sign_with_a_key_of_another_gateway_issues_nothing(
        tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    _state_a, _csr_a, pub_a = _offline(tmp_path / "a", fleet, None, "cab-sign-a")
    assert run("registrar", "add-key", "--dir", str(fleet.dir), "--gateway-id", "cab-sign-a",
               str(pub_a)) == 0
    _state_b, csr_b, _pub_b = _offline(tmp_path / "b", fleet, None, "cab-sign-b")
    issued = set((fleet.dir / "issued").iterdir())
    capsys.readouterr()
    assert run("registrar", "sign", "--dir", str(fleet.dir), "--csr", str(csr_b),
               "--gateway-id", "cab-sign-b", "--signing-key", str(pub_a),
               "--out", str(tmp_path / "b.crt")) == 1
    assert "already registered to gateway 'cab-sign-a'" in capsys.readouterr().err
    assert set((fleet.dir / "issued").iterdir()) == issued
    assert not (tmp_path / "b.crt").exists()
