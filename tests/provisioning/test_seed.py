"""The first-boot seed: validation, import into the state directory, removal."""
# ruff: noqa: S105, S106 - claim tokens and passwords here are test fixtures

from __future__ import annotations

import stat
import tomllib
from typing import TYPE_CHECKING

import pytest

from drivers.api import ConfigError
from provisioning.identity import StateLayout, load_identity, signing_identity
from provisioning.seed import SeedError, _neutralize, import_seed, load_claim
from tests.provisioning.conftest import Fleet, write_seed

if TYPE_CHECKING:
    from pathlib import Path


def test_import_moves_secrets_and_removes_seed(tmp_path: Path, fleet: Fleet) -> None:
    seed = write_seed(tmp_path / "boot" / "streetgate-seed.toml", gateway_id="cab-0042",
                      fleet=fleet, brokers=None, token="tok-123")
    state = tmp_path / "state"
    result = import_seed(seed, state)
    assert result.seed_removed
    assert result.warning is None
    assert not seed.exists()
    layout = StateLayout(state)
    ident = load_identity(state)
    assert (ident.gateway_id, ident.broker, ident.enroll_broker) == (
        "cab-0042", "mqtt.example:8883", "mqtt.example:8884")
    assert layout.ca_cert.read_bytes() == fleet.ca.cert_pem
    assert stat.S_IMODE(layout.claim_file.stat().st_mode) == 0o600
    claim = load_claim(state)
    assert claim is not None
    assert (claim.username, claim.token, claim.timeout) == ("claim", "tok-123", 10.0)
    assert "tok-123" not in layout.identity_file.read_text()
    for key in (layout.signing_key, layout.tls_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_ca_file_relative_to_seed(tmp_path: Path, fleet: Fleet) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "city-ca.crt").write_bytes(fleet.ca.cert_pem)
    seed = boot / "seed.toml"
    seed.write_text('gateway_id = "cab-7"\nbroker = "mqtt.example:8883"\n'
                    'ca_file = "city-ca.crt"\n[enrollment]\nmethod = "offline"\n')
    state = tmp_path / "state"
    import_seed(seed, state)
    assert StateLayout(state).ca_cert.read_bytes() == fleet.ca.cert_pem
    assert load_claim(state) is None  # offline: no secrets to keep
    assert (boot / "city-ca.crt").exists()  # the CA is public; only the seed goes


def test_invalid_seed_lists_every_problem_and_changes_nothing(tmp_path: Path) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text('gateway_id = "cab/42"\nenroll_broker = "x:99999"\nbrokr = "a:1"\n'
                    '[enrollment]\nmethod = "claim"\n')
    state = tmp_path / "state"
    with pytest.raises(ConfigError) as err:
        import_seed(seed, state)
    lines = err.value.lines()
    assert f"{seed}: broker: missing required key; expected a string" in lines
    assert f'{seed}: brokr: unknown key (did you mean "broker"?)' in lines
    assert any(line.startswith(f"{seed}: gateway_id: expected a string matching")
               for line in lines)
    assert seed.exists()
    assert not state.exists()


def test_cross_field_rules(tmp_path: Path) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text('gateway_id = "enroll"\nbroker = "x:99999"\nca_cert = "nope"\n'
                    '[enrollment]\nmethod = "claim"\ntoken = "t"\n')
    with pytest.raises(ConfigError) as err:
        import_seed(seed, tmp_path / "state")
    text = str(err.value)
    assert "ca_cert: expected PEM certificate text" in text
    assert "broker: port must be 1..65535; got 99999" in text
    assert 'gateway_id: "enroll" is reserved' in text


def test_claim_needs_token(tmp_path: Path, fleet: Fleet) -> None:
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-1", fleet=fleet, brokers=None)
    with pytest.raises(ConfigError, match=r'enrollment\.token: required when method is "claim"'):
        import_seed(seed, tmp_path / "state")


def test_not_toml(tmp_path: Path) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text("gateway_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        import_seed(seed, tmp_path / "state")


def test_missing_ca_file_named(tmp_path: Path) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text('gateway_id = "cab-1"\nbroker = "h:1"\nca_file = "ca.crt"\n'
                    '[enrollment]\nmethod = "offline"\n')
    with pytest.raises(ConfigError, match=r"ca_file: cannot use .*ca\.crt"):
        import_seed(seed, tmp_path / "state")


def test_state_of_another_gateway_is_refused(tmp_path: Path, fleet: Fleet) -> None:
    state = tmp_path / "state"
    import_seed(write_seed(tmp_path / "a.toml", gateway_id="cab-a", fleet=fleet, brokers=None,
                           token="t"), state)
    other = write_seed(tmp_path / "b.toml", gateway_id="cab-b", fleet=fleet, brokers=None,
                       token="t")
    with pytest.raises(SeedError, match="already belongs to gateway 'cab-a'"):
        import_seed(other, state)
    assert other.exists()


def test_reseed_same_gateway_keeps_keys(tmp_path: Path, fleet: Fleet) -> None:
    state = tmp_path / "state"
    import_seed(write_seed(tmp_path / "a.toml", gateway_id="cab-a", fleet=fleet, brokers=None,
                           token="t1"), state)
    kid = signing_identity(state).kid
    import_seed(write_seed(tmp_path / "a.toml", gateway_id="cab-a", fleet=fleet, brokers=None,
                           token="t2"), state)
    assert signing_identity(state).kid == kid
    claim = load_claim(state)
    assert claim is not None
    assert claim.token == "t2"


def test_seed_that_cannot_be_removed_is_reported(tmp_path: Path) -> None:
    stuck = tmp_path / "stuck.toml"
    stuck.mkdir()  # opening a directory for writing fails like a read-only boot partition
    warning = _neutralize(stuck)
    assert warning is not None
    assert f"could not remove the seed {stuck}" in warning
    assert "delete it by hand" in warning


def test_seed_contents_overwritten_before_unlink(tmp_path: Path, fleet: Fleet) -> None:
    seed = write_seed(tmp_path / "seed.toml", gateway_id="cab-z", fleet=fleet, brokers=None,
                      token="secret-token")
    keep = seed.with_suffix(".link")
    keep.hardlink_to(seed)  # a second name for the same blocks shows what was left on disk
    import_seed(seed, tmp_path / "state")
    assert not seed.exists()
    assert b"secret-token" not in keep.read_bytes()
    assert set(keep.read_bytes()) == {0}
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(keep.read_text())


def test_seed_carries_the_platform_command_key(tmp_path: Path, fleet: Fleet) -> None:
    from provisioning.keys import (  # noqa: PLC0415
        load_or_create_signing_key,
        load_public_key,
        public_key_pem,
    )

    platform = load_or_create_signing_key(tmp_path / "command.key").public_key()
    pem = public_key_pem(platform)
    seed = write_seed(tmp_path / "boot" / "seed.toml", gateway_id="cab-0042", fleet=fleet,
                      brokers=None, token="t", extra=f'command_key = """{pem}"""')
    state = tmp_path / "state"
    import_seed(seed, state)
    written = state / "keys" / "platform-command.pub"
    assert load_public_key(written) == platform
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    bad = write_seed(tmp_path / "boot2" / "seed.toml", gateway_id="cab-0043", fleet=fleet,
                     brokers=None, token="t", extra='command_key = "not a key"')
    with pytest.raises(ConfigError, match="command_key: expected an Ed25519 public key PEM"):
        import_seed(bad, tmp_path / "state2")
