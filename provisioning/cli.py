"""``streetgate provision ...`` (on the gateway) and ``streetgate registrar ...`` (platform)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from drivers.api import ConfigError

__all__ = ["main", "register_cli"]

DEFAULT_STATE = "/var/lib/streetgate"


def _out(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


def _err(text: str) -> None:
    sys.stderr.write(f"streetgate: {text}\n")


def state_dir(args: argparse.Namespace) -> Path:
    """``--state``, else ``[gateway] state_dir`` of ``--config``, else $STREETGATE_STATE_DIR."""
    if getattr(args, "state", None):
        return Path(args.state)
    config = getattr(args, "config", None)
    if config and Path(config).exists():
        data = tomllib.loads(Path(config).read_text())
        value = data.get("gateway", {}).get("state_dir")
        if isinstance(value, str) and value:
            return Path(value)
    return Path(os.environ.get("STREETGATE_STATE_DIR", DEFAULT_STATE))


def _mqtt_version(text: str) -> int:
    if text in ("5", "5.0"):
        return 5
    if text in ("3.1.1", "4"):
        return 4
    raise argparse.ArgumentTypeError("expected 5 or 3.1.1")


def _guard(func: Any) -> Any:
    """Turn the expected failures into one line and exit code 1 (2 for config errors)."""
    from provisioning.certs import CertificateError  # noqa: PLC0415
    from provisioning.enroll import EnrollError  # noqa: PLC0415
    from provisioning.keyring import KeyringError  # noqa: PLC0415
    from provisioning.keys import KeyFileError  # noqa: PLC0415
    from provisioning.registrar import RegistrarError  # noqa: PLC0415
    from provisioning.seed import SeedError  # noqa: PLC0415

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except ConfigError as exc:
            _err(str(exc))
            return 2
        except (CertificateError, EnrollError, KeyFileError, KeyringError, RegistrarError,
                SeedError, OSError) as exc:
            _err(str(exc))
            return 1
    run.__name__ = func.__name__
    return run


# -- provision ------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from provisioning.enroll import enroll  # noqa: PLC0415
    from provisioning.seed import import_seed  # noqa: PLC0415

    state = state_dir(args)
    result = import_seed(Path(args.seed), state)
    _out(f"gateway {result.identity.gateway_id}: seed imported into {state}, keys created")
    if result.warning:
        _err(result.warning)
    if args.enroll and result.identity.enrollment == "claim":
        info = enroll(state, timeout=args.timeout, protocol=args.mqtt)
        _out(f"enrolled: certificate {info.certificate.subject}, "
             f"valid until {info.certificate.not_after:%Y-%m-%d}")
    elif result.identity.enrollment == "offline":
        _out("next: streetgate provision csr, then provision install-cert FILE")
    return 1 if result.warning else 0


def cmd_status(args: argparse.Namespace) -> int:
    from provisioning.status import format_status, gateway_status  # noqa: PLC0415

    st = gateway_status(state_dir(args))
    _out(json.dumps(st.to_json(), indent=2) if args.json else format_status(st))
    return 1 if st.problems else 0


def cmd_csr(args: argparse.Namespace) -> int:
    from provisioning.install import write_csr  # noqa: PLC0415

    path, pem = write_csr(state_dir(args))
    if args.out == "-":
        sys.stdout.write(pem.decode())
    elif args.out:
        Path(args.out).write_bytes(pem)
        _out(f"CSR written to {args.out}")
    else:
        _out(f"CSR written to {path}")
    return 0


def cmd_install_cert(args: argparse.Namespace) -> int:
    from provisioning.install import install_certificate  # noqa: PLC0415

    ca = Path(args.ca).read_bytes() if args.ca else None
    info = install_certificate(state_dir(args), Path(args.cert).read_bytes(), ca_pem=ca)
    _out(f"installed {info.subject} (serial {info.serial}), issued by {info.issuer}, "
         f"valid until {info.not_after:%Y-%m-%d %H:%M} UTC")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from provisioning.enroll import enroll  # noqa: PLC0415

    result = enroll(state_dir(args), timeout=args.timeout, protocol=args.mqtt)
    _out(f"enrolled: {result.certificate.subject}, valid until "
         f"{result.certificate.not_after:%Y-%m-%d}, signing kid {result.kid}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    from provisioning import rotate  # noqa: PLC0415

    state = state_dir(args)
    if args.cancel:
        _out("pending TLS rotation dropped" if rotate.cancel_tls_rotation(state)
             else "no TLS rotation pending")
        return 0
    if not (args.signing or args.tls):
        _err("say what to rotate: --signing and/or --tls")
        return 2
    if args.online:
        result = rotate.rekey_online(state, signing=args.signing, tls=args.tls,
                                     timeout=args.timeout or 30.0, protocol=args.mqtt)
        if result.signing:
            _out(f"signing key rotated: kid {result.signing.old_kid} -> {result.signing.new_kid}"
                 " (registered); reload the daemon to sign with it (systemctl reload streetgate)")
        if result.certificate:
            _out(f"TLS certificate rotated: serial {result.certificate.serial}, valid until "
                 f"{result.certificate.not_after:%Y-%m-%d}")
        return 0
    if args.signing:
        rot = rotate.rotate_signing_key(state)
        _out(f"signing key rotated: kid {rot.old_kid} -> {rot.new_kid}; old public key kept at "
             f"{rot.retired}. Register the new key with the platform (streetgate registrar "
             "add-key --gateway-id ID KEY.pem), then reload the daemon (systemctl reload "
             f"streetgate):\n{rot.public_pem.decode()}")
    if args.tls:
        path, _pem = rotate.start_tls_rotation(state)
        _out(f"new TLS key created; send {path} to the CA, then "
             "streetgate provision install-cert FILE")
    return 0


def _state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="DIR", help="state directory (default: gateway.state_dir "
                   f"of --config, $STREETGATE_STATE_DIR, or {DEFAULT_STATE})")
    p.add_argument("--config", metavar="FILE", default=None, help="gateway.toml")


def _online_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer")
    p.add_argument("--mqtt", type=_mqtt_version, default=5, metavar="5|3.1.1")


def _register_provision(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prov = sub.add_parser("provision", help="gateway identity: keys, seed, certificate")
    cmds = prov.add_subparsers(dest="provision_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("init", help="import a seed file, create the keys")
    p.add_argument("--seed", required=True, metavar="FILE")
    p.add_argument("--enroll", action="store_true", help="also enroll now (claim method)")
    _online_args(p)
    p.set_defaults(func=_guard(cmd_init))
    p = cmds.add_parser("status", help="gateway id, key fingerprints, certificate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_status))
    p = cmds.add_parser("csr", help="write the certificate signing request (offline enrollment)")
    p.add_argument("--out", metavar="FILE", help="also write it here ('-': stdout)")
    p.set_defaults(func=_guard(cmd_csr))
    p = cmds.add_parser("install-cert", help="check and install the issued certificate")
    p.add_argument("cert", metavar="CERT")
    p.add_argument("--ca", metavar="FILE", help="replace the CA certificate(s) too")
    p.set_defaults(func=_guard(cmd_install_cert))
    p = cmds.add_parser("enroll", help="get the certificate online with the claim token")
    _online_args(p)
    p.set_defaults(func=_guard(cmd_enroll))
    p = cmds.add_parser("rotate", help="replace the signing key and/or the TLS key")
    p.add_argument("--signing", action="store_true", help="new batch-signing key")
    p.add_argument("--tls", action="store_true", help="new TLS key and certificate")
    p.add_argument("--online", action="store_true", help="via the registrar over mutual TLS")
    p.add_argument("--cancel", action="store_true", help="drop a pending TLS rotation")
    _online_args(p)
    p.set_defaults(func=_guard(cmd_rotate))
    for leaf in cmds.choices.values():
        _state_args(leaf)


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``provision`` and ``registrar`` to the ``streetgate`` command."""
    from provisioning._registrar_cli import register_registrar  # noqa: PLC0415

    _register_provision(sub)
    register_registrar(sub, guard=_guard)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m provisioning.cli``), same commands as ``streetgate``."""
    parser = argparse.ArgumentParser(prog="streetgate")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
