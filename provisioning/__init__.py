"""Device identity: keys, first-boot seed, certificates, enrollment, rotation, registrar.

The daemon needs only what is exported here; the CLI lives in :mod:`provisioning.cli`.
"""

from importlib import import_module
from typing import Any

# Names are imported on first use (PEP 562): the daemon needs only key checks at start, and
# the X.509 stack costs memory on a small board until TLS is actually configured.
_WHERE = {
    "client_tls_context": "_tlserrors", "explain_reason_code": "_tlserrors",
    "explain_tls_failure": "_tlserrors", "local_certificate_problem": "_tlserrors",
    "probe_broker": "_tlserrors",
    "Identity": "identity", "SigningIdentity": "identity", "StateLayout": "identity",
    "TlsPaths": "identity", "load_identity": "identity", "preflight": "identity",
    "signing_identity": "identity", "tls_paths": "identity",
    "KnownKey": "keyring", "kid_for": "keyring", "load_key_directory": "keyring",
    "lookup": "keyring", "verifier_keys": "keyring",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"provisioning.{_WHERE[name]}"), name)
    msg = f"module 'provisioning' has no attribute {name!r}"
    raise AttributeError(msg)


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
