"""First-boot seed file: a small TOML the technician drops on the boot partition.

Example (``streetgate registrar add-claim --seed-out`` writes one)::

    gateway_id = "cab-0042"
    broker = "mqtt.city.example:8883"          # mutual-TLS listener
    enroll_broker = "mqtt.city.example:8884"   # claim listener (server TLS + password)
    ca_file = "streetgate-ca.crt"              # or ca_cert = "-----BEGIN CERTIFICATE-----..."

    [enrollment]
    method = "claim"                           # or "offline" (CSR / install-cert by hand)
    username = "claim"
    password = "..."
    token = "..."

Importing it validates everything, writes the identity, CA and claim secrets into the state
directory (secrets 0600), creates the keys, and then overwrites and deletes the seed so the
token cannot be reused from the SD card.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from typing import TYPE_CHECKING, Literal

from drivers.api import ConfigError, ConfigIssue, Duration, load, option
from provisioning._files import remove_securely, write_private, write_public
from provisioning.certs import CertificateError, load_certificates
from provisioning.identity import (
    GATEWAY_ID_PATTERN,
    Identity,
    StateLayout,
    dumps_flat,
    ensure_keys,
    load_identity,
    save_identity,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ClaimCredentials", "Seed", "SeedEnrollment", "SeedError", "SeedImport",
           "import_seed", "load_claim", "parse_seed"]

_log = logging.getLogger("streetgate.provisioning")


class SeedError(Exception):
    """A seed that cannot be imported into this state directory."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeedEnrollment:
    """``[enrollment]``: how the gateway gets its certificate."""

    method: Literal["claim", "offline"] = option(doc="claim: online via the registrar")
    username: str = option("claim", doc="broker user name of the claim listener")
    password: str = option("", secret=True, doc="broker password of the claim listener")
    token: str = option("", secret=True, doc="single-use claim token from the platform")
    timeout: Duration = option(Duration(30.0), minimum=1.0,
                               doc="wait for the certificate")

    def validate(self) -> list[tuple[str, str]]:
        if self.method == "claim" and not self.token:
            return [("token", 'required when method is "claim"')]
        return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seed:
    """The whole seed file."""

    gateway_id: str = option(pattern=GATEWAY_ID_PATTERN)
    broker: str = option(doc="host:port of the mutual-TLS listener")
    enroll_broker: str = option("", doc="host:port of the claim listener")
    topic_prefix: str = option("streetgate")
    ca_cert: str = option("", doc="PEM text of the CA certificate(s)")
    ca_file: str = option("", doc="file with the CA certificate(s), relative to the seed")
    command_key: str = option("", doc="PEM text of the platform command public key: written to"
                              " keys/platform-command.pub for the config's [commands] keys")
    enrollment: SeedEnrollment

    def validate(self) -> list[tuple[str, str]]:
        issues: list[tuple[str, str]] = []
        if bool(self.ca_cert) == bool(self.ca_file):
            issues.append(("ca_cert", "give exactly one of ca_cert (PEM text) or ca_file"))
        if self.ca_cert:
            try:
                load_certificates(self.ca_cert.encode())
            except CertificateError:
                issues.append(("ca_cert", ("expected PEM certificate text "
                                          '("-----BEGIN CERTIFICATE-----...")')))
        if self.command_key:
            from provisioning.keys import KeyFileError, parse_public_pem  # noqa: PLC0415

            try:
                parse_public_pem(self.command_key.encode())
            except KeyFileError as exc:
                issues.append(("command_key", f"expected an Ed25519 public key PEM: {exc}"))
        # The identity carries the address and prefix rules; reuse them.
        ident = self.identity()
        issues += [(k, m) for k, m in ident.validate() if k != "enrollment"]
        return issues

    def identity(self) -> Identity:
        return Identity(gateway_id=self.gateway_id, broker=self.broker,
                        enroll_broker=self.enroll_broker, topic_prefix=self.topic_prefix,
                        enrollment=self.enrollment.method)


@dataclasses.dataclass(frozen=True)
class ClaimCredentials:
    """``<state>/enroll/claim.toml``: what the online claim needs, until it succeeds."""

    username: str
    password: str
    token: str
    timeout: float


@dataclasses.dataclass(frozen=True)
class SeedImport:
    """What :func:`import_seed` did; ``warning`` is set when the seed could not be removed."""

    identity: Identity
    seed_removed: bool
    warning: str | None = None


def parse_seed(path: Path) -> tuple[Seed, bytes]:
    """Validate the seed; return it and the CA PEM bytes. Raises :class:`ConfigError`."""
    file = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(file, [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    seed = load(Seed, data, file=file)
    if seed.ca_cert:
        return seed, seed.ca_cert.encode()
    ca_path = path.parent / seed.ca_file
    try:
        pem = ca_path.read_bytes()
        load_certificates(pem, source=str(ca_path))
    except (OSError, CertificateError) as exc:
        raise ConfigError(file, [ConfigIssue("ca_file", f"cannot use {ca_path}: {exc}")]) from None
    return seed, pem


def _check_owner(state_dir: Path, seed: Seed) -> None:
    if not StateLayout(state_dir).identity_file.exists():
        return
    current = load_identity(state_dir).gateway_id
    if current != seed.gateway_id:
        raise SeedError(
            f"{state_dir} already belongs to gateway {current!r}, the seed is for "
            f"{seed.gateway_id!r}; to re-provision this device, remove {state_dir} first")


def _neutralize(path: Path) -> str | None:
    try:
        remove_securely(path)
    except OSError as exc:
        return (f"imported, but could not remove the seed {path} ({exc.strerror or exc}): "
                "delete it by hand; its claim token works only once")
    return None


def import_seed(path: Path, state_dir: Path) -> SeedImport:
    """Import the seed into ``state_dir``, create the keys, then remove the seed.

    Raises:
        ConfigError: the seed is invalid (every problem listed; nothing was changed).
        SeedError: the state directory belongs to another gateway.
    """
    seed, ca_pem = parse_seed(path)
    _check_owner(state_dir, seed)
    layout = StateLayout(state_dir)
    save_identity(state_dir, seed.identity())
    write_public(layout.ca_cert, ca_pem)
    if seed.command_key:
        write_public(state_dir / "keys" / "platform-command.pub", seed.command_key.encode())
    enr = seed.enrollment
    if enr.method == "claim":
        write_private(layout.claim_file, dumps_flat({
            "username": enr.username, "password": enr.password, "token": enr.token,
            "timeout": str(enr.timeout)}).encode())
    ensure_keys(state_dir)
    warning = _neutralize(path)
    _log.info("seed %s imported for gateway %s (%s enrollment)", path, seed.gateway_id,
              enr.method)
    return SeedImport(seed.identity(), warning is None, warning)


def load_claim(state_dir: Path) -> ClaimCredentials | None:
    """The stored claim credentials, or ``None`` when there are none (used or offline)."""
    path = StateLayout(state_dir).claim_file
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    try:
        timeout = Duration.parse(str(data.get("timeout", "30s")))
        return ClaimCredentials(str(data["username"]), str(data["password"]),
                                str(data["token"]), float(timeout))
    except (KeyError, ValueError) as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"incomplete claim file: {exc}")]) from None
