"""What the daemon does before its uplink starts: seed import, keys, claim enrollment."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from provisioning.enroll import EnrollError, EnrollResult, enroll
from provisioning.identity import StateLayout, ensure_keys, tls_paths
from provisioning.seed import SeedImport, import_seed

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["FirstBoot", "first_boot"]

_log = logging.getLogger("streetgate.provisioning")


@dataclasses.dataclass
class FirstBoot:
    """What happened; ``messages`` are for the log (warnings a technician should see)."""

    seed: SeedImport | None = None
    enrolled: EnrollResult | None = None
    messages: list[str] = dataclasses.field(default_factory=list)
    #: The gateway holds a certificate now (the uplink can use mutual TLS).
    provisioned: bool = False


def first_boot(state_dir: Path, seed_path: Path | None, *, enroll_timeout: float | None = None,
               protocol: int = 5) -> FirstBoot:
    """Import the seed if present, make sure the keys exist, enroll by claim if still due.

    Blocking (file I/O, key generation, MQTT): run it in an executor. A bad seed raises
    (``ConfigError`` / ``SeedError``: fatal, like any config error); a failed enrollment is
    reported in ``messages`` and retried on the next call, since the claim stays stored.
    """
    result = FirstBoot()
    if seed_path is not None and seed_path.is_file():
        result.seed = import_seed(seed_path, state_dir)
        if result.seed.warning:
            result.messages.append(result.seed.warning)
    layout = StateLayout(state_dir)
    if not layout.identity_file.exists():
        return result
    ensure_keys(state_dir)
    if tls_paths(state_dir) is None and layout.claim_file.exists():
        try:
            result.enrolled = enroll(state_dir, timeout=enroll_timeout, protocol=protocol)
        except EnrollError as exc:
            result.messages.append(f"enrollment failed: {exc}")
    result.provisioned = tls_paths(state_dir) is not None
    for message in result.messages:
        _log.warning("%s", message)
    return result
