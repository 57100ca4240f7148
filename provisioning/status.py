"""``streetgate provision status``: what this gateway is, holds and still needs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from drivers.api import ConfigError
from provisioning.certs import (
    CertificateError,
    CertInfo,
    check_certificate,
    describe,
    load_certificates,
    load_tls_key,
    spki_fingerprint,
)
from provisioning.identity import StateLayout, finish_pending, load_identity, preflight
from provisioning.keyring import kid_for, load_key_directory
from provisioning.keys import KeyFileError, load_or_create_signing_key

__all__ = ["Status", "format_status", "gateway_status"]


@dataclasses.dataclass
class Status:
    """A snapshot of the state directory; ``problems`` lists what blocks the uplink."""

    state_dir: Path
    state: str = "not provisioned"
    gateway_id: str | None = None
    broker: str | None = None
    enrollment: str | None = None
    signing_kid: str | None = None
    retired_kids: list[str] = dataclasses.field(default_factory=list)
    tls_key_fingerprint: str | None = None
    certificate: CertInfo | None = None
    ca: list[CertInfo] = dataclasses.field(default_factory=list)
    rotation_pending: bool = False
    claim_pending: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def conv(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            if isinstance(value, list):
                return [conv(v) for v in value]
            return value
        result: dict[str, Any] = conv(dataclasses.asdict(self))
        return result


def _keys(st: Status, layout: StateLayout) -> None:
    if layout.signing_key.exists():
        try:
            st.signing_kid = kid_for(load_or_create_signing_key(layout.signing_key).public_key())
        except KeyFileError as exc:
            st.signing_kid = "unreadable"
            if not any(str(layout.signing_key) in p for p in st.problems):
                st.problems.append(str(exc))
    if layout.retired_dir.is_dir():
        st.retired_kids = sorted(load_key_directory(layout.retired_dir))
    if layout.tls_key.exists():
        try:
            st.tls_key_fingerprint = spki_fingerprint(load_tls_key(layout.tls_key).public_key())
        except CertificateError as exc:
            st.problems.append(str(exc))


def _certificate(st: Status, layout: StateLayout, now: dt.datetime) -> None:
    cas: list[x509.Certificate] = []
    if layout.ca_cert.exists():
        try:
            cas = load_certificates(layout.ca_cert.read_bytes(), source=str(layout.ca_cert))
        except CertificateError as exc:
            st.problems.append(str(exc))
        st.ca = [describe(c) for c in cas]
    if not layout.tls_cert.exists():
        return
    try:
        cert = x509.load_pem_x509_certificate(layout.tls_cert.read_bytes())
    except ValueError as exc:
        st.problems.append(f"{layout.tls_cert}: not a PEM certificate ({exc})")
        return
    st.certificate = describe(cert)
    if st.tls_key_fingerprint is None:
        return
    try:
        check_certificate(cert, load_tls_key(layout.tls_key), cas, gateway_id=st.gateway_id,
                          now=now)
    except CertificateError as exc:
        st.problems.append(f"{layout.tls_cert}: {exc}")


def _state(st: Status, now: dt.datetime) -> str:
    if st.gateway_id is None:
        return "not provisioned"
    if st.certificate is None:
        return "awaiting certificate"
    if st.certificate.not_after < now:
        return "certificate expired"
    return "enrolled" if not st.problems else "enrolled, with problems"


def gateway_status(state_dir: Path, *, now: dt.datetime | None = None) -> Status:
    """Read everything without creating or changing any file (except finishing a rotation)."""
    now = now or dt.datetime.now(dt.UTC)
    layout = StateLayout(state_dir)
    st = Status(state_dir=state_dir, problems=preflight(state_dir))
    if layout.identity_file.exists():
        try:
            ident = load_identity(state_dir)
        except ConfigError as exc:
            st.problems.extend(exc.lines())
        else:
            st.gateway_id, st.broker = ident.gateway_id, ident.broker
            st.enrollment = ident.enrollment
    finish_pending(layout)
    _keys(st, layout)
    _certificate(st, layout, now)
    st.rotation_pending = layout.pending_key.exists()
    st.claim_pending = layout.claim_file.exists()
    st.state = _state(st, now)
    return st


def format_status(st: Status, *, now: dt.datetime | None = None) -> str:
    """The human-readable status, one fact per line."""
    now = now or dt.datetime.now(dt.UTC)
    lines = [
        f"state:            {st.state}",
        f"state directory:  {st.state_dir}",
        f"gateway id:       {st.gateway_id or '-'}",
        f"broker:           {st.broker or '-'}",
        f"enrollment:       {st.enrollment or '-'}"
        + (" (claim token stored, not used yet)" if st.claim_pending else ""),
        f"signing key kid:  {st.signing_kid or '-'}",
    ]
    if st.retired_kids:
        lines.append(f"retired kids:     {', '.join(st.retired_kids)}")
    lines.append(f"TLS key:          {st.tls_key_fingerprint or '-'}")
    if st.certificate is not None:
        c = st.certificate
        lines += [
            f"certificate:      {c.subject} (serial {c.serial})",
            f"  issuer:         {c.issuer}",
            (f"  valid:          {c.not_before:%Y-%m-%d %H:%M} .. {c.not_after:%Y-%m-%d %H:%M} "
            f"UTC ({c.days_left(now):.0f} days left)"),
            f"  fingerprint:    {c.fingerprint}",
        ]
    else:
        lines.append("certificate:      none")
    lines += [f"CA:               {ca.subject} (until {ca.not_after:%Y-%m-%d})" for ca in st.ca]
    if st.rotation_pending:
        lines.append("rotation:         a new TLS key waits for its certificate "
                     "(streetgate provision install-cert FILE)")
    lines += [f"PROBLEM: {p}" for p in st.problems]
    return "\n".join(lines)
