"""The registrar's decisions on malformed and hostile requests (no broker needed)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning import fleetca
from provisioning.certs import build_csr
from provisioning.keyring import KeyringError, public_pem, record_key
from provisioning.registrar import Registrar, RegistrarError
from tests.provisioning.conftest import pem

if TYPE_CHECKING:
    from pathlib import Path

    from tests.provisioning.conftest import Fleet


def _request(gateway_id: str, token: str, csr_name: str | None = None, **over: object) -> bytes:
    key = fleetca.generate_p256()
    body = {"v": 1, "nonce": "n1", "gateway_id": gateway_id, "token": token,
            "csr": pem(build_csr(key, csr_name or gateway_id)).decode(),
            "signing_key": public_pem(Ed25519PrivateKey.generate().public_key()).decode()}
    body.update(over)
    return json.dumps(body).encode()


@pytest.fixture
def reg(tmp_path: Path, fleet: Fleet) -> Registrar:
    directory = tmp_path / "reg"
    fleetca.save_ca(fleet.ca, directory)
    return Registrar(directory)


def test_not_json_is_dropped(reg: Registrar) -> None:
    assert reg.respond("claim", "cab-1", b"\xff\x00") is None
    assert reg.respond("claim", "cab-1", b'{"v": 1}') is None  # no nonce: cannot answer


@pytest.mark.parametrize(("payload", "error"), [
    ({"csr": 5}, "field 'csr' missing or not a string"),
    ({"gateway_id": "cab-2"}, "gateway_id in the payload differs from the topic"),
    ({"token": "wrong"}, "claim token invalid"),
    ({"signing_key": "junk"}, "signing_key: not a PEM public key"),
])
def test_claim_refusals(reg: Registrar, payload: dict[str, object], error: str) -> None:
    token = reg.add_claim("cab-1")
    body = json.loads(_request("cab-1", token))
    body.update(payload)
    response = reg.respond("claim", "cab-1", json.dumps(body).encode())
    assert response is not None
    assert (response["status"], response["nonce"]) == ("error", "n1")
    assert error in response["error"]
    assert json.loads(reg.claims_path.read_text())["claims"]["cab-1"]["used_at"] is None


def test_csr_for_other_name_refused(reg: Registrar) -> None:
    token = reg.add_claim("cab-1")
    response = reg.respond("claim", "cab-1", _request("cab-1", token, csr_name="cab-9"))
    assert response is not None
    assert response["error"] == "CSR names 'cab-9', but the request is for 'cab-1'"


def test_reserved_and_invalid_ids(reg: Registrar) -> None:
    for bad in ("enroll", "a/b", "+"):
        response = reg.respond("claim", bad, _request(bad, "t"))
        assert response is not None
        assert response["error"] == f"invalid gateway id {bad!r}"


def test_rekey_needs_enrolled_gateway(reg: Registrar) -> None:
    response = reg.respond("rekey", "cab-new", json.dumps(
        {"v": 1, "nonce": "n", "gateway_id": "cab-new"}).encode())
    assert response == {"status": "error", "error": "gateway 'cab-new' is not enrolled",
                        "nonce": "n"}


def test_claims_file_holds_no_token(reg: Registrar) -> None:
    token = reg.add_claim("cab-1")
    text = reg.claims_path.read_text()
    assert token not in text
    assert oct(reg.claims_path.stat().st_mode & 0o777) == "0o600"


def test_enrolled_gateway_cannot_get_new_claim(reg: Registrar) -> None:
    token = reg.add_claim("cab-1")
    response = reg.respond("claim", "cab-1", _request("cab-1", token))
    assert response is not None
    assert response["status"] == "ok"
    with pytest.raises(RegistrarError, match="already enrolled"):
        reg.add_claim("cab-1")


def test_kid_cannot_move_between_gateways(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    record_key(tmp_path, key, gateway_id="cab-a")
    with pytest.raises(KeyringError, match="already registered to gateway 'cab-a'"):
        record_key(tmp_path, key, gateway_id="cab-b")


def test_repeat_must_carry_the_same_keys(reg: Registrar) -> None:
    token = reg.add_claim("cab-1")
    first = _request("cab-1", token)
    ok = reg.respond("claim", "cab-1", first)
    assert ok is not None
    assert ok["status"] == "ok"
    again = reg.respond("claim", "cab-1", first)  # lost response: same request, same answer
    assert again is not None
    assert again["certificate"] == ok["certificate"]
    # Same token and CSR but another signing key: someone who copied them must not register it.
    body = json.loads(first)
    body["signing_key"] = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
    hijack = reg.respond("claim", "cab-1", json.dumps(body).encode())
    assert hijack is not None
    assert hijack["error"] == "claim token already used"
    assert list(json.loads((reg.keys_dir / "registry.json").read_text())["keys"]) == [ok["kid"]]
