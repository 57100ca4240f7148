"""The gateway's identity on disk: where each key, certificate and setting lives.

State directory layout (directories 0700, secrets 0600)::

    <state>/identity.toml        gateway id, broker addresses, topic prefix, enrollment method
    <state>/keys/signing.key     Ed25519 batch-signing key (provisioning.keys)
    <state>/keys/signing.next.key  a signing key being rotated in, until it is registered
    <state>/keys/retired/        <kid>.pub.pem of every signing key rotated out
    <state>/tls/client.key       ECDSA P-256 TLS key
    <state>/tls/client.csr       the CSR for it (public)
    <state>/tls/client.crt       the issued client certificate
    <state>/tls/ca.crt           CA certificate(s) trusted for the broker and the client chain
    <state>/tls/pending.key|csr  a TLS key being rotated in, until its certificate arrives
    <state>/enroll/claim.toml    claim credentials from the seed, deleted after enrollment

Private keys are created here and never leave the device.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import TYPE_CHECKING, Literal

from drivers.api import ConfigError, ConfigIssue, load, option
from provisioning._files import ensure_dir, write_private, write_public
from provisioning.keyring import kid_for
from provisioning.keys import KeyPermissionError, check_key_file, load_or_create_signing_key

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

__all__ = [
    "GATEWAY_ID_PATTERN",
    "Identity",
    "SigningIdentity",
    "StateLayout",
    "TlsPaths",
    "ensure_keys",
    "load_identity",
    "parse_address",
    "preflight",
    "save_identity",
    "signing_identity",
    "tls_paths",
]

#: A gateway id is one MQTT topic level, a file name and a certificate CN: no ``/ + #``.
GATEWAY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
#: Topic levels the enrollment scheme uses under the prefix; no gateway may be called so.
RESERVED_IDS = frozenset({"enroll"})


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Every path under one state directory."""

    root: Path

    @property
    def identity_file(self) -> Path:
        return self.root / "identity.toml"

    @property
    def signing_key(self) -> Path:
        return self.root / "keys" / "signing.key"

    @property
    def next_signing_key(self) -> Path:
        return self.root / "keys" / "signing.next.key"

    @property
    def retired_dir(self) -> Path:
        return self.root / "keys" / "retired"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def tls_key(self) -> Path:
        return self.tls_dir / "client.key"

    @property
    def tls_csr(self) -> Path:
        return self.tls_dir / "client.csr"

    @property
    def tls_cert(self) -> Path:
        return self.tls_dir / "client.crt"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def pending_key(self) -> Path:
        return self.tls_dir / "pending.key"

    @property
    def pending_csr(self) -> Path:
        return self.tls_dir / "pending.csr"

    @property
    def pending_cert(self) -> Path:
        return self.tls_dir / "pending.crt"

    @property
    def claim_file(self) -> Path:
        return self.root / "enroll" / "claim.toml"

    def secret_files(self) -> list[tuple[str, Path]]:
        """(label, path) of every file that must stay 0600 and ours."""
        return [("signing key", self.signing_key), ("next signing key", self.next_signing_key),
                ("TLS key", self.tls_key),
                ("pending TLS key", self.pending_key), ("claim credentials", self.claim_file)]


def _check_address(text: str) -> str | None:
    try:
        parse_address(text)
    except ValueError as exc:
        return str(exc)
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Identity:
    """``identity.toml``: who this gateway is and where its broker is (no secrets)."""

    gateway_id: str = option(pattern=GATEWAY_ID_PATTERN, doc="MQTT user name and certificate CN")
    broker: str = option(doc="host:port of the broker's mutual-TLS listener")
    enroll_broker: str = option("", doc="host:port of the claim listener; empty: same as broker")
    topic_prefix: str = option("streetgate", pattern=r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
    enrollment: Literal["claim", "offline"] = option("claim")

    def validate(self) -> list[tuple[str, str]]:
        issues = [(k, err) for k in ("broker", "enroll_broker")
                  if getattr(self, k) and (err := _check_address(getattr(self, k)))]
        if self.gateway_id in RESERVED_IDS:
            issues.append(("gateway_id", f'"{self.gateway_id}" is reserved for enrollment topics'))
        return issues

    @property
    def broker_address(self) -> tuple[str, int]:
        return parse_address(self.broker)

    @property
    def enroll_address(self) -> tuple[str, int]:
        return parse_address(self.enroll_broker or self.broker)


@dataclasses.dataclass(frozen=True)
class TlsPaths:
    """The files the uplink needs for mutual TLS."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclasses.dataclass(frozen=True)
class SigningIdentity:
    """The batch-signing key the daemon uses and its kid."""

    key: ed25519.Ed25519PrivateKey
    kid: str


def parse_address(text: str, default_port: int = 8883) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` to (host, port); 8883 is MQTT over TLS."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?", text.strip())
    if m is None:
        raise ValueError(f'expected "host:port"; got "{text}"')
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or default_port)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535; got {port}")
    return host, port


def _toml_value(value: str) -> str:
    # A TOML basic string (TOML 1.0 §String) accepts the escapes json.dumps emits.
    import json  # noqa: PLC0415

    return json.dumps(value, ensure_ascii=False)


def dumps_flat(values: dict[str, str]) -> str:
    """A flat TOML document of string values."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def load_identity(state_dir: Path) -> Identity:
    """Read ``identity.toml``; :class:`ConfigError` when missing or invalid."""
    path = StateLayout(state_dir).identity_file
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), [ConfigIssue(
            "", "missing: this gateway is not provisioned (streetgate provision init --seed FILE)"
        )]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue("", f"not valid TOML: {exc}")]) from None
    return load(Identity, data, file=str(path))


def save_identity(state_dir: Path, identity: Identity) -> None:
    ensure_dir(state_dir)
    values = {f.name: str(getattr(identity, f.name)) for f in dataclasses.fields(identity)}
    write_public(StateLayout(state_dir).identity_file,
                 ("# written by streetgate provision; edit with care\n"
                  + dumps_flat(values)).encode())


def ensure_keys(state_dir: Path) -> tuple[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey]:
    """Create the signing key and the TLS key if missing; return both."""
    layout = StateLayout(state_dir)
    ensure_dir(state_dir)
    signing = load_or_create_signing_key(layout.signing_key)
    if not layout.tls_key.exists():
        from provisioning.certs import generate_tls_key, key_pem  # noqa: PLC0415 - x509 is big

        write_private(layout.tls_key, key_pem(generate_tls_key()))
    check_key_file(layout.tls_key)
    from provisioning.certs import load_tls_key  # noqa: PLC0415 - x509 is big

    return signing, load_tls_key(layout.tls_key)


def signing_identity(state_dir: Path) -> SigningIdentity:
    """The daemon's signing key (created on first use) and its kid."""
    key = load_or_create_signing_key(StateLayout(state_dir).signing_key)
    return SigningIdentity(key, kid_for(key.public_key()))


def finish_pending(layout: StateLayout) -> None:
    """Complete a TLS rotation interrupted between its two renames (see rotate.install)."""
    if layout.pending_cert.exists() and not layout.pending_key.exists():
        layout.pending_cert.replace(layout.tls_cert)


def tls_paths(state_dir: Path) -> TlsPaths | None:
    """CA, certificate and key paths when the gateway holds a certificate, else ``None``."""
    layout = StateLayout(state_dir)
    finish_pending(layout)
    paths = TlsPaths(layout.ca_cert, layout.tls_cert, layout.tls_key)
    if all(p.exists() for p in (paths.ca_file, paths.cert_file, paths.key_file)):
        return paths
    return None


def _relabel(message: str, label: str) -> str:
    # provisioning.keys words its messages for the signing key; name the actual file's role.
    return label + message.removeprefix("signing key") if label != "signing key" else message


def preflight(state_dir: Path) -> list[str]:
    """Permission and ownership problems of every secret file, each naming the file and fix."""
    problems: list[str] = []
    layout = StateLayout(state_dir)
    for directory in (state_dir, layout.root / "keys", layout.tls_dir, layout.claim_file.parent):
        if directory.is_dir() and directory.stat().st_mode & 0o022:
            mode = directory.stat().st_mode & 0o777
            problems.append(f"directory {directory} has mode {mode:04o}: others could replace "
                            f"keys in it; fix: chmod 700 {directory}")
    for label, path in layout.secret_files():
        try:
            check_key_file(path)
        except FileNotFoundError:
            continue
        except KeyPermissionError as exc:
            problems.append(_relabel(str(exc), label))
    return problems
