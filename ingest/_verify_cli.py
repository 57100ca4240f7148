"""``streetgate verify``: signed batches from files or a broker, checked, printed as SenML."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buffer.types import Gap, Loss

__all__ = ["cmd_verify", "describe_gap", "describe_loss", "load_keys"]


def load_keys(args: argparse.Namespace) -> tuple[dict[bytes, Any], dict[bytes, str]]:
    """Keys by kid, and the gateway each registrar-recorded key may sign for."""
    from gateway.cose import kid_for  # noqa: PLC0415
    from provisioning import load_key_directory  # noqa: PLC0415
    from provisioning.keys import load_public_key  # noqa: PLC0415

    keys: dict[bytes, Any] = {}
    gateways: dict[bytes, str] = {}
    paths: list[Path] = []
    for arg in args.key:
        gateway, sep, file = arg.partition("=")
        if sep and not Path(arg).exists():
            pub = load_public_key(Path(file))
            keys[kid_for(pub)] = pub
            gateways[kid_for(pub)] = gateway
        else:
            paths.append(Path(arg))
    if args.keys:
        for kid, known in load_key_directory(Path(args.keys)).items():
            keys[bytes.fromhex(kid)] = known.public_key
            if known.gateway_id:
                gateways[bytes.fromhex(kid)] = known.gateway_id
        paths += [p for p in sorted(Path(args.keys).glob("*.pem"))
                  if not p.name.endswith(".pub.pem")]
    for path in paths:
        pub = load_public_key(path)
        keys[kid_for(pub)] = pub
    if len(keys) - len(gateways) > 1:
        print("streetgate verify: warning: several keys are not bound to a gateway, so any of "
              "them may sign for any gateway; bind them with --key GATEWAY=PUB.pem",
              file=sys.stderr)
    return keys, gateways


def _message_files(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(x for x in p.iterdir() if x.is_file() and x.suffix != ".pem")
        else:
            out.append(p)
    return out


def _when(ms: int | None) -> str:
    if ms is None:
        return "?"
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):  # beyond what datetime can show
        return f"{ms} ms"


def _time_range(first_ts: int | None, last_ts: int | None) -> str:
    if first_ts is None and last_ts is None:
        return "time unknown"
    return f"ts {_when(first_ts)} to {_when(last_ts)}"


def describe_gap(gap: Gap) -> str:
    """One line for a gap record: what the buffer dropped (size cap)."""
    points = ", ".join(map(repr, gap.points)) + (" and more" if gap.points_truncated else "")
    return (f"gap: seqs {gap.first_seq}-{gap.last_seq}, {gap.count} reading(s) dropped by the"
            f" buffer, {_time_range(gap.first_ts, gap.last_ts)}"
            + (f", points {points}" if points else ""))


def describe_loss(loss: Loss) -> str:
    """One line for a loss record: epoch, seqs (or open / no seq), count, time, reason."""
    if loss.first_seq is None:
        seqs = "no seq"
    else:
        seqs = f"seqs {loss.first_seq}-{'open' if loss.last_seq is None else loss.last_seq}"
    count = "count unknown" if loss.count is None else f"{loss.count} reading(s)"
    return (f"loss in epoch {loss.epoch}: {seqs}, {count}, "
            f"{_time_range(loss.first_ts, loss.last_ts)}, reason {loss.reason!r}")


class _VerifyPrinter:
    """Feeds messages to the verifier; SenML to stdout, everything else to stderr."""

    def __init__(self, verifier: Any, args: argparse.Namespace) -> None:
        self.verifier = verifier
        self.args = args
        self.rejected = 0

    def __call__(self, name: str, payload: bytes) -> None:
        from ingest.senml import senml_json  # noqa: PLC0415

        res = self.verifier.feed(payload)
        parts = name.split("/")
        if self.args.broker and res.authentic and len(parts) >= 3 and parts[-2] != res.gateway_id:
            # <prefix>/<gateway-id>/batch: the broker's ACL vouches for the topic, the
            # signature for the batch; both must name the same gateway.
            self.rejected += 1
            print(f"{name}: rejected: batch of {res.gateway_id!r} on another gateway's topic",
                  file=sys.stderr)
            return
        if res.rejected:
            self.rejected += 1
            why = f" ({res.error})" if res.error else ""
            print(f"{name}: rejected: {res.status}{why}", file=sys.stderr)
            return
        if res.status == "duplicate":
            print(f"{name}: duplicate batch, {res.duplicates} reading(s) already had",
                  file=sys.stderr)
        for record in [*map(describe_gap, res.gaps), *map(describe_loss, res.losses)]:
            print(f"{name}: {record}", file=sys.stderr)
        if res.missing:
            print(f"{name}: missing so far: {res.missing}", file=sys.stderr)
        if res.unchanged is not None:
            u = res.unchanged
            print(f"{name}: unchanged: {u.count} reading(s) from ts {u.first_ts} to "
                  f"{u.last_ts} held back within their deadbands", file=sys.stderr)
        for first, last, offset in res.extra.get(9, []):
            # Readings stamped before the gateway's clock synced (docs/wire-format.md, key 9).
            known = f"true time = ts {offset:+d} ms" if isinstance(offset, int) and not \
                isinstance(offset, bool) else "offset not known yet"
            print(f"{name}: clock unsynchronized for seqs {first}-{last}: {known}",
                  file=sys.stderr)
        plain = self.args.plain_senml
        if not self.args.quiet and (res.readings or (res.losses and not plain)):
            # One SenML pack (RFC 8428 §5) per batch and line; loss records are must-understand.
            print(senml_json(res.gateway_id, res.readings, include_bad=not plain,
                             losses=res.losses))


def cmd_verify(args: argparse.Namespace) -> int:
    from ingest.subscriber import SubscribeError  # noqa: PLC0415
    from provisioning.keys import KeyFileError  # noqa: PLC0415

    try:
        return _verify(args)
    except SubscribeError as exc:
        print(f"streetgate verify: cannot subscribe: {exc}", file=sys.stderr)
        return 1
    except (OSError, KeyFileError, ValueError, KeyError) as exc:
        print(f"streetgate verify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _verify(args: argparse.Namespace) -> int:
    from ingest.verify import Verifier  # noqa: PLC0415

    keys, gateways = load_keys(args)
    if not keys:
        print("streetgate verify: give at least one --key or --keys DIR", file=sys.stderr)
        return 2
    if args.broker and (args.cert or args.tls_key) and not args.ca:
        print("streetgate verify: --cert and --tls-key need --ca (the broker's CA)",
              file=sys.stderr)
        return 2
    verifier = Verifier(keys, gateways=gateways or None)
    if args.state and args.state.exists():
        verifier.restore(json.loads(args.state.read_text()))
    handle = _VerifyPrinter(verifier, args)
    if args.broker:
        _verify_broker(args, handle)
    else:
        for path in _message_files(args.files):
            handle(str(path), path.read_bytes())
    if args.state:
        tmp = args.state.with_name(args.state.name + ".tmp")
        tmp.write_text(json.dumps(verifier.state()))
        tmp.replace(args.state)
    print(json.dumps({"verify": verifier.stats}), file=sys.stderr)
    return 1 if handle.rejected else 0


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The uplink's kind of context: verify the broker against ``--ca`` (and its name), present
    ``--cert`` for mutual TLS."""
    if not args.ca:
        return None
    from provisioning._tlserrors import harden  # noqa: PLC0415

    ctx = harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca))
    # TLS 1.2 keeps the broker's verdict on the client certificate inside the handshake, so a
    # refusal is named at once (provisioning/_tlserrors.py; RFC 8446 §4.4.2).
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if args.cert:
        ctx.load_cert_chain(args.cert, args.tls_key)
    return ctx


def _hint(args: argparse.Namespace, why: str) -> str:
    """What to try next, from what was given and what failed."""
    low = why.lower()
    if args.ca and not args.cert and ("handshake failure" in low or "certificate required" in low):
        return "the listener wants a client certificate: give --cert FILE and --tls-key FILE"
    if "mismatch" in low:
        return ("the broker's certificate does not name the host in --broker (its subject "
                "alternative names: `streetgate registrar server-cert --name/--ip/--dns`)")
    if "verify_failed" in low:
        return "the broker's certificate does not chain to --ca"
    if "not authorized" in low or "bad user name" in low:
        return "check --username and --password-file, and the broker's ACL for --topic"
    return ""


def _verify_broker(args: argparse.Namespace, handle: Any) -> None:
    from ingest.subscriber import BatchSubscriber, SubscribeError  # noqa: PLC0415

    host, _, port = args.broker.rpartition(":")
    password = Path(args.password_file).read_text().strip() if args.password_file else ""
    sub = BatchSubscriber(host or "127.0.0.1", int(port), args.topic,
                          username=args.username or "", password=password,
                          tls=_tls_context(args))
    try:
        sub.start(timeout=args.connect_timeout)
    except SubscribeError as exc:
        hint = _hint(args, str(exc))
        raise SubscribeError(f"{exc}; {hint}" if hint else str(exc)) from exc
    seen = 0
    try:
        while not args.count or seen < args.count:
            topic, payload = sub.messages.get()
            seen += 1
            handle(topic, payload)
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()
