"""A fleet PKI on disk and a mosquitto with a mutual-TLS listener and a claim listener."""

from __future__ import annotations

import dataclasses
import subprocess
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization

from provisioning import fleetca
from provisioning._registrar_mqtt import BrokerLogin, RegistrarService
from provisioning.certs import key_pem
from provisioning.enroll import server_context
from provisioning.registrar import Registrar
from tests.helpers.mosquitto import Mosquitto, free_port

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Iterator
    from pathlib import Path

    from cryptography import x509

PREFIX = "streetgate"
CLAIM_PASSWORD = "claim-pass-1"  # noqa: S105 - test broker account
REGISTRAR_PASSWORD = "registrar-pass-1"  # noqa: S105 - test broker account

ACL = f"""\
user claim
topic write {PREFIX}/enroll/+/request
topic read {PREFIX}/enroll/+/response

user registrar
topic read {PREFIX}/enroll/+/request
topic write {PREFIX}/enroll/+/response
topic read {PREFIX}/+/rekey/request
topic write {PREFIX}/+/rekey/response

user platform
topic read {PREFIX}/#

pattern write {PREFIX}/%u/#
pattern read {PREFIX}/%u/#
"""


def pem(cert: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass
class ClientFiles:
    name: str
    cert: Path
    key: Path
    serial: int


@dataclasses.dataclass
class Fleet:
    """A registrar directory with its CA, a foreign CA, and ready-made client certificates."""

    dir: Path
    ca: fleetca.FleetCA
    foreign: fleetca.FleetCA
    server_cert: Path
    server_key: Path
    files: Path

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl_file(self) -> Path:
        return self.dir / "crl.pem"

    def client(self, name: str, *, issuer: fleetca.FleetCA | None = None,
               not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None) -> ClientFiles:
        key = fleetca.generate_p256()
        cert = fleetca.issue_client_cert(issuer or self.ca, key.public_key(), name,
                                         not_before=not_before, not_after=not_after)
        out = ClientFiles(name, self.files / f"{name}.crt", self.files / f"{name}.key",
                          cert.serial_number)
        out.cert.write_bytes(pem(cert))
        out.key.write_bytes(key_pem(key))
        out.key.chmod(0o600)
        return out


def make_fleet(root: Path) -> Fleet:
    directory = root / "registrar"
    directory.mkdir(parents=True)
    ca = fleetca.create_ca("Test Fleet CA")
    fleetca.save_ca(ca, directory)
    files = root / "files"
    files.mkdir()
    server_key, server_cert = fleetca.issue_server_cert(ca)
    (files / "server.key").write_bytes(key_pem(server_key))
    (files / "server.crt").write_bytes(pem(server_cert))
    Registrar(directory).write_crl()
    return Fleet(directory, ca, fleetca.create_ca("Foreign CA"), files / "server.crt",
                 files / "server.key", files)


@dataclasses.dataclass
class Brokers:
    """One mosquitto: ``mtls_port`` requires client certificates, ``claim_port`` passwords."""

    mosquitto: Mosquitto
    claim_port: int

    @property
    def mtls(self) -> str:
        return f"127.0.0.1:{self.mosquitto.port}"

    @property
    def claim(self) -> str:
        return f"127.0.0.1:{self.claim_port}"


def make_broker(fleet: Fleet, workdir: Path) -> Brokers:
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    passwd.touch()
    for user, password in (("claim", CLAIM_PASSWORD), ("registrar", REGISTRAR_PASSWORD)):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    (workdir / "acl").write_text(ACL)
    tls = f"cafile {fleet.ca_file}\ncertfile {fleet.server_cert}\nkeyfile {fleet.server_key}"
    claim_port = free_port()
    broker = Mosquitto(
        workdir,
        listener_extra=(f"{tls}\nrequire_certificate true\nuse_identity_as_username true\n"
                        f"crlfile {fleet.crl_file}"),
        extra=(f"allow_anonymous false\npassword_file {passwd}\nacl_file {workdir / 'acl'}\n"
               f"listener {claim_port} 127.0.0.1\n{tls}"),
    )
    broker.start()
    return Brokers(broker, claim_port)


def start_registrar(fleet: Fleet, brokers: Brokers, *, protocol: int = 5) -> RegistrarService:
    service = RegistrarService(
        Registrar(fleet.dir),
        BrokerLogin("127.0.0.1", brokers.claim_port, server_context(fleet.ca_file),
                    "registrar", REGISTRAR_PASSWORD, protocol=protocol),
        prefix=PREFIX)
    service.start()
    return service


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="session")
def brokers(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    b = make_broker(fleet, tmp_path_factory.mktemp("broker"))
    try:
        yield b
    finally:
        b.mosquitto.stop()


@pytest.fixture(scope="session")
def registrar(fleet: Fleet, brokers: Brokers) -> Iterator[RegistrarService]:
    service = start_registrar(fleet, brokers)
    try:
        yield service
    finally:
        service.stop()


def write_seed(path: Path, *, gateway_id: str, fleet: Fleet, brokers: Brokers | None,
               token: str = "", method: str = "claim", password: str = CLAIM_PASSWORD,
               extra: str = "") -> Path:
    mtls = brokers.mtls if brokers else "mqtt.example:8883"
    claim = brokers.claim if brokers else "mqtt.example:8884"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'gateway_id = "{gateway_id}"\nbroker = "{mtls}"\nenroll_broker = "{claim}"\n'
        f'ca_cert = """{fleet.ca.cert_pem.decode()}"""\n{extra}\n'
        f'[enrollment]\nmethod = "{method}"\nusername = "claim"\npassword = "{password}"\n'
        f'token = "{token}"\ntimeout = "10s"\n')
    return path
