"""Device identity: keys, first-boot seed, certificates, enrollment, rotation, registrar.

The daemon needs only what is exported here; the CLI lives in :mod:`provisioning.cli`.
"""

from provisioning._tlserrors import (
    client_tls_context,
    explain_reason_code,
    explain_tls_failure,
    local_certificate_problem,
    probe_broker,
)
from provisioning.identity import (
    Identity,
    SigningIdentity,
    StateLayout,
    TlsPaths,
    load_identity,
    preflight,
    signing_identity,
    tls_paths,
)
from provisioning.keyring import KnownKey, kid_for, load_key_directory, lookup, verifier_keys

__all__ = [
    "Identity",
    "KnownKey",
    "SigningIdentity",
    "StateLayout",
    "TlsPaths",
    "client_tls_context",
    "explain_reason_code",
    "explain_tls_failure",
    "kid_for",
    "load_identity",
    "load_key_directory",
    "local_certificate_problem",
    "lookup",
    "preflight",
    "probe_broker",
    "signing_identity",
    "tls_paths",
    "verifier_keys",
]
