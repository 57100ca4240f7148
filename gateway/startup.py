"""What ``streetgate run`` refuses to start with, found without writing anything.

``streetgate check`` runs these after the config validates, so a technician learns before a
restart what ``run`` would stop at: secret files others can read, TLS files that are not there,
and a ``gateway.id`` that differs from the provisioned identity (gateway/daemon.py preflight).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["startup_problems"]


def startup_problems(cfg: Config, *, certificate: bool = True) -> list[str]:
    """One sentence per problem, each naming the file and the fix.

    ``certificate``: also say when ``uplink.tls.provisioned`` has no certificate yet (the
    daemon itself starts anyway, and its uplink waits for the enrollment).
    """
    state = Path(cfg.gateway.state_dir)
    try:
        problems = (_secrets(cfg, state) + _tls(cfg, state, certificate=certificate)
                    + _identity(cfg, state))
    except PermissionError as exc:
        return [(f"cannot read {exc.filename or state} as this user, so the files `run` needs "
                 "were not checked: run check as the service's user (or root), or give "
                 "--offline")]
    return problems


def _secrets(cfg: Config, state: Path) -> list[str]:
    from provisioning import StateLayout, preflight  # noqa: PLC0415 - only when checked
    from provisioning.keys import KeyPermissionError, check_key_file  # noqa: PLC0415

    problems = preflight(state) if state.is_dir() else []
    key = cfg.gateway.path(cfg.gateway.signing_key)
    if key != StateLayout(state).signing_key:  # preflight checked the default place
        try:
            check_key_file(key)
        except FileNotFoundError:
            pass  # run makes a new key on first start
        except KeyPermissionError as exc:
            problems.append(str(exc))
    return problems


def _tls(cfg: Config, state: Path, *, certificate: bool) -> list[str]:
    tls = cfg.uplink.tls
    if not tls.enabled:
        return []
    if tls.provisioned:
        return _provisioned_tls(cfg, state) if certificate else []
    problems = []
    for key in ("ca_file", "cert_file", "key_file"):
        name = getattr(tls, key)
        if name and not cfg.gateway.path(name).is_file():
            problems.append(f"uplink.tls.{key}: no such file: {cfg.gateway.path(name)}")
    if tls.key_file and cfg.gateway.path(tls.key_file).is_file():
        from provisioning.keys import KeyPermissionError, check_key_file  # noqa: PLC0415

        try:
            check_key_file(cfg.gateway.path(tls.key_file))
        except KeyPermissionError as exc:
            problems.append(str(exc).replace("signing key", "TLS key", 1))
    return problems


def _provisioned_tls(cfg: Config, state: Path) -> list[str]:
    from provisioning import StateLayout  # noqa: PLC0415

    layout = StateLayout(state)
    seed = cfg.gateway.seed_file
    if (seed and Path(seed).is_file()) or layout.claim_file.exists():
        return []  # enrollment at first start brings the certificate
    files = (layout.ca_cert, layout.tls_cert, layout.tls_key)
    missing = [str(p) for p in files if not p.exists()]
    if not missing or (layout.pending_cert.exists() and missing == [str(layout.tls_cert)]):
        return []
    return [(f"uplink.tls.provisioned is set but this gateway has no certificate yet "
             f"(missing: {', '.join(missing)}); enroll it (streetgate provision --help)")]


def _identity(cfg: Config, state: Path) -> list[str]:
    from drivers.api import ConfigError  # noqa: PLC0415
    from provisioning import StateLayout, load_identity  # noqa: PLC0415

    if not StateLayout(state).identity_file.exists():
        return []
    try:
        ident = load_identity(state)
    except ConfigError:
        return []  # run starts without it too
    if ident.gateway_id == cfg.gateway.id:
        return []
    return [(f"gateway.id is {cfg.gateway.id!r} but this gateway was provisioned as "
             f"{ident.gateway_id!r}; the broker would refuse its topics")]
