"""Keys on disk, permission preflight, TLS paths and status."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from typing import TYPE_CHECKING

import pytest

from provisioning import preflight, tls_paths
from provisioning.certs import describe, load_tls_key, spki_fingerprint
from provisioning.fleetca import issue_client_cert
from provisioning.identity import (
    Identity,
    StateLayout,
    ensure_keys,
    parse_address,
    save_identity,
    signing_identity,
)
from provisioning.install import install_certificate, write_csr
from provisioning.registrar import Registrar
from provisioning.status import format_status, gateway_status
from tests.provisioning.conftest import Fleet, pem

if TYPE_CHECKING:
    from pathlib import Path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _state(tmp_path: Path, fleet: Fleet, gateway_id: str = "cab-0001") -> Path:
    state = tmp_path / "state"
    save_identity(state, Identity(gateway_id=gateway_id, broker="127.0.0.1:8883"))
    layout = StateLayout(state)
    layout.ca_cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout.ca_cert.write_bytes(fleet.ca.cert_pem)
    return state


def _enrolled(tmp_path: Path, fleet: Fleet, gateway_id: str = "cab-0001") -> Path:
    state = _state(tmp_path, fleet, gateway_id)
    _path, csr = write_csr(state)
    cert = Registrar(fleet.dir).sign_offline(gateway_id, csr)
    install_certificate(state, pem(cert))
    return state


def test_keys_are_created_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    signing, tls_key = ensure_keys(state)
    layout = StateLayout(state)
    for path in (layout.signing_key, layout.tls_key):
        assert _mode(path) == 0o600
        assert path.stat().st_uid == os.geteuid()
    assert _mode(layout.tls_dir) == 0o700
    assert _mode(layout.signing_key.parent) == 0o700
    assert tls_key.curve.name == "secp256r1"
    again_signing, again_tls = ensure_keys(state)  # idempotent: the same keys come back
    assert again_signing.public_key() == signing.public_key()
    assert spki_fingerprint(again_tls.public_key()) == spki_fingerprint(tls_key.public_key())
    assert preflight(state) == []


def test_preflight_names_readable_key_and_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ensure_keys(state)
    layout = StateLayout(state)
    layout.tls_key.chmod(0o644)
    problems = preflight(state)
    assert len(problems) == 1
    assert problems[0].startswith(f"TLS key {layout.tls_key} has mode 0644")
    assert f"chmod 600 {layout.tls_key}" in problems[0]


def test_preflight_names_foreign_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")  # the suite runs as root in CI
    state = tmp_path / "state"
    ensure_keys(state)
    layout = StateLayout(state)
    os.chown(layout.signing_key, 65534, 65534)
    layout.claim_file.parent.mkdir(mode=0o700)
    layout.claim_file.write_text('token = "x"\n')
    layout.claim_file.chmod(0o640)
    problems = preflight(state)
    assert any(p.startswith(f"signing key {layout.signing_key} is owned by uid 65534")
               and "chown" in p for p in problems), problems
    assert any(p.startswith(f"claim credentials {layout.claim_file} has mode 0640")
               for p in problems), problems


def test_preflight_flags_writable_key_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ensure_keys(state)
    (state / "keys").chmod(0o777)
    problems = preflight(state)
    assert problems == [(f"directory {state / 'keys'} has mode 0777: others could replace keys "
                        f"in it; fix: chmod 700 {state / 'keys'}")]


def test_tls_paths_only_when_certificate_installed(tmp_path: Path, fleet: Fleet) -> None:
    state = _state(tmp_path, fleet)
    ensure_keys(state)
    assert tls_paths(state) is None
    state = _enrolled(tmp_path / "b", fleet)
    paths = tls_paths(state)
    assert paths is not None
    assert paths.cert_file == StateLayout(state).tls_cert
    assert paths.key_file == StateLayout(state).tls_key
    assert paths.ca_file == StateLayout(state).ca_cert


@pytest.mark.parametrize(("text", "expected"), [
    ("mqtt.example", ("mqtt.example", 8883)),
    ("mqtt.example:1883", ("mqtt.example", 1883)),
    ("[::1]:8884", ("::1", 8884)),
    ("10.0.0.2:8883", ("10.0.0.2", 8883)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:0", "host:99999", "a b:1", "host:port", ""])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|port must be"):
        parse_address(text)


def test_status_shows_identity_fingerprints_and_certificate(tmp_path: Path,
                                                            fleet: Fleet) -> None:
    state = _enrolled(tmp_path, fleet, "cab-status")
    st = gateway_status(state)
    text = format_status(st)
    kid = signing_identity(state).kid
    tls_fp = spki_fingerprint(load_tls_key(StateLayout(state).tls_key).public_key())
    assert st.state == "enrolled"
    assert "gateway id:       cab-status" in text
    assert f"signing key kid:  {kid}" in text
    assert f"TLS key:          {tls_fp}" in text
    assert "certificate:      CN=cab-status" in text
    assert "issuer:         CN=Test Fleet CA" in text
    assert "days left" in text
    assert "PROBLEM" not in text
    data = json.loads(json.dumps(st.to_json()))
    assert data["certificate"]["subject"] == "CN=cab-status"
    assert dt.datetime.fromisoformat(data["certificate"]["not_after"]) > dt.datetime.now(dt.UTC)


def test_status_reports_expired_certificate(tmp_path: Path, fleet: Fleet) -> None:
    state = _state(tmp_path, fleet, "cab-old")
    _signing, tls_key = ensure_keys(state)
    now = dt.datetime.now(dt.UTC)
    cert = issue_client_cert(fleet.ca, tls_key.public_key(), "cab-old",
                             not_before=now - dt.timedelta(days=10),
                             not_after=now - dt.timedelta(days=1))
    StateLayout(state).tls_cert.write_bytes(pem(cert))
    st = gateway_status(state)
    assert st.state == "certificate expired"
    assert any("certificate expired on" in p for p in st.problems)
    assert describe(cert).days_left() < 0


def test_status_of_empty_directory(tmp_path: Path) -> None:
    st = gateway_status(tmp_path / "nothing")
    assert st.state == "not provisioned"
    assert "certificate:      none" in format_status(st)
    assert not (tmp_path / "nothing").exists()  # status never creates anything
