"""Key rotation: a new signing key or a new TLS key, without touching the buffer.

Signing key: the next key is created beside the current one (``signing.next.key``), registered
(online, optional), then the current public key is kept under ``keys/retired/<kid>.pub.pem`` and
the next key renamed into place. Batches already sent stay verifiable by their old kid; readings
still in the buffer are signed with the new key when they are sent (the daemon re-reads the key
on reload, SIGHUP, or at its next start).

TLS key: a pending key and CSR wait until their certificate is installed; the current key and
certificate keep the uplink running meanwhile (:func:`provisioning.install.install_certificate`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from provisioning import _protocol
from provisioning._files import fsync_dir, write_private
from provisioning._tlserrors import client_tls_context
from provisioning.certs import CertInfo, generate_tls_key, key_pem
from provisioning.enroll import Endpoint, EnrollError, exchange, install_response
from provisioning.identity import StateLayout, load_identity, tls_paths
from provisioning.install import write_csr
from provisioning.keyring import kid_for, public_pem, record_key
from provisioning.keys import load_or_create_signing_key

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = ["RekeyResult", "SigningRotation", "cancel_tls_rotation", "rekey_online",
           "rotate_signing_key", "start_tls_rotation"]


@dataclasses.dataclass(frozen=True)
class SigningRotation:
    """The kids before and after, and where the old public key was kept."""

    old_kid: str
    new_kid: str
    retired: Path
    public_pem: bytes


@dataclasses.dataclass(frozen=True)
class RekeyResult:
    """What an online rotation changed."""

    signing: SigningRotation | None
    certificate: CertInfo | None


def rotate_signing_key(state_dir: Path, *,
                       register: Callable[[ed25519.Ed25519PublicKey], None] | None = None
                       ) -> SigningRotation:
    """Replace the signing key; ``register`` (e.g. the registrar) sees the new key first.

    If ``register`` raises, nothing changes and the next key is kept for the retry.
    """
    layout = StateLayout(state_dir)
    ident = load_identity(state_dir)
    old = load_or_create_signing_key(layout.signing_key)
    new = load_or_create_signing_key(layout.next_signing_key)
    if register is not None:
        register(new.public_key())
    old_kid = record_key(layout.retired_dir, old.public_key(), gateway_id=ident.gateway_id)
    layout.next_signing_key.replace(layout.signing_key)
    fsync_dir(layout.signing_key.parent)
    return SigningRotation(old_kid, kid_for(new.public_key()),
                           layout.retired_dir / f"{old_kid}.pub.pem", public_pem(new.public_key()))


def start_tls_rotation(state_dir: Path) -> tuple[Path, bytes]:
    """Create a pending TLS key (unless one waits already) and return its CSR."""
    layout = StateLayout(state_dir)
    if not layout.pending_key.exists():
        write_private(layout.pending_key, key_pem(generate_tls_key()))
    return write_csr(state_dir)


def cancel_tls_rotation(state_dir: Path) -> bool:
    """Drop a pending TLS key and CSR; ``True`` if there was one."""
    layout = StateLayout(state_dir)
    found = layout.pending_key.exists()
    for path in (layout.pending_key, layout.pending_csr):
        path.unlink(missing_ok=True)
    return found


def _endpoint(state_dir: Path, protocol: int) -> tuple[Endpoint, tuple[str, str], str]:
    ident = load_identity(state_dir)
    paths = tls_paths(state_dir)
    if paths is None:
        raise EnrollError("online rotation needs a working certificate; this gateway has none "
                          "(enroll first, or rotate offline: provision rotate --tls, then csr)")
    host, port = ident.broker_address
    ep = Endpoint(host, port, client_tls_context(paths), f"rekey-{ident.gateway_id}",
                  protocol=protocol)
    return ep, _protocol.rekey_topics(ident.topic_prefix, ident.gateway_id), ident.gateway_id


def rekey_online(state_dir: Path, *, signing: bool, tls: bool, timeout: float = 30.0,
                 protocol: int = 5) -> RekeyResult:
    """Rotate over mutual TLS with the registrar: it records the key / signs the CSR.

    Raises:
        EnrollError: no certificate yet, connection refused, or the registrar refused.
    """
    ep, topics, gateway_id = _endpoint(state_dir, protocol)
    rotation = None
    if signing:
        def register(public: ed25519.Ed25519PublicKey) -> None:
            answer = exchange(ep, topics, {"gateway_id": gateway_id,
                                           "signing_key": public_pem(public).decode()},
                              timeout=timeout)
            if answer.get("kid") != kid_for(public):
                raise EnrollError(f"registrar recorded kid {answer.get('kid')!r}")
        rotation = rotate_signing_key(state_dir, register=register)
    info = None
    if tls:
        _path, csr = start_tls_rotation(state_dir)
        answer = exchange(ep, topics, {"gateway_id": gateway_id, "csr": csr.decode()},
                          timeout=timeout)
        info = install_response(state_dir, answer)
    return RekeyResult(rotation, info)
