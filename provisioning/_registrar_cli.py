"""``streetgate registrar init-ca | add-claim | sign | add-key | server-cert | revoke | run``
(platform side)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import re
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["register_registrar"]


def _out(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


def cmd_init_ca(args: argparse.Namespace) -> int:
    from provisioning.fleetca import CA_KEY, create_ca, save_ca  # noqa: PLC0415
    from provisioning.registrar import Registrar  # noqa: PLC0415

    directory = Path(args.dir)
    if (directory / CA_KEY).exists():
        sys.stderr.write(f"streetgate: {directory / CA_KEY} exists; refusing to replace a CA\n")
        return 1
    save_ca(create_ca(args.name, days=args.days), directory)
    Registrar(directory).write_crl()
    _out(f"fleet CA {args.name!r} created in {directory} (ca.crt, ca.key 0600, crl.pem)")
    return 0


def cmd_command_key(args: argparse.Namespace) -> int:
    """The platform command key: private PEM (0600) and its public PEM beside it (``.pub``),
    which goes into each cabinet's ``[commands] keys``."""
    from provisioning._files import write_public  # noqa: PLC0415
    from provisioning.keys import (  # noqa: PLC0415
        fingerprint,
        load_or_create_signing_key,
        public_key_pem,
    )

    out = Path(args.out) if args.out else Path(args.dir) / "command.key"
    pub = out.with_suffix(".pub")
    existed = out.exists()
    key = load_or_create_signing_key(out)
    write_public(pub, public_key_pem(key.public_key()).encode())
    verb = "kept the existing" if existed else "created a new"
    _out(f"{verb} platform command key {out} (0600); public key {pub} "
         f"(kid {fingerprint(key.public_key())}): list it in each cabinet's [commands] keys")
    return 0


def _seed_text(args: argparse.Namespace, token: str, ca_pem: str) -> str:
    from provisioning.identity import dumps_flat  # noqa: PLC0415

    top = {"gateway_id": args.gateway_id, "broker": args.broker}
    if args.enroll_broker:
        top["enroll_broker"] = args.enroll_broker
    top |= {"topic_prefix": args.prefix, "ca_cert": ca_pem}
    command = Path(args.command_key) if args.command_key else Path(args.dir) / "command.pub"
    if command.suffix == ".key":
        command = command.with_suffix(".pub")
    if command.is_file():
        top["command_key"] = command.read_text()
    enrollment = {"method": "claim", "username": args.username, "password": args.password,
                  "token": token}
    return ("# streetgate seed: copy onto the gateway's boot partition; single use\n"
            + dumps_flat(top) + "\n[enrollment]\n" + dumps_flat(enrollment))


def cmd_add_claim(args: argparse.Namespace) -> int:
    from provisioning._files import write_private  # noqa: PLC0415
    from provisioning.registrar import Registrar  # noqa: PLC0415

    reg = Registrar(Path(args.dir))
    token = reg.add_claim(args.gateway_id)
    if args.seed_out:
        if not args.broker:
            sys.stderr.write("streetgate: --seed-out needs --broker HOST:PORT\n")
            return 2
        write_private(Path(args.seed_out),
                      _seed_text(args, token, reg.ca.cert_pem.decode()).encode())
        _out(f"claim for {args.gateway_id} added; seed written to {args.seed_out}")
    else:
        _out(token)
    return 0


def _keys_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.keys) if getattr(args, "keys", None) else None


def cmd_sign(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from provisioning.keyring import kid_for, load_public_pem  # noqa: PLC0415
    from provisioning.registrar import Registrar  # noqa: PLC0415

    reg = Registrar(Path(args.dir), keys_dir=_keys_dir(args), cert_days=args.days)
    signing = Path(args.signing_key).read_bytes() if args.signing_key else None
    cert = reg.sign_offline(args.gateway_id, Path(args.csr).read_bytes(),
                            signing_key_pem=signing)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    kid = (f"; signing key {kid_for(load_public_pem(signing))} registered"
           if signing is not None else "")
    if args.out:
        Path(args.out).write_bytes(pem)
        _out(f"certificate {cert.serial_number:x} for {args.gateway_id} written to {args.out}"
             f"{kid}")
    else:
        sys.stdout.write(pem.decode())
        if kid:
            sys.stderr.write(f"streetgate: {kid.removeprefix('; ')}\n")
    return 0


def cmd_add_key(args: argparse.Namespace) -> int:
    from provisioning.registrar import Registrar  # noqa: PLC0415

    reg = Registrar(Path(args.dir), keys_dir=_keys_dir(args))
    kid, added = reg.add_signing_key(args.gateway_id, Path(args.key_file).read_bytes())
    state = "registered" if added else "was already registered"
    _out(f"signing key {kid} {state} to {args.gateway_id} in {reg.keys_dir}")
    return 0


#: A DNS name for a certificate (RFC 1035 §2.3.1 labels; a leading ``*.`` wildcard allowed).
_DNS = re.compile(r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                  r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _dns(text: str) -> str:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text)
        raise argparse.ArgumentTypeError(f"{text!r} is an IP address: give it with --ip")
    if len(text) > 253 or not _DNS.fullmatch(text):  # RFC 1035 §2.3.4
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS name")
    return text.rstrip(".")


def _host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return _dns(text)


def cmd_server_cert(args: argparse.Namespace) -> int:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from provisioning._files import write_private, write_public  # noqa: PLC0415
    from provisioning.certs import key_pem  # noqa: PLC0415
    from provisioning.registrar import Registrar  # noqa: PLC0415

    out, key_out = Path(args.out), Path(args.key_out)
    if out.resolve() == key_out.resolve():
        sys.stderr.write("streetgate: --out and --key-out must be different files\n")
        return 2
    key, cert = Registrar(Path(args.dir)).issue_server(
        args.name, addresses=args.ip, dns_names=args.dns, days=args.days)
    # The key first: a certificate beside a stale key would break the broker's next start.
    write_private(key_out, key_pem(key), own_dir=False)
    write_public(out, cert.public_bytes(serialization.Encoding.PEM))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    _out(f"server certificate {cert.serial_number:x} for {args.name} ({', '.join(names)}), "
         f"valid until {cert.not_valid_after_utc:%Y-%m-%d}, written to {out}; key {key_out} "
         "(0600): the broker must be able to read it (chown it to the broker's user)")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from provisioning.registrar import Registrar  # noqa: PLC0415

    crl = Registrar(Path(args.dir)).revoke(args.serial)
    _out(f"serial {args.serial} revoked; {crl} rewritten: make the broker reload it")
    return 0


def _login(args: argparse.Namespace) -> Any:
    from provisioning._registrar_mqtt import BrokerLogin  # noqa: PLC0415
    from provisioning._tlserrors import harden  # noqa: PLC0415

    ctx = None
    if args.ca:
        ctx = harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca))
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    return BrokerLogin(args.host, args.port, ctx, args.username, password,
                       protocol=args.mqtt)


def cmd_run(args: argparse.Namespace) -> int:
    from provisioning._registrar_mqtt import RegistrarService  # noqa: PLC0415
    from provisioning.registrar import Registrar  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    reg = Registrar(Path(args.dir), keys_dir=Path(args.keys) if args.keys else None,
                    cert_days=args.cert_days)
    service = RegistrarService(reg, _login(args), prefix=args.prefix)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.run_forever(stop)
    return 0


def _register_offline(cmds: argparse._SubParsersAction[argparse.ArgumentParser],
                      guard: Callable[[Any], Any]) -> None:
    p = cmds.add_parser("add-key", help="register a gateway's signing public key (offline "
                        "enrollment or rotation)")
    p.add_argument("key_file", metavar="KEY.pem", help="the Ed25519 public key (PEM)")
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--keys", metavar="DIR", help="signing-key directory (default DIR/keys)")
    p.set_defaults(func=guard(cmd_add_key))
    p = cmds.add_parser("server-cert", help="issue the broker's TLS server certificate")
    p.add_argument("--name", required=True, type=_host, metavar="HOST",
                   help="the broker's name (CN, and in the subject alternative names)")
    p.add_argument("--ip", action="append", default=[], type=_ip, metavar="ADDR",
                   help="an IP address gateways dial (repeatable)")
    p.add_argument("--dns", action="append", default=[], type=_dns, metavar="NAME",
                   help="another DNS name gateways dial (repeatable)")
    p.add_argument("--out", required=True, metavar="FILE", help="certificate (PEM)")
    p.add_argument("--key-out", required=True, metavar="FILE", help="private key (PEM, 0600)")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=guard(cmd_server_cert))


def register_registrar(sub: argparse._SubParsersAction[argparse.ArgumentParser], *,
                       guard: Callable[[Any], Any]) -> None:
    from provisioning.cli import _mqtt_version  # noqa: PLC0415

    reg = sub.add_parser("registrar", help="platform side: fleet CA, claims, enrollment service")
    cmds = reg.add_subparsers(dest="registrar_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("init-ca", help="create the fleet CA")
    p.add_argument("--name", default="streetgate fleet CA")
    p.add_argument("--days", type=int, default=3650)
    p.set_defaults(func=guard(cmd_init_ca))
    p = cmds.add_parser("add-claim", help="create a single-use claim token for a gateway")
    p.add_argument("gateway_id")
    p.add_argument("--seed-out", metavar="FILE", help="write a ready seed file (0600)")
    p.add_argument("--broker", metavar="HOST:PORT", help="mutual-TLS listener, for the seed")
    p.add_argument("--enroll-broker", metavar="HOST:PORT", help="claim listener, for the seed")
    p.add_argument("--prefix", default="streetgate")
    p.add_argument("--username", default="claim", help="claim account on the broker")
    p.add_argument("--password", default="", help="claim account password")
    p.add_argument("--command-key", metavar="FILE", help="platform command public key for the "
                   "seed (default DIR/command.pub, when it exists)")
    p.set_defaults(func=guard(cmd_add_claim))
    p = cmds.add_parser("sign", help="sign a CSR by hand (offline enrollment)")
    p.add_argument("--csr", required=True, metavar="FILE")
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--out", metavar="FILE")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--signing-key", metavar="PUB.pem", help="also register the gateway's "
                   "signing public key (`streetgate key public` on the gateway)")
    p.add_argument("--keys", metavar="DIR", help="signing-key directory (default DIR/keys)")
    p.set_defaults(func=guard(cmd_sign))
    _register_offline(cmds, guard)
    p = cmds.add_parser("command-key", help="make (or show) the platform command key")
    p.add_argument("--out", metavar="FILE", help="private key file (default DIR/command.key)")
    p.set_defaults(func=guard(cmd_command_key))
    p = cmds.add_parser("revoke", help="revoke a certificate serial (hex) and rewrite crl.pem")
    p.add_argument("serial")
    p.set_defaults(func=guard(cmd_revoke))
    p = cmds.add_parser("run", help="answer claim and rekey requests over MQTT")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--ca", metavar="FILE", help="CA of the broker certificate (enables TLS)")
    p.add_argument("--cert", metavar="FILE")
    p.add_argument("--key", metavar="FILE")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="FILE")
    p.add_argument("--prefix", default="streetgate")
    p.add_argument("--keys", metavar="DIR", help="signing-key directory (default DIR/keys)")
    p.add_argument("--cert-days", type=int, default=365)
    p.add_argument("--mqtt", type=_mqtt_version, default=5, metavar="5|3.1.1")
    p.set_defaults(func=guard(cmd_run))
    for leaf in cmds.choices.values():
        leaf.add_argument("--dir", required=True, metavar="DIR", help="registrar directory")
