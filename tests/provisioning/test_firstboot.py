"""The daemon's first start: seed on the boot partition -> keys -> certificate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioning import tls_paths
from provisioning.firstboot import first_boot
from provisioning.identity import StateLayout
from provisioning.registrar import Registrar
from tests.provisioning.conftest import Brokers, Fleet, make_broker, start_registrar, write_seed

if TYPE_CHECKING:
    from pathlib import Path

    from provisioning._registrar_mqtt import RegistrarService


def test_seed_on_boot_partition_to_certificate(tmp_path: Path, fleet: Fleet, brokers: Brokers,
                                               registrar: RegistrarService) -> None:
    token = Registrar(fleet.dir).add_claim("cab-fb-1")
    seed = write_seed(tmp_path / "boot" / "streetgate-seed.toml", gateway_id="cab-fb-1",
                      fleet=fleet, brokers=brokers, token=token)
    state = tmp_path / "state"
    result = first_boot(state, seed, enroll_timeout=10)
    assert result.provisioned
    assert result.enrolled is not None
    assert result.messages == []
    assert not seed.exists()
    assert not StateLayout(state).claim_file.exists()
    again = first_boot(state, seed)  # later starts: nothing to do
    assert again.provisioned
    assert (again.seed, again.enrolled) == (None, None)


def test_enrollment_retried_on_next_start_when_broker_was_down(tmp_path: Path,
                                                               fleet: Fleet) -> None:
    own = make_broker(fleet, tmp_path / "broker")
    own.mosquitto.stop()
    token = Registrar(fleet.dir).add_claim("cab-fb-2")
    seed = write_seed(tmp_path / "boot" / "seed.toml", gateway_id="cab-fb-2", fleet=fleet,
                      brokers=own, token=token)
    state = tmp_path / "state"
    first = first_boot(state, seed, enroll_timeout=2)
    assert not first.provisioned
    assert not seed.exists()  # the seed is consumed even though enrollment must wait
    assert len(first.messages) == 1
    assert first.messages[0].startswith("enrollment failed: cannot connect to 127.0.0.1:")
    assert "nothing accepts connections" in first.messages[0]
    assert StateLayout(state).claim_file.exists()
    own.mosquitto.start()
    service = start_registrar(fleet, own)
    try:
        second = first_boot(state, seed, enroll_timeout=10)
    finally:
        service.stop()
        own.mosquitto.stop()
    assert second.provisioned
    assert second.enrolled is not None
    assert tls_paths(state) is not None


def test_nothing_to_do_without_seed(tmp_path: Path) -> None:
    result = first_boot(tmp_path / "state", tmp_path / "no-seed.toml")
    assert not result.provisioned
    assert result.seed is None
    assert not (tmp_path / "state").exists()
