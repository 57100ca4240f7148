"""CLI commands around the core: verify, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buffer.types import Gap, Loss

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="verify signed batches from files or a broker; print SenML")
    p.add_argument("--key", action="append", default=[], metavar="[GATEWAY=]PUB.pem",
                   help="a gateway public key (repeatable); GATEWAY= binds it to that gateway")
    p.add_argument("--keys", metavar="DIR",
                   help="the registrar's key directory (<kid>.pub.pem, bound to their gateways)"
                        " or any directory of *.pem public keys")
    p.add_argument("--broker", metavar="HOST:PORT", help="subscribe instead of reading files")
    p.add_argument("--topic", default="streetgate/+/batch")
    p.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    p.add_argument("--quiet", action="store_true", help="no SenML, only the summary")
    p.add_argument("--plain-senml", action="store_true",
                   help="leave out bad-quality readings (no must-understand q_ field)")
    p.add_argument("--state", metavar="FILE", type=Path,
                   help="keep dedup and replay state here across runs")
    p.add_argument("files", nargs="*", help="message files or directories of them")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="simulated devices through a private broker, verified")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--outage", type=float, default=None,
                   help="seconds the broker is cut midway (default 3 when --seconds >= 12)")
    p.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    p.add_argument("--save-batches", metavar="DIR", type=Path)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("new-driver", help="write a driver package to start from")
    p.add_argument("name", help="driver name (lowercase, e.g. air_probe)")
    p.add_argument("--dir", type=Path, default=Path(), help="where to write it")
    p.set_defaults(func=cmd_new_driver)

    p = sub.add_parser("bench", help="throughput, bytes per reading, CPU and memory")
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--modbus", action="store_true", help="also bench the Modbus driver")
    p.set_defaults(func=cmd_bench)


def _load_keys(args: argparse.Namespace) -> tuple[dict[bytes, Any], dict[bytes, str]]:
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
        from gateway.senml import senml_json  # noqa: PLC0415

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
    from provisioning.keys import KeyFileError  # noqa: PLC0415

    try:
        return _verify(args)
    except (OSError, KeyFileError, ValueError, KeyError) as exc:
        print(f"streetgate verify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _verify(args: argparse.Namespace) -> int:
    from gateway.verify import Verifier  # noqa: PLC0415

    keys, gateways = _load_keys(args)
    if not keys:
        print("streetgate verify: give at least one --key or --keys DIR", file=sys.stderr)
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


def _verify_broker(args: argparse.Namespace, handle: Any) -> None:
    from gateway.subscriber import BatchSubscriber  # noqa: PLC0415

    host, _, port = args.broker.rpartition(":")
    sub = BatchSubscriber(host or "127.0.0.1", int(port), args.topic)
    sub.start()
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


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.broker import BrokerError  # noqa: PLC0415
    from gateway.demo import run_demo  # noqa: PLC0415

    out = None if args.json else sys.stdout
    try:
        summary = asyncio.run(run_demo(args.seconds, outage=args.outage,
                                       save_dir=args.save_batches, out=out))
    except BrokerError as exc:
        print(f"streetgate demo: {exc}", file=sys.stderr)
        return 1
    data = summary.as_dict()
    if args.json:
        print(json.dumps(data))
    else:
        print("\nsummary:")
        for k, v in data.items():
            print(f"  {k:<24} {v}")
        if args.save_batches:
            print(f"  batches and public.pem saved in {args.save_batches}")
    return 0 if summary.lost == 0 and summary.rejected == 0 else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from gateway.bench import run_bench  # noqa: PLC0415

    t0 = time.monotonic()
    result = run_bench(readings=args.readings, points=args.points, modbus=args.modbus)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<28} {v}")
        print(f"(bench took {time.monotonic() - t0:.1f}s)")
    return 0


def cmd_new_driver(args: argparse.Namespace) -> int:
    from gateway.newdriver import generate  # noqa: PLC0415

    try:
        root = generate(args.name, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"streetgate new-driver: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root}: `pip install -e {root}` then `streetgate drivers` lists {args.name}")
    return 0
